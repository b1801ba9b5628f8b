"""The metric schema: every key of a metric event (one JSON object a line of metrics.jsonl), stated once.

``METRICS`` has one row per key the workbench writes (the worker, and ``Reporter`` for a loop launched from a
notebook cell): its unit, when it is written, what it means, and where it goes:

- ``figure``: the dashboard figure that draws it (``Dashboard.<figure>_fig``), None when none does;
- ``smoothed``: a noisy series, drawn raw (faint) with a debiased EMA on top;
- ``constant``: the same in every event of a run, drawn as a level line (the entropy floor);
- ``tensorboard``: logged as a TensorBoard scalar (per-rank lists as ``key/rank<i>``; see
  ``telemetry.tensorboard_scalars``). Not the wall clock ``time``: TensorBoard stores float32, which would
  round ~1.7e9 s by up to 128 s (2^-24 relative); ``elapsed_s`` is exact to well under a millisecond for days;
- ``compare``: the column of ``Run.summary()`` (and so of ``Compare``'s table) that sums it up
  (``PREDICTION_COLUMNS``: the summary's columns of predicted against measured tokens/s);
- ``hparams``: linked to the run's config in TensorBoard's HParams dashboard.

Keys are a contract other tools read: add freely, never rename. A new key is added here before anything
writes it (a test reads real runs and fails on a key missing here), and README's table of metric keys is
this table (``markdown_table()``; a test compares them). Nothing here imports torch or anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

# when a key is in an event
EVERY = "every log step"
EVAL = "eval steps"
FIRST = "first event"
LAST = "last event"


@dataclass(frozen=True)
class Metric:
    """One key of a metric event (see the module docstring for the columns)."""

    key: str
    unit: str
    when: str
    meaning: str
    figure: str | None = None
    smoothed: bool = False
    constant: bool = False
    tensorboard: bool = True
    compare: str | None = None
    hparams: bool = False
    per_rank: bool = False  # a list, one entry per rank


METRICS: tuple[Metric, ...] = (
    Metric("step", "optimizer steps", EVERY, "the optimizer step just done (the x axis)", tensorboard=False,
           compare="steps"),
    Metric("tokens", "tokens", EVERY, "training tokens so far, over all ranks (the other x axis)"),
    Metric("loss", "nats/token", EVERY, "training loss: mean over the interval, reduced across ranks (per sample for task.kind classify)",
           figure="loss", smoothed=True, compare="final_loss", hparams=True),
    Metric("eval_loss", "nats/token", EVAL, "loss on the eval split", figure="loss", compare="best_eval_loss",
           hparams=True),
    Metric("lr", "", EVERY, "learning rate (the scheduler's last)", figure="lr"),
    Metric("grad_norm", "", EVERY, "global gradient norm, mean over the interval's steps", figure="grad_norm",
           smoothed=True),
    Metric("tokens_per_s", "tokens/s", EVERY, "training throughput (absent when no step of the interval was "
           "timed)", figure="throughput", smoothed=True, compare="tokens_per_s", hparams=True),
    Metric("samples_per_s", "sequences/s", EVERY, "training throughput in sequences"),
    Metric("step_time_s", "s", EVERY, "wall time of one optimizer step, mean over the interval"),
    Metric("mfu", "fraction", EVERY, "model FLOP/s over the devices' peak; absent rather than guessed",
           figure="throughput", smoothed=True, compare="mfu", hparams=True),
    Metric("mem_bytes", "bytes", EVERY, "peak memory: CUDA max allocated, or CPU peak RSS", figure="memory",
           compare="peak_mem_bytes", per_rank=True),
    Metric("time", "s since the epoch", EVERY, "wall clock (metrics.jsonl only)", tensorboard=False),
    Metric("elapsed_s", "s", EVERY, "seconds since this job started"),
    Metric("loss_scale", "", EVERY, "fp16's loss scale (precision fp16)"),
    Metric("entropy_floor", "nats/token", EVERY, "the lowest loss any model can reach on the synthetic data",
           figure="loss", constant=True),
    Metric("comm_bytes", "bytes", EVERY, "payload handed to collectives and send/recv in one optimizer step "
           "(measured once, then repeated)", figure="comm", per_rank=True),
    Metric("comm_bytes_by_op", "bytes", EVERY, "comm_bytes of rank 0 by operation", tensorboard=False),
    Metric("comm_bytes_kind", "", EVERY, "how comm_bytes were found (measured)", tensorboard=False),
    Metric("comm_bytes_scope", "", EVERY, "what comm_bytes measured, in words", tensorboard=False),
    Metric("bubble_fraction", "fraction", EVERY, "the pipeline schedule's idle share, computed (pp layouts)"),
    Metric("idle_fraction", "fraction", EVERY, "each pipeline stage's measured idle share", per_rank=True),
    Metric("idle_s", "s", EVERY, "each pipeline stage's measured idle time", per_rank=True),
    Metric("eval_accuracy", "fraction", EVAL, "accuracy on the eval split (task.kind classify)"),
    Metric("eval_f1", "fraction", EVAL, "macro-F1 on the eval split (task.kind classify)"),
    Metric("test_loss", "nats/sample", LAST, "loss on the whole test split (task.kind classify)"),
    Metric("test_accuracy", "fraction", LAST, "accuracy on the whole test split (task.kind classify)"),
    Metric("test_f1", "fraction", LAST, "macro-F1 on the whole test split (task.kind classify)"),
    Metric("trainable_params", "parameters", FIRST, "parameters the optimizer updates"),
    Metric("chance_accuracy", "fraction", FIRST, "1 / num_labels (task.kind classify)"),
    Metric("bayes_accuracy", "fraction", FIRST, "the synthetic task's best possible test accuracy"),
    Metric("effective", "", FIRST, "what is really in effect (as in status.json)", tensorboard=False),
    Metric("measured", "bytes", FIRST, "memory held after the first optimizer step", tensorboard=False,
           per_rank=True),
    Metric("planned", "", FIRST, "wb.plan(cfg).to_dict() for this run's device", tensorboard=False),
    Metric("world_size", "processes", EVERY, "processes of a notebook_launch loop (Reporter)"),
)  # fmt: skip

BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
KEYS: tuple[str, ...] = tuple(BY_KEY)
NOT_SCALARS: tuple[str, ...] = tuple(m.key for m in METRICS if not m.tensorboard)
HPARAM_METRICS: tuple[str, ...] = tuple(m.key for m in METRICS if m.hparams)
COMPARE_COLUMNS: tuple[str, ...] = tuple(m.compare for m in METRICS if m.compare)
# Run.summary()'s columns that set the run against its plan (workbench/prediction.py): no key of their own, they
# read `planned` (status.json, the first event) and `tokens_per_s`; Compare shows them after tokens_per_s
PREDICTION_COLUMNS: tuple[str, ...] = ("predicted_tokens_per_s", "prediction_ratio")
SUMMARY_COLUMNS: tuple[str, ...] = tuple(
    c for col in COMPARE_COLUMNS for c in ((col, *PREDICTION_COLUMNS) if col == "tokens_per_s" else (col,))
)


def series_keys() -> tuple[str, ...]:
    """The keys the dashboard draws as one value per event against the steps (not per rank, not a level, not
    only at eval steps)."""
    return tuple(m.key for m in METRICS if m.figure and m.when == EVERY and not (m.per_rank or m.constant))


def figure_metrics(figure: str) -> tuple[Metric, ...]:
    """The metrics a dashboard figure draws, in the table's order (the order of their traces)."""
    return tuple(m for m in METRICS if m.figure == figure)


def figures() -> tuple[str, ...]:
    """The dashboard's figures that draw metrics, in the table's order."""
    return tuple(dict.fromkeys(m.figure for m in METRICS if m.figure))


def unknown_keys(events: list[dict]) -> list[str]:
    """Keys of these events that the table lacks, in order of appearance (empty when all are known)."""
    seen = dict.fromkeys(k for ev in events for k in ev)
    return [k for k in seen if k not in BY_KEY]


def markdown_table() -> str:
    """The table as README shows it (README's copy is checked against this)."""

    def yes(b: bool) -> str:
        return "yes" if b else ""

    lines = [
        "| key | unit | written | meaning | dashboard | TensorBoard | Compare | HParams |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        unit = m.unit + (", per rank" if m.per_rank else "")
        fig = (m.figure or "") + (" (smoothed)" if m.smoothed else "") + (" (level)" if m.constant else "")
        cols = [f"`{m.key}`", unit, m.when, m.meaning, fig, yes(m.tensorboard),
                f"`{m.compare}`" if m.compare else "", yes(m.hparams)]  # fmt: skip
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)
