"""The partial section (issue 26): zstd:chunked upgrades.

The sample's tree packed as v1, and as v2 with 1% of the files of its large
(/usr) layer changed (every 100th file, a line appended, its mtime kept),
both by `unistore-fixture from-rootfs` and pushed as zstd:chunked by skopeo.
Each tool gets v1, then v2; measured: the second step's wall time and the
bytes the registry sent for blobs (its access log)."""

import json
import os
import shutil
import subprocess
import urllib.request

from ..fs import make_fs
from ..ops import install_args
from ..tools import podman_cmd, podman_env, unistore_env
from ..results import guarded
from ..util import Failed, MIB, WORK, log, run, timed

STORAGE_CONF = """[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
[storage.options]
pull_options = {enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}
"""

TOOLS = ["unistore", "unistore-unified", "unistore-whole", "podman", "podman-partial"]


def prepare(ctx):
    """v1 and v2 in a cached layout, pushed as zstd:chunked; facts of the
    large layer."""
    if getattr(ctx, "partial", None):
        return ctx.partial
    digest = json.loads((ctx.oci / "index.json").read_text())["manifests"][0]["digest"][7:19]
    cache = WORK / "cache" / f"partial-{digest}"
    oci = cache / "oci"
    if not (cache / "done").exists():
        shutil.rmtree(cache, ignore_errors=True)
        rootfs = cache / "rootfs"
        rootfs.mkdir(parents=True)
        log("partial: unpacking the sample's tree")
        run(["skopeo", "copy", "--quiet", f"oci:{ctx.oci}:latest", f"dir:{cache / 'dir'}"])
        m = json.loads((cache / "dir" / "manifest.json").read_text())
        for layer in m["layers"]:
            run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                 cache / "dir" / layer["digest"][7:], "-C", rootfs])
        run([ctx.fixture, "from-rootfs", rootfs, "--out", oci, "--tag", "v1", "--version", "1.0"])
        files = sorted(str(p) for p in (rootfs / "usr").rglob("*") if p.is_file() and not p.is_symlink())
        changed = files[50::100]
        for f in changed:
            st = os.stat(f)
            with open(f, "ab") as fh:
                fh.write(f"unistore partial bench v2 {f}\n".encode())
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        (cache / "changed.json").write_text(json.dumps([os.path.relpath(f, rootfs) for f in changed]))
        run([ctx.fixture, "from-rootfs", rootfs, "--out", oci, "--tag", "v2", "--version", "2.0"])
        shutil.rmtree(rootfs)
        shutil.rmtree(cache / "dir")
        (cache / "done").write_text("")
    changed = set(json.loads((cache / "changed.json").read_text()))
    refs = {}
    for tag in ("v1", "v2"):
        log(f"partial: pushing {tag} as zstd:chunked")
        dest = f"{ctx.reg.addr}/bench/partial:{tag}"
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-compress",
             "--dest-compress-format", "zstd:chunked", f"oci:{oci}:{tag}", f"docker://{dest}"])
        refs[tag] = f"docker://{dest}"
    req = urllib.request.Request(f"http://{ctx.reg.addr}/v2/bench/partial/manifests/v2",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    man = json.loads(urllib.request.urlopen(req).read())
    big = max(man["layers"], key=lambda l: l["size"])
    ann = big["annotations"]
    pos = next(v for k, v in ann.items() if k.endswith("zstd-chunked.manifest-position"))
    off, length, _, _ = (int(x) for x in pos.split(":"))
    req = urllib.request.Request(f"http://{ctx.reg.addr}/v2/bench/partial/blobs/{big['digest']}",
                                 headers={"Range": f"bytes={off}-{off + length - 1}"})
    toc = json.loads(subprocess.run(["zstd", "-dc"], input=urllib.request.urlopen(req).read(),
                                    stdout=subprocess.PIPE, check=True).stdout)
    regs = [e for e in toc["entries"] if e["type"] == "reg" and e.get("size", 0) > 0]
    ch = [e for e in regs if e["name"] in changed]
    ctx.partial = {
        "v1": refs["v1"], "v2": refs["v2"], "layer_size": big["size"], "toc": length,
        "files": len(regs), "changed_files": len(ch),
        "changed_compressed": sum(e["endOffset"] - e["offset"] for e in ch),
        "changed_bytes": sum(e["size"] for e in ch),
        "image_bytes": sum(l["size"] for l in man["layers"]),
    }
    log(f"partial: {ctx.partial}")
    return ctx.partial


def bench_partial(ctx, res, run_no):
    p = prepare(ctx)
    k = run_no % len(TOOLS)
    runroot = ctx.rundir / "podrun"
    for tool in TOOLS[k:] + TOOLS[:k]:
        guarded(res, "partial", tool, lambda tool=tool: one(ctx, res, run_no, p, tool, runroot))
        shutil.rmtree(runroot, ignore_errors=True)
    if not res.values("partial", "unistore", "wall"):
        raise Failed("the partial section measured nothing")


def one(ctx, res, run_no, p, tool, runroot):
    with make_fs(ctx, "xfs", f"partial-{tool}") as fs:
        if tool.startswith("unistore"):
            env = unistore_env(ctx)
            if tool == "unistore-whole":
                env["UNISTORE_WHOLE_LAYERS"] = "1"
            run(install_args(ctx, p["v1"], fs.mnt, "enabled" if tool == "unistore-unified" else None), env=env)
            cmd = [ctx.unistore, "-v", "--sysroot", fs.mnt, "switch", p["v2"]]
        else:
            env = podman_env(ctx)
            if tool == "podman-partial":
                conf = ctx.rundir / "storage-partial.conf"
                conf.write_text(STORAGE_CONF)
                env["CONTAINERS_STORAGE_CONF"] = str(conf)
            run(podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", p["v1"]), env=env)
            cmd = podman_cmd(ctx, fs.mnt / "podman", runroot, "pull", "-q", p["v2"])
        mark = ctx.reg.mark()
        r = timed(cmd, env=env, sync_path=fs.mnt, label=f"{tool} v1 -> v2")
        r.update(ctx.reg.served_since(mark))
        r["said"] = [line for _, line in r.get("lines", []) if "zstd:chunked" in line][:2]
        r.pop("lines", None)
        rec = res.add("partial", tool, run_no, **r)
        log(f"  partial {tool:16} {rec['wall']:6.2f} s  fetched {rec['blob_bytes'] / MIB:8.3f} MiB in {rec['blob_gets']} GETs")
