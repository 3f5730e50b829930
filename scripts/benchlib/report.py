"""The headline ratios, the machine description, the console table."""

import datetime
from pathlib import Path

from .fmt import fmt_ratio, fmt_unit, rstr
from .util import CFSCTL_VERSION, WORK, run


def machine_info(ctx):
    def cmd(*c):
        p = run(c, check=False)
        return p.stdout.strip() if p.returncode == 0 else "?"

    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    src = cmd("findmnt", "-no", "SOURCE,FSTYPE", "-T", str(WORK))
    dev = src.split()[0] if src != "?" else ""
    disk = src
    if dev.startswith("/dev/"):
        lb = cmd("lsblk", "-dno", "NAME,SIZE,ROTA,MODEL", dev)
        disk = f"{src} ({lb}; ROTA=1 means rotational)" if lb != "?" else src
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": cmd("nproc"),
        "cpu": cpu,
        "memory": mem,
        "kernel": cmd("uname", "-r"),
        "os": cmd("sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"),
        "disk": disk,
        "loop_files_on": str(WORK),
        "unistore": cmd(ctx.unistore, "--version"),
        "git": ctx.git_rev,
        "podman": cmd("podman", "--version"),
        "skopeo": cmd("skopeo", "--version"),
        "cfsctl": (f"composefs-ctl {CFSCTL_VERSION}" if ctx.cfsctl else "not available"),
        "docker-registry": cmd("sh", "-c", "docker-registry --version 2>&1 | head -1"),
        "xfsprogs": cmd("sh", "-c", "mkfs.xfs -V | head -1"),
    }


def summarize(ctx, res):
    """The headline comparisons: (key, label, unistore value, peer value, unit, lower is better)."""
    M = res.med
    rows = []

    def add(key, label, a, b, unit):
        rows.append({"key": key, "label": label, "unistore": a, "peer": b, "unit": unit, "ratio": fmt_ratio(a, b)})

    add("install-vs-podman", "install (plain) vs `podman pull`, XFS, time incl. sync",
        M("install", "unistore@xfs", "wall_sync"), M("install", "podman@xfs", "wall_sync"), "s")
    add("install-vs-skopeo", "install (plain) vs `skopeo copy` to oci:, XFS, time incl. sync",
        M("install", "unistore@xfs", "wall_sync"), M("install", "skopeo-oci@xfs", "wall_sync"), "s")
    add("unified-vs-podman", "install --unified enabled vs `podman pull`, XFS, time incl. sync",
        M("install", "unistore-unified@xfs", "wall_sync"), M("install", "podman@xfs", "wall_sync"), "s")
    add("unified-vs-plain", "install --unified enabled vs plain install, XFS, time incl. sync",
        M("install", "unistore-unified@xfs", "wall_sync"), M("install", "unistore@xfs", "wall_sync"), "s")
    add("import-vs-cfsctl", "import into composefs (install's pull phase) vs `cfsctl oci pull --bootable`, time incl. sync",
        M("install", "unistore@xfs", "import_s"), M("install", "cfsctl@xfs", "wall_sync"), "s")
    add("install-vs-cfsctl", "whole install vs `cfsctl oci pull --bootable`, time incl. sync",
        M("install", "unistore@xfs", "wall_sync"), M("install", "cfsctl@xfs", "wall_sync"), "s")
    add("ext4-vs-podman", "install (plain) vs `podman pull`, ext4, time incl. sync",
        M("install", "unistore@ext4", "wall_sync"), M("install", "podman@ext4", "wall_sync"), "s")
    add("disk-unified-vs-separate", "disk: unified install vs install + podman pull (separate copies), XFS",
        M("install", "unistore-unified@xfs", "delta"), M("disk", "separate@xfs", "delta"), "B")
    add("disk-unified-vs-unpacked", "disk: unified install (composefs + containers-storage) vs the unpacked image",
        M("install", "unistore-unified@xfs", "delta"), ctx.facts["file_bytes"], "B")
    add("disk-plain-vs-unpacked", "disk: plain install vs the unpacked image",
        M("install", "unistore@xfs", "delta"), ctx.facts["file_bytes"], "B")
    add("disk-unified-vs-xfs-tree", "disk: unified install vs the image unpacked on XFS",
        M("install", "unistore-unified@xfs", "delta"), M("disk", "unpacked@xfs", "delta"), "B")
    add("disk-plain-vs-xfs-tree", "disk: plain install vs the image unpacked on XFS",
        M("install", "unistore@xfs", "delta"), M("disk", "unpacked@xfs", "delta"), "B")
    add("disk-plain-vs-podman", "disk: plain install vs `podman pull`, XFS",
        M("install", "unistore@xfs", "delta"), M("install", "podman@xfs", "delta"), "B")
    add("repair-vs-skopeo", "repair: `fsck images --repair` vs OCI layout + `skopeo copy` into the store",
        M("repair", "fsck --repair", "wall_sync"), M("repair", "oci+skopeo", "wall_sync"), "s")
    add("repair-written-vs-skopeo", "repair: bytes written vs OCI layout + `skopeo copy`",
        M("repair", "fsck --repair", "delta"), M("repair", "oci+skopeo", "delta"), "B")
    add("upgrade-time-vs-podman", "upgrade: time vs `podman pull` of v2 over v1, incl. sync",
        M("upgrade", "unistore", "wall_sync"), M("upgrade", "podman", "wall_sync"), "s")
    add("upgrade-fetched-vs-podman", "upgrade: bytes fetched from the registry vs `podman pull`",
        M("upgrade", "unistore", "bytes"), M("upgrade", "podman", "bytes"), "B")
    add("upgrade-written-vs-podman", "upgrade: bytes written vs `podman pull`",
        M("upgrade", "unistore", "delta"), M("upgrade", "podman", "delta"), "B")
    add("upgrade-vs-cfsctl", "upgrade: time vs `cfsctl oci pull` of v2 over v1, incl. sync",
        M("upgrade", "unistore", "wall_sync"), M("upgrade", "cfsctl", "wall_sync"), "s")
    add("rss-vs-podman", "install peak RSS (largest process, skopeo included) vs `podman pull`",
        M("install", "unistore@xfs", "rss_kib"), M("install", "podman@xfs", "rss_kib"), "KiB")
    add("ostree-install-vs-podman", "ostree host: install --backend ostree vs `podman pull`, XFS, time incl. sync",
        M("ostree", "unistore-ostree@xfs", "wall_sync"), M("ostree", "podman@xfs", "wall_sync"), "s")
    add("ostree-install-vs-commit", "ostree host: install --backend ostree vs `ostree commit --tree=dir=` of the merged tree, time incl. sync",
        M("ostree", "unistore-ostree@xfs", "wall_sync"), M("ostree", "ostree-commit@xfs", "wall_sync"), "s")
    add("ostree-commit-step-vs-commit", "ostree host: the install's commit step vs `ostree commit --tree=dir=`",
        M("ostree", "unistore-ostree@xfs", "commit_s"), M("ostree", "ostree-commit@xfs", "wall_sync"), "s")
    add("disk-ostree-vs-podman", "disk: ostree host vs `podman pull`, XFS",
        M("ostree", "unistore-ostree@xfs", "delta"), M("ostree", "podman@xfs", "delta"), "B")
    add("disk-ostree-vs-commit", "disk: ostree host vs `ostree commit --tree=dir=`, XFS",
        M("ostree", "unistore-ostree@xfs", "delta"), M("ostree", "ostree-commit@xfs", "delta"), "B")
    add("ostree-synth-vs-commit", "unified ostree host: composefs -> ostree synthesis (the commit step) vs `ostree commit --tree=dir=` (target <= 0.25x)",
        M("ostree", "unistore-ostree-unified@xfs", "commit_s"), M("ostree", "ostree-commit@xfs", "wall_sync"), "s")
    add("ostree-synth-written-vs-commit", "unified ostree host: bytes the synthesis wrote (the ostree repo's own blocks) vs `ostree commit --tree=dir=` (target <= 0.05x)",
        M("ostree", "unistore-ostree-unified@xfs", "synth_written"), M("ostree", "ostree-commit@xfs", "delta"), "B")
    add("ostree-bound-upgrade-vs-podman", "bound ostree host: upgrade v1 -> v2 vs `podman pull` of v2 over v1, incl. sync (target <= 2x)",
        M("ostree", "bound-upgrade@xfs", "wall_sync"), M("ostree", "podman-upgrade@xfs", "wall_sync"), "s")
    add("disk-ostree-unified-vs-xfs-tree", "disk: unified ostree host (composefs + ostree + containers-storage) vs the image unpacked on XFS",
        M("ostree", "unistore-ostree-unified@xfs", "delta"), M("disk", "unpacked@xfs", "delta"), "B")
    lo, hi = ctx.mem_sizes
    add("rss-growth", f"unistore process peak RSS, install: {hi} MiB payload vs {lo} MiB payload",
        M("memory", f"unistore@{hi}MiB", "rss_main_kib"), M("memory", f"unistore@{lo}MiB", "rss_main_kib"), "KiB")
    add("rss-growth-unified", f"same, unified install: {hi} MiB vs {lo} MiB payload",
        M("memory", f"unistore-unified@{hi}MiB", "rss_main_kib"), M("memory", f"unistore-unified@{lo}MiB", "rss_main_kib"), "KiB")
    return rows


def print_ratios(rows):
    print()
    print(f"{'comparison':92} {'unistore':>11} {'peer':>11} {'ratio':>7}")
    for r in rows:
        print(f"{r['label'][:92]:92} {fmt_unit(r['unistore'], r['unit']):>11} {fmt_unit(r['peer'], r['unit']):>11} {rstr(r['ratio']):>7}")
    print()
