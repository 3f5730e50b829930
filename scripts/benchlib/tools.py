"""The tools under test: environments, command lines, feature detection, the build."""

import os
import shutil
import subprocess
from pathlib import Path

from .util import CFSCTL_VERSION, Failed, REPO, WORK, log, run


class Ctx:
    pass


CONTAINERS_CONF = """[containers]
netns = "none"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def unistore_env(ctx):
    env = dict(os.environ)
    env["CONTAINERS_REGISTRIES_CONF"] = str(ctx.reg.registries_conf)
    env.pop("UNISTORE_LOG", None)
    return env


def podman_env(ctx):
    env = dict(os.environ)
    env["CONTAINERS_REGISTRIES_CONF"] = str(ctx.reg.registries_conf)
    env["CONTAINERS_CONF"] = str(ctx.containers_conf)
    return env


def cfsctl_env(ctx):
    # cfsctl's skopeo proxy reads no registries.conf of ours: put a skopeo in
    # front of the real one that passes --registries-conf.
    env = dict(os.environ)
    env["PATH"] = f"{ctx.skopeo_wrapper_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def podman_cmd(ctx, root, runroot, *args):
    return ["podman", "--root", root, "--runroot", runroot, "--storage-driver", "overlay", *args]


def phases(lines, marks):
    """Times (s from the start) of the first stderr line starting with each
    prefix in marks ({name: prefix})."""
    res = {}
    for name, prefix in marks.items():
        for t, line in lines:
            if line.startswith(prefix):
                res[name] = t
                break
    return res


def help_text(ctx, *args):
    p = run([ctx.unistore, *args, "--help"], check=False)
    return p.stdout if p.returncode == 0 else None


def detect_features(ctx):
    feats = {}
    inst = help_text(ctx, "install", "to-filesystem") or ""
    feats["unified"] = "--unified" in inst
    su = help_text(ctx, "image", "set-unified")
    feats["set_unified"] = su is not None
    fsck = help_text(ctx, "internals", "fsck", "images")
    feats["fsck"] = fsck is not None
    feats["fsck_repair"] = fsck is not None and "--repair" in fsck
    feats["ostree"] = "--backend" in inst
    return feats


def ensure_cfsctl():
    """cfsctl, installed into WORK/cargo if missing; (path, None) or (None, why)."""
    if os.environ.get("CFSCTL"):
        return os.environ["CFSCTL"], None
    binp = WORK / "cargo" / "bin" / "cfsctl"
    if binp.exists():
        return str(binp), None
    if not shutil.which("cargo"):
        return None, "cargo is not installed, so cfsctl (composefs-ctl) cannot be installed"
    log(f"installing cfsctl (cargo install composefs-ctl --version ={CFSCTL_VERSION}), a few minutes; log in {WORK}/cfsctl-install.log")
    with open(WORK / "cfsctl-install.log", "wb") as logf:
        p = subprocess.run(
            ["cargo", "install", "composefs-ctl", "--version", f"={CFSCTL_VERSION}", "--locked",
             "--root", str(WORK / "cargo"), "--target-dir", str(WORK / "cargo-target")],
            stdout=logf, stderr=subprocess.STDOUT,
        )
    if p.returncode != 0 or not binp.exists():
        return None, f"`cargo install composefs-ctl --version ={CFSCTL_VERSION}` failed (see {WORK}/cfsctl-install.log)"
    shutil.rmtree(WORK / "cargo-target", ignore_errors=True)
    return str(binp), None


def git_rev():
    p = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False)
    if p.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"], check=False).stdout.strip()
    return p.stdout.strip() + (" (with uncommitted changes under crates/)" if dirty else "")


def build(ctx):
    ctx.git_rev = git_rev()
    log("building unistore and unistore-fixture (cargo build --release)")
    p = subprocess.run(["cargo", "build", "--release", "-q", "-p", "unistore-cli", "-p", "unistore-fixtures"], cwd=REPO)
    if p.returncode != 0:
        raise Failed("cargo build failed")
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    # A private copy: a later `cargo build` in the same tree must not swap the
    # binary under a running benchmark.
    bindir = ctx.rundir / "bin"
    bindir.mkdir()
    for name in ("unistore", "unistore-fixture"):
        shutil.copy2(target / "release" / name, bindir / name)
    ctx.unistore = str(bindir / "unistore")
    ctx.fixture = str(bindir / "unistore-fixture")
