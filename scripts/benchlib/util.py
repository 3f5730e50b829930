"""Shared helpers: constants, logging, the cleanup stack, running and timing commands."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent  # scripts/benchlib/util.py -> the checkout
WORK = Path(os.environ.get("UNISTORE_BENCH_DIR", "/var/tmp/unistore-bench"))
CFSCTL_VERSION = "0.9.4"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MIB = 1024 * 1024


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


class Cleanup:
    def __init__(self):
        self.actions = []

    def push(self, desc, fn):
        self.actions.append((desc, fn))
        return len(self.actions) - 1

    def pop(self, token):
        """Runs and forgets one action (and nothing else)."""
        if token is None or token >= len(self.actions) or self.actions[token] is None:
            return
        desc, fn = self.actions[token]
        self.actions[token] = None
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            log(f"cleanup: {desc}: {e}")

    def run_all(self):
        while self.actions:
            item = self.actions.pop()
            if item is None:
                continue
            desc, fn = item
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log(f"cleanup: {desc}: {e}")


CLEANUP = Cleanup()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run(cmd, env=None, check=True, input=None, cwd=None, timeout=None):
    """Runs cmd, capturing stdout and stderr (text)."""
    p = subprocess.run(
        [str(c) for c in cmd],
        env=env,
        cwd=cwd,
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise Failed(
            f"{' '.join(str(c) for c in cmd)} exited {p.returncode}:\n{tail(p.stderr)}{tail(p.stdout)}"
        )
    return p


def tail(text, n=15):
    lines = (text or "").rstrip().splitlines()
    return "".join(f"    {line}\n" for line in lines[-n:])


def sync_fs(path):
    subprocess.run(["sync", "-f", str(path)], check=False)


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def child_pid(pid):
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


def timed(cmd, env=None, sync_path=None, label=None, check=True):
    """Runs cmd under /usr/bin/time; returns wall time, wall time including a
    `sync -f sync_path` afterwards, peak RSS (`rss_kib`: /usr/bin/time's %M,
    the largest single process of the tree, helpers such as skopeo or podman
    included; `rss_main_kib`: the command's own process, its VmHWM sampled
    every 10 ms until it exits), stdout, and stderr lines with their time."""
    WORK.mkdir(parents=True, exist_ok=True)
    tfile = WORK / f"time.{os.getpid()}"
    argv = ["/usr/bin/time", "-f", "%M", "-o", str(tfile)] + [str(c) for c in cmd]
    lines = []
    out = []
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def read_err():
        for raw in p.stderr:
            lines.append((time.monotonic() - t0, ANSI.sub("", raw.decode(errors="replace")).rstrip()))

    def read_out():
        out.append(p.stdout.read().decode(errors="replace"))

    hwm = [None]
    done = threading.Event()

    want = Path(str(cmd[0])).name[:15]

    def sample():
        pid = None
        while not done.is_set():
            if pid is None:
                pid = child_pid(p.pid)
                try:
                    if pid and Path(f"/proc/{pid}/comm").read_text().strip() != want:
                        pid = None  # not exec'd yet
                except OSError:
                    pid = None
            if pid:
                v = vm_hwm_kib(pid)
                if v is not None:
                    hwm[0] = max(hwm[0] or 0, v)
            done.wait(0.01)

    threads = [threading.Thread(target=read_err), threading.Thread(target=read_out)]
    sampler = threading.Thread(target=sample)
    for t in threads + [sampler]:
        t.start()
    rc = p.wait()
    done.set()
    sampler.join()
    t1 = time.monotonic()
    for t in threads:
        t.join()
    if sync_path is not None:
        sync_fs(sync_path)
    t2 = time.monotonic()
    stdout = "".join(out)
    if rc != 0 and check:
        err = "\n".join(line for _, line in lines)
        raise Failed(f"{label or cmd[0]}: {' '.join(str(c) for c in cmd)} exited {rc}:\n{tail(err)}{tail(stdout)}")
    rss = None
    try:
        last = tfile.read_text().strip().splitlines()[-1]
        rss = int(last)
    except (OSError, ValueError, IndexError):
        pass
    tfile.unlink(missing_ok=True)
    # Sampling cannot be trusted for commands that end within a few samples.
    main = hwm[0] if t1 - t0 >= 0.2 else None
    return {"wall": t1 - t0, "wall_sync": t2 - t0, "rss_kib": rss, "rss_main_kib": main, "rc": rc,
            "lines": lines, "stdout": stdout}
