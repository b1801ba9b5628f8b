"""The controls of the config panel, built from the RunConfig dataclasses: one widget per config key.

A key added to workbench/config.py gets a control here without a change: its widget is chosen from the
field's type and value (``make_control``), and ``read_values`` turns the widgets back into config values.
Two widgets of our own: ``ChoiceButtons`` (options that can be disabled one by one, with the reason) and
``LogSliderText`` (a log-scale slider that never changes the value on its own).
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import partial
from typing import Any

import ipywidgets as W
import traitlets
import yaml

import workbench.config as C
from workbench.config import Problem, RunConfig

# keys whose value is one of a fixed tuple in workbench/config.py (read when the control is built)
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
# one of a few names, or a name of the user's (an import string "pkg.module:factory", a model folder)
OPEN_CHOICES = {"model.arch": "ARCHS", "data.source": "DATA_SOURCES"}
PLACEHOLDERS = {"model.arch": "hf:<folder> or pkg.module:factory", "data.source": "or pkg.module:factory"}

GROUPS = ("model", "data", "parallelism", "precision", "batch & accumulation", "optimizer", "fine-tuning", "run")
_GROUP_OF_HEAD = {
    "model": "model",
    "activation_checkpointing": "model",
    "compile": "model",
    "data": "data",
    "parallel": "parallelism",
    "device": "parallelism",
    "precision": "precision",
    "tf32": "precision",
    "micro_batch_size": "batch & accumulation",
    "grad_accum_steps": "batch & accumulation",
    "optimizer": "optimizer",
    "schedule": "optimizer",
    "init_from": "fine-tuning",
    "task": "fine-tuning",
    "peft": "fine-tuning",
    "distill": "fine-tuning",
}

LABEL_W = "190px"
CONTROL_W = "190px"


def open_options(key: str, value: Any) -> list[str]:
    """The options offered for an open-choice key. model.arch: the reference GPT, then every Hugging Face model
    type the plan counts exactly (hf:llama, hf:mistral, ...; the list is models/hf_config.HF_TYPES)."""
    from workbench.models.hf_config import HF_TYPES

    opts = list(getattr(C, OPEN_CHOICES[key], (value,)))
    if key == "model.arch":
        opts += [f"hf:{t}" for t in HF_TYPES]
    return opts


def group_of(key: str) -> str:
    """The panel group a config key is shown in ("run" for everything not named)."""
    return _GROUP_OF_HEAD.get(key.split(".")[0], "run")


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
    """cfg's value of a dotted key ("parallel.strategy")."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict (RunConfig.to_dict()) as {dotted key: value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def yaml_value(v: Any) -> str:
    """A value as `--set key=VALUE` writes it, so that the CLI's YAML parse gives the same value back."""
    if isinstance(v, str):
        try:
            if yaml.safe_load(v) == v:
                return v
        except yaml.YAMLError:
            pass
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # model.hf_config: an inline YAML mapping, as --set writes it
        return "{" + ", ".join(f"{k}: {yaml_value(x)}" for k, x in v.items()) + "}"
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


def _special_control(key: str, value: Any, max_processes: int) -> tuple[W.Widget, str] | None:
    """The keys with a control of their own (choices, sliders), or None for the type-driven default."""
    lay = W.Layout(width=CONTROL_W)
    if key in CHOICES:
        return ChoiceButtons(tuple(getattr(C, CHOICES[key], (value,))), value), "choice"
    if key in OPEN_CHOICES:
        box = W.Combobox(
            options=open_options(key, value),
            value=value,
            ensure_option=False,
            placeholder=PLACEHOLDERS[key],
            layout=lay,
        )
        return box, "str"
    if key == "model.n_head":  # its options follow model.d_model: head_options()
        return W.Dropdown(options=[value], value=value, layout=lay), "int"
    if key == "model.seq_len":
        return W.Dropdown(options=sorted({2**i for i in range(4, 14)} | {value}), value=value, layout=lay), "int"
    if key == "model.n_layer":
        return W.IntSlider(value=value, min=1, max=max(48, value), layout=lay), "int"
    if key == "parallel.num_processes":
        return W.IntSlider(value=value, min=1, max=max(max_processes, value), layout=lay), "int"
    if key in ("micro_batch_size", "grad_accum_steps"):
        return W.IntSlider(value=value, min=1, max=max(64, value), layout=lay), "int"
    if key == "optimizer.lr":  # log scale: 1e-5 and 1e-2 are both learning rates people use
        return LogSliderText(value, width=CONTROL_W), "float"
    return None


def make_control(key: str, f: dataclasses.Field, value: Any, max_processes: int) -> tuple[W.Widget, str]:
    """(widget, kind) for one config key; kind says how read_values turns the widget's value back."""
    special = _special_control(key, value, max_processes)
    if special is not None:
        return special
    t = str(f.type)
    lay = W.Layout(width=CONTROL_W)
    # floats are text boxes, not sliders: a float slider snaps the value to its step in the browser
    if t == "bool" or isinstance(value, bool):
        return W.Checkbox(value=bool(value), indent=False, description="", layout=lay), "bool"
    if t == "int" or (isinstance(value, int) and "float" not in t):
        return W.IntText(value=value, layout=lay), "int"
    if t == "float" or isinstance(value, float):
        return W.FloatText(value=value, layout=lay), "float"
    if t.startswith("tuple") or isinstance(value, (tuple, list)):
        return W.Text(value=yaml_value(list(value)), layout=lay), "list"
    if t.startswith("dict") or isinstance(value, dict):
        return W.Text(value=yaml_value(dict(value)), placeholder="{field: value, ...}", layout=lay), "mapping"
    if "None" in t:
        return W.Text(value=value or "", placeholder="(none)", layout=lay), "optional str"
    return W.Text(value="" if value is None else str(value), layout=lay), "str"


def read_values(controls: dict[str, W.Widget], kinds: dict[str, str]) -> tuple[dict[str, Any], list[Problem]]:
    """The control values as config values, and the problems of values that do not even parse."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, ctrl in controls.items():
        kind, v = kinds[key], ctrl.value
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
        elif kind == "mapping":
            try:
                parsed = yaml.safe_load(v) if v.strip() else {}
            except yaml.YAMLError:
                parsed = None
            if not isinstance(parsed, dict):
                problems.append(Problem(key, f"write a mapping like {{num_key_value_heads: 2}}, got {v!r}"))
                continue
            v = parsed
        values[key] = v
    return values, problems


def show_value(ctrl: W.Widget, kind: str, value: Any) -> None:
    """Show a config value in its control, widening a slider or a list rather than clamping the value."""
    if kind == "list":
        ctrl.value = yaml_value(list(value) if isinstance(value, (list, tuple)) else value)
        return
    if kind == "mapping":
        ctrl.value = yaml_value(dict(value) if isinstance(value, dict) else value)
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


def head_options(d_model: int, current: Any) -> list[Any]:
    """The head counts that divide d_model, plus the current value even when it does not (so that validation
    can say so rather than the control silently changing it)."""
    return sorted({h for h in range(1, min(d_model, 128) + 1) if d_model % h == 0} | {current})
