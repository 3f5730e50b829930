"""The command line and the order of a run."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .images import prepare_images
from .markdown import old_notes, write_markdown
from .registry import Registry
from .report import machine_info, print_ratios, summarize
from .results import Results
from .sections.ab import bench_ab, print_ab
from .sections.install import bench_install
from .sections.lifecycle import bench_lifecycle
from .sections.memory import bench_memory
from .sections.ostree import bench_ostree
from .sections.partial import bench_partial
from .sections.repair import bench_repair
from .sections.scale import bench_scale
from .sections.upgrade import bench_upgrade
from .svg import write_svg
from .tools import CONTAINERS_CONF, Ctx, build, detect_features, ensure_cfsctl
from .util import CLEANUP, Failed, REPO, WORK, log, on_signal

SECTIONS = ["install", "upgrade", "partial", "lifecycle", "repair", "memory", "ostree", "scale", "ab"]
DEFAULT_SECTIONS = [s for s in SECTIONS if s != "ab"]


def main(doc):
    ap = argparse.ArgumentParser(prog="scripts/bench", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of every measurement (medians; default 3)")
    ap.add_argument("--quick", action="store_true", help="a generated 200 MiB image instead of the realistic sample")
    ap.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                    help=f"comma-separated sections (default all: {','.join(DEFAULT_SECTIONS)})")
    ap.add_argument("--out", type=Path, help="where to write benchmarks.md, bench-results.svg and bench-results.json "
                    "(default: docs/, or /var/tmp/unistore-bench/quick with --quick)")
    ap.add_argument("--baseline", type=Path, help="another unistore binary for the `ab` section (--only ab): "
                    "this build against it, alternating, in the same run; prints ratios, writes no docs")
    ap.add_argument("--keep-work", action="store_true", help="leave the work directory (loop images are always removed)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scripts/bench needs root (loop devices, mounts): run it as root")
    if args.runs < 1:
        sys.exit("--runs must be at least 1")
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in sections:
        if s not in SECTIONS:
            sys.exit(f"unknown section {s!r} (known: {', '.join(SECTIONS)})")
    if ("ab" in sections) != bool(args.baseline):
        sys.exit("the ab section and --baseline BIN go together")
    if args.baseline and (sections != ["ab"] or not args.baseline.is_file()):
        sys.exit("--baseline needs --only ab and an existing binary")
    synthetic = args.quick or os.environ.get("UNISTORE_SAMPLE") == "synthetic"
    out = args.out or (WORK / "quick" if synthetic else REPO / "docs")

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    ctx = Ctx()
    ctx.runs = args.runs
    ctx.baseline = args.baseline and args.baseline.resolve()
    ctx.sections = sections
    ctx.mem_sizes = (50, 400)
    ctx.args_line = "scripts/bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "scripts/bench"
    res = Results()
    t_start = time.monotonic()
    try:
        subprocess.run([str(REPO / "scripts" / "setup")], check=True)
        for tool in ("podman", "skopeo", "docker-registry", "mkfs.xfs", "mkfs.ext4", "losetup"):
            if not shutil.which(tool):
                raise Failed(f"{tool} is missing (scripts/setup should have installed it)")
        if not Path("/usr/bin/time").exists():
            raise Failed("/usr/bin/time is missing (package `time`)")
        WORK.mkdir(parents=True, exist_ok=True)
        ctx.rundir = WORK / f"run-{os.getpid()}"
        if ctx.rundir.exists():
            shutil.rmtree(ctx.rundir)
        ctx.rundir.mkdir(parents=True)
        if not args.keep_work:
            CLEANUP.push(f"removing {ctx.rundir}", lambda: shutil.rmtree(ctx.rundir, ignore_errors=True))
        build(ctx)
        ctx.feats = detect_features(ctx)
        log(f"unistore features: {ctx.feats}")
        ctx.cfsctl, ctx.cfsctl_why = ensure_cfsctl()
        ctx.containers_conf = ctx.rundir / "containers.conf"
        ctx.containers_conf.write_text(CONTAINERS_CONF)
        ctx.reg = Registry(ctx.rundir)
        log(f"registry on {ctx.reg.addr}")
        wrap = ctx.rundir / "skopeo-wrapper"
        wrap.mkdir()
        (wrap / "skopeo").write_text(f'#!/bin/sh\nexec /usr/bin/skopeo --registries-conf "{ctx.reg.registries_conf}" "$@"\n')
        (wrap / "skopeo").chmod(0o755)
        ctx.skopeo_wrapper_dir = wrap
        prepare_images(ctx, synthetic)

        for run_no in range(args.runs):
            log(f"== run {run_no + 1} of {args.runs}")
            if "install" in sections:
                bench_install(ctx, res, run_no)
            if "upgrade" in sections:
                bench_upgrade(ctx, res, run_no)
            if "partial" in sections:
                bench_partial(ctx, res, run_no)
            if "lifecycle" in sections:
                bench_lifecycle(ctx, res, run_no)
            if "repair" in sections:
                bench_repair(ctx, res, run_no)
            if "memory" in sections:
                bench_memory(ctx, res, run_no)
            if "ostree" in sections:
                bench_ostree(ctx, res, run_no)
            if "scale" in sections:
                bench_scale(ctx, res, run_no)
            if "ab" in sections:
                bench_ab(ctx, res, run_no)

        if ctx.baseline:
            print_ab(res)
            log(f"ab: {(time.monotonic() - t_start) / 60:.1f} min")
            return

        rows = summarize(ctx, res)
        print_ratios(rows)
        info = machine_info(ctx)
        out.mkdir(parents=True, exist_ok=True)
        md = out / "benchmarks.md"
        svg = out / "bench-results.svg"
        ctx.json_name = "bench-results.json"
        notes = old_notes(md)
        ctx.machine_short = f"{info['nproc']} CPUs, {info['memory']}, kernel {info['kernel']}, {info['date']}, unistore {info['git'].split()[0]}"
        write_svg(ctx, res, svg)
        write_markdown(ctx, res, rows, info, md, svg.name, notes)
        (out / ctx.json_name).write_text(json.dumps({
            "machine": info, "image": ctx.facts, "image_desc": ctx.image_desc, "runs": ctx.runs,
            "features": ctx.feats, "headline": rows, "records": res.records,
            "not_measured": {f"{s}/{o}": w for (s, o), w in res.not_measured.items()},
            "scale_images": {str(m): dict(i["summary"], dir=str(i["dir"])) for m, i in (getattr(ctx, "scale", None) or {}).items()},
        }, indent=1))
        log(f"wrote {md}, {svg} and {out / ctx.json_name} ({(time.monotonic() - t_start) / 60:.1f} min)")
    except Failed as e:
        log(f"error: {e}")
        sys.exit(1)
    except SystemExit as e:
        if isinstance(e.code, int) and e.code > 128:
            log(f"interrupted (signal {e.code - 128}): cleaning up")
        raise
    finally:
        CLEANUP.run_all()
        (WORK / f"time.{os.getpid()}").unlink(missing_ok=True)
