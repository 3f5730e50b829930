#!/usr/bin/env python3
"""Append one gzip tar layer (made from a directory) to an image in an OCI layout dir.
usage: add_layer.py OCIDIR SRCTAG DSTTAG LAYERDIR [label=value ...]
Entries are taken from LAYERDIR as-is (names relative to it), so whiteouts are
plain files named .wh.NAME."""
import gzip, hashlib, io, json, os, sys, tarfile, time

oci, srctag, dsttag, layerdir = sys.argv[1:5]
labels = dict(a.split("=", 1) for a in sys.argv[5:])

def blob(d):
    return os.path.join(oci, "blobs", *d.split(":"))

def put(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob(d), "wb") as f:
        f.write(data)
    return d

index = json.load(open(os.path.join(oci, "index.json")))
desc = next(m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == srctag)
manifest = json.load(open(blob(desc["digest"])))
config = json.load(open(blob(manifest["config"]["digest"])))

raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for root, dirs, files in os.walk(layerdir):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(root, name)
            arc = os.path.relpath(full, layerdir)
            ti = t.gettarinfo(full, arc)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = 1
            if ti.isreg():
                with open(full, "rb") as f:
                    t.addfile(ti, f)
            else:
                t.addfile(ti)
raw = raw.getvalue()
diffid = "sha256:" + hashlib.sha256(raw).hexdigest()
gz = gzip.compress(raw, mtime=0)
ld = put(gz)

manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                           "digest": ld, "size": len(gz)})
config["rootfs"]["diff_ids"].append(diffid)
config.setdefault("history", []).append({"created": "2026-01-01T00:00:00Z",
                                         "created_by": "add_layer.py " + layerdir})
config.setdefault("config", {}).setdefault("Labels", {}).update(labels)
cb = json.dumps(config).encode()
manifest["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": put(cb), "size": len(cb)}
manifest.setdefault("annotations", {}).update(labels)
mb = json.dumps(manifest).encode()
md = put(mb)
index["manifests"] = [m for m in index["manifests"]
                      if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != dsttag]
index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": md, "size": len(mb),
                           "annotations": {"org.opencontainers.image.ref.name": dsttag}})
json.dump(index, open(os.path.join(oci, "index.json"), "w"))
print(json.dumps({"manifest": md, "layer": ld, "diffid": diffid}))
