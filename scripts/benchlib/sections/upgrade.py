"""The upgrade section."""

import json
import shutil

from ..fs import make_fs
from ..ops import cfs_init, install_args, phase_durations, staged_in_store
from ..results import guarded
from ..tools import cfsctl_env, podman_cmd, podman_env, unistore_env
from ..util import Failed, MIB, log, run, timed


def bench_upgrade(ctx, res, run_no):
    tools = ["unistore", "unistore-unified", "podman", "cfsctl", "skopeo-oci"]
    k = run_no % len(tools)
    tools = tools[k:] + tools[:k]
    runroot = ctx.rundir / "podrun"
    for tool in tools:
        if tool == "unistore-unified" and not ctx.feats["unified"]:
            res.skip("upgrade", tool, "this unistore has no `install to-filesystem --unified`")
            continue
        if tool == "cfsctl" and not ctx.cfsctl:
            res.skip("upgrade", tool, ctx.cfsctl_why)
            continue

        def one(tool=tool):
            name = f"bench/upgrade-{tool}-{run_no}:latest"
            src = ctx.reg.push(ctx.oci, "latest", name)
            with make_fs(ctx, "xfs", f"upg-{tool}") as fs:
                if tool.startswith("unistore"):
                    timed(install_args(ctx, src, fs.mnt, "enabled" if tool == "unistore-unified" else None),
                          env=unistore_env(ctx), sync_path=fs.mnt, label="unistore install")
                    cmd, env = [ctx.unistore, "-v", "--sysroot", fs.mnt, "upgrade"], unistore_env(ctx)
                elif tool == "podman":
                    timed(podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", src), env=podman_env(ctx))
                    cmd, env = podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", src), podman_env(ctx)
                elif tool == "cfsctl":
                    cfs_init(ctx, fs.mnt / "cfs")
                    pull = [ctx.cfsctl, "--repo", fs.mnt / "cfs", "oci", "pull", "--bootable", src, "bench"]
                    timed(pull, env=cfsctl_env(ctx))
                    cmd, env = pull, cfsctl_env(ctx)
                elif tool == "skopeo-oci":
                    cp = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", src, f"oci:{fs.mnt / 'oci'}:latest"]
                    timed(cp)
                    cmd, env = cp, None
                ctx.reg.push(ctx.oci, "v2", name)  # the same tag now names v2
                before = fs.settle()
                mark = ctx.reg.mark()
                r = timed(cmd, env=env, sync_path=fs.mnt, label=f"{tool} upgrade")
                if tool.startswith("unistore"):
                    r["phases"] = phase_durations(r["lines"], r["wall"])
                r.update(ctx.reg.served_since(mark))
                r["delta_raw"] = fs.used() - before
                r["delta"] = fs.settle() - before
                if tool.startswith("unistore"):
                    st = json.loads(run([ctx.unistore, "--sysroot", fs.mnt, "status", "--json"]).stdout)
                    staged = (st.get("status") or {}).get("staged")
                    if not staged:
                        raise Failed("unistore upgrade staged nothing")
                if tool == "unistore-unified":
                    r["staged_in_store"] = staged_in_store(ctx, fs)
                rec = res.add("upgrade", tool, run_no, **r)
                log(f"  upgrade {tool:20} {rec['wall']:6.2f} s  fetched {rec['bytes'] / MIB:7.2f} MiB  written {rec['delta'] / MIB:7.2f} MiB  rss {(rec['rss_kib'] or 0) / 1024:6.1f} MiB")

        guarded(res, "upgrade", tool, one)
        shutil.rmtree(runroot, ignore_errors=True)
