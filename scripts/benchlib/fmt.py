"""Formatting of figures and markdown tables."""

from .util import MIB


def fmt_s(v):
    return "–" if v is None else (f"{v:.2f} s" if v >= 0.1 else f"{v * 1000:.0f} ms")


def fmt_mib(v):
    return "–" if v is None else f"{v / MIB:.1f} MiB"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def rstr(r):
    return "–" if r is None else f"{r:.2f}×"


def fmt_unit(v, unit):
    if v is None:
        return "–"
    if unit == "s":
        return fmt_s(v)
    if unit == "B":
        return fmt_mib(v)
    if unit == "KiB":
        return f"{v / 1024:.1f} MiB"
    return str(v)


def md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def rng_s(res, section, op, key, fmt):
    r = res.rng(section, op, key)
    return "–" if r is None else f"{fmt(r[0])} – {fmt(r[1])}"
