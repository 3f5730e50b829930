"""The scale section: how cost grows with the image.

Generated images (`unistore-fixture scale-image`, cached under WORK/cache) of
about 50 MiB / 2,500 files / 3 content layers, 500 MiB / 25,000 / 10 and
2 GiB / 100,000 / 30, each with a v2 that differs only in its small top
layer. Per size, on fresh XFS loop filesystems: a plain and a unified host
(install, upgrade to v2, then `internals gc`, `status --json` and `internals
fsck images` on that host) against `podman pull` of v1 and of v2 over v1.
Then a host of the 50 MiB image through 20 upgrades (upgrade +
`internals finalize-staged` each): upgrade, gc, status and fsck after the
first and after the 20th.
"""

import json
import math
import os
import shutil
import statistics

from ..fs import make_fs
from ..ops import install_args, phase_durations
from ..results import guarded
from ..tools import podman_cmd, podman_env, unistore_env
from ..util import WORK, Failed, log, run, sync_fs, timed

# (label, MiB of file content, files, content layers)
ALL_SIZES = [("50 MiB", 50, 2500, 3), ("500 MiB", 500, 25000, 10), ("2 GiB", 2048, 100000, 30)]
# UNISTORE_BENCH_SCALE=50,500 measures only those sizes (the smallest always
# runs: the growth is against it, and the upgraded host uses it).
_only = {s.strip() for s in os.environ.get("UNISTORE_BENCH_SCALE", "").split(",") if s.strip()}
SIZES = [s for i, s in enumerate(ALL_SIZES) if not _only or i == 0 or str(s[1]) in _only]
UPGRADES = 20
# The upgraded host is checked after these upgrades: after the first nothing
# has dropped out yet (v1 is the rollback); from the third on every upgrade
# and gc removes the deployment that dropped out at the finalize before.
CHECKPOINTS = (1, 3, UPGRADES)
# Bump when unistore-fixture's scale-image writes different images for the
# same options: the cache is keyed by this and the options.
FORMAT = "g1"
STATUS_REPS = 3


def image_dir(mib, files, layers, versions):
    return WORK / "cache" / f"scale-img-{FORMAT}-{files}f-{layers}l-{mib}m-{versions}v"


def scale_image(ctx, mib, files, layers, versions):
    """The OCI layout of one scale image (tags v1 .. v{versions}), generated
    once and reused by later runs; returns (path, summary)."""
    d = image_dir(mib, files, layers, versions)
    meta = d.parent / (d.name + ".json")
    if not (d.is_dir() and meta.exists()):
        tmp = d.parent / (d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        d.parent.mkdir(parents=True, exist_ok=True)
        log(f"scale: generating {d.name} (unistore-fixture scale-image; cached for later runs)")
        p = run([ctx.fixture, "scale-image", "--out", tmp, "--files", files, "--layers", layers, "--mib", mib,
                 "--versions", versions])
        meta.write_text(p.stdout)
        shutil.rmtree(d, ignore_errors=True)
        os.rename(tmp, d)
    summary = json.loads(meta.read_text())
    idx = json.loads((d / "index.json").read_text())
    m = next(x for x in idx["manifests"] if x.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v1")
    hexd = m["digest"].split(":", 1)[1]
    manifest = json.loads((d / "blobs" / "sha256" / hexd).read_text())
    summary["compressed_bytes"] = sum(x["size"] for x in manifest["layers"])
    return d, summary


def prepare(ctx):
    """Generates (or reuses) the images and pushes them: `bench/scale-<mib>`
    with tags v1 .. vN; `:latest` is moved by the measurements."""
    if getattr(ctx, "scale", None) is not None:
        return ctx.scale
    ctx.scale = {}
    for label, mib, files, layers in SIZES:
        versions = UPGRADES + 1 if mib == SIZES[0][1] else 2
        d, summary = scale_image(ctx, mib, files, layers, versions)
        name = f"bench/scale-{mib}"
        log(f"scale: pushing {label} ({summary['files']} files, {summary['compressed_bytes'] / 1024**2:.0f} MiB compressed) to the registry")
        for k in range(1, versions + 1):
            ctx.reg.push(d, f"v{k}", f"{name}:v{k}")
        ctx.scale[mib] = {"label": label, "mib": mib, "dir": d, "name": name, "summary": summary, "versions": versions}
    return ctx.scale


def retag(ctx, img, version):
    """Points `<name>:latest` at v<version> (blobs are there already)."""
    return ctx.reg.push(img["dir"], f"v{version}", f"{img['name']}:latest")


def fs_gib(mib):
    # An install or podman pull of the image, its upgrade, a unified host's
    # second store (reflinked), with room to spare; sparse, so only what is
    # written takes space.
    return max(8, math.ceil(3 * mib / 1024) + 4)


def settle(fs):
    sync_fs(fs.mnt)
    return fs.settle()


def host_checks(ctx, res, run_no, fs, prefix):
    """gc, status --json (median of STATUS_REPS) and fsck images on a host."""
    env = unistore_env(ctx)
    u = [ctx.unistore, "--sysroot", fs.mnt]
    r = timed(u + ["internals", "gc"], env=env, sync_path=fs.mnt, label="internals gc")
    res.add("scale", f"{prefix}gc", run_no, **r)
    walls = []
    for _ in range(STATUS_REPS):
        r = timed(u + ["status", "--json"], env=env, label="status --json")
        walls.append(r["wall"])
        res.add("scale", f"{prefix}status --json", run_no, **r)
    # fsck exits 1 when it finds problems: its time counts all the same.
    r = timed(u + ["internals", "fsck", "images"], env=env, label="internals fsck images", check=False)
    out = r["stdout"].strip().splitlines()
    r["fsck_summary"] = out[-1] if out else ""
    r["fsck_fail_lines"] = [line for line in out if line.startswith("[FAIL]")][:10]
    res.add("scale", f"{prefix}fsck images", run_no, **r)
    log(f"  scale   {prefix}gc {res.values('scale', prefix + 'gc', 'wall')[-1]:.2f} s, status --json "
        f"{statistics.median(walls):.3f} s, fsck images {r['wall']:.2f} s (exit {r['rc']})")


def unistore_host(ctx, res, run_no, img, unified):
    mib, label = img["mib"], img["label"]
    kind = "unified" if unified else "plain"
    env = unistore_env(ctx)
    src = retag(ctx, img, 1)
    with make_fs(ctx, "xfs", f"scale-{kind}", fs_gib(mib)) as fs:
        before = fs.used()
        r = timed(install_args(ctx, src, fs.mnt, "enabled" if unified else None), env=env, sync_path=fs.mnt,
                  label=f"unistore install ({kind})")
        r["delta"] = settle(fs) - before
        r["phases"] = phase_durations(r["lines"], r["wall"])
        rec = res.add("scale", f"install-{kind}@{label}", run_no, **r)
        log(f"  scale   {label} install ({kind}) {rec['wall_sync']:7.2f} s  rss {(rec['rss_main_kib'] or 0) / 1024:6.1f}/"
            f"{(rec['rss_kib'] or 0) / 1024:6.1f} MiB  disk {rec['delta'] / 1024**2:7.1f} MiB")
        retag(ctx, img, 2)
        mark = ctx.reg.mark()
        r = timed([ctx.unistore, "-v", "--sysroot", fs.mnt, "upgrade"], env=env, sync_path=fs.mnt,
                  label=f"unistore upgrade ({kind})")
        r.update(ctx.reg.served_since(mark))
        r["phases"] = phase_durations(r["lines"], r["wall"])
        st = json.loads(run([ctx.unistore, "--sysroot", fs.mnt, "status", "--json"], env=env).stdout)
        if not (st.get("status") or {}).get("staged"):
            raise Failed("unistore upgrade staged nothing")
        rec = res.add("scale", f"upgrade-{kind}@{label}", run_no, **r)
        log(f"  scale   {label} upgrade ({kind}) {rec['wall_sync']:7.2f} s  fetched {rec['bytes'] / 1024**2:6.2f} MiB  "
            f"rss {(rec['rss_main_kib'] or 0) / 1024:6.1f} MiB")
        settle(fs)
        host_checks(ctx, res, run_no, fs, f"{kind}@{label} ")


def podman_pulls(ctx, res, run_no, img):
    mib, label = img["mib"], img["label"]
    runroot = ctx.rundir / "podrun-scale"
    try:
        src = retag(ctx, img, 1)
        with make_fs(ctx, "xfs", "scale-podman", fs_gib(mib)) as fs:
            root = fs.mnt / "podman"
            before = fs.used()
            r = timed(podman_cmd(ctx, root, runroot, "pull", "-q", src), env=podman_env(ctx), sync_path=fs.mnt,
                      label="podman pull")
            r["delta"] = settle(fs) - before
            rec = res.add("scale", f"podman-pull@{label}", run_no, **r)
            log(f"  scale   {label} podman pull {rec['wall_sync']:7.2f} s  rss {(rec['rss_kib'] or 0) / 1024:6.1f} MiB")
            retag(ctx, img, 2)
            r = timed(podman_cmd(ctx, root, runroot, "pull", "-q", src), env=podman_env(ctx), sync_path=fs.mnt,
                      label="podman pull v2 over v1")
            rec = res.add("scale", f"podman-upgrade@{label}", run_no, **r)
            log(f"  scale   {label} podman pull v2 over v1 {rec['wall_sync']:7.2f} s")
    finally:
        shutil.rmtree(runroot, ignore_errors=True)


def many_upgrades(ctx, res, run_no, img):
    """A host of the small image through UPGRADES upgrades, each one made the
    next boot (`internals finalize-staged`): the checks after the first and
    after the last."""
    unified = "enabled" if ctx.feats["unified"] else None
    env = unistore_env(ctx)
    src = retag(ctx, img, 1)
    with make_fs(ctx, "xfs", "scale-upgrades", 8) as fs:
        u = [ctx.unistore, "--sysroot", fs.mnt]
        timed(install_args(ctx, src, fs.mnt, unified), env=env, sync_path=fs.mnt, label="unistore install")
        for n in range(1, UPGRADES + 1):
            retag(ctx, img, n + 1)
            r = timed(u + ["-v", "upgrade"], env=env, sync_path=fs.mnt, label=f"upgrade {n}")
            res.add("scale", f"upgrades: upgrade #{n}", run_no, **r)
            if n in CHECKPOINTS:
                res.add("scale", f"upgrades: upgrade@{n}", run_no, **r)
            timed(u + ["internals", "finalize-staged"], env=env, sync_path=fs.mnt, label="finalize-staged")
            if n in CHECKPOINTS:
                settle(fs)
                host_checks(ctx, res, run_no, fs, f"upgrades@{n} ")
        st = json.loads(run(u + ["status", "--json"], env=env).stdout)["status"]
        booted = find_key(st.get("booted"), "version")
        res.add("scale", "upgrades: host", run_no, unified=bool(unified), booted_version=booted,
                deployments=sum(1 for k in ("staged", "booted", "rollback") if st.get(k)) + len(st.get("otherDeployments") or []))
        log(f"  scale   after {UPGRADES} upgrades: upgrade {res.values('scale', f'upgrades: upgrade@{UPGRADES}', 'wall')[-1]:.2f} s "
            f"(first {res.values('scale', 'upgrades: upgrade@1', 'wall')[-1]:.2f} s)")


def find_key(obj, key):
    """The first value of `key` anywhere in a JSON value (depth first)."""
    if isinstance(obj, dict):
        if key in obj and not isinstance(obj[key], (dict, list)):
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def bench_scale(ctx, res, run_no):
    try:
        imgs = prepare(ctx)
    except Failed as e:
        res.skip("scale", "images", f"failed: {str(e).strip().splitlines()[0][:300]}")
        return
    variants = [False] + ([True] if ctx.feats["unified"] else [])
    if not ctx.feats["unified"]:
        res.skip("scale", "unified", "this unistore has no `install to-filesystem --unified`")
    for _label, mib, _files, _layers in SIZES:
        img = imgs[mib]
        for unified in variants:
            kind = "unified" if unified else "plain"
            guarded(res, "scale", f"install-{kind}@{img['label']}", lambda img=img, unified=unified: unistore_host(ctx, res, run_no, img, unified))
        guarded(res, "scale", f"podman-pull@{img['label']}", lambda img=img: podman_pulls(ctx, res, run_no, img))
    guarded(res, "scale", f"upgrades: upgrade@{UPGRADES}", lambda: many_upgrades(ctx, res, run_no, imgs[SIZES[0][1]]))
