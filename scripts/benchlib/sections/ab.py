"""The `ab` section: this build against another unistore binary
(`--baseline BIN`), in the same run, on the same registry and image.

Each run alternates the two binaries (the order flips from run to run) over
a plain and a unified install on a fresh XFS, then an upgrade v1 -> v2 of
each, with `podman pull` of the same image between them as the yardstick.
It writes no docs: it prints medians and new/baseline ratios."""

import statistics

from ..fs import make_fs
from ..ops import install_args
from ..results import guarded
from ..tools import podman_cmd, podman_env, unistore_env
from ..util import log, timed

KINDS = [("install", None), ("install", "enabled"), ("upgrade", None), ("upgrade", "enabled")]


def op_name(which, step, unified):
    return f"{which}:{step}{'-unified' if unified else ''}"


def one(ctx, res, run_no, which, binary, step, unified):
    name = f"bench/ab-{which}-{step}-{unified or 'plain'}-{run_no}:latest"
    src = ctx.reg.push(ctx.oci, "latest", name)
    with make_fs(ctx, "xfs", f"ab-{which}") as fs:
        cmd = [binary, *install_args(ctx, src, fs.mnt, unified)[1:]]
        r = timed(cmd, env=unistore_env(ctx), sync_path=fs.mnt, label=f"{which} install")
        if step == "upgrade":
            ctx.reg.push(ctx.oci, "v2", name)
            fs.settle()
            r = timed([binary, "-v", "--sysroot", fs.mnt, "upgrade"], env=unistore_env(ctx), sync_path=fs.mnt,
                      label=f"{which} upgrade")
        op = op_name(which, step, unified)
        res.add("ab", op, run_no, **r)
        log(f"  ab {op:28} {r['wall_sync']:6.2f} s")


def podman(ctx, res, run_no):
    name = f"bench/ab-podman-{run_no}:latest"
    src = ctx.reg.push(ctx.oci, "latest", name)
    runroot = ctx.rundir / "podrun-ab"
    with make_fs(ctx, "xfs", "ab-podman") as fs:
        pull = podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", src)
        r = timed(pull, env=podman_env(ctx), sync_path=fs.mnt)
        res.add("ab", "podman:install", run_no, **r)
        ctx.reg.push(ctx.oci, "v2", name)
        fs.settle()
        r = timed(pull, env=podman_env(ctx), sync_path=fs.mnt)
        res.add("ab", "podman:upgrade", run_no, **r)
        log(f"  ab podman:install/upgrade      {res.records[-2]['wall_sync']:6.2f} s / {r['wall_sync']:.2f} s")


def bench_ab(ctx, res, run_no):
    pair = [("new", ctx.unistore), ("baseline", ctx.baseline)]
    if run_no % 2:
        pair.reverse()
    guarded(res, "ab", "podman", lambda: podman(ctx, res, run_no))
    for step, unified in KINDS:
        for which, binary in pair:
            op = op_name(which, step, unified)
            guarded(res, "ab", op, lambda w=which, b=binary, s=step, u=unified: one(ctx, res, run_no, w, b, s, u))


def print_ab(res):
    print()
    print(f"{'operation (XFS, incl. sync)':28} {'new':>8} {'baseline':>9} {'new/base':>9} {'new/podman':>11} {'base/podman':>12}")
    for step, unified in KINDS:
        label = op_name("", step, unified)[1:]
        new = res.values("ab", op_name("new", step, unified), "wall_sync")
        base = res.values("ab", op_name("baseline", step, unified), "wall_sync")
        pod = res.values("ab", f"podman:{step}", "wall_sync")
        if not new or not base:
            print(f"{label:28} not measured")
            continue
        n, b = statistics.median(new), statistics.median(base)
        p = statistics.median(pod) if pod else None
        rp = (lambda x: f"{x / p:.2f}x") if p else (lambda x: "-")
        print(f"{label:28} {n:7.3f}s {b:8.3f}s {n / b:8.3f}x {rp(n):>11} {rp(b):>12}")
    print()
