"""compile: true — each block torch.compile'd in place: refused where it is not built, one real 2-process run."""

from __future__ import annotations

import json
import os

import pytest

from workbench.config import STRATEGIES, STRATEGY_SPECS


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compile_refused_before_launch_where_it_is_not_built(quickstart, strategy):
    layout = {"parallel.strategy": strategy, "parallel.num_processes": 2}
    layout.update({"parallel.tp_size": 2} if strategy in ("tp", "dp_tp") else {})
    layout.update({"parallel.pp_size": 2} if strategy == "pp" else {})
    problems = quickstart.override({**layout, "compile": True}).validate()
    assert quickstart.override(layout).validate() == []
    if strategy in ("ddp", "zero1", "zero2", "zero3"):
        assert STRATEGY_SPECS[strategy].compiles and problems == []
    else:
        assert [p.key for p in problems] == ["compile"] and "compile: false" in problems[0].message


def test_compile_keeps_parameter_names(quickstart):
    """nn.Module.compile() in place: state dicts (and so checkpoints) are those of the eager model."""
    from workbench.models import build_model
    from workbench.parallel.compiling import compile_blocks

    model = build_model(quickstart)
    names = list(model.state_dict())
    assert compile_blocks(model) == quickstart.model.n_layer
    assert list(model.state_dict()) == names and not any("_orig_mod" in n for n in names)


def test_a_compiled_run_reports_compile_time_apart(small, workdir):
    """One short 2-process compiled run: it trains and evaluates; effective says compiled, with its compile time
    and the graphs dynamo captured; the compiling step stays out of tokens/s; the bytes moved are probed on the
    second step (a dispatch mode would make torch.compile skip the frame)."""
    import workbench as wb

    cfg = small.override({"name": "compiled", "compile": True, "max_steps": 4, "log_every": 1, "eval_every": 4})
    run = wb.launch(cfg)
    run.wait(timeout=600)
    assert run.status == "finished", run.error
    ev = run.metrics()
    eff = ev[0]["effective"]
    assert eff["compile"] is True and eff["compile_s"] > 0 and eff["compiled_graphs"] >= 1, eff
    assert os.path.isdir(eff["compile_cache"])  # inductor's cache, reused by the next run of the same shapes
    assert "tokens_per_s" not in ev[0] and all(e["tokens_per_s"] > 0 for e in ev[1:])
    assert ev[-1]["eval_loss"] > 0 and ev[-1]["comm_bytes_scope"].startswith("optimizer step 2")
    with open(os.path.join(run.path, "status.json")) as f:
        assert json.load(f)["effective"]["compile_s"] == eff["compile_s"]
