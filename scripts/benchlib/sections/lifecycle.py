"""The lifecycle section."""

import json

from ..fs import make_fs
from ..ops import install_args
from ..results import guarded
from ..tools import unistore_env
from ..util import Failed, log, run, timed


def bench_lifecycle(ctx, res, run_no, reps=5):
    unified = "enabled" if ctx.feats["unified"] else None
    name = f"bench/lifecycle-{run_no}"

    def one():
        src = ctx.reg.push(ctx.oci, "latest", f"{name}:latest")
        with make_fs(ctx, "xfs", "lifecycle") as fs:
            env = unistore_env(ctx)
            u = [ctx.unistore, "--sysroot", fs.mnt]
            steps = {}
            steps["install"] = timed(install_args(ctx, src, fs.mnt, unified), env=env, label="install")
            ctx.reg.push(ctx.oci, "v2", f"{name}:latest")
            steps["upgrade"] = timed(u + ["upgrade"], env=env, label="upgrade")
            steps["finalize-staged"] = timed(u + ["internals", "finalize-staged"], env=env, label="finalize-staged")
            v3 = ctx.reg.push(ctx.oci, "v3", f"{name}:v3")
            steps["switch"] = timed(u + ["switch", v3], env=env, label="switch")
            st = json.loads(run(u + ["status", "--json"], env=env).stdout)["status"]
            n = sum(1 for k in ("staged", "booted", "rollback") if st.get(k)) + len(st.get("otherDeployments") or [])
            if n < 3:
                raise Failed(f"expected three deployments (staged, booted, rollback), status shows {n}")
            for k, r in steps.items():
                res.add("lifecycle", k, run_no, **r)
            fs.settle()
            cmds = {"status": u + ["status"], "status --json": u + ["status", "--json"]}
            if ctx.feats["fsck"]:
                cmds["internals fsck images"] = u + ["internals", "fsck", "images"]
            else:
                res.skip("lifecycle", "internals fsck images", "this unistore has no `internals fsck images`")
            for label, cmd in cmds.items():
                for _ in range(reps):
                    # fsck exits 1 when it finds problems: its time counts all the same.
                    r = timed(cmd, env=env, label=label, check=not label.startswith("internals fsck"))
                    if label.startswith("internals fsck"):
                        out = r["stdout"].strip().splitlines()
                        r["fsck_summary"] = out[-1] if out else ""
                        r["fsck_fail_lines"] = [line for line in out if line.startswith("[FAIL]")]
                    res.add("lifecycle", label, run_no, **r)
            res.add("lifecycle", "deployments", run_no, count=n, unified=bool(unified))
            log("  lifecycle: " + ", ".join(f"{k} {res.med('lifecycle', k, 'wall'):.3f} s" for k in list(steps) + list(cmds)))

    guarded(res, "lifecycle", "status", one)
