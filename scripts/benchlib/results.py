"""Measurements of a run: records, medians, not-measured reasons."""

import statistics

from .util import Failed, log


class Results:
    def __init__(self):
        self.records = []  # dicts: section, op, run, plus measurements
        self.not_measured = {}  # (section, op) -> why
        self.notes = []

    def add(self, section, op, run_no, **m):
        lines = m.pop("lines", None)
        if lines:
            m["log"] = [f"{t:8.3f} {line}" for t, line in lines[:80]]
        m.pop("stdout", None)
        rec = {"section": section, "op": op, "run": run_no, **m}
        self.records.append(rec)
        return rec

    def skip(self, section, op, why):
        if (section, op) not in self.not_measured:
            self.not_measured[(section, op)] = why
            log(f"not measured: {section}/{op}: {why}")

    def values(self, section, op, key):
        return [r[key] for r in self.records if r["section"] == section and r["op"] == op and r.get(key) is not None]

    def med(self, section, op, key):
        v = self.values(section, op, key)
        return statistics.median(v) if v else None

    def rng(self, section, op, key):
        v = self.values(section, op, key)
        return (min(v), max(v)) if v else None

    def maxv(self, section, op, key):
        v = self.values(section, op, key)
        return max(v) if v else None


def guarded(res, section, op, fn):
    """Runs one measurement; a failure is recorded as not measured (with the
    error), the benchmark goes on."""
    try:
        return fn()
    except Failed as e:
        msg = str(e).strip()
        first = msg.splitlines()[0] if msg else "failed"
        log(f"{section}/{op} FAILED: {msg}")
        res.skip(section, op, f"failed: {first[:300]}")
        return None
