"""The layout registry's public API, from outside the workbench: a layout declared in tests/allreduce_layout.py
(one file: its Layout class, memory and comm functions, one register_layout) is validated, planned, offered in the
config panel and trained on 2 real processes, where it follows ddp's loss trajectory."""

from __future__ import annotations

import pytest

import workbench as wb
import workbench.config as C
from workbench.config import STRATEGY_SPECS, DeviceInfo

CPU2 = DeviceInfo("cpu", 2, "cpu")
STEPS = 8


def test_a_registered_layout_is_validated_and_planned(allreduce, quickstart):
    assert "allreduce" in C.STRATEGIES and STRATEGY_SPECS["allreduce"].module == "tests.allreduce_layout"
    cfg = quickstart.override({"parallel.strategy": "allreduce", "parallel.num_processes": 2})
    assert cfg.validate(CPU2) == []
    (p,) = cfg.override({"parallel.num_processes": 1}).validate(CPU2)
    assert p.key == "parallel.strategy" and p.message == allreduce.too_few
    (p,) = cfg.override({"parallel.tp_size": 2}).validate(CPU2)
    assert p.key == "parallel.tp_size" and "with parallel.strategy allreduce set parallel.tp_size: 1" in p.message
    assert cfg.dp_degree == 2 and not allreduce.model_parallel
    plan, ddp = wb.plan(cfg, device="cpu"), wb.plan(cfg.override({"parallel.strategy": "ddp"}), device="cpu")
    N = ddp.num_params
    assert plan.comm_bytes == [4 * N, 4 * N]  # its own comm function
    for mine, theirs in zip(plan.ranks, ddp.ranks, strict=True):  # its own memory function: no DDP buckets
        assert mine.param_bytes == theirs.param_bytes and mine.optimizer_bytes == theirs.optimizer_bytes
        assert mine.buffer_bytes == 0 < theirs.buffer_bytes


def test_a_registered_layout_is_offered_in_the_panel(allreduce, quickstart):
    pytest.importorskip("ipywidgets")
    from widgets.config_panel import ConfigPanel

    panel = ConfigPanel(quickstart, devices=CPU2)
    strat = panel.controls["parallel.strategy"]
    assert tuple(strat.buttons) == C.STRATEGIES and "allreduce" in strat.buttons
    panel.controls["parallel.num_processes"].value = 1
    assert strat.buttons["allreduce"].disabled and strat.reasons["allreduce"] == "needs parallel.num_processes >= 2"
    panel.controls["parallel.num_processes"].value = 2
    strat.buttons["allreduce"].click()
    assert panel.config.parallel.strategy == "allreduce"


@pytest.mark.slow
def test_a_registered_layout_trains_on_two_processes_like_ddp(allreduce, quickstart, tmp_path):
    base = quickstart.override({"max_steps": STEPS, "log_every": 1, "eval_every": 0, "grad_accum_steps": 2,
                                "precision": "fp32", "model.dropout": 0.0, "runs_dir": str(tmp_path)})  # fmt: skip
    runs = {}
    for strategy in ("ddp", "allreduce"):
        run = wb.launch(base.override({"name": strategy, "parallel.strategy": strategy}))
        run.wait(timeout=600)
        assert run.status == "finished", (strategy, run.status, run.error)
        runs[strategy] = run
    eff = runs["allreduce"].info["effective"]
    assert eff["world_size"] == 2 and eff["strategy"] == "allreduce"
    assert {f["wrapper"] for f in eff["layout"]} == {"AllReduce(by hand)"}  # the registered class, on both ranks
    ref, got = ([m["loss"] for m in runs[s].metrics()] for s in ("ddp", "allreduce"))
    assert len(ref) == len(got) == STEPS and ref[-1] < ref[0]
    worst = max(abs(a - b) for a, b in zip(ref, got, strict=True))
    assert worst < 1e-4, f"allreduce vs ddp: max |loss difference| {worst:.2e}"
    last = runs["allreduce"].metrics()[-1]
    print("allreduce comm_bytes", last["comm_bytes"], "planned", wb.plan(runs["allreduce"].config).comm_bytes)
    assert last["comm_bytes"] == wb.plan(runs["allreduce"].config).comm_bytes  # planned bytes = measured bytes
