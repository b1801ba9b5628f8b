"""The metric schema (workbench/metrics_schema.py) is the one statement of a metric event's keys: README's table is
it, telemetry's TensorBoard and HParams keys come from it, and a real run writes no key it lacks."""

from __future__ import annotations

import os

import pytest

import workbench as wb
from workbench import metrics_schema as ms
from workbench.telemetry import HPARAM_METRICS, tensorboard_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_shows_the_schema_table():
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = ms.markdown_table()
    assert table in readme, "README's table of metric keys differs from workbench.metrics_schema.markdown_table()"
    rows = [ln for ln in readme.splitlines() if ln.startswith("| `")]
    in_readme = [ln.split("`")[1] for ln in rows if ln in table.splitlines()]
    assert in_readme == list(ms.KEYS)


def test_keys_are_unique_and_columns_consistent():
    assert len(ms.KEYS) == len(ms.METRICS)
    for m in ms.METRICS:
        assert m.when in (ms.EVERY, ms.EVAL, ms.FIRST, ms.LAST), m
        assert not m.smoothed or m.figure, f"{m.key}: smoothed but drawn nowhere"
        assert "|" not in m.meaning + m.unit, f"{m.key}: '|' would break README's table"
    assert len(set(ms.SUMMARY_COLUMNS)) == len(ms.SUMMARY_COLUMNS)
    assert set(ms.SUMMARY_COLUMNS) == {*ms.COMPARE_COLUMNS, *ms.PREDICTION_COLUMNS}
    assert not set(ms.PREDICTION_COLUMNS) & set(ms.KEYS)  # summary columns, not metric keys


def test_tensorboard_and_hparams_follow_the_schema():
    event = {m.key: [1.0, 2.0] if m.per_rank else 1.0 for m in ms.METRICS}
    tags = tensorboard_scalars(event)
    for m in ms.METRICS:
        tag = f"{m.key}/rank1" if m.per_rank else m.key
        assert (tag in tags) == m.tensorboard, m.key
    assert HPARAM_METRICS == ("loss", "eval_loss", "tokens_per_s", "mfu")
    assert all(ms.BY_KEY[k].tensorboard for k in HPARAM_METRICS)  # HParams links TensorBoard scalars


def test_summary_has_every_compare_column(workdir, quickstart):
    run_dir = os.path.join("runs", "empty")
    os.makedirs(run_dir)
    quickstart.override({"name": "empty"}).to_yaml(os.path.join(run_dir, "config.yaml"))
    summary = wb.Run(run_dir).summary()
    assert set(ms.SUMMARY_COLUMNS) <= set(summary), set(ms.SUMMARY_COLUMNS) - set(summary)


def test_dashboard_and_compare_read_the_schema():
    """Every metric of a series figure has its traces there, found by name; memory and comm draw the per-rank keys;
    Compare's table has the schema's columns."""
    from widgets import Dashboard
    from widgets.compare import METRIC_COLUMNS
    from widgets.dashboard import SERIES_FIGURES
    from widgets.figures import SCALARS, smoothed_name, trace

    db = Dashboard()
    assert set(ms.figures()) == {*SERIES_FIGURES, "memory", "comm"}
    assert {m.figure for m in ms.METRICS if m.per_rank and m.figure} == {"memory", "comm"}
    for name in SERIES_FIGURES:
        fig = db.series_figure(name)
        want = [n for m in ms.figure_metrics(name) for n in ((m.key, smoothed_name(m.key)) if m.smoothed else (m.key,))]
        assert [t.name for t in fig.data] == want, name
        assert all(trace(fig, n).name == n for n in want)
    assert all(ms.BY_KEY[k].figure in SERIES_FIGURES for k in SCALARS)  # RunStore's columns: series drawn
    assert METRIC_COLUMNS == ("status", *ms.SUMMARY_COLUMNS)
    db.close()


def test_unknown_keys():
    assert ms.unknown_keys([{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.0}]) == []
    assert ms.unknown_keys([{"step": 1, "los": 2.0}, {"acc": 1, "los": 3}]) == ["los", "acc"]


@pytest.mark.slow
def test_a_real_run_writes_only_keys_of_the_schema(workdir, quickstart):
    """A short quickstart run on 2 processes: every key in its events (first event, eval steps, comm_bytes) is in
    the table. The other real runs of the suite (classify, pipeline, fp16, notebook_launch) check the same."""
    cfg = quickstart.override({"name": "schema", "max_steps": 4, "log_every": 2, "eval_every": 2,
                               "schedule.warmup_steps": 1})  # fmt: skip
    run = wb.launch(cfg)
    run.wait(timeout=300)
    assert run.status == "finished", (run.status, run.error)
    events = run.metrics()
    assert ms.unknown_keys(events) == []
    written = {k for ev in events for k in ev}
    expected = {"step", "loss", "eval_loss", "mem_bytes", "comm_bytes", "entropy_floor", "effective", "planned"}
    assert expected <= written, expected - written
