"""The memory section."""

import shutil

from ..fs import make_fs
from ..ops import op_podman_pull, op_unistore_install
from ..results import guarded
from ..util import log


def bench_memory(ctx, res, run_no):
    for mib in ctx.mem_sizes:
        src = ctx.mem_refs[mib]
        variants = [("unistore", None)] + ([("unistore-unified", "enabled")] if ctx.feats["unified"] else [])
        for tool, unified in variants:
            op = f"{tool}@{mib}MiB"

            def one(op=op, unified=unified):
                with make_fs(ctx, "xfs", f"mem-{mib}") as fs:
                    r = op_unistore_install(ctx, fs, src, unified)
                    res.add("memory", op, run_no, **r)
                    log(f"  memory  install {op:28} {r['wall']:6.2f} s  rss {(r['rss_main_kib'] or 0) / 1024:6.1f}/{(r['rss_kib'] or 0) / 1024:6.1f} MiB")

            guarded(res, "memory", op, one)

        def pod(mib=mib, src=src):
            runroot = ctx.rundir / "podrun"
            with make_fs(ctx, "xfs", f"mem-podman-{mib}") as fs:
                r = op_podman_pull(ctx, fs, src, runroot)
                res.add("memory", f"podman@{mib}MiB", run_no, **r)
            shutil.rmtree(runroot, ignore_errors=True)

        guarded(res, "memory", f"podman@{mib}MiB", pod)
    if not ctx.feats["unified"]:
        res.skip("memory", "unistore-unified", "this unistore has no `install to-filesystem --unified`")
