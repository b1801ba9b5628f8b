"""wb.suggest, `workbench tune` and the panel's "fastest that fit" view: every candidate keeps the global batch,
validates and fits, fastest predicted first; a registered layout is among them; another device plans but never
trains; one short real trial measures tokens/s; Apply sets the panel to the candidate's config."""

from __future__ import annotations

import importlib
import os

import pytest

import workbench as wb
from workbench import cli
from workbench.config import ConfigError, DeviceInfo
from workbench.plan.devices import resolve_device
from workbench.suggest import VARIED, Candidate, try_candidate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
CPU2 = DeviceInfo("cpu", 2, "cpu")
SIZES = {"model.d_model": 128, "model.n_head": 4, "model.n_layer": 4, "model.seq_len": 64, "micro_batch_size": 8,
         "grad_accum_steps": 2, "parallel.num_processes": 2}  # fmt: skip


@pytest.fixture
def cfg0(quickstart):
    return quickstart.override({**SIZES, "name": "s"})


def differences(a: wb.RunConfig, b: wb.RunConfig) -> list[str]:
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return [k for k in fa if fa[k] != fb[k]]


def another_device(cfg: wb.RunConfig) -> str:
    """A planner device that is not this machine (an H100 unless this machine is one)."""
    return "a100-40" if resolve_device(cfg, None) == "h100" else "h100"


def test_candidates_keep_the_global_batch_validate_fit_and_run_fastest_first(cfg0):
    cands = wb.suggest(cfg0, devices=CPU2)
    assert len(cands) >= 5
    speeds = [c.plan.tokens_per_s for c in cands]
    assert speeds == sorted(speeds, reverse=True) and speeds[-1] > 0
    for c in cands:
        assert isinstance(c, Candidate) and c.measured_tokens_per_s is None and c.error is None
        assert c.config.global_batch_size == cfg0.global_batch_size == 32
        assert c.config.validate(CPU2) == [] and c.plan.fits
        assert c.plan.tokens_per_s == wb.plan(c.config).tokens_per_s  # the plan of its own config
        assert c.name.startswith("s-" + c.config.parallel.strategy) and c.config.parallel.strategy in c.why
        assert c.memory_bytes == max(r.total_bytes for r in c.plan.ranks) > 0
        assert set(differences(cfg0, c.config)) <= {*VARIED, "name"}  # the rest is cfg0's own
    assert len({c.name for c in cands}) == len(cands)
    assert {c.config.parallel.strategy for c in cands} >= {"ddp", "zero1", "zero2", "zero3", "tp", "pp", "ps"}
    assert {c.config.activation_checkpointing for c in cands} == {False, True}
    assert {c.config.micro_batch_size * c.config.grad_accum_steps for c in cands} == {16}
    assert {c.config.precision for c in cands} <= {"fp32", "bf16"}  # fp16 on CPU is left out: never fast
    tp = next(c for c in cands if c.config.parallel.strategy == "tp")
    assert tp.config.parallel.tp_size == 2 and tp.layout == "tp (tp_size 2)" and "-tp-tp2-mb" in tp.name
    ckpt = next(c for c in cands if c.config.activation_checkpointing)
    assert ckpt.name.endswith("-ckpt") or "-ckpt-" in ckpt.name
    assert "activation_checkpointing" in ckpt.why


def test_a_registered_layout_is_among_the_candidates(allreduce, cfg0):
    cands = wb.suggest(cfg0, devices=CPU2)
    mine = [c for c in cands if c.config.parallel.strategy == "allreduce"]
    assert mine and all(c.config.validate(CPU2) == [] for c in mine)
    assert {c.config.micro_batch_size for c in mine} == {1, 2, 4, 8, 16}


def test_another_device_plans_but_never_trains(cfg0):
    other = another_device(cfg0)
    cands = wb.suggest(cfg0, device=other)
    assert len(cands) >= 5 and {c.plan.device for c in cands} == {other}
    assert "bf16" in {c.config.precision for c in cands}  # an H100 / A100 trains in bf16
    speeds = [c.plan.tokens_per_s for c in cands]
    assert speeds == sorted(speeds, reverse=True)
    with pytest.raises(ValueError, match="trials run on this machine"):
        wb.suggest(cfg0, device=other, trials=1)
    with pytest.raises(ValueError, match="unknown device"):
        wb.suggest(cfg0, device="abacus")
    with pytest.raises(ValueError, match="trials must be"):
        wb.suggest(cfg0, trials=-1)
    with pytest.raises(ValueError, match="2 or more steps"):
        wb.suggest(cfg0, trials=1, trial_steps=1)


def test_a_bad_config_is_refused(cfg0):
    with pytest.raises(ConfigError, match="model.n_head"):
        wb.suggest(cfg0.override({"model.n_head": 3}), devices=CPU2)


def test_a_trial_that_cannot_start_records_why(cfg0, monkeypatch):
    launch_module = importlib.import_module("workbench.launch")  # wb.launch is the function

    def refuse(cfg, **kw):
        raise ConfigError(["runs_dir: no room"])

    monkeypatch.setattr(launch_module, "launch", refuse)
    cand = try_candidate(wb.suggest(cfg0, devices=CPU2)[0])
    assert cand.measured_tokens_per_s is None and "no room" in cand.error


def test_tune_prints_the_table_and_refuses_a_bad_config(capsys):
    sets = [a for k, v in SIZES.items() for a in ("--set", f"{k}={v}")]
    assert cli.main(["tune", QUICKSTART, *sets, "--top", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert "pred tok/s" in lines[head] and "mem/rank" in lines[head] and "measured tok/s" in lines[head]
    assert [line.split()[0] for line in lines[head + 1 : head + 4]] == ["1", "2", "3"]
    assert "rank 1: workbench train" in out and "at global batch 32" in out
    assert cli.main(["tune", QUICKSTART, "--set", "model.n_head=3"]) == 2
    assert "model.n_head" in capsys.readouterr().err
    other = another_device(wb.RunConfig.from_yaml(QUICKSTART))
    assert cli.main(["tune", QUICKSTART, "--device", other, "--trials", "1"]) == 2
    assert "trials run on this machine" in capsys.readouterr().err
    assert cli.main(["tune", QUICKSTART, "--device", other, "--top", "2"]) == 0
    assert "NVIDIA " + other[:4].upper() in capsys.readouterr().out


@pytest.mark.slow
def test_one_short_trial_measures_tokens_per_s(quickstart, tmp_path):
    tiny = quickstart.override({"name": "t", "model.d_model": 32, "model.n_layer": 1, "model.n_head": 2,
                                "model.seq_len": 16, "micro_batch_size": 4, "grad_accum_steps": 1,
                                "runs_dir": str(tmp_path / "runs")})  # fmt: skip
    cands = wb.suggest(tiny, trials=1, trial_steps=6)
    first = cands[0]
    assert first.error is None, first.error
    assert first.measured_tokens_per_s is not None and first.measured_tokens_per_s > 0
    assert first.ratio == pytest.approx(first.plan.tokens_per_s / first.measured_tokens_per_s)
    run = wb.Run.attach(first.run_path)
    assert run.status == "finished" and run.config.max_steps == 6 and run.config.eval_every == 0
    assert os.path.dirname(first.run_path) == str(tmp_path / "runs")
    assert all(c.measured_tokens_per_s is None for c in cands[1:])


def test_the_panels_apply_sets_the_candidates_config(cfg0):
    pytest.importorskip("ipywidgets")
    from widgets.config_panel import ConfigPanel

    panel = ConfigPanel(cfg0, devices=CPU2)
    view = panel.suggestions
    assert view.candidates == []  # nothing is suggested until asked
    panel.suggest_section.selected_index = 0  # opening the view suggests
    assert len(view.candidates) == len(view.buttons) == 5
    assert [c.name for c in view.candidates] == [c.name for c in wb.suggest(cfg0, devices=CPU2)[:5]]
    pick = view.candidates[3]
    view.buttons[3].click()
    assert panel.config == pick.config and view.buttons[3].button_style == "success"
    panel.set("parallel.strategy", "tp")  # tp_size 1: a config with a problem; the view says so, suggests nothing
    assert view.refresh() == [] and view.buttons == [] and "parallel.tp_size" in view.header.value
