"""Numbers as the widgets print them: bytes in binary units, durations as h:mm:ss."""

from __future__ import annotations

import math

from workbench.fileio import format_bytes as fmt_bytes  # 1536 -> "1.5 KiB"; None -> "-"

__all__ = ["fmt_bytes", "fmt_duration"]


def fmt_duration(s: float | None) -> str:
    """Seconds as "m:ss" or "h:mm:ss"; "-" when unknown."""
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(max(0.0, s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
