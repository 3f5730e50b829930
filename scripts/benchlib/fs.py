"""Loop filesystems: a fresh XFS or ext4 per measurement."""

import os
import shutil
import time

from .util import CLEANUP, Failed, run, sync_fs


def statvfs_used(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def umount(path, lazy_ok=True):
    for _ in range(20):
        if run(["umount", path], check=False).returncode == 0:
            return
        if run(["mountpoint", "-q", path], check=False).returncode != 0:
            return
        time.sleep(0.25)
    if lazy_ok:
        run(["umount", "-l", path], check=False)
    else:
        raise Failed(f"cannot unmount {path}")


class LoopFS:
    """A fresh XFS (reflink=1) or ext4 filesystem in a sparse file on a loop
    device; `with LoopFS(...) as fs:` removes everything again."""

    def __init__(self, kind, size_gib, workdir, name):
        self.kind = kind
        self.size_gib = size_gib
        self.dir = workdir / name
        self.img = self.dir / "disk.img"
        self.mnt = self.dir / "mnt"
        self.loop = None
        self.tokens = []

    def __enter__(self):
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.mnt.mkdir(parents=True)
        with open(self.img, "wb") as f:
            f.truncate(int(self.size_gib * 1024**3))
        if self.kind == "xfs":
            run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.img])
        elif self.kind == "ext4":
            run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.img])
        else:
            raise ValueError(self.kind)
        self.loop = run(["losetup", "-f", "--show", self.img]).stdout.strip()
        self.tokens.append(CLEANUP.push(f"losetup -d {self.loop}", lambda loop=self.loop: run(["losetup", "-d", loop], check=False)))
        run(["mount", self.loop, self.mnt])
        self.tokens.append(CLEANUP.push(f"umount {self.mnt}", self._umount_all))
        return self

    def _umount_all(self, lazy_ok=True):
        # Deepest first: containers-storage's overlay driver bind-mounts its
        # home onto itself and skopeo leaves that mount behind.
        mounts = run(["findmnt", "-rn", "-o", "TARGET"], check=False).stdout.split("\n")
        below = sorted((m for m in mounts if m == str(self.mnt) or m.startswith(str(self.mnt) + "/")), reverse=True)
        for m in below:
            umount(m, lazy_ok=lazy_ok)

    def __exit__(self, *exc):
        for t in reversed(self.tokens):
            CLEANUP.pop(t)
        self.tokens = []
        shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def used(self):
        sync_fs(self.mnt)
        return statvfs_used(self.mnt)

    def settle(self):
        """Bytes used once settled: synced, unmounted and mounted again, which
        makes XFS drop the speculative preallocation past the end of files that
        it otherwise keeps for minutes (it inflates a fresh statvfs reading by
        tens of percent)."""
        sync_fs(self.mnt)
        self._umount_all(lazy_ok=False)
        run(["mount", self.loop, self.mnt])
        return statvfs_used(self.mnt)


def make_fs(ctx, kind, name, size_gib=8):
    return LoopFS(kind, size_gib, ctx.rundir, name)
