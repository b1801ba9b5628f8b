"""Exponential moving average with debiasing, as TensorBoard and W&B draw their "smoothed" curves.

A plain EMA started at 0 is pulled towards 0 for its first ~1/(1-w) points. Dividing by ``1 - w**k`` (the
weight the EMA has given to real values after k points, Adam's bias correction) removes that, so the first
smoothed point equals the first value and a short run's curve starts where its loss starts.

``EMA`` is incremental: the dashboard feeds it only the events that arrived since its last redraw, so a
long run costs O(new points) per redraw, not O(run length).
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class EMA:
    """Debiased EMA of a stream of values; ``weight`` in [0, 1): 0 = no smoothing, 0.99 = very smooth."""

    def __init__(self, weight: float):
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
        self.weight = weight
        self.last = 0.0
        self.count = 0
        self.values: list[float] = []

    def extend(self, values: Iterable[float | None]) -> list[float]:
        w, out = self.weight, self.values
        for v in values:
            if v is None or not math.isfinite(v):
                # TensorBoard's rule: a non-finite value is drawn as itself and does not enter the average
                out.append(float("nan") if v is None else v)
                continue
            self.last = self.last * w + (1.0 - w) * v
            self.count += 1
            out.append(self.last / (1.0 - w**self.count) if w > 0 else v)
        return out


def ema(values: Iterable[float | None], weight: float) -> list[float]:
    """The debiased EMA of a whole series."""
    return EMA(weight).extend(values)
