"""profile_steps: the interval arithmetic of the step summary on synthetic traces (no process), the key's
validation, and one real 2-process ddp run whose profiled losses equal an unprofiled run's.

The real run is the only slow test (about 15 s); the acceptance check adds pp and an unprofiled twin.
"""

from __future__ import annotations

import json
import os

import pytest

from workbench.profiling import (
    PROFILE_WARMUP,
    intersect,
    measure,
    merge,
    rank_facts,
    rank_summary,
    subtract,
    summarize,
    waits,
)


def test_interval_arithmetic():
    assert merge([(5, 7), (0, 2), (1, 3), (7, 8), (9, 9)]) == [(0, 3), (5, 8)]
    assert merge([(0, 1), (1.5, 2)], gap=0.5) == [(0, 2)]
    a, b = [(0, 10), (20, 30)], [(5, 25)]
    assert intersect(a, b) == [(5, 10), (20, 25)]
    assert subtract(a, b) == [(0, 5), (25, 30)]
    assert subtract([(0, 10)], [(2, 3), (4, 5), (9, 12)]) == [(0, 2), (3, 4), (5, 9)]
    assert measure(subtract(a, b)) + measure(intersect(a, b)) == measure(a)


def ev(name, ts, dur, tid=1, cat="cpu_op", **args):
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid, "cat": cat, "args": args}


def synthetic(rank, recv_start, compute):
    """One 100 us step: compute ops, then a blocking recv from the other rank posted at recv_start."""
    return [
        ev("wb:step", 0, 100, cat="user_annotation"),
        ev("aten::mm", 0, compute),
        ev("autograd::engine::evaluate_function: MmBackward0", compute // 2, compute - compute // 2),
        ev("c10d::recv_", recv_start, 100 - recv_start, **{"Concrete Inputs": ["", "", str(1 - rank), "0"]}),
        ev("gloo:recv", recv_start, 100 - recv_start, cat="user_annotation"),
        ev("c10d::send", recv_start, 1, **{"Concrete Inputs": ["", "", str(1 - rank), "0"]}),
        ev("gloo:send", 90, 10, tid=7, cat="user_annotation"),  # a gloo thread: arrives late on both ranks
    ]


def test_summary_on_a_synthetic_trace():
    """Rank 0 computes 40 us then waits in recv; rank 1 computes 80 us. Both sends start at 90 us: rank 0's recv
    waits from 40 to 90 (idle 50), and moves bytes 90-100 (exposed communication 10)."""
    facts = [rank_facts(synthetic(0, 40, 40), 0, 2), rank_facts(synthetic(1, 80, 80), 1, 2)]
    wait, late = waits(facts)
    assert wait[0] == [(40.0, 90.0)] and wait[1] == [(80.0, 90.0)]
    s0, kinds = rank_summary(facts[0], wait[0], late[0])
    ms = 1e-3  # the summary is in ms; the trace in us
    assert s0["step_ms"] == pytest.approx(100 * ms)
    assert s0["compute_ms"] == pytest.approx(40 * ms)
    assert s0["backward_ms"] == pytest.approx(20 * ms) and s0["forward_ms"] == pytest.approx(20 * ms)
    assert s0["idle_ms"] == pytest.approx(50 * ms)
    assert s0["comm_ms"] == pytest.approx(10 * ms) and s0["comm_exposed_ms"] == pytest.approx(10 * ms)
    assert s0["comm_hidden_fraction"] == pytest.approx(0.0)
    parts = s0["compute_ms"] + s0["data_ms"] + s0["comm_exposed_ms"] + s0["idle_ms"] + s0["other_ms"]
    assert parts == pytest.approx(s0["step_ms"])
    summary = summarize(facts)
    assert [r["rank"] for r in summary["ranks"]] == [0, 1]
    assert summary["ranks"][1]["idle_ms"] == pytest.approx(10 * ms)
    assert {k for _, _, k in summary["timeline"][0]["spans"]} >= {"forward", "backward", "idle", "recv"}


def test_overlapped_communication_is_hidden():
    """An all_reduce on a background thread under compute is hidden; the part after compute ends is exposed."""
    trace = [
        ev("wb:step", 0, 100, cat="user_annotation"),
        ev("aten::mm", 0, 60),
        ev("gloo:all_reduce", 20, 60, tid=9, cat="user_annotation"),
    ]
    f = rank_facts(trace, 0, 1)
    s, _ = rank_summary(f, [], [])
    assert s["comm_ms"] == pytest.approx(0.060) and s["comm_exposed_ms"] == pytest.approx(0.020)
    assert s["comm_hidden_fraction"] == pytest.approx(40 / 60)
    assert s["comm_by_op_ms"] == {"all_reduce": pytest.approx(0.060)}


def test_profile_steps_validation(quickstart):
    ok = quickstart.override({"max_steps": 10, "profile_steps": 10 - PROFILE_WARMUP})
    assert ok.validate() == []
    bad = quickstart.override({"max_steps": 10, "profile_steps": 9}).validate()
    assert any(p.key == "profile_steps" and "max_steps" in p.message for p in bad), bad
    assert any(p.key == "profile_steps" for p in quickstart.override({"profile_steps": -1}).validate())


def test_profiled_run(tmp_path, quickstart):
    """A 2-process ddp run with profile_steps 2: one Chrome trace per rank, a summary whose parts add up, and
    the same losses as the unprofiled run of tests' shared fixture would give (check_profile compares both)."""
    import workbench as wb

    cfg = quickstart.override({"name": "prof", "runs_dir": str(tmp_path), "max_steps": 6, "log_every": 3,
                               "eval_every": 0, "profile_steps": 2})  # fmt: skip
    run = wb.launch(cfg)
    run.wait(timeout=300)
    assert run.status == "finished", run.error
    for r in (0, 1):
        with open(os.path.join(run.path, "profile", f"rank{r}.json")) as f:
            names = {e.get("name", "") for e in json.load(f)["traceEvents"]}
        assert "wb:step" in names and "wb:optimizer" in names and "gloo:all_reduce" in names
    summary = wb.load_profile(run.path)
    for s in summary["ranks"]:
        assert s["steps"] == 2 and s["compute_ms"] > 0 and s["comm_ms"] > 0
        assert s["comm_exposed_ms"] <= s["comm_ms"] + 1e-9
        assert s["compute_ms"] + s["data_ms"] + s["comm_exposed_ms"] + s["idle_ms"] <= s["step_ms"] * 1.0001
    from widgets.timeline import breakdown_figure, timeline_figure  # the dashboard's view of this real summary

    kinds = {t.name for t in timeline_figure(summary).data}
    assert {"forward", "backward", "optimizer", "all_reduce"} <= kinds, kinds
    assert len(breakdown_figure(summary).data[0].y) == 2
    events = run.metrics()
    assert "tokens_per_s" not in events[0] or events[0]["tokens_per_s"] > 0  # steps 3-4 profiled: out of tokens/s
    assert all(e["tokens_per_s"] > 0 for e in events[1:])
    # the predicted parts next to the measured ones (tests/test_prediction.py has the rest of the mapping)
    from tests.test_prediction import check_recorded_prediction
    from workbench.prediction import IN_STEP, parts_table

    check_recorded_prediction(run)
    rows = {r["part"]: r for r in parts_table(run.info["planned"], summary)}
    assert list(rows) == [*IN_STEP, "step", "communication (all)"]
    assert all(r["predicted_ms"] is not None and len(r["measured_by_rank_ms"]) == 2 for r in rows.values())
    assert rows["compute"]["measured_ms"] > 0 and rows["step"]["measured_ms"] > 0 and rows["step"]["predicted_ms"] > 0
    assert sum(rows[p]["measured_ms"] for p in IN_STEP) <= rows["step"]["measured_ms"] * 1.0001
    assert sum(rows[p]["predicted_ms"] for p in IN_STEP) == pytest.approx(rows["step"]["predicted_ms"])
