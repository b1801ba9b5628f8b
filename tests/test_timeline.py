"""The step timeline view (widgets/timeline.py) on synthetic profile summaries: no training.

The summaries come from workbench.profiling.summarize on the synthetic two-rank trace of tests/test_profile.py,
so the figures are tested on what the engine really writes; the real run's summary is drawn in test_profile.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.test_profile import synthetic
from tests.test_widgets import events_of, write_run
from widgets import Compare, ConfigPanel, Dashboard
from widgets.timeline import BREAKDOWN, LANE_KINDS, breakdown_figure, kind_color, timeline_figure, timeline_rows
from workbench.profiling import rank_facts, summarize


@pytest.fixture
def summary():
    """Rank 0 computes 40 us then waits in a recv until 90 us; rank 1 computes 80 us (test_profile's trace)."""
    return summarize([rank_facts(synthetic(0, 40, 40), 0, 2), rank_facts(synthetic(1, 80, 80), 1, 2)])


def test_timeline_draws_every_merged_span(summary):
    fig = timeline_figure(summary)
    assert list(fig.layout.yaxis.ticktext) == ["rank 0", "rank 1"]
    spans = {}
    for t in summary["timeline"]:
        for s, e, kind in t["spans"]:
            spans.setdefault(kind, []).append((t["rank"], s, e - s))
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == set(spans)  # one trace per kind, nothing else
    for kind, rows in spans.items():
        t = by_name[kind]
        got = sorted(zip(t.y, t.base, t.x, strict=True))
        assert [x for row in got for x in row] == pytest.approx([x for row in sorted(rows) for x in row])
        assert t.marker.color == kind_color(kind) and t.orientation == "h"
        lane = kind in LANE_KINDS  # the training thread above, communication below, in each rank's row
        assert (t.offset < 0) == lane and t.offset + t.width <= 0.5
    assert "idle" in by_name and "recv" in by_name
    for r in summary["ranks"]:  # the idle bars of a rank are its idle_ms (per step) over its steps
        idle = sum(x for y, x in zip(by_name["idle"].y, by_name["idle"].x, strict=True) if y == r["rank"])
        assert idle == pytest.approx(r["idle_ms"] * r["steps"], abs=2e-3)
    assert len(fig.layout.shapes) == 2 * sum(len(t["steps"]) for t in summary["timeline"])  # step boundaries


def test_timeline_of_several_runs_side_by_side(summary):
    rows = timeline_rows({"ddp": summary, "zero3": summary})
    assert [r["label"] for r in rows] == ["ddp · rank 0", "ddp · rank 1", "zero3 · rank 0", "zero3 · rank 1"]
    fig = timeline_figure({"ddp": summary, "zero3": summary})
    assert list(fig.layout.yaxis.ticktext) == [r["label"] for r in rows]
    assert fig.layout.height > timeline_figure(summary).layout.height
    assert not timeline_figure({}).data  # nothing profiled: an empty figure, no error


def test_breakdown_adds_up_to_the_step(summary):
    fig = breakdown_figure(summary)
    assert [t.name for t in fig.data] == [label for _, label, _ in BREAKDOWN]
    for i, r in enumerate(summary["ranks"]):
        assert sum(t.y[i] for t in fig.data) == pytest.approx(r["step_ms"])  # the five parts are the step
        assert fig.data[0].y[i] == pytest.approx(r["compute_ms"])
    two = breakdown_figure({"ddp": summary, "zero3": summary})
    assert [list(level) for level in two.data[0].x] == [
        ["ddp", "ddp", "zero3", "zero3"],
        ["rank 0", "rank 1", "rank 0", "rank 1"],
    ]
    assert "hidden under compute" in two.data[0].customdata[0] or summary["ranks"][0]["comm_ms"] == 0


def write_profile(run, summary):
    os.makedirs(os.path.join(run.path, "profile"))
    with open(os.path.join(run.path, "profile", "summary.json"), "w") as f:
        json.dump(summary, f)


def test_dashboard_and_compare_show_profiles(quickstart, workdir, summary):
    plain = write_run(os.path.abspath("runs/plain"), quickstart, events_of(6))
    profiled = write_run(os.path.abspath("runs/profiled"), quickstart, events_of(6))
    write_profile(profiled, summary)
    db = Dashboard(plain)
    assert db.profile is None and db.profile_box.layout.display == "none"
    db.set_run(profiled)
    assert db.profile == summary and db.profile_box.layout.display is None
    assert len(db.timeline_fig.data) == len(timeline_figure(summary).data) and len(db.breakdown_fig.data) == 5
    db.set_run(plain)
    assert db.profile is None and db.profile_box.layout.display == "none"
    db.close()

    cmp = Compare(runs_dir="runs")
    cmp.select(["plain"])
    assert cmp.profiles == {} and cmp.profile_box.layout.display == "none"
    other = write_run(os.path.abspath("runs/other"), quickstart, events_of(6))
    write_profile(other, summary)
    cmp.refresh()
    cmp.select(["plain", "profiled", "other"])
    assert sorted(cmp.profiles) == ["other", "profiled"] and cmp.profile_box.layout.display is None
    assert len(cmp.profile_fig.data[0].y) == 4  # two runs x two ranks, side by side
    assert len(cmp.timeline_fig.layout.yaxis.ticktext) == 4


def test_profile_steps_has_a_panel_control(quickstart):
    panel = ConfigPanel(quickstart)
    control = panel.controls["profile_steps"]
    assert control.value == 0
    control.value = 2
    assert panel.config.profile_steps == 2
