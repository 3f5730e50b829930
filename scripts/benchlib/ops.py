"""Measured operations (each on a fresh filesystem unless said otherwise)."""

import json
import os
import re
import statistics
from pathlib import Path

from .fmt import fmt_s
from .fs import make_fs
from .tools import cfsctl_env, phases, podman_cmd, podman_env, unistore_env
from .util import CLEANUP, MIB, log, run, timed


def install_args(ctx, src, mnt, unified=None):
    cmd = [ctx.unistore, "-v", "install", "to-filesystem", "--source-imgref", src]
    if unified:
        cmd += ["--unified", unified]
    return cmd + [mnt]


# unistore's progress lines (stderr, one per step) that start a phase, in order.
PHASES = [
    ("check the registry", re.compile(r"^Checking ")),
    ("open the source", re.compile(r"^Pulling (?!.* into containers-storage)")),
    ("podman pull into the host store", re.compile(r"^Pulling .* into containers-storage")),
    ("import from the store into composefs", re.compile(r"^Importing from containers-storage")),
    # The layers (unistore's own fetch), or composefs-oci's config step when none is new.
    ("pull into composefs", re.compile(r"^Fetching (\d+ layers?|config)")),
    ("after the layers: boot EROFS, tags, sync", re.compile(r"^(Storing manifest|Layers imported)")),
    ("podman tag, sync, extent-sharing pass", re.compile(r"^Read manifest")),
    ("write the host store from composefs (reflinks)", re.compile(r"^Writing .* into containers-storage")),
    ("deployment", re.compile(r"^Deploying ")),
    ("GC", re.compile(r"^Collecting garbage")),
]


def phase_durations(lines, wall):
    """{phase: seconds}: each phase runs from its first line to the next
    phase's first line (or the end); the time before the first is "start"."""
    starts = []
    for name, rx in PHASES:
        for t, line in lines:
            if rx.search(line):
                starts.append((t, name))
                break
    starts.sort()
    res = {}
    if starts:
        res["start"] = starts[0][0]
    for i, (t, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else wall
        res[name] = end - t
    return res


def phase_table(res, section, ops):
    rows = []
    for op in ops:
        recs = [r for r in res.records if r["section"] == section and r["op"] == op and r.get("phases")]
        if not recs:
            continue
        names = ["start"] + [n for n, _ in PHASES]
        parts = []
        for n in names:
            v = [r["phases"][n] for r in recs if n in r["phases"]]
            if v:
                parts.append(f"{n} {fmt_s(statistics.median(v))}")
        rows.append([op, "; ".join(parts)])
    return rows


INSTALL_MARKS = {
    "pull_start": "Pulling ",
    "store_pull_done": "Importing from containers-storage",
    "manifest_stored": "Storing manifest",
    "layers_imported": "Layers imported",
    "deploy": "Deploying ",
}


def op_unistore_install(ctx, fs, src, unified=None):
    before = fs.used()
    r = timed(install_args(ctx, src, fs.mnt, unified), env=unistore_env(ctx), sync_path=fs.mnt, label="unistore install")
    r["delta_raw"] = fs.used() - before
    r["delta"] = fs.settle() - before
    r["du"] = du_breakdown(fs.mnt)
    r["phases"] = phase_durations(r["lines"], r["wall"])
    ph = phases(r["lines"], INSTALL_MARKS)
    if "deploy" in ph:
        r["import_s"] = ph["deploy"]  # start -> the pull, boot image, tag and sync are done
        r["deploy_s"] = r["wall"] - ph["deploy"]
    if "store_pull_done" in ph:
        r["store_pull_s"] = ph["store_pull_done"]
        if "deploy" in ph:
            r["store_import_s"] = ph["deploy"] - ph["store_pull_done"]
    return r


DU_PARTS = ["composefs/objects", "composefs/images", "composefs/streams", "composefs/bootc/storage", "boot", "state"]


def du_breakdown(root):
    """Bytes allocated under each part of a host root (`du -s -B1`; extents
    shared by reflinks are counted in each place that holds them)."""
    res = {}
    for part in DU_PARTS:
        p = Path(root) / part
        if p.exists():
            out = run(["du", "-s", "-B1", p], check=False).stdout.split()
            if out:
                res[part] = int(out[0])
    return res


def op_podman_pull(ctx, fs, src, runroot):
    before = fs.used()
    r = timed(podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", src), env=podman_env(ctx), sync_path=fs.mnt, label="podman pull")
    r["delta_raw"] = fs.used() - before
    r["delta"] = fs.settle() - before
    return r


def op_skopeo_oci(ctx, fs, src):
    before = fs.used()
    r = timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false", src, f"oci:{fs.mnt / 'oci'}:latest"],
              sync_path=fs.mnt, label="skopeo copy")
    r["delta_raw"] = fs.used() - before
    r["delta"] = fs.settle() - before
    return r


def cfs_init(ctx, repo):
    run([ctx.cfsctl, "init", "--insecure", repo], env=cfsctl_env(ctx))


def op_cfsctl_pull(ctx, fs, src, init=True):
    repo = fs.mnt / "cfs"
    before = fs.used()
    if init:
        cfs_init(ctx, repo)
    r = timed([ctx.cfsctl, "--repo", repo, "oci", "pull", "--bootable", src, "bench"], env=cfsctl_env(ctx),
              sync_path=fs.mnt, label="cfsctl oci pull")
    r["delta_raw"] = fs.used() - before
    r["delta"] = fs.settle() - before
    return r


def op_unpacked_tree(ctx, res, run_no, src):
    """The fair baseline: the image's merged tree as plain files on a fresh
    XFS made like the others. A plain install is mounted the way the
    initramfs would (`internals mount`: the boot EROFS over the objects, the
    deployment's /etc bound over /etc) and copied with `cp -a
    --reflink=never` onto a second fresh XFS; its statvfs delta after sync,
    unmount and mount is what the image takes unpacked, blocks, inodes and
    directories included."""
    with make_fs(ctx, "xfs", "disk-unpacked-host") as host, make_fs(ctx, "xfs", "disk-unpacked") as fs:
        timed(install_args(ctx, src, host.mnt), env=unistore_env(ctx), sync_path=host.mnt, label="unistore install")
        tree = host.dir / "tree"
        tree.mkdir()
        run([ctx.unistore, "--sysroot", host.mnt, "internals", "mount", tree], env=unistore_env(ctx))

        def unmount_tree():
            run(["umount", "-R", tree], check=False)

        token = CLEANUP.push(f"umount -R {tree}", unmount_tree)
        try:
            before = fs.used()
            r = timed(["cp", "-a", "--reflink=never", f"{tree}/.", fs.mnt / "tree"], sync_path=fs.mnt,
                      label="cp -a --reflink=never")
        finally:
            CLEANUP.pop(token)
        r["delta"] = fs.settle() - before
        res.add("disk", "unpacked@xfs", run_no, **r)
        log(f"  disk    the image unpacked on XFS (cp -a of the merged tree) {r['delta'] / MIB:7.1f} MiB")


def staged_in_store(ctx, fs):
    """Whether the staged image of a unified host is in its containers-storage
    (None when `image list --json` cannot tell)."""
    p = run([ctx.unistore, "--sysroot", fs.mnt, "image", "list", "--json"], env=unistore_env(ctx), check=False)
    try:
        images = json.loads(p.stdout)["images"]
    except (ValueError, KeyError, TypeError):
        return None
    staged = [i for i in images if "staged" in (i.get("roles") or [])]
    return bool(staged) and all(i.get("inContainersStorage") for i in staged)


def own_bytes(root):
    """Bytes allocated below root that no other file shares (FIEMAP: extents
    without FIEMAP_EXTENT_SHARED), each inode once, plus directories' blocks."""
    import fcntl
    import struct
    FS_IOC_FIEMAP = 0xC020660B
    SHARED, LAST = 0x2000, 0x1
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(root):
        total += os.lstat(dirpath).st_blocks * 512
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if st.st_ino in seen or not os.path.isfile(p):
                continue
            seen.add(st.st_ino)
            with open(p, "rb") as f:
                start = 0
                while True:
                    count = 64
                    hdr = struct.pack("QQIIII", start, 2**64 - 1, 0, 0, count, 0)
                    buf = bytearray(hdr + b"\0" * (56 * count))
                    fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
                    mapped = struct.unpack_from("I", buf, 20)[0]
                    last = False
                    for i in range(mapped):
                        logical, _phys, length, _r1, _r2, flags = struct.unpack_from("QQQQQI", buf, 32 + 56 * i)
                        if not flags & SHARED:
                            total += length
                        start = logical + length
                        last = bool(flags & LAST)
                    if mapped == 0 or last:
                        break
    return total
