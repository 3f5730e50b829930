"""The scale section of docs/benchmarks.md: how cost grows with the image."""

from .fmt import fmt_ratio, fmt_s, fmt_unit, md_table, rstr
from .ops import phase_table
from .sections.scale import CHECKPOINTS, SIZES, STATUS_REPS, UPGRADES

# (op prefix, label, how it should grow, the podman op to compare with)
OPS = [
    ("install-plain", "`install to-filesystem` (plain)", "linear in the content", "podman-pull"),
    ("install-unified", "`install to-filesystem --unified enabled`", "linear in the content", "podman-pull"),
    ("upgrade-plain", "`upgrade` to v2 (one small new layer), plain host", "flat", "podman-upgrade"),
    ("upgrade-unified", "`upgrade` to v2, unified host", "flat", "podman-upgrade"),
    ("plain@ gc", "`internals gc`, plain host (after the upgrade)", "linear in the files (walks the repository)", None),
    ("unified@ gc", "`internals gc`, unified host", "linear in the files (walks both stores)", None),
    ("plain@ status --json", "`status --json`, plain host", "flat", None),
    ("unified@ status --json", "`status --json`, unified host", "flat", None),
    ("plain@ fsck images", "`internals fsck images`, plain host", "linear in the files (no content read)", None),
    ("unified@ fsck images", "`internals fsck images`, unified host", "linear in the files (extent maps, no content read)", None),
]


def op_name(prefix, label):
    """Record names: `install-plain@2 GiB`, `plain@2 GiB gc`."""
    if "@ " in prefix:
        kind, what = prefix.split("@ ", 1)
        return f"{kind}@{label} {what}"
    return f"{prefix}@{label}"


def verdict(growth, size_ratio):
    if growth is None:
        return "–"
    if growth < 2:
        return "flat"
    if growth < 0.5 * size_ratio:
        return "sublinear"
    if growth <= 1.5 * size_ratio:
        return "about linear"
    return "**superlinear**"


def scale_lines(ctx, res):
    M = res.med
    L = ["## 8. How cost grows with the image (scale)", ""]
    if not any(r["section"] == "scale" for r in res.records):
        why = res.not_measured.get(("scale", "images"), "the section did not run (`--only`)")
        L += [f"not measured: {why}", ""]
        return L
    imgs = getattr(ctx, "scale", None) or {}
    L.append("Generated images (`unistore-fixture scale-image`): the test image's three bootable base layers, then "
             "content layers of mixed files (one in 500 is 1 – 8 MiB, the others 128 B – 96 KiB, log-uniform; nine "
             "in ten are text of pseudo-random words, the rest binary), then one small top layer that differs per "
             "version; gzip level 6. v2 differs from v1 only in that top layer (16 files, about 64 KiB). "
             "Each host and each podman store on a fresh XFS; the registry is the local one.")
    L.append("")
    irows = []
    for label, mib, files, layers in SIZES:
        img = imgs.get(mib)
        if not img:
            continue
        s = img["summary"]
        irows.append([label, f"{s['files']:,}", f"{s['bytes'] / 1024**2:.0f} MiB", f"{layers} (+ 3 base + 1 top = {s['layers']})",
                      f"{s['compressed_bytes'] / 1024**2:.0f} MiB"])
    L.append(md_table(["image", "content files", "content", "content layers", "compressed (all layers)"], irows))
    L.append("")
    L.append("### How cost grows")
    L.append("")
    L.append(f"Time incl. `sync -f`; `status --json` is the median of {STATUS_REPS} calls. Peak RSS: the command's own "
             "process / the largest process of its tree (`/usr/bin/time`). \"should\" is what the design implies, "
             f"the last column compares with the {SIZES[0][0]} image ({SIZES[-1][0]}: {SIZES[-1][1] / SIZES[0][1]:.0f}× the "
             f"content, {SIZES[-1][2] / SIZES[0][2]:.0f}× the files).")
    L.append("")
    rows = []
    for label, _mib, _files, _layers in SIZES:
        for prefix, what, should, peer in OPS:
            op = op_name(prefix, label)
            t = M("scale", op, "wall_sync")
            if t is None:
                why = res.not_measured.get(("scale", op))
                if why:
                    rows.append([label, what, should, f"not measured: {why}", "", "", "", ""])
                continue
            p = M("scale", f"{peer}@{label}", "wall_sync") if peer else None
            base = M("scale", op_name(prefix, SIZES[0][0]), "wall_sync")
            rows.append([label, what, should, fmt_s(t),
                         f"{fmt_unit(M('scale', op, 'rss_main_kib'), 'KiB')} / {fmt_unit(M('scale', op, 'rss_kib'), 'KiB')}",
                         fmt_s(p) if peer else "", rstr(fmt_ratio(t, p)) if peer else "", rstr(fmt_ratio(t, base))])
        for peer, what in [("podman-pull", "`podman pull` v1"), ("podman-upgrade", "`podman pull` v2 over v1")]:
            op = f"{peer}@{label}"
            t = M("scale", op, "wall_sync")
            if t is None:
                continue
            base = M("scale", f"{peer}@{SIZES[0][0]}", "wall_sync")
            rows.append([label, what, "linear in the content" if peer == "podman-pull" else "flat", fmt_s(t),
                         f"– / {fmt_unit(M('scale', op, 'rss_kib'), 'KiB')}", "", "", rstr(fmt_ratio(t, base))])
    L.append(md_table(["image", "operation", "should grow", "time", "peak RSS (process / tree)", "`podman` time",
                       "unistore / podman", "time vs 50 MiB"], rows))
    L.append("")
    big, small = SIZES[-1][0], SIZES[0][0]
    size_ratio = SIZES[-1][1] / SIZES[0][1]
    grows = []
    for prefix, what, should, _peer in OPS + [("podman-pull", "`podman pull` v1", "linear in the content", None),
                                               ("podman-upgrade", "`podman pull` v2 over v1", "flat", None)]:
        a, b = M("scale", op_name(prefix, small), "wall_sync"), M("scale", op_name(prefix, big), "wall_sync")
        ra, rb = M("scale", op_name(prefix, small), "rss_kib"), M("scale", op_name(prefix, big), "rss_kib")
        if a is None and b is None:
            continue
        g = fmt_ratio(b, a)
        v = verdict(g, size_ratio)
        if should == "flat" and v not in ("flat", "–"):
            v = f"**grows: {v}**"
        grows.append([what, should, f"{fmt_s(a)} → {fmt_s(b)}", rstr(g), v,
                      f"{fmt_unit(ra, 'KiB')} → {fmt_unit(rb, 'KiB')}", rstr(fmt_ratio(rb, ra))])
    L.append(f"Growth from {small} to {big} (content ×{size_ratio:.0f}; \"measured\": flat below 2×, sublinear below "
             "half the content's growth, about linear up to 1.5 times it):")
    L.append("")
    L.append(md_table(["operation", "should grow", "time", "growth", "measured", "peak RSS (tree)", "RSS growth"], grows))
    L.append("")
    pops = [op_name(p, s[0]) for s in SIZES for p in ("install-plain", "install-unified", "upgrade-plain", "upgrade-unified")]
    prow = phase_table(res, "scale", pops)
    if prow:
        L.append("Phases (from unistore's progress lines; a phase runs from its line to the next one):")
        L.append("")
        L.append(md_table(["command", "phases"], prow))
        L.append("")
    L += upgrades_lines(ctx, res)
    return L


def upgrades_lines(ctx, res):
    M = res.med
    L = [f"### A host after 1 and after {UPGRADES} upgrades", ""]
    host = res.values("scale", "upgrades: host", "deployments")
    if not host:
        why = res.not_measured.get(("scale", f"upgrades: upgrade@{UPGRADES}"), "did not run")
        return L + [f"not measured: {why}", ""]
    uni = res.values("scale", "upgrades: host", "unified")
    first, mid, last = CHECKPOINTS
    L.append(f"The {SIZES[0][0]} image installed{' (unified)' if uni and uni[0] else ''}, then {UPGRADES} times: "
             f"`upgrade` to the next version (its top layer changed) and `internals finalize-staged` (the shutdown step, "
             f"so each upgrade becomes the booted deployment and the one before the rollback); the deployments at the "
             f"end: {host[-1]}. The checks ran after upgrades {first}, {mid} and {last}. After the first nothing has "
             f"dropped out yet (v1 is the rollback), so that upgrade and the gc after it remove nothing; from the third "
             f"on, each upgrade and each gc removes the deployment that dropped out at the finalize before, so "
             f"{last} / {mid} compares the same work. All of these should stay flat.")
    L.append("")
    rows = []
    for op, what in [("upgrade", "`upgrade`"), ("gc", "`internals gc`"), ("status --json", "`status --json`"),
                     ("fsck images", "`internals fsck images`")]:
        names = [f"upgrades: upgrade@{n}" if op == "upgrade" else f"upgrades@{n} {op}" for n in CHECKPOINTS]
        t = [M("scale", n, "wall_sync") for n in names]
        r = [M("scale", n, "rss_kib") for n in names]
        rows.append([what] + [fmt_s(v) for v in t] + [rstr(fmt_ratio(t[2], t[0])), rstr(fmt_ratio(t[2], t[1])),
                     " / ".join(fmt_unit(v, "KiB") for v in r), rstr(fmt_ratio(r[2], r[1]))])
    L.append(md_table(["command", f"after upgrade {first}", f"after upgrade {mid}", f"after upgrade {last}",
                       f"{last} / {first}", f"{last} / {mid}", f"peak RSS (tree) {first} / {mid} / {last}",
                       f"RSS {last} / {mid}"], rows))
    L.append("")
    seq = [M("scale", f"upgrades: upgrade #{n}", "wall_sync") for n in range(1, UPGRADES + 1)]
    if all(v is not None for v in seq):
        L.append("Every upgrade in order (time incl. sync): " + ", ".join(fmt_s(v) for v in seq) + ".")
        L.append("")
    fails = [r for r in res.records if r["section"] == "scale" and r.get("fsck_fail_lines")]
    if fails:
        L.append("`internals fsck images` reported failures:")
        L.append("")
        for r in fails:
            L.append(f"- {r['op']}: `{r['fsck_summary']}`; " + "; ".join(f"`{x}`" for x in r["fsck_fail_lines"][:3]))
        L.append("")
    return L
