"""docs/benchmarks.md."""

import re
import statistics

from .fmt import fmt_mib, fmt_ratio, fmt_s, fmt_unit, md_table, rng_s, rstr
from .markdown_scale import scale_lines
from .ops import DU_PARTS, phase_table


TOOL_DESC = {
    "unistore": "`unistore install to-filesystem` (composefs repo + boot EROFS + deployment + kernel and initrd)",
    "unistore-unified": "`unistore install to-filesystem --unified enabled` (pull into composefs, then the host store written from it by reflinks, + deployment)",
    "unistore-unified-copy": "`unistore install to-filesystem --unified enabled-with-copy` (ext4 has no reflinks: hard links or copies)",
    "podman": "`podman --root R pull` (containers-storage, overlay)",
    "skopeo-oci": "`skopeo copy docker://… oci:DIR` (compressed blobs only, nothing unpacked)",
    "cfsctl": "`cfsctl oci pull --bootable` (composefs-rs 0.9.4: composefs repo + boot EROFS)",
}


def write_markdown(ctx, res, rows, info, path, svg_name, old_notes):
    M = res.med
    L = []
    L.append("# Benchmarks")
    L.append("")
    L.append(f"Written by `scripts/bench` ({ctx.args_line}) on {info['date']}. Every figure is the median of "
             f"{ctx.runs} runs unless said otherwise (min – max in the detailed tables); every measured operation ran on "
             "a freshly made loop filesystem; the registry is a local `docker-registry` on 127.0.0.1, so network "
             "time is nearly nil and the page cache holds the registry's blobs. \"incl. sync\" adds a `sync -f` of the "
             "target filesystem after the command (podman, skopeo and cfsctl leave dirty pages behind; unistore syncs "
             "before it returns). Disk figures are statvfs deltas after sync, unmount and mount (XFS keeps "
             "speculative preallocation past the end of new files for minutes otherwise).")
    L.append("")
    L.append(f"![time and disk](./{svg_name})")
    L.append("")
    L.append("## Machine")
    L.append("")
    L.append(md_table(["", ""], [[k, v] for k, v in info.items()]))
    L.append("")
    f = ctx.facts
    L.append("## Image")
    L.append("")
    sh = ctx.shared
    L.append(f"{ctx.image_desc}. `v2` shares {sh['shared']} of its {sh['layers']} layers with `latest` (v1): "
             f"{fmt_mib(sh['shared_bytes'])} of {fmt_mib(sh['bytes'])} compressed ({sh['which']}); `v3` is `v2` plus "
             "one small layer (added by the harness).")
    L.append("")
    L.append(md_table(["", ""], [
        ["layers", f["layers"]],
        ["compressed (sum of layer blobs)", fmt_mib(f["compressed_bytes"])],
        ["entries in the merged tree", f["entries"]],
        ["regular files", f["files"]],
        ["**unpacked size** (sum of regular file sizes, every path)", fmt_mib(f["file_bytes"])],
        ["**unpacked on XFS** (`cp -a --reflink=never` of the merged tree onto a fresh XFS, statvfs delta)",
         fmt_mib(M("disk", "unpacked@xfs", "delta"))],
        ["hard links counted once", fmt_mib(f["inode_bytes"])],
        ["identical contents counted once (what a content-addressed store needs)", fmt_mib(f["unique_content_bytes"])],
    ]))
    L.append("")
    L.append("## Headline: unistore / peer")
    L.append("")
    L.append("Below 1 means unistore is faster or smaller.")
    L.append("")
    L.append(md_table(["comparison", "unistore", "peer", "ratio"],
                      [[r["label"], fmt_unit(r["unistore"], r["unit"]), fmt_unit(r["peer"], r["unit"]), rstr(r["ratio"])] for r in rows]))
    L.append("")

    # 1. install
    L.append("## 1. Install vs pulls of the same image from the same registry")
    L.append("")
    ops = sorted({r["op"] for r in res.records if r["section"] == "install"}, key=lambda o: (o.split("@")[1] != "xfs", o))
    trows = []
    for op in ops:
        tool, kind = op.split("@")
        trows.append([TOOL_DESC.get(tool, tool), kind,
                      fmt_s(M("install", op, "wall")), rng_s(res, "install", op, "wall", fmt_s),
                      fmt_s(M("install", op, "wall_sync")), fmt_mib(M("install", op, "delta")),
                      fmt_mib(M("install", op, "delta_raw")),
                      fmt_unit(M("install", op, "rss_main_kib"), "KiB"), fmt_unit(M("install", op, "rss_kib"), "KiB")])
    L.append(md_table(["what", "fs", "time", "min – max", "time incl. sync", "disk (settled)", "disk (right after, before remount)",
                       "peak RSS (the command's process)", "peak RSS (largest process of the tree)"], trows))
    L.append("")
    prow = phase_table(res, "install", [op for op in ops if op.startswith("unistore")])
    if prow:
        L.append("Phases of unistore's install (medians; a phase runs from its progress line on stderr to the next one):")
        L.append("")
        L.append(md_table(["install", "phases"], prow))
        L.append("")

    # 2. import
    L.append("## 2. Import into the composefs repository vs `cfsctl oci pull`")
    L.append("")
    imp = M("install", "unistore@xfs", "import_s")
    cfs = M("install", "cfsctl@xfs", "wall_sync")
    if cfs is None:
        L.append(f"not measured: {res.not_measured.get(('install', 'cfsctl@xfs'), 'cfsctl did not run')}")
    else:
        L.append(md_table(["what", "time", "disk"], [
            ["unistore: the pull phase of `install` (process start to the `Deploying` line: repo init, pull, boot EROFS, tag, sync)", fmt_s(imp), "–"],
            ["unistore: the whole `install` (+ deployment: /etc, kernel and initrd written from the objects, boot entry)", fmt_s(M("install", "unistore@xfs", "wall_sync")), fmt_mib(M("install", "unistore@xfs", "delta"))],
            ["`cfsctl init --insecure` + `cfsctl oci pull --bootable` (+ sync)", fmt_s(cfs), fmt_mib(M("install", "cfsctl@xfs", "delta"))],
        ]))
        L.append("")
        L.append(f"Ratio of the pull phases: {rstr(fmt_ratio(imp, cfs))}; both use composefs-oci 0.9.4 underneath.")
    L.append("")

    # 3. disk
    L.append("## 3. Disk: physical bytes of all stores")
    L.append("")
    on_xfs = M("disk", "unpacked@xfs", "delta")
    drows = [["the image unpacked (sum of regular file sizes)", fmt_mib(f["file_bytes"]), "1.00×",
              rstr(fmt_ratio(f["file_bytes"], on_xfs))],
             ["the image unpacked on XFS (cp -a of the merged tree)", fmt_mib(on_xfs),
              rstr(fmt_ratio(on_xfs, f["file_bytes"])), "1.00×" if on_xfs is not None else "–"]]

    def drow(label, v):
        drows.append([label, fmt_mib(v), rstr(fmt_ratio(v, f["file_bytes"])), rstr(fmt_ratio(v, on_xfs))])

    drow("plain install (composefs only, with the deployment's /etc and the kernel and initrd)", M("install", "unistore@xfs", "delta"))
    drow("`podman pull` alone", M("install", "podman@xfs", "delta"))
    drow("separate copies: plain install + `podman pull` on the same XFS", M("disk", "separate@xfs", "delta"))
    if ctx.feats["unified"]:
        drow("unified install (`--unified enabled`: composefs + host containers-storage, reflinked)", M("install", "unistore-unified@xfs", "delta"))
        drow("unified install with copies on ext4 (`enabled-with-copy`)", M("install", "unistore-unified-copy@ext4", "delta"))
    if ctx.feats["set_unified"]:
        drow("plain install then `image set-unified full`", M("disk", "set-unified@xfs", "delta"))
    drow("`cfsctl oci pull --bootable`", M("install", "cfsctl@xfs", "delta"))
    drow("`skopeo copy` to oci: (compressed)", M("install", "skopeo-oci@xfs", "delta"))
    L.append(md_table(["what (XFS unless said)", "disk", "vs unpacked (sum of sizes)", "vs unpacked on XFS"], drows))
    L.append("")
    brows = []
    for part in DU_PARTS:
        vals = []
        for op in ("unistore@xfs", "unistore-unified@xfs"):
            v = [r["du"][part] for r in res.records if r["section"] == "install" and r["op"] == op and part in (r.get("du") or {})]
            vals.append(fmt_mib(statistics.median(v)) if v else "–")
        brows.append([f"`{part}`"] + vals)
    L.append("Where an install's bytes are (`du -s`; extents shared by reflinks count in each place):")
    L.append("")
    L.append(md_table(["path", "plain install", "unified install"], brows))
    L.append("")
    if not ctx.feats["unified"]:
        L.append("unified install: not measured: this unistore has no `install to-filesystem --unified`.")
        L.append("")

    # 4. repair
    L.append("## 4. Repair of the host containers-storage")
    L.append("")
    if ("repair", "fsck --repair") in res.not_measured and not res.values("repair", "fsck --repair", "wall"):
        L.append(f"not measured: {res.not_measured[('repair', 'fsck --repair')]}")
    else:
        L.append("A unified host whose image was removed from the host containers-storage (`podman rmi -f`), then:")
        L.append("")
        L.append(md_table(["what", "time", "time incl. sync", "min – max", "written", "peak RSS"], [
            [label, fmt_s(M("repair", op, "wall")), fmt_s(M("repair", op, "wall_sync")), rng_s(res, "repair", op, "wall", fmt_s),
             fmt_mib(M("repair", op, "delta")), fmt_unit(M("repair", op, "rss_kib"), "KiB")]
            for op, label in [("fsck --repair", "`unistore internals fsck images --repair` (native writer)"),
                              ("oci+skopeo", "`skopeo copy oci:LAYOUT containers-storage:…` (the layout already exists: the export from composefs is not counted)")]
        ]))
        if ctx.feats["set_unified"]:
            L.append("")
            L.append(f"For reference, `image set-unified full` on a plain host (the native writer, from composefs: "
                     f"no podman, no skopeo): {fmt_s(M('disk', 'set-unified@xfs', 'wall'))}.")
    L.append("")

    # 5. upgrade
    L.append(f"## 5. Upgrade v1 → v2 ({ctx.shared['shared']} of {ctx.shared['layers']} layers shared)")
    L.append("")
    L.append("Each tool first gets v1 under a tag; the tag is then moved to v2 and the same command runs again "
             "(unistore: `unistore upgrade`, which stages the deployment and runs the GC). Fetched = bytes the registry "
             "sent (its access log); written = statvfs delta.")
    L.append("")
    urows = []
    for tool in ["unistore", "unistore-unified", "podman", "cfsctl", "skopeo-oci"]:
        if not res.values("upgrade", tool, "wall"):
            why = res.not_measured.get(("upgrade", tool))
            if why:
                urows.append([tool, f"not measured: {why}", "", "", "", "", ""])
            continue
        urows.append([tool, fmt_s(M("upgrade", tool, "wall")), fmt_s(M("upgrade", tool, "wall_sync")),
                      rng_s(res, "upgrade", tool, "wall", fmt_s), fmt_mib(M("upgrade", tool, "bytes")),
                      fmt_mib(M("upgrade", tool, "delta")), fmt_unit(M("upgrade", tool, "rss_main_kib"), "KiB"),
                      fmt_unit(M("upgrade", tool, "rss_kib"), "KiB")])
    L.append(md_table(["tool", "time", "time incl. sync", "min – max", "fetched", "written", "peak RSS (process)", "peak RSS (tree)"], urows))
    L.append("")
    prow = phase_table(res, "upgrade", ["unistore", "unistore-unified"])
    if prow:
        L.append("Phases of `unistore upgrade` (medians):")
        L.append("")
        L.append(md_table(["upgrade", "phases"], prow))
        L.append("")
    sis = res.values("upgrade", "unistore-unified", "staged_in_store")
    if sis and not all(sis):
        L.append("**Unified host: the upgraded image did not reach the host containers-storage** (`unistore image list` "
                 "shows the staged image only in composefs), so the unified upgrade above did less work than a complete "
                 "one will: its time and bytes written are those of a plain upgrade.")
        L.append("")

    partial_section(ctx, res, L, M)

    # 6. lifecycle
    L.append("## 6. `status` and `fsck` on a host with three deployments")
    L.append("")
    dep = res.values("lifecycle", "deployments", "count")
    if not dep:
        L.append(f"not measured: {res.not_measured.get(('lifecycle', 'status'), 'the lifecycle did not run')}")
    else:
        uni = res.values("lifecycle", "deployments", "unified")
        L.append(f"Install v1{' (unified)' if uni and uni[0] else ''}, upgrade to v2, `internals finalize-staged`, "
                 f"`switch` to v3: staged v3, booted v2, rollback v1. Each read-only command ran 5 times per run.")
        L.append("")
        lrows = []
        for op in ["install", "upgrade", "finalize-staged", "switch", "status", "status --json", "internals fsck images"]:
            if not res.values("lifecycle", op, "wall"):
                if ("lifecycle", op) in res.not_measured:
                    lrows.append([f"`{op}`", f"not measured: {res.not_measured[('lifecycle', op)]}", "", ""])
                continue
            lrows.append([f"`{op}`", fmt_s(M("lifecycle", op, "wall")), rng_s(res, "lifecycle", op, "wall", fmt_s),
                          fmt_unit(M("lifecycle", op, "rss_main_kib"), "KiB"), fmt_unit(M("lifecycle", op, "rss_kib"), "KiB")])
        L.append(md_table(["command", "time", "min – max", "peak RSS (process)", "peak RSS (tree)"], lrows))
        summ = [r for r in res.records if r["section"] == "lifecycle" and r.get("fsck_summary") is not None]
        if summ:
            last = summ[-1]
            L.append("")
            L.append(f"What `internals fsck images` said (exit status {last['rc']}): `{last['fsck_summary']}`")
            for line in last.get("fsck_fail_lines") or []:
                L.append(f"- `{line}`")
    L.append("")

    # memory
    L.append("## 7. ostree hosts")
    L.append("")
    if not res.values("ostree", "unistore-ostree@xfs", "wall"):
        why = res.not_measured.get(("ostree", "unistore-ostree@xfs"), "the section did not run (`--only`)")
        L.append(f"not measured: {why}")
    else:
        L.append("`install to-filesystem --backend ostree` (pull into a staging composefs repository, one commit whose "
                 "content objects are reflinks of the staging objects, libostree deploy) against `podman pull` of the "
                 "same image and `ostree commit --tree=dir=` of the image's merged tree (mounted with `internals mount`) "
                 "into a fresh bare repository; each on a fresh XFS, disk after a remount:")
        L.append("")
        L.append(md_table(["what", "time", "time incl. sync", "min – max", "disk", "phases"], [
            [label, fmt_s(M("ostree", op, "wall")), fmt_s(M("ostree", op, "wall_sync")), rng_s(res, "ostree", op, "wall", fmt_s),
             fmt_mib(M("ostree", op, "delta")),
             ("pull " + fmt_s(M("ostree", op, "pull_s")) + ", commit " + fmt_s(M("ostree", op, "commit_s")) + ", deploy " + fmt_s(M("ostree", op, "deploy_s")))
             if M("ostree", op, "commit_s") is not None else ""]
            for op, label in [("unistore-ostree@xfs", "`unistore install --backend ostree`"),
                              ("podman@xfs", "`podman pull`"),
                              ("ostree-commit@xfs", "`ostree commit --tree=dir=` (tree already unpacked; not counted)")]
        ]))
        L.append("")
        L.append("Unified storage on ostree hosts (issue 11): `install --backend ostree --unified enabled` pulls into "
                 "the host's composefs repository and synthesizes the commit from it (content objects are reflinks of "
                 "the composefs objects, checksums cached by object id + metadata); a bound upgrade v1 -> v2 against "
                 "`podman pull` of v2 over v1; the three stores' disk against the image unpacked on XFS:")
        L.append("")
        rows = []
        if M("ostree", "unistore-ostree-unified@xfs", "wall") is not None:
            rows.append(["unified install: commit step (synthesis)", fmt_s(M("ostree", "unistore-ostree-unified@xfs", "commit_s")),
                         "`ostree commit --tree=dir=` " + fmt_s(M("ostree", "ostree-commit@xfs", "wall_sync")),
                         rstr(fmt_ratio(M("ostree", "unistore-ostree-unified@xfs", "commit_s"), M("ostree", "ostree-commit@xfs", "wall_sync")))])
            rows.append(["unified install: bytes the synthesis wrote (ostree repo's own blocks)",
                         fmt_mib(M("ostree", "unistore-ostree-unified@xfs", "synth_written")),
                         "`ostree commit` " + fmt_mib(M("ostree", "ostree-commit@xfs", "delta")),
                         rstr(fmt_ratio(M("ostree", "unistore-ostree-unified@xfs", "synth_written"), M("ostree", "ostree-commit@xfs", "delta")))])
            rows.append(["unified install: disk of the three stores", fmt_mib(M("ostree", "unistore-ostree-unified@xfs", "delta")),
                         "unpacked on XFS " + fmt_mib(M("disk", "unpacked@xfs", "delta")),
                         rstr(fmt_ratio(M("ostree", "unistore-ostree-unified@xfs", "delta"), M("disk", "unpacked@xfs", "delta")))])
        if M("ostree", "bound-upgrade@xfs", "wall") is not None:
            rows.append([f"bound upgrade v1 -> v2 (incl. sync; {M('ostree', 'bound-upgrade@xfs', 'files_read')} files read, "
                         f"{M('ostree', 'bound-upgrade@xfs', 'checksums_cached')} checksums from the cache)",
                         fmt_s(M("ostree", "bound-upgrade@xfs", "wall_sync")),
                         "`podman pull` v2 over v1 " + fmt_s(M("ostree", "podman-upgrade@xfs", "wall_sync")),
                         rstr(fmt_ratio(M("ostree", "bound-upgrade@xfs", "wall_sync"), M("ostree", "podman-upgrade@xfs", "wall_sync")))])
            if M("ostree", "bound-upgrade@xfs", "deploy_s") is not None:
                rows.append([f"bound upgrade phases: check {fmt_s(M('ostree', 'bound-upgrade@xfs', 'check_s'))}, "
                             f"pull {fmt_s(M('ostree', 'bound-upgrade@xfs', 'pull_s'))}, "
                             f"commits {fmt_s(M('ostree', 'bound-upgrade@xfs', 'commit_s'))} "
                             f"({M('ostree', 'bound-upgrade@xfs', 'layers_written')} layer commits written, "
                             f"{M('ostree', 'bound-upgrade@xfs', 'layers_reused')} reused), "
                             f"libostree deploy {fmt_s(M('ostree', 'bound-upgrade@xfs', 'deploy_s'))}, "
                             f"gc {fmt_s(M('ostree', 'bound-upgrade@xfs', 'gc_s'))}",
                             "", "", ""])
        L.append(md_table(["what", "unistore", "peer", "ratio"], rows))
    L.append("")
    L.append("## Peak memory vs image size")
    L.append("")
    L.append("Generated images (`unistore-fixture test-image --payload-mib N`), plain install from the registry "
             "onto XFS. Peak RSS is `/usr/bin/time -f %M`: the largest single process of the tree (skopeo, podman "
             "children included).")
    L.append("")
    mrows = []
    for tool in ["unistore", "unistore-unified", "podman"]:
        for key, what in [("rss_main_kib", "the command's process"), ("rss_kib", "largest process of the tree")]:
            vals = [M("memory", f"{tool}@{m}MiB", key) for m in ctx.mem_sizes]
            times = [M("memory", f"{tool}@{m}MiB", "wall") for m in ctx.mem_sizes]
            if all(v is None for v in vals):
                continue
            mrows.append([tool, what] + [f"{fmt_unit(v, 'KiB')} ({fmt_s(t)})" for v, t in zip(vals, times)]
                         + [rstr(fmt_ratio(vals[1], vals[0]))])
    L.append(md_table(["tool", "peak RSS of"] + [f"{m} MiB payload: peak RSS (time)" for m in ctx.mem_sizes] + ["growth"], mrows))
    L.append("")

    L += scale_lines(ctx, res)

    # not measured
    L.append("## Not measured")
    L.append("")
    nm = [f"- {s}/{o}: {why}" for (s, o), why in sorted(res.not_measured.items())]
    nm.append("- ostree hosts on the running system (staging, finalize at shutdown): only in the boot tests "
              "(docs/boot.md), under QEMU TCG, so not timed here.")
    nm.append("- fs-verity: this kernel/filesystem has none; repositories are in insecure mode (digests still computed).")
    L.extend(nm)
    L.append("")
    L.append("## Notes")
    L.append("")
    L.append("<!-- notes: kept by scripts/bench across runs -->")
    L.append(old_notes.strip() if old_notes.strip() else "(none yet)")
    L.append("<!-- /notes -->")
    L.append("")
    L.append(f"Raw results: `{ctx.json_name}` next to this file (every run).")
    L.append("")
    path.write_text("\n".join(L))


def old_notes(path):
    if not path.exists():
        return ""
    m = re.search(r"<!-- notes: kept by scripts/bench across runs -->\n(.*?)<!-- /notes -->", path.read_text(), re.S)
    if not m or m.group(1).strip() == "(none yet)":
        return ""
    return m.group(1)


def partial_section(ctx, res, L, M):
    """Section 5b: zstd:chunked upgrades (issue 26)."""
    p = getattr(ctx, "partial", None)
    if not p or not res.values("partial", "unistore", "wall"):
        return
    L.append("## 5b. Upgrade of a zstd:chunked image: partial pulls")
    L.append("")
    L.append(f"The sample's tree packed as v1 and as v2 with {p['changed_files']} of the {p['files']} files of its large "
             f"layer changed (1%: every 100th file of /usr, a line appended), pushed as zstd:chunked. Each tool gets v1, "
             f"then v2 (unistore: `switch`; podman: `pull`, without and with `enable_partial_images`). The large layer "
             f"is {fmt_mib(p['layer_size'])}; its table of contents {fmt_mib(p['toc'])}; the changed files "
             f"{fmt_mib(p['changed_compressed'])} compressed ({fmt_mib(p['changed_bytes'])} unpacked). "
             f"Fetched = blob bytes the registry sent (its access log).")
    L.append("")
    target = 1.2 * p["changed_compressed"] + p["toc"]
    rows = []
    for tool in ["unistore", "unistore-unified", "unistore-whole", "podman", "podman-partial"]:
        if not res.values("partial", tool, "wall"):
            continue
        b = M("partial", tool, "blob_bytes")
        rows.append([tool, fmt_s(M("partial", tool, "wall")), rng_s(res, "partial", tool, "wall", fmt_s),
                     fmt_mib(b), f"{M('partial', tool, 'blob_gets'):.0f}", f"{b / p['layer_size']:.3f}",
                     f"{b / target:.2f}"])
    L.append(md_table(["tool", "time", "min – max", "fetched", "blob GETs", "fetched / layer size",
                       "fetched / (1.2 × changed + table)"], rows))
    L.append("")
    L.append("`unistore-whole` is unistore with `UNISTORE_WHOLE_LAYERS=1` (whole layers, as before issue 26). "
             "The target of issue 26 is a last column ≤ 1.")
    L.append("")
