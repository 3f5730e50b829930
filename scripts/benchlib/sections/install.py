"""The install section."""

import shutil

from ..fs import make_fs
from ..ops import install_args, op_cfsctl_pull, op_podman_pull, op_skopeo_oci, op_unistore_install, op_unpacked_tree
from ..results import guarded
from ..tools import podman_cmd, podman_env, unistore_env
from ..util import MIB, log, timed


def bench_install(ctx, res, run_no):
    src = ctx.refs["latest"]
    runroot = ctx.rundir / "podrun"
    ops = [("unistore", "xfs"), ("unistore-unified", "xfs"), ("podman", "xfs"), ("skopeo-oci", "xfs"),
           ("cfsctl", "xfs"), ("unistore", "ext4"), ("unistore-unified-copy", "ext4"), ("podman", "ext4")]
    k = run_no % len(ops)
    ops = ops[k:] + ops[:k]  # rotate the order from run to run
    for tool, kind in ops:
        op = f"{tool}@{kind}"
        if tool.startswith("unistore-unified") and not ctx.feats["unified"]:
            res.skip("install", op, "this unistore has no `install to-filesystem --unified`")
            continue
        if tool == "cfsctl" and not ctx.cfsctl:
            res.skip("install", op, ctx.cfsctl_why)
            continue

        def one(tool=tool, kind=kind, op=op):
            with make_fs(ctx, kind, f"inst-{tool}-{kind}") as fs:
                if tool == "unistore":
                    r = op_unistore_install(ctx, fs, src)
                elif tool == "unistore-unified":
                    r = op_unistore_install(ctx, fs, src, "enabled")
                elif tool == "unistore-unified-copy":
                    r = op_unistore_install(ctx, fs, src, "enabled-with-copy")
                elif tool == "podman":
                    r = op_podman_pull(ctx, fs, src, runroot)
                elif tool == "skopeo-oci":
                    r = op_skopeo_oci(ctx, fs, src)
                elif tool == "cfsctl":
                    r = op_cfsctl_pull(ctx, fs, src)
                rec = res.add("install", op, run_no, **r)
                log(f"  install {op:28} {rec['wall']:6.2f} s  (+sync {rec['wall_sync']:6.2f} s)  {rec['delta'] / MIB:7.1f} MiB  rss {(rec['rss_main_kib'] or 0) / 1024:6.1f}/{(rec['rss_kib'] or 0) / 1024:6.1f} MiB")

        guarded(res, "install", op, one)
        shutil.rmtree(runroot, ignore_errors=True)

    # Disk: every store of a host that keeps the image in composefs and in
    # containers-storage: two separate copies, or one shared by reflinks.
    def separate():
        with make_fs(ctx, "xfs", "disk-separate") as fs:
            before = fs.used()
            a = timed(install_args(ctx, src, fs.mnt), env=unistore_env(ctx), sync_path=fs.mnt, label="unistore install")
            b = timed(podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", src), env=podman_env(ctx), sync_path=fs.mnt)
            d = fs.settle() - before
            res.add("disk", "separate@xfs", run_no, delta=d, wall=a["wall"] + b["wall"], wall_sync=a["wall_sync"] + b["wall_sync"])
            log(f"  disk    separate copies (install + podman pull) {d / MIB:7.1f} MiB")

    guarded(res, "disk", "separate@xfs", separate)
    shutil.rmtree(runroot, ignore_errors=True)
    guarded(res, "disk", "unpacked@xfs", lambda: op_unpacked_tree(ctx, res, run_no, src))

    if not ctx.feats["set_unified"]:
        res.skip("disk", "set-unified@xfs", "this unistore has no `image set-unified`")
        return

    def set_unified():
        with make_fs(ctx, "xfs", "disk-set-unified") as fs:
            before = fs.used()
            timed(install_args(ctx, src, fs.mnt), env=unistore_env(ctx), sync_path=fs.mnt, label="unistore install")
            fs.settle()
            r = timed([ctx.unistore, "-v", "--sysroot", fs.mnt, "image", "set-unified", "full"], env=unistore_env(ctx),
                      sync_path=fs.mnt, label="unistore image set-unified full")
            r["delta"] = fs.settle() - before
            res.add("disk", "set-unified@xfs", run_no, **r)
            log(f"  disk    install + image set-unified full {r['delta'] / MIB:7.1f} MiB; set-unified {r['wall']:.2f} s")

    guarded(res, "disk", "set-unified@xfs", set_unified)
