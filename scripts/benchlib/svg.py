"""docs/bench-results.svg."""

from .util import MIB


def svg_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_svg(ctx, res, path):
    M = res.med
    colors = {"unistore": "#1f77b4", "peer": "#ff7f0e", "ref": "#9e9e9e"}
    groups_time = [
        ("install (XFS)", [("unistore install", M("install", "unistore@xfs", "wall_sync"), "unistore"),
                           ("unistore install --unified", M("install", "unistore-unified@xfs", "wall_sync"), "unistore"),
                           ("podman pull", M("install", "podman@xfs", "wall_sync"), "peer"),
                           ("skopeo copy → oci:", M("install", "skopeo-oci@xfs", "wall_sync"), "peer"),
                           ("cfsctl oci pull", M("install", "cfsctl@xfs", "wall_sync"), "peer")]),
        ("import into composefs", [("unistore (pull phase)", M("install", "unistore@xfs", "import_s"), "unistore"),
                                   ("cfsctl oci pull", M("install", "cfsctl@xfs", "wall_sync"), "peer")]),
        ("upgrade v1 → v2", [("unistore upgrade", M("upgrade", "unistore", "wall_sync"), "unistore"),
                             ("unistore upgrade (unified)", M("upgrade", "unistore-unified", "wall_sync"), "unistore"),
                             ("podman pull", M("upgrade", "podman", "wall_sync"), "peer"),
                             ("cfsctl oci pull", M("upgrade", "cfsctl", "wall_sync"), "peer")]),
        ("repair host store", [("fsck images --repair", M("repair", "fsck --repair", "wall_sync"), "unistore"),
                               ("skopeo copy oci: → store", M("repair", "oci+skopeo", "wall_sync"), "peer")]),
    ]
    groups_disk = [
        ("after an install (XFS)", [("image unpacked (reference)", ctx.facts["file_bytes"], "ref"),
                        ("image unpacked on XFS (cp -a)", M("disk", "unpacked@xfs", "delta"), "ref"),
                        ("unistore install", M("install", "unistore@xfs", "delta"), "unistore"),
                        ("unistore unified (both stores)", M("install", "unistore-unified@xfs", "delta"), "unistore"),
                        ("install + podman pull (separate)", M("disk", "separate@xfs", "delta"), "peer"),
                        ("podman pull", M("install", "podman@xfs", "delta"), "peer"),
                        ("cfsctl oci pull", M("install", "cfsctl@xfs", "delta"), "peer")]),
        ("written by the upgrade v1 → v2", [("unistore upgrade", M("upgrade", "unistore", "delta"), "unistore"),
                                            ("unistore upgrade (unified)", M("upgrade", "unistore-unified", "delta"), "unistore"),
                                            ("podman pull", M("upgrade", "podman", "delta"), "peer"),
                                            ("cfsctl oci pull", M("upgrade", "cfsctl", "delta"), "peer")]),
        ("written by the repair of the host store", [("fsck images --repair", M("repair", "fsck --repair", "delta"), "unistore"),
                                                     ("skopeo copy oci: → store", M("repair", "oci+skopeo", "delta"), "peer")]),
    ]
    W, label_w, bar_w, row_h = 860, 300, 440, 20

    def panel(title, groups, unit, scale_div, y0):
        out = []
        vals = [v for _, bars in groups for _, v, _ in bars if v is not None]
        vmax = max(vals) / scale_div if vals else 1
        y = y0
        out.append(f'<text x="10" y="{y}" font-size="16" font-weight="bold">{svg_escape(title)}</text>')
        y += 10
        for gname, bars in groups:
            y += 18
            out.append(f'<text x="10" y="{y}" font-size="13" font-weight="bold">{svg_escape(gname)}</text>')
            y += 4
            for name, v, kind in bars:
                y += row_h
                out.append(f'<text x="{label_w - 6}" y="{y - 5}" font-size="12" text-anchor="end">{svg_escape(name)}</text>')
                if v is None:
                    out.append(f'<text x="{label_w + 4}" y="{y - 5}" font-size="12" fill="#888">not measured</text>')
                    continue
                w = max(1, bar_w * (v / scale_div) / vmax)
                out.append(f'<rect x="{label_w}" y="{y - row_h + 4}" width="{w:.1f}" height="{row_h - 6}" fill="{colors[kind]}"/>')
                txt = f"{v / scale_div:.2f} {unit}" if unit == "s" else f"{v / scale_div:.0f} {unit}"
                out.append(f'<text x="{label_w + w + 4:.1f}" y="{y - 5}" font-size="12">{txt}</text>')
        return out, y + 10

    body = []
    p1, y = panel(f"Time (median of {ctx.runs}, incl. sync; lower is better)", groups_time, "s", 1, 24)
    body += p1
    p2, y = panel("Physical disk used (statvfs delta, settled)", groups_disk, "MiB", MIB, y + 20)
    body += p2
    y += 10
    body.append(f'<rect x="10" y="{y}" width="12" height="12" fill="{colors["unistore"]}"/><text x="28" y="{y + 11}" font-size="12">unistore</text>')
    body.append(f'<rect x="110" y="{y}" width="12" height="12" fill="{colors["peer"]}"/><text x="128" y="{y + 11}" font-size="12">peer</text>')
    body.append(f'<rect x="180" y="{y}" width="12" height="12" fill="{colors["ref"]}"/><text x="198" y="{y + 11}" font-size="12">reference</text>')
    y += 30
    body.append(f'<text x="10" y="{y}" font-size="11" fill="#555">{svg_escape(ctx.image_short)}</text>')
    y += 15
    body.append(f'<text x="10" y="{y}" font-size="11" fill="#555">{svg_escape(ctx.machine_short)}</text>')
    H = y + 14
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">\n'
           f'<rect width="{W}" height="{H}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")
    path.write_text(svg)
