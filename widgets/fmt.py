"""Numbers as the widgets print them: bytes in binary units, durations as h:mm:ss, counts a person reads aloud."""

from __future__ import annotations

import math

from workbench.fileio import format_bytes as fmt_bytes  # 1536 -> "1.5 KiB"; None -> "-"

__all__ = ["fmt_bytes", "fmt_count", "fmt_duration", "fmt_step_time"]


def fmt_duration(s: float | None) -> str:
    """Seconds as "m:ss" or "h:mm:ss"; "-" when unknown."""
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(max(0.0, s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


COUNT_CAP = 1_000_000  # beyond it a count reads "over 1,000,000"


def fmt_count(n: int | float | None) -> str:
    """A count as read aloud: exact below 1,000 ("512"), else two significant figures with thousands commas
    ("about 21,000" for 20,986; "21,000" when that is the number), capped at "over 1,000,000"."""
    if n is None or not math.isfinite(n):
        return "-"
    n = int(n)
    if n >= COUNT_CAP:
        return f"over {COUNT_CAP:,}"
    if n < 1000:
        return str(n)
    digits = len(str(n)) - 2
    rounded = round(n, -digits)
    return f"{rounded:,}" if rounded == n else f"about {rounded:,}"


def fmt_step_time(s: float | None) -> str:
    """A step time: "850 ms", "12.3 ms", "0.42 ms", "3.5 s", "2:05" (never 1.23e+03 ms)."""
    if s is None or not math.isfinite(s):
        return "-"
    if s >= 60:
        return fmt_duration(s)
    if s >= 1:
        return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"
    ms = s * 1e3
    return f"{ms:.3g} ms" if ms >= 0.01 else "under 0.01 ms"
