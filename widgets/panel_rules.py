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
from workbench.config import DeviceInfo, RunConfig, is_import_string
from workbench.config.hf import FILE_KINDS, hf_refusal
from workbench.factory import is_hf
from workbench.models.hf_config import hf_source, hf_task_kinds, model_type_of

# keys that only matter under a setting other than the strategy: key -> (setting key, values); a value ending
# in "*" matches every setting that starts with it ("hf:*": any Hugging Face model), SET any value but empty/null
SET = "<set>"
_RELEVANT_OUTSIDE_PARALLEL = {
    "distill.temperature": ("distill.teacher", (SET,)),
    "distill.alpha": ("distill.teacher", (SET,)),
    "model.hf_config": ("model.arch", ("hf:*",)),
    "data.vocab_size": ("data.source", ("synthetic",)),
    "data.num_sequences": ("data.source", ("synthetic",)),
    "data.path": ("data.source", ("text", "files")),
    "data.tokenizer": ("data.source", ("files",)),
    "data.text_field": ("data.source", ("files",)),
    "data.label_field": ("data.source", ("files",)),
    "task.num_labels": ("task.kind", ("classify",)),
    "peft.r": ("peft.method", ("lora", "adalora", "adapter")),
    "peft.alpha": ("peft.method", ("lora", "adalora", "adapter")),
    "peft.target": ("peft.method", ("lora", "adalora")),
    "peft.num_virtual_tokens": ("peft.method", ("prefix",)),
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
    relevant = {
        k: (on, vals, f"used when {on} is set" if vals == (SET,) else f"used when {on} is {' or '.join(vals)}")
        for k, (on, vals) in settings.items()
    }
    return Rules(min_processes, relevant)


def setting_matches(value: Any, values: tuple[str, ...]) -> bool:
    """Whether a setting's value is one of `values` (an entry ending in "*" is a prefix)."""
    return any(
        value == v
        or (v == SET and value not in (None, ""))
        or (v.endswith("*") and isinstance(value, str) and value.startswith(v[:-1]))
        for v in values
    )


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
        if is_hf(cfg.model.arch) and hf_refusal(s):
            strategy[s] = f"not with a Hugging Face model: {hf_refusal(s)}"
    device = {} if dev.kind == "cuda" else {"cuda": "no CUDA GPU is visible on this machine"}
    return {"precision": precision, "device": device, "parallel.strategy": strategy, "task.kind": task_kinds(cfg)}


def task_kinds(cfg: RunConfig) -> dict[str, str]:
    """task.kind options the model cannot train, and why (validate() says the same of a config that has one)."""
    arch = cfg.model.arch
    if not is_hf(arch):
        return {"mlm": "masked-language pretraining trains an encoder: model.arch hf:bert"}
    model_type = model_type_of(arch)
    if model_type is None:
        return {}
    kinds = hf_task_kinds(model_type)
    return {k: f"{model_type} trains {' or '.join(kinds)}" for k in C.TASK_KINDS if k not in kinds}


def family_note(key: str, value: Any) -> str | None:
    """What a model.arch or data.source value is (the model family, the data source), in words."""
    if key == "model.arch":
        if value == "gpt":
            return "the reference GPT (nanoGPT style)"
        if is_hf(value):
            kind, name = hf_source(value)
            if kind == "type":
                return f"Hugging Face {name}: built from its config with random weights, offline; " \
                    "model.hf_config sets any further field"  # fmt: skip
            if kind == "folder":
                return f"Hugging Face {model_type_of(value) or 'model'} from a local folder (from_pretrained)"
            return None  # a Hub id or an unknown name: validation says what to do
        if is_import_string(value):
            return "your own model: build(cfg) -> nn.Module, imported from the launch folder"
        return "gpt, hf:<model type>, hf:<folder> (a save_pretrained model) or pkg.module:factory"
    notes = {
        "synthetic": "the built-in language with a known entropy floor",
        "text": "a text file of yours (data.path), byte level",
        "files": f"your files (data.path: a path or glob of {', '.join(FILE_KINDS)}), tokenized by data.tokenizer",
    }
    if value in notes:
        return notes[value]
    return "your own data set: build(cfg, split) -> Dataset" if is_import_string(value) else None


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
        if key in ("model.arch", "data.source"):
            lines += [n for n in (family_note(key, get_key(cfg, key)),) if n]
        rel = rules.relevant_when.get(key)
        if rel is not None:
            controls[key].disabled = not setting_matches(get_key(cfg, rel[0]), rel[1]) and key not in problem_keys
            if controls[key].disabled:
                lines.append(rel[2])
        text = note_html(lines)
        if note.value != text:  # an unchanged widget sends nothing to the browser
            note.value = text
    return unavailable
