"""Every run checks the prediction: the plan's step time and tokens/s against what the run measured.

The worker writes ``planned`` (``wb.plan(cfg).to_dict()`` for the run's device, with ``planned["time"]``: the
step-time model's parts) to status.json and the first metric event; the run then logs ``tokens_per_s`` at every
log step. This module sets the two side by side, from plain dicts (nothing here imports torch, the plan or a
widget), for ``Run.summary()``, the dashboard, Compare and the CLI:

- ``measured_tokens_per_s(values)``: a run's measured throughput, the one definition the summary uses: the mean
  of the timed intervals' ``tokens_per_s`` after the first (the first interval holds the first step, its bytes
  probe and the warm-up); the first alone while it is the only one.
- ``prediction_check(run_or_status, events)``: predicted and measured tokens/s, their ratio predicted / measured,
  and a ``verdict`` in words when the run is more than ``OFF_BY`` (1.5x) off its prediction either way. A
  verdict is a finding about the step-time model, shown wherever the check is, never hidden.
- ``parts_table(planned, profile)``: with ``profile_steps`` on, the predicted parts of a step next to the ones
  the profiler measured (``profile/summary.json``), mapped as ``PARTS`` states.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

OFF_BY = 1.5  # a run more than this factor off its prediction, either way, gets a verdict

# (part, the plan's planned["time"] key, the profile summary's keys whose sum is the measured part). The first
# five are the parts a step is the sum of on both sides (StepTime.parts(); compute + data + exposed + idle + other
# = step in the profile summary), then the step itself, then all communication (overlapped or not: not a part).
PARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("compute", "compute_s", ("forward_ms", "backward_ms")),  # the profile's compute_ms also holds optimizer_ms
    ("optimizer", "optimizer_s", ("optimizer_ms",)),
    ("exposed communication", "exposed_comm_s", ("comm_exposed_ms",)),
    ("bubble", "bubble_s", ("idle_ms",)),  # a pipeline stage's idle time; elsewhere waiting on a slower rank
    ("overhead", "overhead_s", ("data_ms", "other_ms")),
    ("step", "step_s", ("step_ms",)),
    ("communication (all)", "comm_s", ("comm_ms",)),
)
IN_STEP = ("compute", "optimizer", "exposed communication", "bubble", "overhead")


class RunLike(Protocol):
    """What prediction_check reads of a ``workbench.runs.Run``: its status.json and its metric events."""

    @property
    def info(self) -> dict[str, Any]: ...

    def metrics(self) -> list[dict[str, Any]]: ...


def timed_throughputs(values: Iterable[Any]) -> list[float]:
    """The finite, positive tokens/s figures among ``values`` (an interval of untimed steps has none), in order."""
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
            out.append(float(v))
    return out


def measured_tokens_per_s(values: Iterable[Any]) -> float | None:
    """The run's measured tokens/s from its events' ``tokens_per_s`` values, in order: the mean of the timed
    intervals after the first, or the first while it is the only one; None before any timed interval."""
    tps = timed_throughputs(values)
    rest = tps[1:] or tps
    return sum(rest) / len(rest) if rest else None


def planned_of(status: Mapping[str, Any] | None, events: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The run's ``planned`` dict: status.json's, else the first event's that has one."""
    planned = (status or {}).get("planned")
    if isinstance(planned, dict):
        return planned
    for ev in events or []:
        if isinstance(ev.get("planned"), dict):
            return ev["planned"]
    return None


def predicted_tokens_per_s(planned: Mapping[str, Any] | None) -> float | None:
    """The plan's tokens/s (None when the plan failed or predicts no time)."""
    v = (planned or {}).get("tokens_per_s")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return float(v) if ok else None


def verdict(predicted: float, measured: float) -> str | None:
    """The finding, in words, when measured is more than OFF_BY off predicted either way; None within it."""
    if measured * OFF_BY < predicted:
        return (f"measured {measured:,.0f} tokens/s, {predicted / measured:.1f}x below the predicted "
                f"{predicted:,.0f}: the step-time model missed something — compare the parts below")  # fmt: skip
    if measured > predicted * OFF_BY:
        return (f"measured {measured:,.0f} tokens/s, {measured / predicted:.1f}x above the predicted "
                f"{predicted:,.0f}: the step-time model charged for something this run did not pay — compare "
                "the parts below")  # fmt: skip
    return None


def check(planned: Mapping[str, Any] | None, values: Iterable[Any]) -> dict[str, Any] | None:
    """Predicted against measured tokens/s, from a ``planned`` dict and the events' ``tokens_per_s`` values
    in order (what ``prediction_check`` and the dashboard share); None while nothing is measured.

    Keys: predicted_tokens_per_s, measured_tokens_per_s, ratio (predicted / measured), off_by (the factor
    either way, >= 1), verdict (None within OFF_BY), measured_over (timed intervals the mean is over),
    predicted_step_s, predicted_parts_s (the step-time model's parts, seconds), source (where the device
    facts came from), and note (why there is no prediction, when there is none)."""
    tps = timed_throughputs(values)
    measured = measured_tokens_per_s(tps)
    if measured is None:
        return None
    predicted = predicted_tokens_per_s(planned)
    time = (planned or {}).get("time") or {}
    out: dict[str, Any] = {
        "predicted_tokens_per_s": predicted,
        "measured_tokens_per_s": measured,
        "measured_over": max(1, len(tps) - 1),
        "ratio": None,
        "off_by": None,
        "verdict": None,
        "predicted_step_s": time.get("step_s", (planned or {}).get("step_time_s")),
        "predicted_parts_s": {part: float(time[key]) for part, key, _ in PARTS[:5] if key in time},
        "source": time.get("source"),
        "note": None,
    }
    if predicted is None:
        err = (planned or {}).get("error")
        out["note"] = f"no prediction: {err}" if err else "no prediction: the run's status.json has no plan"
        return out
    ratio = predicted / measured
    out.update(ratio=ratio, off_by=max(ratio, 1 / ratio), verdict=verdict(predicted, measured))
    return out


def prediction_check(
    run_or_status: RunLike | Mapping[str, Any], events: list[dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """A run's predicted against measured tokens/s (keys: see ``check``); None while it has no measured figure.

    ``run_or_status``: a ``Run`` (its status.json and, unless ``events`` is given, its metric events) or a
    status.json dict; ``events``: the run's metric events (where the first event's ``planned`` stands in for
    a status without one, and whose ``tokens_per_s`` are measured as ``measured_tokens_per_s`` says)."""
    if isinstance(run_or_status, Mapping):
        status: Mapping[str, Any] = run_or_status
    else:
        status = run_or_status.info
        if events is None:
            events = run_or_status.metrics()
    events = events or []
    return check(planned_of(status, events), [ev.get("tokens_per_s") for ev in events])


def parts_table(planned: Mapping[str, Any] | None, profile: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The predicted parts of a step next to the profiler's, ms per optimizer step: rows of {part,
    predicted_ms, measured_ms, measured_by_rank_ms, measured_as, in_step}, in ``PARTS`` order ([] without a
    plan's time or a profile summary). measured_ms is the mean over the ranks (the plan predicts the slowest
    rank, but a synchronous step's ranks take one step time; where they differ it shows in idle, per rank)."""
    time = (planned or {}).get("time")
    ranks = (profile or {}).get("ranks") or []
    if not isinstance(time, dict) or not ranks:
        return []
    rows = []
    for part, key, measured_keys in PARTS:
        per_rank = [sum(float(r.get(k) or 0.0) for k in measured_keys) for r in ranks]
        predicted = time.get(key)
        rows.append({
            "part": part,
            "predicted_ms": 1e3 * float(predicted) if isinstance(predicted, (int, float)) else None,
            "measured_ms": sum(per_rank) / len(per_rank),
            "measured_by_rank_ms": per_rank,
            "measured_as": " + ".join(measured_keys),
            "in_step": part in IN_STEP,
        })  # fmt: skip
    return rows


def prediction_line(result: Mapping[str, Any] | None) -> str | None:
    """One line of text: predicted against measured tokens/s and their ratio (the CLI's and the dashboard's)."""
    if result is None:
        return None
    measured = f"measured {result['measured_tokens_per_s']:,.0f} tokens/s"
    if result["predicted_tokens_per_s"] is None:
        return f"{measured}; {result['note']}"
    return (f"predicted {result['predicted_tokens_per_s']:,.0f} tokens/s, {measured} "
            f"(predicted / measured {result['ratio']:.2f})")  # fmt: skip
