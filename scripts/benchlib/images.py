"""OCI layout helpers (blobs, tags, append_layer, image_facts) and the images a run uses."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from .util import Failed, MIB, REPO, WORK, log, run


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def blob(oci, digest):
    algo, hexd = digest.split(":", 1)
    return Path(oci) / "blobs" / algo / hexd


def read_json_blob(oci, digest):
    return json.loads(blob(oci, digest).read_bytes())


def index_tags(oci):
    idx = json.loads((Path(oci) / "index.json").read_text())
    return {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in idx["manifests"]}


def manifest_of(oci, tag):
    desc = index_tags(oci)[tag]
    return desc, read_json_blob(oci, desc["digest"])


def write_blob(oci, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    p = blob(oci, d)
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_bytes(data)
    return d


def link_layout(src, dst, tags):
    """A new OCI layout at dst holding `tags` of src, blobs hard-linked."""
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "blobs" / "sha256").mkdir(parents=True)
    for p in (Path(src) / "blobs" / "sha256").iterdir():
        q = dst / "blobs" / "sha256" / p.name
        try:
            os.link(p, q)
        except OSError:
            shutil.copy2(p, q)
    (dst / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    src_tags = index_tags(src)
    idx = {"schemaVersion": 2, "manifests": [src_tags[t] for t in tags]}
    (dst / "index.json").write_text(json.dumps(idx))


def append_layer(oci, from_tag, new_tag, version, files):
    """Derives `new_tag` from `from_tag` in the layout `oci`: one more gzip
    layer holding `files` ({path: bytes}), the version label set to `version`."""
    desc, manifest = manifest_of(oci, from_tag)
    config = read_json_blob(oci, manifest["config"]["digest"])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = set()
        for path in files:
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = 0
            tf.addfile(ti)
        for path, data in sorted(files.items()):
            ti = tarfile.TarInfo(path.strip("/"))
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    diff = raw.getvalue()
    gz = gzip.compress(diff, mtime=0)
    layer_digest = write_blob(oci, gz)
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(diff).hexdigest())
    if "history" in config:
        config["history"].append({"created_by": "scripts/bench: " + new_tag})
    cfg = config.setdefault("config", {})
    cfg.setdefault("Labels", {})
    cfg["Labels"] = dict(cfg["Labels"] or {})
    cfg["Labels"]["org.opencontainers.image.version"] = version
    cfg_bytes = json.dumps(config).encode()
    cfg_digest = write_blob(oci, cfg_bytes)
    manifest = dict(manifest)
    manifest["config"] = dict(manifest["config"], digest=cfg_digest, size=len(cfg_bytes))
    manifest["layers"] = list(manifest["layers"]) + [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(gz)}
    ]
    m_bytes = json.dumps(manifest).encode()
    m_digest = write_blob(oci, m_bytes)
    idx_path = Path(oci) / "index.json"
    idx = json.loads(idx_path.read_text())
    idx["manifests"] = [m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != new_tag]
    new_desc = dict(desc, digest=m_digest, size=len(m_bytes), annotations={"org.opencontainers.image.ref.name": new_tag})
    idx["manifests"].append(new_desc)
    idx_path.write_text(json.dumps(idx))


def image_facts(oci, tag):
    """Sizes of an image: compressed layers, and the merged tree's regular
    files (every path; hard links once; identical contents once)."""
    desc, manifest = manifest_of(oci, tag)
    cache = WORK / "cache" / f"facts-{desc['digest'].replace(':', '-')}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    entries = {}  # path -> ("file", size, inode key, content hash) | ("other",)
    inode_seq = [0]
    for layer in manifest["layers"]:
        layer_paths = {}
        with tarfile.open(blob(oci, layer["digest"]), mode="r|*") as tf:
            for ti in tf:
                name = "/" + ti.name.lstrip("./").rstrip("/") if ti.name not in (".", "./") else "/"
                parent, _, base = name.rpartition("/")
                parent = parent or "/"
                if base == ".wh..wh..opq":
                    pre = parent.rstrip("/") + "/"
                    for p in [p for p in entries if p.startswith(pre) and p not in layer_paths]:
                        del entries[p]
                    continue
                if base.startswith(".wh."):
                    gone = parent.rstrip("/") + "/" + base[4:]
                    for p in [p for p in entries if p == gone or p.startswith(gone + "/")]:
                        del entries[p]
                    continue
                if name in entries and entries[name][0] == "dir" and not ti.isdir():
                    for p in [p for p in entries if p.startswith(name + "/")]:
                        del entries[p]
                if ti.isreg():
                    h = hashlib.sha256()
                    f = tf.extractfile(ti)
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                    inode_seq[0] += 1
                    entries[name] = ("file", ti.size, inode_seq[0], h.hexdigest())
                elif ti.islnk():
                    target = "/" + ti.linkname.lstrip("./")
                    t = entries.get(target)
                    entries[name] = t if t and t[0] == "file" else ("other",)
                elif ti.isdir():
                    entries[name] = ("dir",)
                else:
                    entries[name] = ("other",)
                layer_paths[name] = True
    files = [e for e in entries.values() if e[0] == "file"]
    inodes = {e[2]: e[1] for e in files}
    contents = {e[3]: e[1] for e in files}
    facts = {
        "manifest": desc["digest"],
        "layers": len(manifest["layers"]),
        "compressed_bytes": sum(layer["size"] for layer in manifest["layers"]),
        "entries": len(entries),
        "files": len(files),
        "file_bytes": sum(e[1] for e in files),
        "inode_bytes": sum(inodes.values()),
        "unique_content_bytes": sum(contents.values()),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(facts))
    return facts


def prepare_images(ctx, synthetic):
    images = ctx.rundir / "images"
    images.mkdir()
    if synthetic:
        src = images / "synthetic-src"
        log("generating the synthetic image (unistore-fixture test-image --payload-mib 200), tags latest and v2")
        run([ctx.fixture, "test-image", "--out", src, "--tag", "latest", "--version", "1.0", "--variant", "1", "--payload-mib", "200"])
        run([ctx.fixture, "test-image", "--out", src, "--tag", "v2", "--version", "2.0", "--variant", "2", "--payload-mib", "200"])
        ctx.image_desc = "Synthetic image: `unistore-fixture test-image --payload-mib 200` (multi-layer, a generated kernel, 200 MiB of pseudo-random payload in 8 MiB files)"
        ctx.image_short = "synthetic image (test-image --payload-mib 200)"
    else:
        env = dict(os.environ, UNISTORE_FIXTURE=ctx.fixture)
        env.pop("UNISTORE_SAMPLE", None)
        log("building or reusing the sample image (scripts/build-sample-image)")
        p = subprocess.run([str(REPO / "scripts" / "build-sample-image")], env=env, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise Failed("scripts/build-sample-image failed")
        ref = p.stdout.strip().splitlines()[-1]
        src = Path(ref.split(":", 2)[1])
        source = src.parent / "source"
        what = source.read_text().strip() if source.exists() else "unknown"
        ctx.image_desc = f"Sample image from `scripts/build-sample-image`: {what}"
        ctx.image_short = f"sample image: {what}"
    ctx.oci = images / "oci"
    link_layout(src, ctx.oci, ["latest", "v2"])
    append_layer(ctx.oci, "v2", "v3", "3.0", {"etc/unistore-bench/release": b"v3\n"})
    _, m1 = manifest_of(ctx.oci, "latest")
    _, m2 = manifest_of(ctx.oci, "v2")
    d1 = [x["digest"] for x in m1["layers"]]
    idx = [i for i, x in enumerate(m2["layers"]) if x["digest"] in d1]
    ctx.shared = {
        "layers": len(m2["layers"]),
        "shared": len(idx),
        "bytes": sum(x["size"] for x in m2["layers"]),
        "shared_bytes": sum(m2["layers"][i]["size"] for i in idx),
        "which": "layer" + ("s " if len(idx) != 1 else " ") + ", ".join(str(i + 1) for i in idx) + " from the bottom",
    }
    log("computing the unpacked size of the image")
    ctx.facts = image_facts(ctx.oci, "latest")
    log(f"image: {ctx.facts['files']} files, {ctx.facts['file_bytes'] / MIB:.1f} MiB unpacked, {ctx.facts['compressed_bytes'] / MIB:.1f} MiB compressed")
    ctx.refs = {t: ctx.reg.push(ctx.oci, t, f"bench/image:{t}") for t in ("latest", "v2", "v3")}
    ctx.mem_refs = {}
    if "memory" in ctx.sections:
        for mib in ctx.mem_sizes:
            d = images / f"mem-{mib}"
            log(f"generating the {mib} MiB payload image for the memory check")
            run([ctx.fixture, "test-image", "--out", d, "--tag", "latest", "--payload-mib", str(mib)])
            ctx.mem_refs[mib] = ctx.reg.push(d, "latest", f"bench/mem-{mib}:latest")
            shutil.rmtree(d)
