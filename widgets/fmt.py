"""Numbers as the widgets print them: bytes in binary units, durations as h:mm:ss."""

from __future__ import annotations

import math


def fmt_bytes(n: float | None) -> str:
    """1536 -> "1.5 KiB"; None -> "-" (unknown stays visibly unknown)."""
    if n is None:
        return "-"
    neg, n = n < 0, abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            s = f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            return "-" + s if neg else s
        n /= 1024
    return str(n)


def fmt_duration(s: float | None) -> str:
    """Seconds as "m:ss" or "h:mm:ss"; "-" when unknown."""
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(max(0.0, s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
