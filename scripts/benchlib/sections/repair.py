"""The repair section."""

import shutil
from pathlib import Path

from ..fs import make_fs
from ..ops import install_args
from ..results import guarded
from ..tools import podman_cmd, podman_env, unistore_env
from ..util import Failed, MIB, log, run, timed


def bench_repair(ctx, res, run_no):
    if not ctx.feats["fsck_repair"]:
        res.skip("repair", "fsck --repair", "this unistore has no `internals fsck images --repair`")
        return
    if not ctx.feats["unified"]:
        res.skip("repair", "fsck --repair", "this unistore has no `install --unified` to make a unified host")
        return
    src = ctx.refs["latest"]
    store = Path("composefs/bootc/storage")

    def break_host(fs):
        """Removes the image from the host containers-storage, as a user's
        `podman rmi` or a lost store would."""
        runroot = ctx.rundir / "podrun-host"
        p = podman_cmd(ctx, fs.mnt / store, runroot, "images", "-q", "--no-trunc")
        ids = run(p, env=podman_env(ctx)).stdout.split()
        if not ids:
            raise Failed("the unified install left no image in the host containers-storage")
        run(podman_cmd(ctx, fs.mnt / store, runroot, "rmi", "-f", *ids), env=podman_env(ctx))
        shutil.rmtree(runroot, ignore_errors=True)
        return ids

    def native():
        with make_fs(ctx, "xfs", "repair-native") as fs:
            timed(install_args(ctx, src, fs.mnt, "enabled"), env=unistore_env(ctx), label="unistore install --unified")
            break_host(fs)
            before = fs.settle()
            r = timed([ctx.unistore, "-v", "--sysroot", fs.mnt, "internals", "fsck", "images", "--repair"], env=unistore_env(ctx),
                      sync_path=fs.mnt, label="fsck --repair")
            r["delta"] = fs.settle() - before
            chk = run([ctx.unistore, "--sysroot", fs.mnt, "internals", "fsck", "images"], env=unistore_env(ctx), check=False)
            r["fsck_ok_after"] = chk.returncode == 0
            res.add("repair", "fsck --repair", run_no, **r)
            log(f"  repair  native fsck --repair {r['wall']:6.2f} s  written {r['delta'] / MIB:7.1f} MiB  ok after: {r['fsck_ok_after']}")

    def skopeo():
        # The way without a native writer: an OCI layout of the image (here the
        # source layout itself, so the export from composefs is not even
        # counted) copied into the host store by skopeo.
        with make_fs(ctx, "xfs", "repair-skopeo") as fs:
            timed(install_args(ctx, src, fs.mnt, "enabled"), env=unistore_env(ctx), label="unistore install --unified")
            break_host(fs)
            before = fs.settle()
            runroot = ctx.rundir / "podrun-host"
            dest = f"containers-storage:[overlay@{fs.mnt / store}+{runroot}]localhost/bench:repair"
            r = timed(["skopeo", "copy", "--quiet", f"oci:{ctx.oci}:latest", dest], sync_path=fs.mnt, label="skopeo copy")
            r["delta"] = fs.settle() - before
            shutil.rmtree(runroot, ignore_errors=True)
            res.add("repair", "oci+skopeo", run_no, **r)
            log(f"  repair  OCI layout + skopeo copy {r['wall']:6.2f} s  written {r['delta'] / MIB:7.1f} MiB")

    guarded(res, "repair", "fsck --repair", native)
    guarded(res, "repair", "oci+skopeo", skopeo)
