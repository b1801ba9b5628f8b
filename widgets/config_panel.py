"""ConfigPanel: a control for every RunConfig key, live derived values, inline validation, the plan chart.

    from widgets import ConfigPanel
    panel = ConfigPanel()              # or ConfigPanel(wb.RunConfig.from_yaml("configs/quickstart.yaml"))
    panel                              # edit in the notebook
    cfg = panel.config                 # a validated RunConfig (ConfigError if a problem remains)

Every label is the config key itself (``optimizer.lr``, ``parallel.num_processes``): the names in the YAML
file, in ``cfg.override({...})``, in ``workbench train --set`` and here are the same. The controls are built
from the RunConfig dataclasses, so a key added to workbench/config.py appears here without a change.

On every change the panel rebuilds the RunConfig, validates it (``cfg.validate()`` + the run-folder checks of
``launch``), recomputes the derived values and redraws the plan. All of it is arithmetic over the config (the
parameter count is ``gpt_num_params``' closed form, the plan is ``wb.plan``): no model is built per keystroke.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import shlex
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import traitlets
import yaml

import workbench.config as C
from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig
from workbench.plan import MEMORY_FIELDS  # the names the plan and the worker's measurement share

# keys whose value is one of a fixed tuple in workbench/config.py (read at runtime: other issues extend them)
CHOICES = {
    "parallel.strategy": "STRATEGIES",
    "precision": "PRECISIONS",
    "optimizer.name": "OPTIMIZERS",
    "schedule.decay": "DECAYS",
    "parallel.pp_schedule": "PP_SCHEDULES",
    "device": "DEVICES",
    "task.kind": "TASK_KINDS",
    "peft.method": "PEFT_METHODS",
}
# one of a few names, or an import string "pkg.module:factory"
OPEN_CHOICES = {"model.arch": "ARCHS", "data.source": "DATA_SOURCES"}

GROUPS = ("model", "data", "parallelism", "precision", "batch & accumulation", "optimizer", "fine-tuning", "run")


def group_of(key: str) -> str:
    head = key.split(".")[0]
    if head in ("model", "activation_checkpointing"):
        return "model"
    if head == "data":
        return "data"
    if head in ("parallel", "device"):
        return "parallelism"
    if head == "precision":
        return "precision"
    if head in ("micro_batch_size", "grad_accum_steps"):
        return "batch & accumulation"
    if head in ("optimizer", "schedule"):
        return "optimizer"
    if head in ("init_from", "task", "peft", "distill"):
        return "fine-tuning"
    return "run"


# model size presets: (n_layer, n_head, d_model, seq_len). "small" is the 875k-parameter GPT of FACTS.md.
PRESETS = {
    "tiny": (2, 4, 64, 64),
    "small": (4, 4, 128, 128),
    "medium": (6, 6, 384, 256),
    "gpt2-small": (12, 12, 768, 1024),
}
PRESET_KEYS = ("model.n_layer", "model.n_head", "model.d_model", "model.seq_len")

# processes a strategy needs at least (the rest of its requirements are validate()'s to say)
MIN_PROCESSES = {"tp": 2, "pp": 2, "ps": 2, "dp_tp": 4}
# keys that only matter under some setting: (key -> (setting key, values, reason shown when disabled))
RELEVANT_WHEN = {
    "parallel.tp_size": ("parallel.strategy", ("tp", "dp_tp"), "used when parallel.strategy is tp or dp_tp"),
    "parallel.pp_size": ("parallel.strategy", ("pp",), "used when parallel.strategy is pp"),
    "parallel.pp_schedule": ("parallel.strategy", ("pp",), "used when parallel.strategy is pp"),
    "parallel.pp_microbatches": ("parallel.strategy", ("pp",), "used when parallel.strategy is pp"),
    "data.vocab_size": ("data.source", ("synthetic",), "used when data.source is synthetic"),
    "data.num_sequences": ("data.source", ("synthetic",), "used when data.source is synthetic"),
    "data.path": ("data.source", ("text",), "used when data.source is text"),
    "task.num_labels": ("task.kind", ("classify",), "used when task.kind is classify"),
    "peft.r": ("peft.method", ("lora",), "used when peft.method is lora"),
    "peft.alpha": ("peft.method", ("lora",), "used when peft.method is lora"),
    "peft.target": ("peft.method", ("lora",), "used when peft.method is lora"),
}

LABEL_W = "190px"
CONTROL_W = "190px"


def leaf_keys(obj: Any = None, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, value) for every leaf of a RunConfig, in declaration order."""
    obj = obj if obj is not None else RunConfig()
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.extend(leaf_keys(v, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", f, v))
    return out


def get_key(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def max_processes(devices: DeviceInfo) -> int:
    """The most processes validate() accepts here: one per GPU, or two per CPU core (gloo crawls past that)."""
    return devices.count if devices.kind == "cuda" else 2 * max(1, devices.count)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _yaml_value(v: Any) -> str:
    """A value as `--set key=VALUE` writes it, so that the CLI's YAML parse gives the same value back."""
    if isinstance(v, str):
        try:
            if yaml.safe_load(v) == v:
                return v
        except yaml.YAMLError:
            pass
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


class ChoiceButtons(W.HBox):
    """One button per option; an option this machine cannot run is a disabled button with its reason.

    (ipywidgets' Dropdown and ToggleButtons cannot disable single options.) ``value`` is the chosen option.
    """

    value = traitlets.Unicode(allow_none=True)
    disabled = traitlets.Bool(False)  # the whole control (a key that does not matter under this config)

    def __init__(self, options: tuple[str, ...], value: str | None):
        self.options = tuple(options)
        self.buttons = {o: W.Button(description=o, layout=W.Layout(width="auto", min_width="44px")) for o in options}
        for o, b in self.buttons.items():
            b.on_click(partial(self._clicked, o))
        self.reasons: dict[str, str] = {}
        super().__init__(list(self.buttons.values()), layout=W.Layout(flex_flow="row wrap"))
        self.observe(lambda _: self._paint(), names="value")
        self.observe(lambda _: self.set_unavailable(self.reasons), names="disabled")
        self.value = value
        self._paint()

    def _clicked(self, option: str, button: W.Button) -> None:
        if not button.disabled:  # a disabled button's .click() from Python must not select it either
            self.value = option

    def _paint(self) -> None:
        for o, b in self.buttons.items():
            b.button_style = "primary" if o == self.value else ""

    def set_unavailable(self, reasons: dict[str, str]) -> None:
        self.reasons = dict(reasons)
        for o, b in self.buttons.items():
            b.disabled = self.disabled or o in reasons
            b.tooltip = reasons.get(o, "")


class LogSliderText(W.HBox):
    """A log-scale slider to move fast, and a text box holding the exact value (``value``).

    A FloatLogSlider alone would silently change the config: in the browser it snaps 3e-3 to 10**-2.52 =
    3.02e-3 and sends that back (measured). So the text box holds the value; the slider only writes it when
    it really moved (more than half a step), rounded to 3 significant digits.
    """

    value = traitlets.Float()
    disabled = traitlets.Bool(False)

    def __init__(self, value: float, min_exp: float = -6, max_exp: float = 0, step: float = 0.05, width: str = "190px"):
        self._step = step
        self.slider = W.FloatLogSlider(
            value=value, base=10, min=min_exp, max=max_exp, step=step, readout=False, layout=W.Layout(width="100px")
        )
        self.text = W.FloatText(value=value, layout=W.Layout(width="90px"))
        super().__init__([self.slider, self.text], layout=W.Layout(width=width))
        self.value = value
        self.text.observe(lambda c: setattr(self, "value", c["new"]), names="value")
        self.slider.observe(self._from_slider, names="value")
        self.observe(self._to_parts, names="value")
        self.observe(lambda c: [setattr(w, "disabled", c["new"]) for w in (self.slider, self.text)], names="disabled")

    def _far(self, a: float, b: float) -> bool:
        if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b):
            return abs(math.log10(a) - math.log10(b)) > self._step / 2
        return a != b

    def _from_slider(self, change: Any) -> None:
        if self._far(change["new"], self.value):
            self.value = float(f"{change['new']:.3g}")

    def _to_parts(self, change: Any) -> None:
        v = change["new"]
        self.text.value = v
        if v > 0 and math.isfinite(v) and self._far(self.slider.value, v):
            e = math.log10(v)
            self.slider.min, self.slider.max = min(self.slider.min, math.floor(e)), max(self.slider.max, math.ceil(e))
            self.slider.value = v


class ConfigPanel(W.VBox):
    """Controls for a RunConfig, grouped, with derived values, validation, the plan, save/load and Launch.

    ``config``: the validated RunConfig (raises ConfigError listing the problems). ``controls[key]``: the
    widget of a key. ``problems``: what stops a launch now. ``derived``: global batch, tokens per step,
    parameter count. ``unavailable[key][option]``: why an option is disabled here. ``launch()`` starts the
    run (the Launch button) and returns its Run.
    """

    def __init__(self, config: RunConfig | str | None = None, devices: DeviceInfo | None = None):
        self.yaml_path: str | None = config if isinstance(config, str) else None  # base of the CLI command
        if isinstance(config, str):
            config = RunConfig.from_yaml(config)
        self._base = config or RunConfig()
        self.devices = devices or DeviceInfo.detect()
        self.max_processes = max_processes(self.devices)
        self.controls: dict[str, W.Widget] = {}
        self.labels: dict[str, W.Label] = {}
        self._kinds: dict[str, str] = {}
        self._msgs: dict[str, W.HTML] = {}
        self._notes: dict[str, W.HTML] = {}
        self._updating = False
        self._cfg: RunConfig | None = None
        self._problems: list[Problem] = []
        self._launch_callbacks: list[Callable[[Any], None]] = []
        self.run = None
        self.plan = None
        self.derived: dict[str, Any] = {}
        self.unavailable: dict[str, dict[str, str]] = {}
        self.last_update_s = 0.0  # how long the last control change took to update the whole panel

        from workbench.models.gpt import gpt_flops_per_token, gpt_num_params  # closed forms, no model built

        self._num_params, self._flops_per_token = gpt_num_params, gpt_flops_per_token

        # ---- controls, grouped ----
        rows: dict[str, list[W.Widget]] = {g: [] for g in GROUPS}
        self.preset = W.Dropdown(options=["custom", *PRESETS], value="custom", layout=W.Layout(width=CONTROL_W))
        self.preset.observe(self._on_preset, names="value")
        rows["model"].append(self._row("model size", self.preset, note=False))
        for key, f, value in leaf_keys(self._base):
            ctrl = self._make_control(key, f, value)
            self.controls[key] = ctrl
            rows.setdefault(group_of(key), []).append(self._row(key, ctrl))
            ctrl.observe(self._on_change, names="value")
        boxes = []
        for g, items in rows.items():
            if items:
                title = W.HTML(f"<b>{html.escape(g)}</b>")
                boxes.append(W.VBox([title, *items], layout=W.Layout(border="1px solid #ddd", padding="4px 8px")))
        groups = W.GridBox(
            boxes,
            layout=W.Layout(
                grid_template_columns="repeat(auto-fill, minmax(420px, 1fr))", grid_gap="6px", width="100%"
            ),
        )

        # ---- derived values, problems, plan ----
        self.derived_html = W.HTML()
        self.problems_html = W.HTML()
        # the device to plan for: this machine, or one of the planner's known GPUs (plan an H100 job on a laptop)
        self.plan_device = W.Dropdown(options=["this machine"], value="this machine", description="plan for")
        try:
            from workbench.plan import DEVICES as PLAN_DEVICES

            self.plan_device.options = ["this machine", *PLAN_DEVICES]
        except ImportError:
            pass
        self.plan_device.observe(lambda _: self._update_plan(), names="value")
        self.plan_fig = go.FigureWidget(
            layout=go.Layout(
                title={"text": "plan: memory per rank", "x": 0.02, "font": {"size": 14}},
                barmode="stack",
                width=560,  # fixed: a FigureWidget in a container does not follow its size (plotly.py#5208)
                height=300,
                margin={"l": 60, "r": 20, "t": 40, "b": 40},
                template="plotly_white",
                yaxis={"title": {"text": "bytes"}, "ticksuffix": "B", "exponentformat": "SI"},
                legend={"orientation": "h", "y": -0.2},
            )
        )
        for name in MEMORY_FIELDS:
            self.plan_fig.add_bar(x=[], y=[], name=name)
        self.plan_html = W.HTML()

        # ---- launch, save / load, CLI ----
        self.launch_button = W.Button(description="Launch", icon="play", button_style="success")
        self.launch_button.on_click(lambda _: self.launch())
        self.overwrite = W.Checkbox(value=False, description="overwrite", indent=False, layout=W.Layout(width="100px"))
        self.resume = W.Checkbox(value=False, description="resume", indent=False, layout=W.Layout(width="90px"))
        self.overwrite.observe(self._on_change, names="value")
        self.resume.observe(self._on_change, names="value")
        self.launch_msg = W.HTML()
        self.config_file = W.Text(value=self.yaml_path or "config.yaml", description="config file")
        self.save_button = W.Button(description="Save", icon="save")
        self.load_button = W.Button(description="Load", icon="folder-open")
        self.save_button.on_click(lambda _: self.save())
        self.load_button.on_click(lambda _: self.load())
        self.file_msg = W.HTML()
        self.cli_button = W.Button(description="copy as CLI command", icon="terminal", layout=W.Layout(width="auto"))
        self.cli_button.on_click(lambda _: self.show_cli())
        self.cli_text = W.Textarea(value="", layout=W.Layout(width="100%", height="60px", display="none"))
        self.cli_copy = W.HTML()

        side = W.VBox([self.derived_html, self.plan_device, self.plan_fig, self.plan_html])
        launch_row = W.HBox([self.launch_button, self.overwrite, self.resume, self.launch_msg])
        file_row = W.HBox([self.config_file, self.save_button, self.load_button, self.cli_button, self.file_msg])
        super().__init__(
            [groups, W.HBox([side], layout=W.Layout(width="100%")), self.problems_html, launch_row, file_row,
             self.cli_text, self.cli_copy]
        )  # fmt: skip
        self._set_n_head_options(self._base.model.d_model)
        self._updating = True
        self.preset.value = self._matching_preset()
        self._updating = False
        self._update()

    # ---------------------------------------------------------------------------------------------
    # building controls

    def _row(self, key: str, ctrl: W.Widget, note: bool = True) -> W.Widget:
        label = W.Label(key, layout=W.Layout(width=LABEL_W))
        self.labels[key] = label
        msg = W.HTML("", layout=W.Layout(margin="0 0 0 " + LABEL_W))
        if note:
            self._msgs[key] = msg
            nt = W.HTML("", layout=W.Layout(margin="0 0 0 " + LABEL_W))
            self._notes[key] = nt
            return W.VBox([W.HBox([label, ctrl]), nt, msg], layout=W.Layout(margin="0"))
        return W.HBox([label, ctrl])

    def _make_control(self, key: str, f: dataclasses.Field, value: Any) -> W.Widget:
        t = str(f.type)
        lay = W.Layout(width=CONTROL_W)
        if key in CHOICES:
            self._kinds[key] = "choice"
            return ChoiceButtons(tuple(getattr(C, CHOICES[key], (value,))), value)
        if key in OPEN_CHOICES:
            self._kinds[key] = "str"
            opts = list(getattr(C, OPEN_CHOICES[key], (value,)))
            return W.Combobox(options=opts, value=value, ensure_option=False, placeholder="or pkg.module:factory",
                              layout=lay)  # fmt: skip
        if key == "model.n_head":
            self._kinds[key] = "int"
            return W.Dropdown(options=[value], value=value, layout=lay)
        if key == "model.seq_len":
            self._kinds[key] = "int"
            opts = sorted({2**i for i in range(4, 14)} | {value})
            return W.Dropdown(options=opts, value=value, layout=lay)
        if key == "model.n_layer":
            self._kinds[key] = "int"
            return W.IntSlider(value=value, min=1, max=max(48, value), layout=lay)
        if key == "parallel.num_processes":
            self._kinds[key] = "int"
            return W.IntSlider(value=value, min=1, max=max(self.max_processes, value), layout=lay)
        if key in ("micro_batch_size", "grad_accum_steps"):
            self._kinds[key] = "int"
            return W.IntSlider(value=value, min=1, max=max(64, value), layout=lay)
        if key == "optimizer.lr":  # log scale: 1e-5 and 1e-2 are both learning rates people use
            self._kinds[key] = "float"
            return LogSliderText(value, width=CONTROL_W)
        # other floats are text boxes: a float slider snaps the value to its step in the browser
        if t == "bool" or isinstance(value, bool):
            self._kinds[key] = "bool"
            return W.Checkbox(value=bool(value), indent=False, description="", layout=lay)
        if t == "int" or (isinstance(value, int) and "float" not in t):
            self._kinds[key] = "int"
            return W.IntText(value=value, layout=lay)
        if t == "float" or isinstance(value, float):
            self._kinds[key] = "float"
            return W.FloatText(value=value, layout=lay)
        if t.startswith("tuple") or isinstance(value, (tuple, list)):
            self._kinds[key] = "list"
            return W.Text(value=_yaml_value(list(value)), layout=lay)
        if "None" in t:
            self._kinds[key] = "optional str"
            return W.Text(value=value or "", placeholder="(none)", layout=lay)
        self._kinds[key] = "str"
        return W.Text(value="" if value is None else str(value), layout=lay)

    # ---------------------------------------------------------------------------------------------
    # controls <-> RunConfig

    def _read(self) -> tuple[dict[str, Any], list[Problem]]:
        """The control values as config values, and the problems of values that do not even parse."""
        values: dict[str, Any] = {}
        problems: list[Problem] = []
        for key, ctrl in self.controls.items():
            kind, v = self._kinds[key], ctrl.value
            if kind == "optional str":
                v = v.strip() or None
            elif kind == "list":
                try:
                    parsed = yaml.safe_load(v) if v.strip() else []
                except yaml.YAMLError:
                    parsed = None
                if not isinstance(parsed, list):
                    problems.append(Problem(key, f"write a list like [0.9, 0.95], got {v!r}"))
                    continue
                v = tuple(parsed)
            values[key] = v
        return values, problems

    def _set_control(self, key: str, value: Any) -> None:
        """Show a config value in its control, widening a slider or a list rather than clamping the value."""
        ctrl = self.controls[key]
        kind = self._kinds[key]
        if kind == "list":
            ctrl.value = _yaml_value(list(value) if isinstance(value, (list, tuple)) else value)
            return
        if kind == "optional str":
            ctrl.value = value or ""
            return
        if isinstance(ctrl, W.Dropdown):
            if value not in ctrl.options:
                ctrl.options = sorted({*ctrl.options, value}, key=lambda x: (str(type(x)), x))
        elif isinstance(ctrl, W.IntSlider):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value > ctrl.max:
                    ctrl.max = value
                if value < ctrl.min:
                    ctrl.min = value
        ctrl.value = value

    def set_config(self, cfg: RunConfig) -> None:
        """Show this config in the controls."""
        self._updating = True
        try:
            self._base = cfg
            for key, _f, value in leaf_keys(cfg):
                if key in self.controls:
                    self._set_n_head_options(cfg.model.d_model, key == "model.n_head" and value)
                    self._set_control(key, value)
            self.preset.value = self._matching_preset()
        finally:
            self._updating = False
        self._update()

    def set(self, key: str, value: Any) -> None:
        """Set one key, as if typed in its control (used by tests and notebooks)."""
        self._set_control(key, value)

    def _build(self) -> tuple[RunConfig | None, list[Problem]]:
        values, problems = self._read()
        try:
            cfg = self._base.override(values)
        except ConfigError as e:
            return None, problems + [p if isinstance(p, Problem) else Problem("<config>", str(p)) for p in e.problems]
        return cfg, problems

    @property
    def config(self) -> RunConfig:
        """The RunConfig the controls describe, validated: raises ConfigError naming each problem's key."""
        cfg, problems = self._build()
        if cfg is not None:
            problems += cfg.validate(self.devices)
        if problems:
            raise ConfigError(problems)
        return cfg

    @property
    def problems(self) -> list[Problem]:
        """What stops a launch now: validation problems and run-folder problems, each naming its key."""
        return list(self._problems)

    # ---------------------------------------------------------------------------------------------
    # live updates

    def _on_change(self, change: Any = None) -> None:
        if self._updating:
            return
        t0 = time.perf_counter()
        self._updating = True
        try:
            key = next((k for k, c in self.controls.items() if change is not None and c is change.get("owner")), None)
            if key == "model.d_model":
                self._set_n_head_options(self.controls["model.d_model"].value)
            if key in PRESET_KEYS:
                self.preset.value = self._matching_preset()
        finally:
            self._updating = False
        self._update()
        self.last_update_s = time.perf_counter() - t0

    def _on_preset(self, change: Any) -> None:
        if self._updating or change["new"] == "custom":
            return
        t0 = time.perf_counter()
        self._updating = True
        try:
            n_layer, n_head, d_model, seq_len = PRESETS[change["new"]]
            self._set_n_head_options(d_model, n_head)
            self._set_control("model.n_layer", n_layer)
            self._set_control("model.d_model", d_model)
            self._set_control("model.n_head", n_head)
            self._set_control("model.seq_len", seq_len)
        finally:
            self._updating = False
        self._update()
        self.last_update_s = time.perf_counter() - t0

    def _matching_preset(self) -> str:
        now = tuple(self.controls[k].value for k in PRESET_KEYS)
        return next((name for name, v in PRESETS.items() if v == now), "custom")

    def _set_n_head_options(self, d_model: Any, keep: Any = None) -> None:
        """n_head offers the head counts that divide d_model (and keeps a current value that does not, so that
        validation can say so rather than the control silently changing it)."""
        ctrl = self.controls.get("model.n_head")
        if ctrl is None or not isinstance(d_model, int) or d_model < 1:
            return
        current = keep if keep not in (None, False) else ctrl.value
        opts = [h for h in range(1, min(d_model, 128) + 1) if d_model % h == 0]
        was = self._updating
        self._updating = True
        try:
            ctrl.options = sorted(set(opts) | {current})
            ctrl.value = current
        finally:
            self._updating = was

    def _update(self) -> None:
        """Rebuild the config from the controls; refresh problems, derived values, availability and the plan."""
        from workbench.launch import check_launchable

        cfg, problems = self._build()
        if cfg is not None:
            problems += cfg.validate(self.devices)
            if not problems:
                # the run-folder checks of launch() (the name is taken; resume without a checkpoint); their
                # validation part runs against the detected devices, which the panel has already done for its own
                detected = set(cfg.validate())
                launch_problems = check_launchable(cfg, overwrite=self.overwrite.value, resume=self.resume.value)
                problems = [p for p in launch_problems if p not in detected]
        self._cfg, self._problems = cfg, problems
        self._show_problems(problems)
        if cfg is not None:
            self._update_derived(cfg)
            self._update_availability(cfg)
        self._update_plan()

    def _show_problems(self, problems: list[Problem]) -> None:
        by_key: dict[str, list[str]] = {}
        for p in problems:
            by_key.setdefault(p.key, []).append(p.message)
        for key, msg in self._msgs.items():
            text = "".join(
                f"<div style='color:#d62728;font-size:90%'>{html.escape(key)}: {html.escape(m)}</div>"
                for m in by_key.get(key, [])
            )
            if msg.value != text:
                msg.value = text
        if problems:
            items = "".join(f"<li><code>{html.escape(p.key)}</code>: {html.escape(p.message)}</li>" for p in problems)
            n = len(problems)
            self.problems_html.value = (
                f"<div style='color:#d62728'><b>{n} problem{'s' if n > 1 else ''}</b> "
                f"&mdash; Launch is disabled until {'they are' if n > 1 else 'it is'} fixed:<ul>{items}</ul></div>"
            )
        else:
            self.problems_html.value = "<span style='color:#2ca02c'>no problems: ready to launch</span>"
        self.launch_button.disabled = bool(problems)

    def _update_derived(self, cfg: RunConfig) -> None:
        d: dict[str, Any] = {}
        m = cfg.model
        try:
            d["dp_degree"] = cfg.dp_degree
            d["global_batch_size"] = cfg.global_batch_size
            d["tokens_per_step"] = cfg.tokens_per_step
            d["total_tokens"] = cfg.tokens_per_step * cfg.max_steps
        except (TypeError, ZeroDivisionError):
            pass
        vocab = 256 if cfg.data.source == "text" else cfg.data.vocab_size
        if m.arch == "gpt" and all(isinstance(v, int) and v > 0 for v in (vocab, m.seq_len, m.n_layer, m.d_model)):
            n = self._num_params(vocab, m.seq_len, m.n_layer, m.d_model)
            d["num_params"] = n
            if isinstance(m.n_head, int) and m.n_head > 0:
                d["flops_per_token"] = self._flops_per_token(n - m.seq_len * m.d_model, m.n_layer, m.n_head,
                                                             m.d_model, m.seq_len)  # fmt: skip
        else:
            d["num_params"] = None
        self.derived = d

        def num(k: str) -> str:
            v = d.get(k)
            return "-" if v is None else f"{v:,}"

        mb, ga = cfg.micro_batch_size, cfg.grad_accum_steps
        params = num("num_params") if d.get("num_params") is not None else "counted when the custom model is built"
        self.derived_html.value = (
            "<table style='font-size:95%'>"
            f"<tr><td>global batch</td><td>micro_batch_size {mb} &times; grad_accum_steps {ga} &times; "
            f"data-parallel degree {d.get('dp_degree', '-')} = <b>{num('global_batch_size')}</b> sequences</td></tr>"
            f"<tr><td>tokens per optimizer step</td><td>{num('global_batch_size')} &times; model.seq_len "
            f"{m.seq_len} = <b>{num('tokens_per_step')}</b></td></tr>"
            f"<tr><td>parameters</td><td><b>{params}</b></td></tr>"
            f"<tr><td>FLOPs per token</td><td>{num('flops_per_token')}</td></tr>"
            f"<tr><td>tokens in the run</td><td>{num('total_tokens')} (max_steps {cfg.max_steps})</td></tr>"
            "</table>"
        )

    def _update_availability(self, cfg: RunConfig) -> None:
        """Disable what this machine or this config cannot run, and say why."""
        dev = self.devices
        implemented = tuple(getattr(C, "IMPLEMENTED_STRATEGIES", C.STRATEGIES))  # read now: it grows
        un: dict[str, dict[str, str]] = {}
        here = dev.name or dev.kind
        un["precision"] = {}
        if not dev.supports_fp8:
            un["precision"]["fp8"] = (
                f"needs an NVIDIA GPU with compute capability >= 8.9 (Ada/Hopper); this machine: {here}"
            )
        if dev.kind == "cuda" and not dev.supports_bf16:
            un["precision"]["bf16"] = f"needs an Ampere or newer GPU; this machine: {here}"
        un["device"] = {} if dev.kind == "cuda" else {"cuda": "no CUDA GPU is visible on this machine"}
        strat: dict[str, str] = {}
        n = cfg.parallel.num_processes
        for s in getattr(C, "STRATEGIES", ()):
            need = MIN_PROCESSES.get(s, 1)
            if s not in implemented:
                strat[s] = "not available in this version yet"
            elif need > self.max_processes:
                strat[s] = f"needs >= {need} processes; this machine runs at most {self.max_processes}"
            elif isinstance(n, int) and need > n:
                strat[s] = f"needs parallel.num_processes >= {need}"
        un["parallel.strategy"] = strat
        self.unavailable = un
        for key, reasons in un.items():
            ctrl = self.controls.get(key)
            if isinstance(ctrl, ChoiceButtons):
                ctrl.set_unavailable(reasons)
        problem_keys = {p.key for p in self._problems}
        for key, note in self._notes.items():
            lines = [f"{html.escape(o)}: {html.escape(r)}" for o, r in un.get(key, {}).items()]
            if key == "parallel.num_processes":
                what = f"{dev.count} GPU(s)" if dev.kind == "cuda" else f"{dev.count} CPU cores, 2 processes per core"
                lines.append(f"at most {self.max_processes} here ({what})")
            rel = RELEVANT_WHEN.get(key)
            ctrl = self.controls[key]
            if rel is not None:
                on = get_key(cfg, rel[0]) in rel[1]
                # never disable a control that shows a problem: the user must be able to fix it
                ctrl.disabled = not on and key not in problem_keys
                if ctrl.disabled:
                    lines.append(rel[2])
            text = "<div style='color:#888;font-size:85%'>" + "<br>".join(lines) + "</div>" if lines else ""
            if note.value != text:
                note.value = text

    def _update_plan(self) -> None:
        cfg = self._cfg
        try:
            from workbench.plan import plan
        except ImportError as e:
            self.plan = None
            self._plan_unavailable(f"plan unavailable (workbench.plan: {e})")
            return
        if cfg is None:
            self._plan_unavailable("plan unavailable: fix the problems first")
            return
        try:
            device = None if self.plan_device.value == "this machine" else self.plan_device.value
            p = plan(cfg, device=device)
        except Exception as e:  # a half-edited config the planner cannot take: say so, do not break the panel
            self.plan = None
            self._plan_unavailable(f"plan unavailable: {type(e).__name__}: {e}")
            return
        self.plan = p
        xs = [f"rank {r.rank}" for r in p.ranks]
        with self.plan_fig.batch_update():
            for trace in self.plan_fig.data:
                trace.x = xs
                trace.y = [getattr(r, trace.name, 0) for r in p.ranks]
            mem = p.device_memory_bytes
            shapes, notes = [], []
            if mem:
                shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": mem, "y1": mem,
                               "line": {"color": "#d62728", "dash": "dash"}})  # fmt: skip
                notes.append({"xref": "paper", "x": 1, "y": mem, "yref": "y", "text": f"device memory {_fmt_bytes(mem)}",
                              "showarrow": False, "xanchor": "right", "yanchor": "bottom", "font": {"color": "#d62728"}})  # fmt: skip
            self.plan_fig.layout.shapes = shapes
            self.plan_fig.layout.annotations = notes
            self.plan_fig.layout.title.text = f"plan: memory per rank on {p.device_label}"
            # the device line at 80 GiB would flatten a tiny model's bars: show it only when it is in reach
            top = max([r.total_bytes for r in p.ranks] or [0])
            self.plan_fig.layout.yaxis.type = "log" if mem and top and mem / top > 50 else "linear"
        verdict = "<b style='color:#2ca02c'>fits</b>" if p.fits else "<b style='color:#d62728'>does not fit</b>"
        approx = f" (approximate: {', '.join(p.approximate)})" if p.approximate else ""
        extra = " &mdash; CPU: the ranks share this machine's RAM, the verdict sums them" if p.shared_memory else ""
        self.plan_html.value = (
            f"<div style='font-size:95%'>{verdict}: headroom {_fmt_bytes(p.headroom_bytes)}, largest "
            f"micro_batch_size that fits {p.max_micro_batch_size}{extra}<br>"
            f"estimate: {p.step_time_s * 1e3:.3g} ms/step, {p.tokens_per_s:,.0f} tokens/s at {p.efficiency:.0%} of "
            f"peak ({html.escape(p.peak_flops_source)}); comm per step rank 0 {_fmt_bytes((p.comm_bytes or [0])[0])}"
            f"{approx}</div>"
        )

    def _plan_unavailable(self, why: str) -> None:
        with self.plan_fig.batch_update():
            for trace in self.plan_fig.data:
                trace.x, trace.y = [], []
            self.plan_fig.layout.shapes = []
            self.plan_fig.layout.annotations = []
            self.plan_fig.layout.title.text = "plan unavailable"
        self.plan_html.value = f"<span style='color:#888'>{html.escape(why)}</span>"

    # ---------------------------------------------------------------------------------------------
    # actions

    def on_launch(self, callback: Callable[[Any], None]) -> None:
        """Call callback(run) after each launch from this panel."""
        self._launch_callbacks.append(callback)

    def launch(self):
        """Launch the run the controls describe (what the Launch button does); returns its Run."""
        from workbench.launch import launch

        self._update()
        if self._problems:
            self.launch_msg.value = "<span style='color:#d62728'>not launched: fix the problems listed above</span>"
            return None
        cfg = self._cfg
        try:
            run = launch(cfg, overwrite=self.overwrite.value, resume=self.resume.value)
        except ConfigError as e:
            self.launch_msg.value = f"<span style='color:#d62728'>{html.escape(str(e))}</span>"
            return None
        self.run = run
        self.launch_msg.value = f"launched <code>{html.escape(run.path)}</code>"
        with self.hold_sync():
            self.overwrite.value = False
            self.resume.value = False
        self._update()  # the folder exists now: launching the same name again needs overwrite or resume
        for cb in self._launch_callbacks:
            cb(run)
        return run

    def save(self, path: str | None = None) -> str | None:
        """Write the config as YAML (the file `workbench train` reads)."""
        path = path or self.config_file.value.strip() or "config.yaml"
        cfg, problems = self._build()
        if cfg is None:
            self.file_msg.value = "<span style='color:#d62728'>not saved: the values do not form a config</span>"
            return None
        cfg.to_yaml(path)
        self.yaml_path = path
        self.config_file.value = path
        warn = f" ({len(self._problems)} problem(s) remain)" if self._problems else ""
        self.file_msg.value = f"saved <code>{html.escape(path)}</code>{warn}"
        return path

    def load(self, path: str | None = None) -> RunConfig | None:
        """Read a YAML config into the controls."""
        path = path or self.config_file.value.strip()
        try:
            cfg = RunConfig.from_yaml(path)
        except ConfigError as e:
            self.file_msg.value = f"<pre style='color:#d62728'>{html.escape(str(e))}</pre>"
            return None
        previous = self._base
        try:
            self.set_config(cfg)
        except (traitlets.TraitError, TypeError, ValueError):
            # a value no control can hold (a word where a number goes): say which, keep the current config
            self.set_config(previous)
            probs = "\n".join(str(p) for p in cfg.validate(self.devices)) or "a value has the wrong type"
            self.file_msg.value = f"<pre style='color:#d62728'>not loaded:\n{html.escape(probs)}</pre>"
            return None
        self.yaml_path = path
        self.config_file.value = path
        self.file_msg.value = f"loaded <code>{html.escape(path)}</code>"
        return cfg

    def cli_command(self) -> str:
        """`workbench train FILE --set key=value ...`: this config as a command, relative to the last saved or
        loaded YAML file (or the quickstart config)."""
        from workbench.cli import QUICKSTART

        base_path = self.yaml_path or QUICKSTART
        try:
            base = RunConfig.from_yaml(base_path)
        except ConfigError:
            base_path, base = QUICKSTART, RunConfig.from_yaml(QUICKSTART)
        cfg, _ = self._build()
        if cfg is None:
            raise ConfigError(self._problems)
        old, new = flat(base.to_dict()), flat(cfg.to_dict())
        parts = [
            "workbench",
            "train",
            shlex.quote(os.path.relpath(base_path) if not os.path.isabs(base_path) else base_path),
        ]
        for key, v in new.items():
            if old.get(key) != v:
                parts += ["--set", shlex.quote(f"{key}={_yaml_value(v)}")]
        return " ".join(parts)

    def show_cli(self) -> str:
        cmd = self.cli_command()
        self.cli_text.value = cmd
        self.cli_text.layout.display = None
        # The browser's clipboard, from a click in the page (a kernel cannot reach the user's clipboard).
        self.cli_copy.value = (
            "<button onclick='navigator.clipboard.writeText(" + html.escape(json.dumps(cmd), quote=True) + ")'>"
            "copy to clipboard</button>"
        )
        return cmd


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    neg, n = n < 0, abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            s = f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            return "-" + s if neg else s
        n /= 1024
    return str(n)
