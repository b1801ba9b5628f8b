"""The notebook widgets, driven from Python: controls -> RunConfig, derived values, disabled options,
validation messages, the plan chart, save/load/CLI; the dashboard on recorded and live runs (smoothing,
the 2,000-point bound, the redraw throttle, status on failure, Stop); Compare's table; Workbench's Launch."""

from __future__ import annotations

import html
import importlib
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import plotly.graph_objects as go
import pytest

import workbench as wb
import workbench.config as C
from widgets import Compare, ConfigPanel, Dashboard, Workbench
from widgets.config_panel import ChoiceButtons, leaf_keys
from widgets.downsample import lttb, minmax
from widgets.panel_rules import SET, strategy_rules
from workbench.config import ConfigError, DeviceInfo

QUICKSTART_YAML = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.yaml"
)
CPU2 = DeviceInfo("cpu", 2, "cpu")
H100x8 = DeviceInfo("cuda", 8, "NVIDIA H100 80GB HBM3", (9, 0), fp8_backend="torchao")
A100x2 = DeviceInfo("cuda", 2, "NVIDIA A100-SXM4-80GB", (8, 0))


def reference_ema(values, w):
    """TensorBoard's smoothing, written out independently of widgets/smoothing.py."""
    out, last, n = [], 0.0, 0
    for v in values:
        last = last * w + (1 - w) * v
        n += 1
        out.append(last / (1 - w**n) if w else v)
    return out


def write_run(path, cfg, events, state="finished", **status):
    os.makedirs(path, exist_ok=True)
    cfg.override({"name": os.path.basename(path)}).to_yaml(os.path.join(path, "config.yaml"))
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": state, **status}, f)
    return wb.Run.attach(path)


def events_of(n, floor=2.0, eval_every=10, ranks=2, comm=False, seed=0, lr=1e-3):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(1, n + 1):
        ev = {
            "step": s,
            "tokens": s * 512,
            "loss": floor + 2.0 / (1 + s / 50) + 0.05 * float(rng.standard_normal()),
            "lr": lr * min(1.0, s / 10),
            "grad_norm": 1.0 + 0.1 * float(rng.standard_normal()),
            "tokens_per_s": 1000.0 + 50 * float(rng.standard_normal()),
            "mfu": 0.1,
            "mem_bytes": [100_000_000 + r * 1_000_000 + s for r in range(ranks)],
            "entropy_floor": floor,
            "time": 1_700_000_000.0 + s,
        }
        if comm:
            ev["comm_bytes"] = [4 * 108288] * ranks
        if eval_every and s % eval_every == 0:
            ev["eval_loss"] = ev["loss"] + 0.01
        out.append(ev)
    return out


# ---------------------------------------------------------------------------------------------------------
# ConfigPanel


def test_panel_has_a_control_labelled_with_every_key(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    keys = [k for k, _, _ in leaf_keys(quickstart)]
    assert set(panel.controls) == set(keys)
    for k in keys:
        assert panel.labels[k].value == k  # widget label = config key
    assert panel.config == quickstart
    assert panel.base == quickstart  # public: Workbench reads runs_dir from it
    assert isinstance(ConfigPanel().config, wb.RunConfig)
    other = quickstart.override({"runs_dir": "elsewhere", "name": "b"})
    panel.set_config(other)
    assert panel.base == other and Workbench(other, devices=CPU2).compare.runs_dir == "elsewhere"


def test_panel_controls_build_the_runconfig(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    panel.controls["micro_batch_size"].value = 16
    panel.controls["grad_accum_steps"].value = 2
    panel.controls["optimizer.lr"].value = 1e-3
    panel.controls["model.n_layer"].value = 3
    panel.controls["model.d_model"].value = 96
    panel.controls["model.n_head"].value = 6
    panel.controls["optimizer.betas"].value = "[0.8, 0.99]"
    panel.controls["name"].value = "panel-run"
    panel.controls["precision"].buttons["bf16"].click()
    panel.controls["schedule.decay"].buttons["linear"].click()
    panel.controls["parallel.num_processes"].value = 1
    want = quickstart.override(
        {
            "micro_batch_size": 16,
            "grad_accum_steps": 2,
            "optimizer.lr": 1e-3,
            "model.n_layer": 3,
            "model.d_model": 96,
            "model.n_head": 6,
            "optimizer.betas": [0.8, 0.99],
            "name": "panel-run",
            "precision": "bf16",
            "schedule.decay": "linear",
            "parallel.num_processes": 1,
        }
    )
    assert panel.config == want
    assert panel.problems == []
    assert not panel.launch_button.disabled


def test_derived_values_follow_the_controls(quickstart):
    from workbench.models import GPT, gpt_config

    panel = ConfigPanel(quickstart, devices=CPU2)
    panel.controls["micro_batch_size"].value = 16
    panel.controls["grad_accum_steps"].value = 3
    panel.controls["parallel.num_processes"].value = 2
    assert panel.derived["global_batch_size"] == 16 * 3 * 2
    assert panel.derived["tokens_per_step"] == 16 * 3 * 2 * quickstart.model.seq_len
    assert "= <b>96</b> sequences" in panel.derived_html.value
    # the closed form the panel shows equals the parameters of the model the worker builds
    panel.controls["model.d_model"].value = 128
    panel.controls["model.n_layer"].value = 3
    cfg = panel.config
    assert panel.derived["num_params"] == GPT(gpt_config(cfg)).num_params()
    assert f"{panel.derived['num_params']:,}" in panel.derived_html.value


def test_panel_sizes_come_from_the_plan_without_torch(quickstart):
    """Parameters and FLOPs per token are the plan's torch-free closed forms: building a panel and changing it
    imports neither torch nor the model code (the panel once imported models/gpt.py's copy of the formulas)."""
    code = (
        "import sys, workbench as wb\n"
        "from widgets import ConfigPanel\n"
        "from workbench.config import DeviceInfo\n"
        f"p = ConfigPanel(wb.RunConfig.from_yaml({QUICKSTART_YAML!r}), devices=DeviceInfo('cpu', 2, 'cpu'))\n"
        "p.controls['model.n_layer'].value = 3\n"
        "assert p.derived['num_params'] == p.plan.num_params and p.derived['flops_per_token'] == p.plan.flops_per_token\n"
        "p.controls['model.arch'].value = 'hf:llama'\n"
        "assert p.problems == [] and p.derived['num_params'] == p.plan.num_params\n"
        "print(sorted(m for m in ('torch', 'workbench.models.gpt') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    # your own model: its size is known only once it is built, so the panel shows none rather than a guess
    panel = ConfigPanel(quickstart.override({"model.arch": "mymodel:build"}), devices=CPU2)
    assert panel.derived["num_params"] is None and "flops_per_token" not in panel.derived
    assert "counted when the custom model is built" in panel.derived_html.value


def test_unavailable_options_are_disabled_with_the_reason(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    prec = panel.controls["precision"]
    assert isinstance(prec, ChoiceButtons)
    assert prec.buttons["fp8"].disabled and "compute capability >= 8.9" in prec.buttons["fp8"].tooltip
    assert "fp8: needs an NVIDIA GPU" in panel.notes["precision"].value
    prec.buttons["fp8"].click()  # a disabled option cannot be picked
    assert panel.config.precision == "fp32"
    assert not prec.buttons["bf16"].disabled
    assert panel.controls["device"].buttons["cuda"].disabled
    # processes: up to what this machine runs (validate() allows 2 CPU processes per core)
    assert panel.controls["parallel.num_processes"].max == 4
    assert "at most 4 here (2 CPU cores" in panel.notes["parallel.num_processes"].value
    strat = panel.controls["parallel.strategy"]
    assert tuple(strat.buttons) == C.STRATEGIES  # every strategy the config accepts is offered
    # with the most processes this machine runs, every strategy can be picked: none is "not available"
    panel.controls["parallel.num_processes"].value = 4
    assert [s for s in C.STRATEGIES if strat.buttons[s].disabled] == [], strat.reasons
    assert not strat.buttons["ddp"].disabled

    # a strategy that needs more processes than the config has
    panel.controls["parallel.num_processes"].value = 1
    assert not strat.buttons["ddp"].disabled
    assert strat.buttons["zero3"].disabled and strat.reasons["zero3"] == "needs parallel.num_processes >= 2"
    assert strat.buttons["tp"].disabled and strat.reasons["tp"] == "needs parallel.num_processes >= 2"
    panel.controls["parallel.num_processes"].value = 2
    assert not strat.buttons["tp"].disabled
    assert not strat.buttons["dp_tp"].disabled  # dp 1 x tp 2: validate() accepts it, so the panel offers it
    # keys that only matter for another strategy are disabled, and say when they matter
    assert panel.controls["parallel.pp_schedule"].disabled
    assert all(b.disabled for b in panel.controls["parallel.pp_schedule"].buttons.values())
    assert "used when parallel.strategy is pp" in panel.notes["parallel.pp_schedule"].value

    # on an H100 node fp8 and cuda are available, and 8 processes
    gpu = ConfigPanel(quickstart, devices=H100x8)
    assert not gpu.controls["precision"].buttons["fp8"].disabled
    assert not gpu.controls["device"].buttons["cuda"].disabled
    assert gpu.controls["parallel.num_processes"].max == 8
    a100 = ConfigPanel(quickstart, devices=A100x2)
    assert a100.controls["precision"].buttons["fp8"].disabled
    a100.controls["precision"].value = "fp8"  # forced (e.g. from a YAML file): validation says why
    assert [p.key for p in a100.problems] == ["precision"]
    assert a100.launch_button.disabled


def _layout(strategy, n):
    """parallel.* values that suit `strategy` on n processes (so that only the process count can be wrong)."""
    sizes = {"tp": {"parallel.tp_size": n}, "pp": {"parallel.pp_size": n}, "dp_tp": {"parallel.tp_size": 2 - n % 2}}
    return {"parallel.strategy": strategy, "parallel.num_processes": n, **sizes.get(strategy, {})}


def test_panel_strategy_rules_agree_with_validate(quickstart):
    """The processes the panel asks of a strategy are exactly what cfg.validate() asks: the fewest with which
    it reports no parallel.* problem. (The panel once disabled dp_tp below 4 processes; validate takes 2.)"""
    rules = strategy_rules()
    for s in C.STRATEGIES:
        need = rules.min_processes.get(s, 1)
        ok = quickstart.override(_layout(s, need)).validate(CPU2)
        assert [p for p in ok if p.key.startswith("parallel.")] == [], (s, need)
        if need > 1:
            short = quickstart.override(_layout(s, need - 1)).validate(CPU2)
            assert [p for p in short if p.key.startswith("parallel.")], (s, need - 1)
    keys = {k for k, _, _ in leaf_keys(quickstart)}
    for key, (setting, values, reason) in rules.relevant_when.items():
        assert key in keys and setting in keys and values, key
        assert reason == (f"used when {setting} is set" if values == (SET,) else
                          f"used when {setting} is {' or '.join(values)}")  # fmt: skip


def test_distillation_keys_greyed_without_a_teacher(quickstart, workdir):
    """distill.temperature / distill.alpha matter only with a teacher: greyed like every other unused key."""
    panel = ConfigPanel(quickstart, devices=CPU2)
    for key in ("distill.temperature", "distill.alpha"):
        assert panel.controls[key].disabled and "used when distill.teacher is set" in panel.notes[key].value
    panel.controls["distill.teacher"].value = "runs/teacher"  # not a run folder (yet): a problem, keys enabled
    assert [p.key for p in panel.problems] == ["distill.teacher"]
    for key in ("distill.temperature", "distill.alpha"):
        assert not panel.controls[key].disabled and "used when" not in panel.notes[key].value
    panel.controls["distill.teacher"].value = ""
    assert panel.controls["distill.alpha"].disabled


def test_validation_messages_inline_and_launch_disabled(quickstart, workdir):
    panel = ConfigPanel(quickstart, devices=CPU2)
    assert not panel.launch_button.disabled
    panel.set("model.n_head", 5)  # as if loaded from a file: 64 % 5 != 0
    assert [p.key for p in panel.problems] == ["model.n_head"]
    assert "model.n_head: d_model 64 is not divisible by n_head 5" in panel.messages["model.n_head"].value
    assert panel.messages["micro_batch_size"].value == ""
    assert panel.launch_button.disabled
    assert "1 problem" in panel.problems_html.value
    with pytest.raises(ConfigError) as e:
        _ = panel.config
    assert "model.n_head" in str(e.value)
    panel.controls["optimizer.betas"].value = "[0.9"  # not even a list
    panel.controls["log_every"].value = 0
    keys = {p.key for p in panel.problems}
    assert keys == {"model.n_head", "optimizer.betas", "log_every"}
    assert "optimizer.betas: write a list" in panel.messages["optimizer.betas"].value
    assert "log_every: must be between 1 and" in panel.messages["log_every"].value
    panel.controls["model.n_head"].value = 4
    panel.controls["optimizer.betas"].value = "[0.9, 0.95]"
    panel.controls["log_every"].value = 10
    assert panel.problems == [] and not panel.launch_button.disabled
    # a taken run folder stops a launch too, until overwrite (or another name) is chosen
    os.makedirs(os.path.join("runs", quickstart.name))
    panel.controls["seed"].value = 1
    assert [p.key for p in panel.problems] == ["name"] and panel.launch_button.disabled
    panel.overwrite.value = True
    assert panel.problems == [] and not panel.launch_button.disabled


def test_heads_offered_divide_d_model_and_sliders_never_clamp(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    panel.controls["model.d_model"].value = 96
    opts = panel.controls["model.n_head"].options
    assert all(96 % h == 0 for h in opts if h != quickstart.model.n_head) and 12 in opts and 5 not in opts
    # a loaded value beyond a slider's range widens the slider instead of being clamped
    panel.set_config(quickstart.override({"micro_batch_size": 512, "model.n_layer": 96, "data.num_sequences": 16384}))
    assert panel.config.micro_batch_size == 512 and panel.config.model.n_layer == 96


def test_learning_rate_slider_is_log_scale_and_never_changes_the_value_on_its_own(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    lr = panel.controls["optimizer.lr"]
    assert lr.slider.base == 10 and lr.slider.min <= -5 and lr.slider.max >= -1
    # the browser snaps the slider to its step (3e-3 -> 10**-2.52) and sends that back: not a user's move
    lr.slider.value = 10**-2.52
    assert panel.config.optimizer.lr == 3e-3
    # a real move of the slider sets a rounded value; typing sets the exact one
    lr.slider.value = 10**-4
    assert panel.config.optimizer.lr == 1e-4
    lr.text.value = 2.5e-4
    assert panel.config.optimizer.lr == 2.5e-4 and abs(lr.slider.value / 2.5e-4 - 1) < 0.1
    panel.set("optimizer.lr", 3e-8)  # outside the slider's range: the range widens, the value stays
    assert panel.config.optimizer.lr == 3e-8 and lr.slider.min <= -8


def test_model_size_presets(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    assert panel.preset.value == "tiny"
    panel.preset.value = "small"
    m = panel.config.model
    assert (m.n_layer, m.n_head, m.d_model, m.seq_len) == (4, 4, 128, 128)
    assert panel.derived["num_params"] > 800_000
    panel.controls["model.n_layer"].value = 5
    assert panel.preset.value == "custom"


def test_save_load_yaml_and_cli_command(quickstart, workdir):
    from workbench.cli import _load

    panel = ConfigPanel(quickstart, devices=CPU2)
    panel.controls["precision"].value = "bf16"
    panel.controls["optimizer.lr"].value = 2.5e-4
    panel.controls["optimizer.betas"].value = "[0.85, 0.97]"
    panel.controls["name"].value = "from-panel"
    panel.controls["data.path"].value = ""
    cmd = panel.cli_command()
    argv = shlex.split(cmd)
    assert argv[:2] == ["workbench", "train"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sorted(s.split("=")[0] for s in sets) == ["name", "optimizer.betas", "optimizer.lr", "precision"]
    assert _load(argv[2], sets) == panel.config  # the command trains exactly this config
    panel.cli_button.click()
    assert panel.cli_text.value == cmd and "navigator.clipboard" in panel.cli_copy.value

    panel.config_file.value = "mine.yaml"
    panel.save_button.click()
    assert wb.RunConfig.from_yaml("mine.yaml") == panel.config
    other = ConfigPanel(devices=CPU2)
    other.config_file.value = "mine.yaml"
    other.load_button.click()
    assert other.config == panel.config
    assert "loaded" in other.file_msg.value
    # relative to the loaded file, the same config needs no --set at all
    assert other.cli_command() == "workbench train mine.yaml"
    with open("bad.yaml", "w") as f:
        f.write("model: {n_layers: 2}\n")
    other.config_file.value = "bad.yaml"
    other.load_button.click()
    assert "model.n_layers" in other.file_msg.value and other.config == panel.config
    with open("words.yaml", "w") as f:
        f.write("max_steps: ten\n")
    other.config_file.value = "words.yaml"
    other.load_button.click()
    assert "not loaded" in other.file_msg.value and "max_steps: must be a whole number" in other.file_msg.value
    assert other.config == panel.config
    assert ConfigPanel("mine.yaml", devices=CPU2).cli_command() == "workbench train mine.yaml"


def test_plan_chart_follows_the_config(quickstart, monkeypatch):
    panel = ConfigPanel(quickstart, devices=CPU2)
    p = panel.plan
    assert p is not None
    names = [t.name for t in panel.plan_fig.data]
    assert names == ["param_bytes", "grad_bytes", "optimizer_bytes", "master_bytes", "activation_bytes", "buffer_bytes"]
    for t in panel.plan_fig.data:
        assert list(t.y) == [getattr(r, t.name) for r in p.ranks]
    assert panel.plan_fig.layout.barmode == "stack"
    # this machine's RAM is far above a tiny model's bars: a linear axis fitted to the bars, the RAM named
    top = max(r.total_bytes for r in p.ranks)
    assert p.device_memory_bytes > 5 * top and panel.plan_fig.layout.yaxis.type == "linear"
    assert panel.plan_fig.layout.shapes == () and tuple(panel.plan_fig.layout.yaxis.range) == (0, 1.1 * top)
    [note] = panel.plan_fig.layout.annotations
    assert note.text.startswith("device memory ") and "off the scale" in note.text
    before = panel.plan.ranks[0].activation_bytes
    panel.controls["micro_batch_size"].value = 16
    assert panel.plan.ranks[0].activation_bytes > before  # redrawn on the change
    panel.controls["parallel.num_processes"].value = 1
    assert len(panel.plan_fig.data[0].x) == 1
    assert panel.plan_device.value == "this machine"
    panel.plan_device.value = "h100"
    assert "H100" in panel.plan_fig.layout.title.text
    # GPT-2 small on a T4: the device's memory is in reach, drawn as a line on the same linear axis
    panel.preset.value = "gpt2-small"
    panel.plan_device.value = "t4"
    t4 = wb.plan(panel.config, device="t4")
    assert panel.plan_fig.layout.shapes[0].y0 == t4.device_memory_bytes
    assert (
        panel.plan_fig.layout.yaxis.type == "linear" and panel.plan_fig.layout.yaxis.range[1] >= t4.device_memory_bytes
    )
    # the verdict reads aloud: counts rounded, the peak's provenance behind a details toggle only
    assert f"largest micro_batch_size that fits: {t4.max_micro_batch_size}" in panel.plan_html.value
    estimate = panel.plan_html.value.split("<details>")[0].split("estimate:")[1]
    assert "data sheet" not in estimate and "e+" not in estimate and " s per step" in estimate
    assert "<details><summary" in panel.plan_html.value and "data sheet (NVIDIA T4" in panel.plan_html.value
    # without the planner module the panel still works and says so
    monkeypatch.setitem(sys.modules, "workbench.plan", None)
    panel.controls["micro_batch_size"].value = 8
    assert panel.plan_fig.layout.title.text == "plan unavailable" and "plan unavailable" in panel.plan_html.value
    assert panel.config.micro_batch_size == 8


def test_plan_numbers_read_aloud():
    from widgets.fmt import fmt_count, fmt_step_time

    assert [fmt_count(n) for n in (0, 512, 999, 1000, 20_986, 21_000, 84_575, 999_999, 1 << 23)] == [
        "0", "512", "999", "1,000", "about 21,000", "21,000", "about 85,000", "about 1,000,000", "over 1,000,000"
    ]  # fmt: skip
    assert [fmt_step_time(s) for s in (0.05275, 0.0004, 1.234, 6.5, 42.0, 125.0)] == [
        "52.8 ms", "0.4 ms", "1.2 s", "6.5 s", "42 s", "2:05"
    ]  # fmt: skip


def test_plan_of_this_machine_hides_the_measurement_jargon(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    p = panel.plan
    line = panel.plan_html.value
    shown = line.split("<details>")[0]
    text = shown[: shown.index("<span title=")] + shown[shown.index("'>", shown.index("<span title=")) + 2 :]
    assert "best of" not in text and "thread(s)" not in text and "+00:00" not in text
    assert p.peak_flops_source.split(" (")[0] in line.split("<details>")[1]  # provenance kept, behind the toggle
    if p.max_micro_batch_size >= 1000:
        assert f"{round(p.max_micro_batch_size, -(len(str(p.max_micro_batch_size)) - 2)):,}" in text


def test_panel_updates_fast(quickstart):
    panel = ConfigPanel(quickstart, devices=CPU2)
    times = []
    for v in (8, 16, 4, 32, 8, 2, 12, 8):
        panel.controls["micro_batch_size"].value = v
        times.append(panel.last_update_s)
    # validation + derived values + plan + redraw of the plan chart, per change
    assert sorted(times)[len(times) // 2] < 0.1, times


# ---------------------------------------------------------------------------------------------------------
# Dashboard


def _figs(db):
    return [w for w in vars(db).values() if isinstance(w, go.FigureWidget)]


def test_dashboard_draws_a_recorded_run(quickstart, workdir):
    evs = events_of(120, comm=True)
    run = write_run(os.path.abspath("runs/rec"), quickstart, evs, started=1_700_000_000.0, ended=1_700_000_130.0)
    db = Dashboard(run, smoothing=0.8)
    assert len(_figs(db)) == 6
    raw, smooth, ev, floor = db.loss_fig.data
    assert list(raw.x) == [e["step"] for e in evs] and list(raw.y) == [e["loss"] for e in evs]
    assert np.allclose(smooth.y, reference_ema([e["loss"] for e in evs], 0.8))
    assert smooth.y[0] == evs[0]["loss"]  # debiased: the curve starts where the loss starts
    assert raw.opacity < 0.5 and smooth.opacity == 1.0  # raw points faint under the smoothed line
    assert list(ev.x) == [e["step"] for e in evs if "eval_loss" in e]
    assert list(floor.y) == [2.0, 2.0] and list(floor.x) == [1, 120]
    assert [t.name for t in db.memory_fig.data] == ["rank 0", "rank 1"]
    assert list(db.memory_fig.data[1].y) == [e["mem_bytes"][1] for e in evs]
    assert db._comm_box.layout.display is None
    # comm bytes are the same every step: one bar per rank, drawn once, not a flat line per rank over steps
    (bar,) = db.comm_fig.data
    assert isinstance(bar, go.Bar) and list(bar.x) == ["rank 0", "rank 1"]
    assert list(bar.y) == evs[-1]["comm_bytes"] and list(bar.text) == ["423.0 KiB"] * 2
    assert db.comm_fig.layout.xaxis.title.text == "rank (the same in all 120 reports)"
    assert np.allclose(db.throughput_fig.data[3].y, [10.0] * 120)  # MFU in %
    assert list(db.lr_fig.data[0].y) == [e["lr"] for e in evs]
    assert "finished" in db.status_html.value and "step 120 / 200" in db.status_html.value
    assert "elapsed 2:10" in db.status_html.value
    # a finished run (attached after the fact): nothing to stop, so Stop is neither enabled nor highlighted
    assert db.stop_button.disabled and db.stop_button.button_style == ""
    db.x_axis.value = "tokens"
    assert list(db.loss_fig.data[0].x) == [e["tokens"] for e in evs]
    assert db.loss_fig.layout.xaxis.title.text == "tokens"
    db.smoothing.value = 0.0
    assert np.allclose(db.loss_fig.data[1].y, [e["loss"] for e in evs])
    db.log_y.value = True
    assert db.loss_fig.layout.yaxis.type == "log"
    # the caller's Run keeps its own place in the file
    assert len(run.new_metrics()) == 120


def test_comm_bytes_that_move_show_their_range(quickstart, workdir):
    evs = events_of(6, comm=True)
    evs[2]["comm_bytes"] = [1000, 2000]  # one step moved a different payload
    db = Dashboard(write_run(os.path.abspath("runs/comm"), quickstart, evs))
    (bar,) = db.comm_fig.data
    assert list(bar.y) == evs[-1]["comm_bytes"]  # the last step's, per rank
    assert db.comm_fig.layout.xaxis.title.text == "rank (varied: the last of 6 reports)"
    assert "ranged 1000 B to 423.0 KiB" in bar.hovertext[0] and "ranged 2.0 KiB to 423.0 KiB" in bar.hovertext[1]
    # as the worker logs it: once, with what it measured; the figure claims nothing about the other steps
    evs = events_of(4)
    evs[1].update(comm_bytes=[433152, 433152], comm_bytes_scope="optimizer step 1 (payload handed to collectives)")
    db = Dashboard(write_run(os.path.abspath("runs/once"), quickstart, evs))
    assert list(db.comm_fig.data[0].y) == [433152, 433152]
    assert db.comm_fig.layout.xaxis.title.text == "rank (reported once: optimizer step 1)"
    assert "measured: optimizer step 1 (payload" in db.comm_fig.data[0].hovertext[0]


def test_stop_button_is_live_only_while_the_run_can_stop(quickstart, workdir):
    """Enabled and highlighted while running; disabled and plain once the run reaches any final state."""
    path = os.path.abspath("runs/going")
    for final in ("finished", "failed", "stopped"):
        run = write_run(path, quickstart, events_of(3), state="running", supervisor_pid=os.getpid(),
                        host=os.uname().nodename)  # fmt: skip
        db = Dashboard(run)
        try:
            assert not db.stop_button.disabled and db.stop_button.button_style == "warning"
            with open(os.path.join(path, "status.json"), "w") as f:
                json.dump({"state": final, "error": "x" if final == "failed" else None}, f)
            assert db.wait(10)  # the follower sees the final state and updates the status line and the button
            assert final in db.status_html.value
            assert db.stop_button.disabled and db.stop_button.button_style == "", final
            assert db.stop_button.description == "Stop"
        finally:
            db.close()
    # asked to stop: disabled at once (the run is still going), and not highlighted either
    run = write_run(path, quickstart, events_of(3), state="running", supervisor_pid=os.getpid(),
                    host=os.uname().nodename)  # fmt: skip
    db = Dashboard(run)
    db.stop_button.click()
    assert db.stop_button.disabled and db.stop_button.button_style == "" and db.stop_button.description == "Stopping..."
    db.update_status()
    assert db.stop_button.disabled and db.stop_button.button_style == ""
    db.close()


def _title_band(fig):
    """(top, bottom) pixels of a figure's title, as plotly.js places it."""
    lay = fig.layout
    size = lay.title.font.size or 17
    if lay.title.y is None:  # plotly's "auto": the title's baseline on the middle of the top margin
        return lay.margin.t / 2 - size, lay.margin.t / 2 + 0.3 * size
    assert lay.title.yref == "container" and lay.title.yanchor == "top"
    top = (1 - lay.title.y) * lay.height
    return top, top + 1.3 * size


def _legend_band(fig, rows=1):
    """(top, bottom) pixels of a horizontal legend anchored by its bottom above the plot area."""
    lay = fig.layout
    assert lay.legend.yanchor == "bottom" and lay.legend.y >= 1
    plot_h = lay.height - lay.margin.t - lay.margin.b
    bottom = lay.margin.t - (lay.legend.y - 1) * plot_h
    return bottom - rows * 1.8 * (lay.legend.font.size or 12), bottom


def test_figure_titles_and_legends_never_overlap(quickstart, workdir):
    db = Dashboard(write_run(os.path.abspath("runs/rec"), quickstart, events_of(10, comm=True)))
    for name, fig in db.figures.items():
        entries = [t.name for t in fig.data if t.showlegend is not False]
        if len(entries) < 2:  # plotly draws no legend for a single trace unless asked
            continue
        font = fig.layout.legend.font.size or 12
        plot_w = fig.layout.width - fig.layout.margin.l - fig.layout.margin.r
        # each entry: its text (~0.6 em a character) and the 40 px line sample before it
        rows = 1 if sum(len(e) * 0.6 * font + 40 for e in entries) <= plot_w else 2
        t_top, t_bottom = _title_band(fig)
        l_top, l_bottom = _legend_band(fig, rows)
        assert t_top >= 0 and l_bottom <= fig.layout.margin.t, name
        assert t_bottom <= l_top, (name, (t_top, t_bottom), (l_top, l_bottom))
    assert "tokens_per_s" in db.throughput_fig.layout.title.text


def test_dashboard_bounds_points_on_a_100000_step_run(quickstart, workdir):
    n = 100_000
    path = os.path.abspath("runs/long")
    os.makedirs(path)
    quickstart.override({"name": "long", "max_steps": n}).to_yaml(os.path.join(path, "config.yaml"))
    loss = 2 + 2 / (1 + np.arange(1, n + 1) / 1000)
    loss[55_555] = 50.0  # one spike: min/max buckets must keep it
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for s in range(1, n + 1):
            f.write(json.dumps({"step": s, "tokens": 512 * s, "loss": float(loss[s - 1]), "lr": 1e-3, "grad_norm": 1.0,
                                "tokens_per_s": 1e3, "mfu": 0.1, "mem_bytes": [1, 2],
                                **({"eval_loss": 2.5} if s % 10 == 0 else {})}) + "\n")  # fmt: skip
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": "finished"}, f)
    db = Dashboard(wb.Run.attach(path))
    lens = [len(t.x) for f in _figs(db) for t in f.data]
    assert max(lens) == 2000 and all(n_ <= 2000 for n_ in lens)
    raw = db.loss_fig.data[0]
    assert max(raw.y) == 50.0 and raw.x[0] == 1 and raw.x[-1] == n
    assert len(db.loss_fig.data[2].x) == 2000  # 10,000 eval points, downsampled too
    assert db.last_points <= 2000 * sum(len(f.data) for f in _figs(db))
    print(f"points sent per redraw for {n:,} steps: {db.last_points:,}")


def test_downsamplers():
    x = np.arange(10_000, dtype=float)
    y = np.sin(x / 300) + (x == 4321) * 5
    for fn in (lttb, minmax):
        xs, ys = fn(x, y, 500)
        assert len(xs) <= 500 and xs[0] == 0 and xs[-1] == 9999 and np.all(np.diff(xs) > 0)
    assert minmax(x, y, 500)[1].max() == y.max()
    xs, ys = lttb(x, np.sin(x / 300), 1000)
    assert np.abs(np.interp(x, xs, ys) - np.sin(x / 300)).max() < 0.05  # the shape survives
    assert len(lttb(x[:100], y[:100], 500)[0]) == 100  # short series untouched


@pytest.mark.parametrize("prefill,min_gap", [(0, 0.2), (3000, 1.0)], ids=["short-5-per-s", "downsampled-1-per-s"])
def test_dashboard_throttles_redraws(quickstart, workdir, prefill, min_gap):
    """A run that logs every 5 ms: at most 5 redraws a second (1 once its traces are downsampled), each
    carrying many events, none lost."""
    path = os.path.abspath("runs/fast")
    early = [{"step": s, "tokens": s, "loss": 1.0 / s} for s in range(1, prefill + 1)]
    run = write_run(path, quickstart, early, state="running", supervisor_pid=os.getpid(), host=os.uname().nodename)
    db = Dashboard(run)
    stop = threading.Event()

    def writer():
        s = prefill
        with open(os.path.join(path, "metrics.jsonl"), "a") as f:
            while not stop.is_set():
                s += 1
                f.write(json.dumps({"step": s, "tokens": s, "loss": 1.0 / s, "time": time.time()}) + "\n")
                f.flush()
                time.sleep(0.005)
        return s

    t = threading.Thread(target=writer)
    t0 = time.monotonic()
    t.start()
    time.sleep(3.0)
    stop.set()
    t.join()
    with open(os.path.join(path, "status.json"), "w") as f:
        json.dump({"state": "finished"}, f)
    assert db.wait(10)
    n_events = len(run.metrics())
    gaps = np.diff(db.redraw_times)
    during = [r for r in db.redraw_times if r >= t0]
    assert gaps.min() >= min_gap - 1e-3, gaps.min()  # <= 5 (or 1) redraws per second
    assert len(during) <= (db.redraw_times[-1] - t0) / min_gap + 2
    assert n_events - prefill > 3 * len(during)  # batched: many events per redraw
    assert db._store.step == list(range(1, n_events + 1))  # none lost
    assert len(db.loss_fig.data[0].x) == min(n_events, 2000)


def _tiny(small, name, **kw):
    return small.override({"name": name, "max_steps": 20, "log_every": 2, "eval_every": 10, **kw})


@pytest.mark.slow
def test_dashboard_follows_a_live_two_process_run(small, workdir):
    run = wb.launch(_tiny(small, "live"))
    db = Dashboard(run)  # returns at once: this thread keeps running (sampling below) while the run trains
    seen = []
    while not run.done:
        seen.append(len(db.loss_fig.data[0].x))
        time.sleep(0.05)
    assert db.wait(30)
    assert run.status == "finished", run.error
    assert run.info["effective"]["world_size"] == 2
    events = run.metrics()
    assert len(db.loss_fig.data[0].x) == len(events) == 10
    assert list(db.loss_fig.data[0].y) == [e["loss"] for e in events]
    assert len({s for s in seen if 0 < s < 10}) >= 2, seen  # points arrived while it trained
    assert "finished" in db.status_html.value and "2 processes" in db.status_html.value
    assert len(db.memory_fig.data) == 2
    gaps = np.diff(db.redraw_times)
    assert len(gaps) == 0 or gaps.min() >= 0.2 - 1e-3
    lat = np.array(db.latencies)
    assert len(lat) > 0 and np.median(lat) < 1.0, lat
    print(f"worker event -> figure: median {np.median(lat) * 1e3:.0f} ms, max {lat.max() * 1e3:.0f} ms over {len(lat)}")
    # the same run attached afterwards (another kernel) draws the same points
    db2 = Dashboard(wb.Run.attach(run.path))
    assert list(db2.loss_fig.data[0].y) == list(db.loss_fig.data[0].y)


@pytest.mark.slow
def test_dashboard_shows_a_failed_run_and_its_error(small, workdir):
    with open("boom_model.py", "w") as f:
        # rank 0 raises; rank 1 builds its model and is shut down by the launcher when rank 0 dies
        f.write(
            "import os\nfrom workbench.models import GPT, gpt_config\n\n\ndef build(cfg):\n"
            "    if os.environ.get('RANK') == '0':\n        raise RuntimeError('boom from the test model')\n"
            "    return GPT(gpt_config(cfg))\n"
        )
    run = wb.launch(_tiny(small, "boom", **{"model.arch": "boom_model:build"}))
    db = Dashboard(run)
    assert run.wait(120) == "failed"
    assert db.wait(30)
    assert db.status == "failed"
    assert "failed" in db.status_html.value
    assert "boom from the test model" in run.error
    assert html.escape(run.error[-300:]) in db.error_html.value  # the worker's error text, as the run reports it
    assert db.stop_button.disabled


@pytest.mark.slow
def test_stop_button_stops_the_run(small, workdir):
    one = {"parallel.num_processes": 1}  # the button's job is the run's, however many ranks it has
    run = wb.launch(_tiny(small, "stoppable", max_steps=5000, log_every=5, eval_every=0, **one))
    db = Dashboard(run)
    t0 = time.monotonic()
    while not run.metrics() and time.monotonic() - t0 < 120:
        time.sleep(0.1)
    assert not db.stop_button.disabled
    db.stop_button.click()
    assert run.wait(120) == "stopped", run.error
    assert db.wait(30)
    assert "stopped" in db.status_html.value and db.stop_button.disabled
    assert run.checkpoints()


# ---------------------------------------------------------------------------------------------------------
# Compare and Workbench


def test_compare_overlays_and_sorts(quickstart, workdir):
    a = write_run(os.path.abspath("runs/a"), quickstart, events_of(50, floor=2.0, seed=1))
    b = write_run(
        os.path.abspath("runs/b"), quickstart.override({"optimizer.lr": 1e-2}), events_of(80, floor=1.0, seed=2)
    )
    c = write_run(
        os.path.abspath("runs/c"), quickstart.override({"grad_accum_steps": 8}), events_of(30, floor=3.0, seed=3)
    )
    cmp = Compare(runs_dir="runs")
    assert [label for label, _ in cmp.picker.options] == ["a", "b", "c"]
    assert cmp.rows == []
    cmp.select(["a", "b", "c"])
    assert cmp.diff_keys == ["grad_accum_steps", "optimizer.lr"]
    assert cmp.columns[:3] == ["name", "grad_accum_steps", "optimizer.lr"]
    assert len(cmp.loss_fig.data) == 9  # raw, smoothed, eval per run
    finals = {r.name: r.summary()["final_loss"] for r in (a, b, c)}
    rows = cmp.sort("final_loss")
    assert [r["name"] for r in rows] == sorted(finals, key=finals.get)
    rows = cmp.sort("final_loss", descending=True)
    assert [r["name"] for r in rows] == sorted(finals, key=finals.get, reverse=True)
    assert "final_loss &#9660;" in cmp.table_html.value
    rows = cmp.sort("optimizer.lr")
    assert rows[-1]["name"] == "b"
    smoothed = cmp.loss_fig.data[4]  # run b's smoothed curve
    assert np.allclose(smoothed.y, reference_ema([e["loss"] for e in events_of(80, floor=1.0, seed=2)], 0.6))
    cmp.x_axis.value = "tokens"
    assert cmp.loss_fig.data[1].x[-1] == 50 * 512
    cmp.select([a, b])  # Run objects work too
    assert cmp.diff_keys == ["optimizer.lr"]


@pytest.mark.slow
def test_workbench_launch_button_runs_and_follows(small, workdir):
    bench = Workbench(_tiny(small, "wb-run"), devices=None)
    assert not bench.panel.launch_button.disabled
    bench.panel.launch_button.click()
    run = bench.run
    assert run is not None and bench.dashboard.run is run
    assert run.wait(120) == "finished", run.error
    assert bench.dashboard.wait(30)
    assert len(bench.dashboard.loss_fig.data[0].x) == 10
    assert "finished" in bench.dashboard.status_html.value
    # the folder is taken now: the panel moved on to the next free name, and lists no problem
    assert bench.panel.problems == [] and not bench.panel.launch_button.disabled
    assert bench.panel.controls["name"].value == "wb-run-2"
    assert "wb-run" in [label for label, _ in bench.compare.picker.options]


def test_panel_after_its_own_launch_lists_no_problem_and_moves_to_a_free_name(quickstart, workdir, monkeypatch):
    """Launch never leaves a red "already exists" for the run it just started; a taken name typed by hand says
    how to reuse it in the panel's own controls (the Python API keeps its keywords)."""
    L = importlib.import_module("workbench.launch")  # the module (workbench.launch is also the function)

    started = []

    def fake_launch(cfg, overwrite=False, resume=False):  # the run folder, and no process
        os.makedirs(cfg.run_dir, exist_ok=overwrite or resume)
        started.append((cfg.name, overwrite, resume))
        return wb.Run(cfg.run_dir)

    monkeypatch.setattr(L, "launch", fake_launch)
    panel = ConfigPanel(quickstart.override({"name": "door"}), devices=CPU2)
    assert panel.launch() is not None
    assert panel.problems == [] and not panel.launch_button.disabled and "no problems" in panel.problems_html.value
    assert panel.controls["name"].value == "door-2" and "<code>door-2</code>" in panel.launch_msg.value
    panel.launch()
    panel.launch()
    assert [n for n, _, _ in started] == ["door", "door-2", "door-3"]
    assert panel.controls["name"].value == "door-4"
    panel.controls["name"].value = "door-2"  # back to a taken folder, by hand
    [problem] = panel.problems
    assert problem.key == "name" and "tick resume" in problem.message and "tick overwrite" in problem.message
    assert "=True" not in problem.message and "tick resume" in panel.messages["name"].value
    panel.overwrite.value = True
    assert panel.problems == []
    panel.launch()
    assert started[-1] == ("door-2", True, False) and not panel.overwrite.value
    assert panel.controls["name"].value == "door-4"
    [api] = L.check_launchable(quickstart.override({"name": "door"}))
    assert "ask for resume=True" in api.message and "or overwrite=True (delete it)" in api.message


def test_next_free_name_counts_on(workdir):
    from workbench.runs import next_free_name

    assert next_free_name("runs", "a") == "a"
    os.makedirs("runs/a")
    assert next_free_name("runs", "a") == "a-2"
    os.makedirs("runs/a-2")
    os.makedirs("runs/a-9")
    assert next_free_name("runs", "a") == "a-3"
    assert next_free_name("runs", "a-9") == "a-10"
    assert next_free_name("runs", "a-2") == "a-3"


def test_dashboard_shows_the_start_up_instead_of_placeholder_axes(quickstart, workdir):
    """Before the first metric event: no invented axes, the phase and its seconds in the status line and figures."""
    db = Dashboard()
    assert db.loss_fig.layout.xaxis.visible is False and db.loss_fig.layout.annotations[0].text == "no run"
    path = os.path.abspath("runs/st")
    run = write_run(path, quickstart.override({"parallel.num_processes": 2}), [], state="running",
                    started=time.time(), supervisor_pid=os.getpid(), host=os.uname().nodename)  # fmt: skip
    os.utime(os.path.join(path, "config.yaml"), (time.time() - 4, time.time() - 4))
    db.set_run(run)
    db._stop_following()
    db.update_status()
    assert "starting 2 processes" in db.status_html.value and " 4 s" in db.status_html.value
    for fig in (db.loss_fig, db.throughput_fig, db.memory_fig):
        assert fig.layout.yaxis.visible is False and tuple(fig.layout.yaxis.range) == (0, 1)
        assert fig.layout.annotations[0].text.startswith("starting 2 processes") and fig.layout.showlegend is False
    with open(os.path.join(path, ".rank0.pid"), "w") as f:
        f.write(str(os.getpid()))
    with open(os.path.join(path, ".rank1.pid"), "w") as f:
        f.write(str(os.getpid()))
    db.update_status()
    assert "2 processes up: building the model" in db.status_html.value
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:  # the first event: the axes come back
        f.write(json.dumps(events_of(1)[0]) + "\n")
    db._ingest(db._reader.new_metrics())
    db.redraw()
    db.update_status()
    assert (
        db.loss_fig.layout.xaxis.visible and db.loss_fig.layout.annotations == () and "step 1" in db.status_html.value
    )


def test_mfu_axis_reads_the_tokens_per_s_curve_in_percent(quickstart, workdir):
    evs = events_of(30)
    for e in evs:
        e["mfu"] = e["tokens_per_s"] * 9.32e-5  # MFU is proportional to tokens/s
    db = Dashboard(write_run(os.path.abspath("runs/mfu"), quickstart, evs))
    lay = db.throughput_fig.layout
    lo, hi = lay.yaxis.range
    lo2, hi2 = lay.yaxis2.range
    assert lo == lo2 == 0 and hi == pytest.approx(1.1 * max(e["tokens_per_s"] for e in evs))
    assert hi2 == pytest.approx(hi * 9.32e-3) and lay.yaxis2.ticksuffix == "%" and lay.yaxis2.tickmode == "auto"
    # every legend entry is drawn: MFU's dotted line on tokens/s's solid one (the same curve on these axes)
    entries = [t for t in db.throughput_fig.data if t.showlegend is not False]
    assert [t.name for t in entries] == ["tokens_per_s (smoothed)", "mfu (smoothed)"]
    assert entries[1].line.dash == "dot" and entries[0].line.dash is None
    assert all(t.opacity == 1.0 and len(t.y) == 30 for t in entries)
    # no MFU (no peak known): the right axis goes, not a guess
    for e in evs:
        del e["mfu"]
    db2 = Dashboard(write_run(os.path.abspath("runs/nomfu"), quickstart, evs))
    assert db2.throughput_fig.layout.yaxis2.visible is False


def test_tensorboard_link_opens_on_the_loss_and_goes_through_jupyter(monkeypatch):
    import urllib.parse

    import widgets.tensorboard as T

    url = "http://127.0.0.1:6123/"
    local = T.browser_url(url, None)
    assert local.startswith(url + "?pinnedCards=") and local.endswith("#timeseries")
    pins = json.loads(urllib.parse.unquote(local.split("pinnedCards=")[1].split("#")[0]))
    assert pins == [{"plugin": "scalars", "tag": "loss"}, {"plugin": "scalars", "tag": "eval_loss"}]
    assert T.browser_url(url, "/user/ada/").startswith("/user/ada/proxy/6123/?pinnedCards=")
    assert T.browser_url(url, "/").startswith("/proxy/6123/?")
    # the Jupyter server is the kernel's parent; without jupyter-server-proxy there is no proxy to use
    monkeypatch.setattr("jupyter_server.serverapp.list_running_servers",
                        lambda: iter([{"pid": os.getppid(), "base_url": "/lab-here/"}]))  # fmt: skip
    real = T.importlib.util.find_spec
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda n: object() if n == "jupyter_server_proxy" else real(n))
    assert T.jupyter_base_url() == "/lab-here/"
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda n: None if n == "jupyter_server_proxy" else real(n))
    assert T.jupyter_base_url() is None


def test_tensorboard_button_serves_the_runs_folder(quickstart, workdir):
    from widgets.tensorboard import TensorBoardButton, stop_tensorboard

    write_run(os.path.abspath("runs/a"), quickstart, events_of(5))
    tb = TensorBoardButton("runs")
    try:
        url = tb.start(wait=True)
        assert url.startswith("http://127.0.0.1:") and tb.url == url and url in tb.link.value
        assert tb.browser_url.endswith("#timeseries") and "pinnedCards" in tb.link.value
        assert tb.start() == url  # once: a second click reuses the server
        port = int(url.rsplit(":", 1)[1].strip("/"))
        # listening on 127.0.0.1 only
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        stop_tensorboard("runs")


def test_failed_status_of_a_recorded_run_shows_the_error(quickstart, workdir):
    run = write_run(os.path.abspath("runs/f"), quickstart, events_of(4), state="failed",
                    error="rank 1 raised:\nRuntimeError: <out of memory>")  # fmt: skip
    db = Dashboard(run)
    assert db.status == "failed" and "failed" in db.status_html.value
    assert "RuntimeError: &lt;out of memory&gt;" in db.error_html.value  # escaped, shown in full
    assert not math.isnan(db.loss_fig.data[0].y[-1])


def test_a_mapping_key_round_trips_through_its_control(quickstart):
    """model.hf_config is a mapping: its control shows inline YAML and gives a dict back (never the text)."""
    panel = ConfigPanel(quickstart, devices=CPU2)
    assert panel.config.model.hf_config == {} and panel.config == quickstart
    panel.controls["model.hf_config"].value = "{num_key_value_heads: 2, intermediate_size: 172}"
    assert panel.config.model.hf_config == {"num_key_value_heads": 2, "intermediate_size": 172}
    panel.controls["model.hf_config"].value = "[1, 2]"
    assert any(p.key == "model.hf_config" for p in panel.problems)


def test_panel_offers_model_families_and_data_sources(quickstart, workdir):
    """model.arch: the reference GPT, the Hugging Face types, a local folder or your own model; data.source with
    the keys that apply to it; validation and the (torch-free) plan follow as they do for the GPT."""
    from workbench.models.hf_config import HF_TYPES
    from workbench.models.shapes import shape_of

    panel = ConfigPanel(quickstart, devices=CPU2)
    arch, ctrl = panel.controls["model.arch"], panel.controls
    assert list(arch.options) == ["gpt", *(f"hf:{t}" for t in HF_TYPES)]
    assert "reference GPT" in panel.notes["model.arch"].value
    assert ctrl["model.hf_config"].disabled and "used when model.arch is hf:*" in panel.notes["model.hf_config"].value
    assert ctrl["task.kind"].buttons["mlm"].disabled  # an encoder's task
    arch.value = "hf:llama"
    assert panel.problems == [] and not ctrl["model.hf_config"].disabled
    assert "Hugging Face llama" in panel.notes["model.arch"].value
    assert panel.derived["num_params"] == shape_of(panel.config).num_params == panel.plan.num_params
    strat = ctrl["parallel.strategy"]
    assert (
        strat.buttons["pp"].disabled and "Hugging Face" in strat.reasons["pp"] and not strat.buttons["zero3"].disabled
    )
    arch.value = "hf:bert"  # quickstart's task.kind lm: refused under the key, the option disabled with why
    assert [p.key for p in panel.problems] == ["task.kind"] and ctrl["task.kind"].reasons[
        "lm"
    ] == "bert trains mlm or classify"
    ctrl["task.kind"].buttons["mlm"].click()
    assert panel.problems == [] and panel.config.task.kind == "mlm"

    # data.source files: data.path, data.tokenizer, data.text_field apply (disabled, with the reason, before)
    for key in ("data.path", "data.tokenizer", "data.text_field"):
        assert ctrl[key].disabled and "used when data.source is" in panel.notes[key].value
    ctrl["data.source"].value = "files"
    assert not ctrl["data.tokenizer"].disabled and "tokenized by data.tokenizer" in panel.notes["data.source"].value
    assert [p.key for p in panel.problems] == ["data.path"]
    (workdir / "corpus.txt").write_text("def f(x):\n    return x\n\n" * 50)
    ctrl["data.path"].value = str(workdir / "corpus.txt")
    ctrl["data.tokenizer"].value = "bpe:512"
    assert panel.problems == [] and panel.config.data.tokenizer == "bpe:512"
    assert panel.plan.num_params == shape_of(panel.config).num_params  # the tokenizer's vocabulary: 512
    assert shape_of(panel.config).vocab_size == 512

    # a local save_pretrained folder, a Hub id (refused, offline alternatives), your own model
    (workdir / "m").mkdir()
    (workdir / "m" / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 1}))
    arch.value = f"hf:{workdir / 'm'}"
    assert "Hugging Face bert from a local folder" in panel.notes["model.arch"].value and panel.problems == []
    arch.value = "hf:google/bert-base"
    assert "downloads nothing" in panel.messages["model.arch"].value and panel.launch_button.disabled
    arch.value = "mymodel:build"
    assert "your own model" in panel.notes["model.arch"].value


def test_panel_plans_a_llama_3_8b_on_h100s_in_milliseconds(quickstart):
    panel = ConfigPanel(quickstart, devices=H100x8)
    big = {"model.n_layer": 32, "model.n_head": 32, "model.d_model": 4096, "model.seq_len": 8192,
           "model.hf_config": {"num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256},
           "model.arch": "hf:llama", "parallel.num_processes": 8, "parallel.strategy": "zero3", "precision": "bf16",
           "micro_batch_size": 1}  # fmt: skip
    panel.set_config(quickstart.override(big))
    panel.plan_device.value = "h100"
    assert panel.plan.num_params == 8_030_261_248 and panel.plan.fits
    panel.controls["micro_batch_size"].value = 2
    assert panel.last_update_s < 0.5 and panel.plan.ranks[0].activation_bytes > 0
