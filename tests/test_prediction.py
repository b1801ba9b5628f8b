"""Every run checks the prediction (workbench/prediction.py): predicted against measured tokens/s, the 1.5x verdict,
the parts table of a profiled run, and where they show (Run.summary, the dashboard, Compare, the CLI).

Synthetic status dicts and recorded runs here, no training; ``check_recorded_prediction`` holds a real run to the
same and is called from the real runs of tests/test_train.py (the CLI's 10-step run) and tests/test_profile.py
(the profiled run), so this file launches nothing of its own.
"""

from __future__ import annotations

import json
import os

import pytest

import workbench as wb
from tests.test_profile import synthetic
from tests.test_widgets import events_of, write_run
from workbench.metrics_schema import PREDICTION_COLUMNS
from workbench.prediction import (
    IN_STEP,
    OFF_BY,
    measured_tokens_per_s,
    parts_table,
    prediction_check,
    prediction_line,
)
from workbench.profiling import rank_facts, summarize

PARTS_S = {"compute_s": 0.030, "optimizer_s": 0.004, "exposed_comm_s": 0.002, "bubble_s": 0.0, "overhead_s": 0.001}


def planned(tokens_per_s: float = 10_000.0) -> dict:
    """A plan's to_dict() as status.json holds it, reduced to what the check reads."""
    step = sum(PARTS_S.values())
    time = {**PARTS_S, "comm_s": 0.003, "step_s": step, "source": "data sheet, unmeasured",
            "comm_by_op_s": {"all_reduce": 0.003}}  # fmt: skip
    return {"tokens_per_s": tokens_per_s, "step_time_s": step, "time": time}


def events(*tps: float | None) -> list[dict]:
    return [{"step": i + 1, **({"tokens_per_s": v} if v is not None else {})} for i, v in enumerate(tps)]


def test_measured_is_the_mean_after_the_first_timed_interval():
    assert measured_tokens_per_s([]) is None and measured_tokens_per_s([None, 0.0, float("nan")]) is None
    assert measured_tokens_per_s([100.0]) == 100.0  # the only one
    assert measured_tokens_per_s([None, 100.0, 200.0, 400.0]) == 300.0  # the first timed one is left out


def test_a_run_2x_below_or_above_its_prediction_gets_a_verdict():
    below = prediction_check({"planned": planned(10_000)}, events(9_000, 5_000, 5_000))
    assert below["predicted_tokens_per_s"] == 10_000 and below["measured_tokens_per_s"] == 5_000
    assert below["ratio"] == pytest.approx(2.0) and below["off_by"] == pytest.approx(2.0)
    assert below["verdict"] == ("measured 5,000 tokens/s, 2.0x below the predicted 10,000: the step-time model "
                                "missed something — compare the parts below")  # fmt: skip
    assert below["measured_over"] == 2
    assert below["predicted_parts_s"] == {"compute": 0.030, "optimizer": 0.004, "exposed communication": 0.002,
                                          "bubble": 0.0, "overhead": 0.001}  # fmt: skip
    assert sum(below["predicted_parts_s"].values()) == pytest.approx(below["predicted_step_s"])
    above = prediction_check({"planned": planned(10_000)}, events(1.0, 20_000))
    assert above["ratio"] == pytest.approx(0.5) and above["off_by"] == pytest.approx(2.0)
    assert above["verdict"].startswith("measured 20,000 tokens/s, 2.0x above the predicted 10,000: ")
    assert prediction_line(below) == "predicted 10,000 tokens/s, measured 5,000 tokens/s (predicted / measured 2.00)"


@pytest.mark.parametrize("measured", [6_667.0, 7_000.0, 10_000.0, 14_000.0, 15_000.0])  # 1.5x either way: none
def test_within_1_5x_no_verdict(measured):
    result = prediction_check({"planned": planned(10_000)}, events(1.0, measured))
    assert result["verdict"] is None and result["ratio"] == pytest.approx(10_000 / measured)


def test_no_measured_figure_no_check_and_no_plan_says_so():
    assert prediction_check({"planned": planned()}, []) is None
    assert prediction_check({"planned": planned()}, events(None, None)) is None  # only profiled/compiling steps
    failed = prediction_check({"planned": {"error": "no plan: the planner has no figures for the GPU 'X'"}},
                              events(1.0, 500.0))  # fmt: skip
    assert failed["predicted_tokens_per_s"] is None and failed["ratio"] is None and failed["verdict"] is None
    assert failed["note"] == "no prediction: no plan: the planner has no figures for the GPU 'X'"
    assert "measured 500 tokens/s; no prediction" in prediction_line(failed)
    # no status.json plan (yet): the first event's stands in
    first = [{"step": 1, "tokens_per_s": 5_000.0, "planned": planned(10_000)}]
    assert prediction_check({}, first)["ratio"] == pytest.approx(2.0)


def test_summary_and_run_carry_the_prediction(quickstart, workdir):
    evs = events_of(6)
    run = write_run(os.path.abspath("runs/pred"), quickstart, evs, planned=planned(3_000))
    s = run.summary()
    assert set(PREDICTION_COLUMNS) <= set(s)
    measured = sum(e["tokens_per_s"] for e in evs[1:]) / 5  # the summary's definition: after the first
    assert s["tokens_per_s"] == pytest.approx(measured)
    assert s["predicted_tokens_per_s"] == 3_000 and s["prediction_ratio"] == pytest.approx(3_000 / measured)
    assert "x below the predicted 3,000" in s["prediction_verdict"]
    assert run.prediction() == prediction_check(run) == prediction_check(run.info, run.metrics())
    plain = write_run(os.path.abspath("runs/plain"), quickstart, evs)  # recorded before plans had a time
    assert plain.summary()["predicted_tokens_per_s"] is None and plain.summary()["prediction_ratio"] is None


@pytest.fixture
def profile():
    """Rank 0 computes 40 us then waits in a recv until 90 us; rank 1 computes 80 us (test_profile's trace)."""
    return summarize([rank_facts(synthetic(0, 40, 40), 0, 2), rank_facts(synthetic(1, 80, 80), 1, 2)])


def test_parts_table_pairs_predicted_and_measured(profile):
    rows = parts_table(planned(), profile)
    assert [r["part"] for r in rows] == [*IN_STEP, "step", "communication (all)"]
    by = {r["part"]: r for r in rows}
    assert by["compute"]["predicted_ms"] == pytest.approx(30.0) and by["step"]["predicted_ms"] == pytest.approx(37.0)
    ranks = profile["ranks"]
    for part, keys in (("compute", ("forward_ms", "backward_ms")), ("optimizer", ("optimizer_ms",)),
                       ("exposed communication", ("comm_exposed_ms",)), ("bubble", ("idle_ms",)),
                       ("overhead", ("data_ms", "other_ms")), ("step", ("step_ms",))):  # fmt: skip
        want = [sum(r[k] for k in keys) for r in ranks]
        assert by[part]["measured_by_rank_ms"] == pytest.approx(want), part
        assert by[part]["measured_ms"] == pytest.approx(sum(want) / len(want)), part
    for side in ("predicted_ms", "measured_ms"):  # the parts add up to the step on both sides
        assert sum(by[p][side] for p in IN_STEP) == pytest.approx(by["step"][side]), side
    assert not by["communication (all)"]["in_step"]
    assert parts_table(planned(), None) == [] and parts_table({"error": "x"}, profile) == []


def test_dashboard_shows_the_predicted_line_the_ratio_and_the_verdict(quickstart, workdir, profile):
    from tests.test_timeline import write_profile
    from widgets import Dashboard

    evs = events_of(10)  # ~1,000 tokens/s measured
    evs[0]["planned"] = planned(1_100)
    db = Dashboard(write_run(os.path.abspath("runs/near"), quickstart, evs))
    (shape,) = db.throughput_fig.layout.shapes
    assert shape.name == "predicted" and shape.y0 == shape.y1 == 1_100 and shape.line.dash == "dash"
    assert shape.label.text == "predicted 1,100"
    assert db.prediction["verdict"] is None and 1 < db.prediction["ratio"] < OFF_BY
    assert (
        f"predicted 1,100 tokens/s, measured {db.prediction['measured_tokens_per_s']:,.0f} tokens/s"
        in db.prediction_html.value
    )
    assert f"(predicted / measured {db.prediction['ratio']:.2f})" in db.prediction_html.value
    assert "more than 1.5x off" not in db.prediction_html.value
    assert db.parts_rows == [] and db.parts_html.value == ""

    far = write_run(os.path.abspath("runs/far"), quickstart, events_of(10), planned=planned(3_000))  # status.json's
    write_profile(far, profile)
    db.set_run(far)
    assert db.throughput_fig.layout.shapes[0].y0 == 3_000
    assert db.throughput_fig.layout.yaxis.range[1] >= 3_000  # the predicted level is on the figure
    assert "below the predicted 3,000" in db.prediction["verdict"]
    assert "more than 1.5x off the prediction" in db.prediction_html.value
    assert "set profile_steps" not in db.prediction_html.value  # profiled: the parts are below
    assert [r["part"] for r in db.parts_rows] == [r["part"] for r in parts_table(planned(), profile)]
    assert "predicted against measured" in db.parts_html.value and "forward_ms + backward_ms" in db.parts_html.value
    db.set_run(write_run(os.path.abspath("runs/none"), quickstart, events_of(10)))  # no plan: no line
    assert db.throughput_fig.layout.shapes == () and db.prediction["predicted_tokens_per_s"] is None
    db.close()


def test_compare_has_predicted_measured_and_ratio_columns(quickstart, workdir):
    from widgets import Compare

    write_run(os.path.abspath("runs/a"), quickstart, events_of(10), planned=planned(1_000))
    write_run(os.path.abspath("runs/b"), quickstart, events_of(10), planned=planned(4_000))
    cmp = Compare(runs_dir="runs")
    cmp.select(["a", "b"])
    cols = cmp.columns
    assert cols.index("tokens_per_s") + 1 == cols.index("predicted_tokens_per_s") == cols.index("prediction_ratio") - 1
    rows = {r["name"]: r for r in cmp.rows}
    assert rows["a"]["predicted_tokens_per_s"] == 1_000 and rows["b"]["prediction_ratio"] > OFF_BY
    assert rows["a"]["prediction_verdict"] is None and rows["b"]["prediction_verdict"]
    assert cmp.table_html.value.count("color:#d62728") == 1  # b's ratio, flagged
    assert "4,000" in cmp.table_html.value


def test_cli_summary_prints_the_prediction(quickstart, workdir, capsys, profile):
    from tests.test_timeline import write_profile
    from workbench.cli import main, print_summary

    run = write_run(os.path.abspath("runs/cli"), quickstart, events_of(10), planned=planned(3_000))
    write_profile(run, profile)
    print_summary(run)
    out = capsys.readouterr().out
    assert "prediction        predicted 3,000 tokens/s, measured " in out
    assert "VERDICT           measured" in out and "below the predicted 3,000" in out
    assert "forward_ms + backward_ms" in out and "step" in out
    main(["runs", "--runs-dir", "runs"])
    listing = capsys.readouterr().out
    assert "predicted" in listing and "3000" in listing and "!" in listing


def check_recorded_prediction(run: wb.Run) -> dict:
    """A real run's prediction, as recorded: planned["time"] in status.json and the first event, its parts adding
    up to step_s; the summary's predicted tokens/s and ratio; a verdict exactly when it is more than 1.5x off."""
    status = json.load(open(os.path.join(run.path, "status.json")))
    first = run.metrics()[0]
    for p in (status["planned"], first["planned"]):
        t = p["time"]
        assert {"compute_s", "comm_s", "exposed_comm_s", "bubble_s", "optimizer_s", "overhead_s", "step_s",
                "source"} <= set(t), t  # fmt: skip
        parts = t["compute_s"] + t["optimizer_s"] + t["exposed_comm_s"] + t["bubble_s"] + t["overhead_s"]
        assert parts == pytest.approx(t["step_s"]) and t["step_s"] > 0 and isinstance(t["source"], str)
        assert p["tokens_per_s"] > 0 and p["step_time_s"] == pytest.approx(t["step_s"])
    assert status["planned"] == first["planned"]
    s = run.summary()
    assert s["predicted_tokens_per_s"] == status["planned"]["tokens_per_s"]
    assert s["prediction_ratio"] == pytest.approx(s["predicted_tokens_per_s"] / s["tokens_per_s"])
    off = max(s["prediction_ratio"], 1 / s["prediction_ratio"])
    assert (s["prediction_verdict"] is not None) == (off > OFF_BY), (off, s["prediction_verdict"])
    return s
