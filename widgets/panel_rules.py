"""What this machine and this config allow: options the panel disables, keys that do not matter now, and why.

The panel only disables what it can say a reason for; everything else is ``cfg.validate()``'s to report.
The strategies' requirements come from one function, ``strategy_rules()``: the validator owns them, the
panel reads them (see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import ipywidgets as W

import workbench.config as C
from widgets.controls import ChoiceButtons, get_key
from widgets.problems_view import note_html
from workbench.config import DeviceInfo, RunConfig

# keys that only matter under a setting other than the strategy: key -> (setting key, values)
_RELEVANT_OUTSIDE_PARALLEL = {
    "data.vocab_size": ("data.source", ("synthetic",)),
    "data.num_sequences": ("data.source", ("synthetic",)),
    "data.path": ("data.source", ("text",)),
    "task.num_labels": ("task.kind", ("classify",)),
    "peft.r": ("peft.method", ("lora",)),
    "peft.alpha": ("peft.method", ("lora",)),
    "peft.target": ("peft.method", ("lora",)),
}


class Rules(NamedTuple):
    min_processes: dict[str, int]  # strategy -> processes it needs at least
    relevant_when: dict[str, tuple[str, tuple[str, ...], str]]  # key -> (setting key, values, reason when off)


def rules_from_specs(specs: Mapping[str, Any]) -> Rules:
    """The panel's rules from a table of strategy specs (anything with .min_processes and .keys)."""
    min_processes = {s: spec.min_processes for s, spec in specs.items() if spec.min_processes > 1}
    settings: dict[str, tuple[str, tuple[str, ...]]] = {}
    for key in dict.fromkeys(k for spec in specs.values() for k in spec.keys):  # first-seen order
        settings[key] = ("parallel.strategy", tuple(s for s, spec in specs.items() if key in spec.keys))
    settings.update(_RELEVANT_OUTSIDE_PARALLEL)
    relevant = {k: (on, vals, f"used when {on} is {' or '.join(vals)}") for k, (on, vals) in settings.items()}
    return Rules(min_processes, relevant)


def strategy_rules() -> Rules:
    """The one place the panel learns each strategy's requirements: the validator's own STRATEGY_SPECS."""
    return rules_from_specs(C.STRATEGY_SPECS)


def max_processes(devices: DeviceInfo) -> int:
    """The most processes validate() accepts here: one per GPU, or two per CPU core (gloo crawls past that)."""
    return devices.count if devices.kind == "cuda" else 2 * max(1, devices.count)


def unavailable_options(cfg: RunConfig, devices: DeviceInfo, rules: Rules) -> dict[str, dict[str, str]]:
    """key -> {option: why this machine or this config cannot run it}, for the choice controls."""
    dev, most = devices, max_processes(devices)
    here = dev.name or dev.kind
    precision: dict[str, str] = {}
    if not dev.supports_fp8:
        precision["fp8"] = f"needs an NVIDIA GPU with compute capability >= 8.9 (Ada/Hopper); this machine: {here}"
    elif dev.fp8_backend is None:
        precision["fp8"] = "needs an fp8 backend for Accelerate: pip install torchao (or transformer-engine / ms-amp)"
    if dev.kind == "cuda" and not dev.supports_bf16:
        precision["bf16"] = f"needs an Ampere or newer GPU; this machine: {here}"
    strategy: dict[str, str] = {}
    n = cfg.parallel.num_processes
    for s in C.STRATEGIES:
        need = rules.min_processes.get(s, 1)
        if need > most:
            strategy[s] = f"needs >= {need} processes; this machine runs at most {most}"
        elif isinstance(n, int) and need > n:
            strategy[s] = f"needs parallel.num_processes >= {need}"
    device = {} if dev.kind == "cuda" else {"cuda": "no CUDA GPU is visible on this machine"}
    return {"precision": precision, "device": device, "parallel.strategy": strategy}


def processes_note(devices: DeviceInfo) -> str:
    """Why parallel.num_processes stops where it does on this machine."""
    what = f"{devices.count} GPU(s)" if devices.kind == "cuda" else f"{devices.count} CPU cores, 2 processes per core"
    return f"at most {max_processes(devices)} here ({what})"


def show_availability(
    cfg: RunConfig,
    devices: DeviceInfo,
    rules: Rules,
    controls: dict[str, W.Widget],
    notes: dict[str, W.HTML],
    problem_keys: set[str],
) -> dict[str, dict[str, str]]:
    """Disable the options and the keys that cannot matter under cfg on this machine; say why in each key's note.

    A control that shows a problem is never disabled: the user must be able to fix it. Returns the options
    disabled, key -> {option: reason}.
    """
    unavailable = unavailable_options(cfg, devices, rules)
    for key, reasons in unavailable.items():
        if isinstance(controls.get(key), ChoiceButtons):
            controls[key].set_unavailable(reasons)
    for key, note in notes.items():
        lines = [f"{o}: {r}" for o, r in unavailable.get(key, {}).items()]
        if key == "parallel.num_processes":
            lines.append(processes_note(devices))
        rel = rules.relevant_when.get(key)
        if rel is not None:
            controls[key].disabled = get_key(cfg, rel[0]) not in rel[1] and key not in problem_keys
            if controls[key].disabled:
                lines.append(rel[2])
        text = note_html(lines)
        if note.value != text:  # an unchanged widget sends nothing to the browser
            note.value = text
    return unavailable
