"""Downsampling a curve to a fixed number of points, so a 100,000-step run stays light in the browser.

Two methods, for two jobs:

- ``lttb``: largest-triangle-three-buckets (Steinarsson, 2013) for the smoothed lines: keeps the visual shape
  of a line with few points. One point per bucket, chosen to maximise the triangle it makes with the point
  kept in the previous bucket and the mean of the next bucket.
- ``minmax``: the lowest and the highest point of each bucket, in x order, for raw values: a loss spike or a
  memory peak is never averaged or skipped away.

Both keep the first and the last point and return at most ``n`` points. We write them here rather than
pulling in a plotting back-end (plotly-resampler, datashader) for ~40 lines of numpy.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 2000  # per trace, whatever the run's length


def _as_arrays(x, y) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def lttb(x, y, n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Largest-triangle-three-buckets: at most ``n`` points of (x, y) that draw the same line."""
    x, y = _as_arrays(x, y)
    size = len(x)
    if size <= n or n < 3:
        return (x, y) if size <= n else (x[[0, -1]], y[[0, -1]])
    # n - 2 buckets between the fixed first and last points
    edges = np.linspace(1, size - 1, n - 1).astype(np.int64)
    keep = np.empty(n, dtype=np.int64)
    keep[0], keep[-1] = 0, size - 1
    # the mean of each bucket, used as the third vertex for the bucket before it
    counts = np.diff(edges)
    csx, csy = np.concatenate([[0.0], np.cumsum(x)]), np.concatenate([[0.0], np.cumsum(y)])
    mean_x = (csx[edges[1:]] - csx[edges[:-1]]) / np.maximum(counts, 1)
    mean_y = (csy[edges[1:]] - csy[edges[:-1]]) / np.maximum(counts, 1)
    a = 0
    for i in range(n - 2):
        lo, hi = edges[i], edges[i + 1]
        if i + 1 < n - 2:
            cx, cy = mean_x[i + 1], mean_y[i + 1]
        else:
            cx, cy = x[-1], y[-1]
        bx, by = x[lo:hi], y[lo:hi]
        # twice the triangle's area; the constant factor does not change the argmax
        area = np.abs((x[a] - cx) * (by - y[a]) - (x[a] - bx) * (cy - y[a]))
        if not np.isfinite(area).any():
            a = lo
        else:
            a = lo + int(np.nanargmax(area))
        keep[i + 1] = a
    return x[keep], y[keep]


def minmax(x, y, n: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest point of each of n/2 buckets, in x order: at most ``n`` points, extremes kept."""
    x, y = _as_arrays(x, y)
    size = len(x)
    if size <= n:
        return x, y
    buckets = max(1, (n - 2) // 2)
    edges = np.linspace(1, size - 1, buckets + 1).astype(np.int64)
    idx = [0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        seg = y[lo:hi]
        if np.isnan(seg).all():
            idx.append(lo)
            continue
        i_min, i_max = lo + int(np.nanargmin(seg)), lo + int(np.nanargmax(seg))
        idx.extend(sorted({i_min, i_max}))
    idx.append(size - 1)
    keep = np.asarray(idx, dtype=np.int64)
    return x[keep], y[keep]
