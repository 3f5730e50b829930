"""The ostree section."""

import json
import shutil

from ..fmt import fmt_s
from ..fs import make_fs
from ..ops import install_args, op_podman_pull, op_unpacked_tree, own_bytes
from ..results import guarded
from ..tools import phases, podman_cmd, podman_env, unistore_env
from ..util import CLEANUP, MIB, log, run, timed


def bench_ostree(ctx, res, run_no):
    """An ostree host (`install --backend ostree`) against `podman pull` of
    the same image and against `ostree commit --tree=dir=` of its merged
    tree into a fresh bare repository, each on a fresh XFS."""
    if not ctx.feats.get("ostree"):
        for op in ("unistore-ostree@xfs", "ostree-commit@xfs"):
            res.skip("ostree", op, "this unistore has no `install to-filesystem --backend ostree`")
        return
    src = ctx.refs["latest"]
    runroot = ctx.rundir / "podrun"

    def install():
        with make_fs(ctx, "xfs", "ostree-install") as fs:
            before = fs.used()
            cmd = [ctx.unistore, "-v", "install", "to-filesystem", "--backend", "ostree", "--source-imgref", src, fs.mnt]
            r = timed(cmd, env=unistore_env(ctx), sync_path=fs.mnt, label="unistore install --backend ostree")
            r["delta_raw"] = fs.used() - before
            r["delta"] = fs.settle() - before
            ph = phases(r["lines"], {"commit": "Writing the ostree commit", "deploy": "Deploying "})
            if "commit" in ph and "deploy" in ph:
                r["pull_s"] = ph["commit"]
                r["commit_s"] = ph["deploy"] - ph["commit"]
                r["deploy_s"] = r["wall"] - ph["deploy"]
            rec = res.add("ostree", "unistore-ostree@xfs", run_no, **r)
            log(f"  ostree  install --backend ostree {rec['wall']:6.2f} s (+sync {rec['wall_sync']:6.2f} s) {rec['delta'] / MIB:7.1f} MiB")

    def podman():
        with make_fs(ctx, "xfs", "ostree-podman") as fs:
            r = op_podman_pull(ctx, fs, src, runroot)
            rec = res.add("ostree", "podman@xfs", run_no, **r)
            log(f"  ostree  podman pull {rec['wall']:6.2f} s {rec['delta'] / MIB:7.1f} MiB")
        shutil.rmtree(runroot, ignore_errors=True)

    def commit():
        with make_fs(ctx, "xfs", "ostree-tree-host") as host, make_fs(ctx, "xfs", "ostree-commit") as fs:
            timed(install_args(ctx, src, host.mnt), env=unistore_env(ctx), sync_path=host.mnt, label="unistore install")
            tree = host.dir / "tree"
            tree.mkdir()
            run([ctx.unistore, "--sysroot", host.mnt, "internals", "mount", tree], env=unistore_env(ctx))
            token = CLEANUP.push(f"umount -R {tree}", lambda: run(["umount", "-R", tree], check=False))
            try:
                repo = fs.mnt / "repo"
                run(["ostree", f"--repo={repo}", "init", "--mode=bare"])
                before = fs.used()
                r = timed(["ostree", f"--repo={repo}", "commit", "--branch=bench", f"--tree=dir={tree}",
                           ], sync_path=fs.mnt, label="ostree commit --tree=dir=")
            finally:
                run(["umount", "-R", tree], check=False)
                CLEANUP.pop(token)
            r["delta"] = fs.settle() - before
            rec = res.add("ostree", "ostree-commit@xfs", run_no, **r)
            log(f"  ostree  ostree commit --tree=dir= {rec['wall']:6.2f} s {rec['delta'] / MIB:7.1f} MiB")

    def unified():
        # Unified from the start: composefs -> ostree synthesis (the commit
        # step) and the three stores' disk.
        with make_fs(ctx, "xfs", "ostree-unified") as fs:
            before = fs.used()
            cmd = [ctx.unistore, "-v", "install", "to-filesystem", "--backend", "ostree", "--unified", "enabled",
                   "--source-imgref", src, fs.mnt]
            r = timed(cmd, env=unistore_env(ctx), sync_path=fs.mnt, label="unistore install --backend ostree --unified")
            ph = phases(r["lines"], {"commit": "Writing the ostree commit", "deploy": "Deploying "})
            if "commit" in ph and "deploy" in ph:
                r["commit_s"] = ph["deploy"] - ph["commit"]
            r["delta"] = fs.settle() - before
            # What the synthesis wrote: the ostree repository's own blocks
            # (extents its objects do not share with composefs, metadata).
            r["synth_written"] = own_bytes(fs.mnt / "ostree" / "repo" / "objects")
            rec = res.add("ostree", "unistore-ostree-unified@xfs", run_no, **r)
            log(f"  ostree  install --backend ostree --unified {rec['wall']:6.2f} s, commit step {fmt_s(r.get('commit_s'))}, "
                f"ostree repo's own {rec['synth_written'] / MIB:7.2f} MiB, three stores {rec['delta'] / MIB:7.1f} MiB")

    def bound_upgrade():
        # A bound (unified) host upgraded v1 -> v2, against podman pull of v2
        # over v1; the files read for checksums counted.
        name = f"bench/ostree-upgrade-{run_no}:latest"
        up_src = ctx.reg.push(ctx.oci, "latest", name)
        with make_fs(ctx, "xfs", "ostree-bound-upgrade") as fs:
            timed([ctx.unistore, "install", "to-filesystem", "--backend", "ostree", "--unified", "enabled",
                   "--source-imgref", up_src, fs.mnt], env=unistore_env(ctx), label="unistore install")
            ctx.reg.push(ctx.oci, "v2", name)
            before = fs.settle()
            r = timed([ctx.unistore, "-v", "--sysroot", fs.mnt, "upgrade", "--json"], env=unistore_env(ctx),
                      sync_path=fs.mnt, label="unistore upgrade (bound ostree host)")
            out = json.loads(r["stdout"])
            commit = out.get("commit") or {}
            r["files_read"] = commit.get("files_read")
            r["checksums_cached"] = commit.get("checksums_cached")
            r["layers_written"] = commit.get("layers_written")
            r["layers_reused"] = commit.get("layers_reused")
            # Where the time goes: check, pull into composefs, the commits,
            # libostree's deploy (checkout, /etc merge, boot entries, its
            # syncs), then the GC.
            ph = phases(r["lines"], {"pull": "Pulling ", "commit": "Writing the ostree commit",
                                     "deploy": "Deploying ", "gc": "Collecting garbage"})
            if all(k in ph for k in ("pull", "commit", "deploy", "gc")):
                r["check_s"] = ph["pull"]
                r["pull_s"] = ph["commit"] - ph["pull"]
                r["commit_s"] = ph["deploy"] - ph["commit"]
                r["deploy_s"] = ph["gc"] - ph["deploy"]
                r["gc_s"] = r["wall"] - ph["gc"]
            r["delta"] = fs.settle() - before
            rec = res.add("ostree", "bound-upgrade@xfs", run_no, **r)
            log(f"  ostree  bound upgrade v1 -> v2 {rec['wall']:6.2f} s (+sync {rec['wall_sync']:6.2f} s), "
                f"{r['files_read']} files read, {r['checksums_cached']} checksums cached, "
                f"layer commits {r['layers_written']} written / {r['layers_reused']} reused; phases: "
                f"check {fmt_s(r.get('check_s'))}, pull {fmt_s(r.get('pull_s'))}, commit {fmt_s(r.get('commit_s'))}, "
                f"deploy {fmt_s(r.get('deploy_s'))}, gc {fmt_s(r.get('gc_s'))}")
        with make_fs(ctx, "xfs", "ostree-podman-upgrade") as fs:
            ctx.reg.push(ctx.oci, "latest", name)
            timed(podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", up_src), env=podman_env(ctx))
            ctx.reg.push(ctx.oci, "v2", name)
            fs.settle()
            r = timed(podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", up_src), env=podman_env(ctx),
                      sync_path=fs.mnt, label="podman pull v2 over v1")
            rec = res.add("ostree", "podman-upgrade@xfs", run_no, **r)
            log(f"  ostree  podman pull v2 over v1 {rec['wall']:6.2f} s (+sync {rec['wall_sync']:6.2f} s)")
        shutil.rmtree(runroot, ignore_errors=True)

    ops = [("unistore-ostree@xfs", install), ("podman@xfs", podman), ("ostree-commit@xfs", commit),
           ("unistore-ostree-unified@xfs", unified), ("bound-upgrade@xfs", bound_upgrade)]
    k = run_no % len(ops)
    for op, fn in ops[k:] + ops[:k]:
        guarded(res, "ostree", op, fn)
    if not res.values("disk", "unpacked@xfs", "delta"):
        guarded(res, "disk", "unpacked@xfs", lambda: op_unpacked_tree(ctx, res, run_no, src))
