"""validate(cfg): every problem of a RunConfig at once, each naming its key and the fix.

One validator per section of the config, in the order of the YAML file; the layout (strategies.py), the keys
used after pretraining (after_pretraining.py) and your own factories' modules (factories.py) live beside what they check.
"""

from __future__ import annotations

import difflib
import math
import os
import shutil
from typing import Any

from workbench.config.after_pretraining import validate_after_pretraining
from workbench.config.devices import DeviceInfo, detected_devices
from workbench.config.factories import check_importable
from workbench.config.hf import validate_file_keys, validate_files, validate_hf_model
from workbench.config.schema import (
    ARCHS,
    DATA_SOURCES,
    DECAYS,
    DEVICES,
    NAME_RE,
    OPTIMIZERS,
    PP_SCHEDULES,
    PRECISIONS,
    PROFILE_WARMUP,
    Problem,
    RunConfig,
    is_int,
    is_num,
)
from workbench.config.strategies import STRATEGY_SPECS, validate_layout
from workbench.factory import is_hf, is_import_string


class Checker:
    """Collects problems; each ``need_*`` appends one naming the key and returns whether the value passed."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def need_int(self, key: str, v: Any, lo: int, hi: int | None = None, fix: str = "") -> bool:
        if not is_int(v):
            self.problems.append(Problem(key, f"must be a whole number, got {v!r}{fix}"))
            return False
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            self.problems.append(Problem(key, f"must be {rng}, got {v}{fix}"))
            return False
        return True

    def need_num(self, key: str, v: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> bool:
        if not is_num(v):
            self.problems.append(Problem(key, f"must be a number, got {v!r}"))
            return False
        if not math.isfinite(v):
            self.problems.append(Problem(key, f"must be a finite number, got {v}"))
            return False
        if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            op = ">" if lo_open else ">="
            rng = f"{op} {lo}" if hi is None else f"{op} {lo} and <= {hi}"
            self.problems.append(Problem(key, f"must be {rng}, got {v}"))
            return False
        return True

    def need_choice(self, key: str, v: Any, options: tuple[str, ...], extra: str = "") -> bool:
        if v not in options:
            close = difflib.get_close_matches(str(v), options, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            self.problems.append(Problem(key, f"must be one of {', '.join(options)}{extra}, got {v!r}{hint}"))
            return False
        return True


def validate(cfg: RunConfig, devices: DeviceInfo | None = None) -> list[Problem]:
    """Every problem at once (``RunConfig.validate`` calls this). Empty list = valid."""
    dev = devices or detected_devices()
    c = Checker()
    _validate_name(cfg, c)
    _validate_model(cfg, c)
    _validate_data(cfg, c)
    _validate_parallel(cfg, c, dev)
    _validate_precision(cfg, c, dev)
    _validate_batch(cfg, c)
    _validate_compile(cfg, c, dev)
    _validate_optimizer(cfg, c)
    _validate_schedule(cfg, c)
    validate_layout(cfg, c.problems)
    validate_after_pretraining(cfg, c)
    if not any(p.key.startswith("data.") or p.key in _SPLIT_KEYS for p in c.problems):
        _validate_splits(cfg, c.problems)
    return c.problems


# what the split sizes and one micro-batch per rank depend on
_SPLIT_KEYS = ("model.seq_len", "micro_batch_size", "parallel.num_processes", "eval_every", "task.kind")


def _validate_name(cfg: RunConfig, c: Checker) -> None:
    """name: a single safe path component."""
    if not isinstance(cfg.name, str) or not cfg.name:
        c.problems.append(Problem("name", "must be a non-empty folder name, e.g. name: my-run"))
    elif not NAME_RE.match(cfg.name) or cfg.name in (".", ".."):
        c.problems.append(Problem("name", f"{cfg.name!r} is not a safe single folder name: use letters, digits and "
                                  ". _ - = + , (no '/', no '..', not starting with '.')"))  # fmt: skip
    if not isinstance(cfg.runs_dir, str) or not cfg.runs_dir:
        c.problems.append(Problem("runs_dir", "must be a folder path, e.g. runs"))


def _validate_model(cfg: RunConfig, c: Checker) -> None:
    m = cfg.model
    if is_hf(m.arch):
        validate_hf_model(cfg, c.problems)
    elif is_import_string(m.arch):
        check_importable("model.arch", m.arch, c.problems)
    else:
        c.need_choice("model.arch", m.arch, ARCHS, ' or an import string "pkg.module:factory"')
    c.need_int("model.n_layer", m.n_layer, 1, 256)
    ok_h = c.need_int("model.n_head", m.n_head, 1, 256)
    ok_d = c.need_int("model.d_model", m.d_model, 1, 65536)
    c.need_int("model.seq_len", m.seq_len, 2, 1 << 20)
    c.need_num("model.dropout", m.dropout, 0.0, 0.9)
    if ok_h and ok_d and m.d_model % m.n_head:
        divisors = [h for h in range(1, min(m.d_model, 64) + 1) if m.d_model % h == 0]
        c.problems.append(Problem("model.n_head", f"d_model {m.d_model} is not divisible by n_head {m.n_head}; "
                                  f"pick n_head from {divisors[-6:]}"))  # fmt: skip


def _validate_data(cfg: RunConfig, c: Checker) -> None:
    d = cfg.data
    custom_data = is_import_string(d.source)
    if custom_data:
        check_importable("data.source", d.source, c.problems)
    else:
        c.need_choice("data.source", d.source, DATA_SOURCES, ' or an import string "pkg.module:factory"')
    c.need_int("data.vocab_size", d.vocab_size, 2, 1 << 17)
    c.need_int("data.seed", d.seed, 0)
    c.need_int("data.num_sequences", d.num_sequences, 16, 1 << 24)
    validate_file_keys(cfg, c.problems)
    if d.source == "text":
        _validate_text_path(cfg, c.problems)
    elif d.source == "files":
        validate_files(cfg, c.problems)
    elif d.path is not None and not custom_data:
        c.problems.append(
            Problem("data.path", "only used with data.source text or files; remove it or set data.source")
        )


def _validate_text_path(cfg: RunConfig, P: list[Problem]) -> None:
    path, T = cfg.data.path, cfg.model.seq_len
    if not path or not isinstance(path, str):
        P.append(Problem("data.path", "data.source is text: set data.path to a UTF-8 or plain text file"))
    elif os.path.isdir(path):
        P.append(Problem("data.path", f"{path!r} is a folder; point data.path at a text file"))
    elif not os.path.isfile(path):
        P.append(Problem("data.path", f"no such file: {path!r}"))
    elif not os.access(path, os.R_OK):
        P.append(Problem("data.path", f"{path!r} is not readable (check its permissions)"))
    else:
        size = os.path.getsize(path)
        if is_int(T) and size < 4 * (T + 1):
            P.append(Problem("data.path", f"{path!r} holds {size} bytes; it needs at least {4 * (T + 1)} "
                             f"(4 sequences of model.seq_len + 1) — use a longer file or a smaller seq_len"))  # fmt: skip


def _validate_parallel(cfg: RunConfig, c: Checker, dev: DeviceInfo) -> None:
    """parallel.* keys alone, and the process count against the machine (their combinations: strategies.py)."""
    p = cfg.parallel
    ok_n = c.need_int("parallel.num_processes", p.num_processes, 1, 1024)
    c.need_choice("parallel.strategy", p.strategy, tuple(STRATEGY_SPECS))
    c.need_int("parallel.tp_size", p.tp_size, 1, 1024)
    c.need_int("parallel.pp_size", p.pp_size, 1, 1024)
    c.need_choice("parallel.pp_schedule", p.pp_schedule, PP_SCHEDULES)
    c.need_int("parallel.pp_microbatches", p.pp_microbatches, 1, 4096)
    device = cfg.device if cfg.device != "auto" else dev.kind
    c.need_choice("device", cfg.device, DEVICES)
    if not (ok_n and cfg.device in DEVICES):
        return
    if device == "cuda" and dev.kind != "cuda":
        c.problems.append(Problem("device", "cuda asked for but no CUDA GPU is visible; use device: auto or cpu"))
    elif device == "cuda" and p.num_processes > dev.count:
        c.problems.append(Problem("parallel.num_processes",
                                  f"{p.num_processes} processes but {dev.count} GPU(s); use at most {dev.count}"))  # fmt: skip
    elif device == "cpu" and p.num_processes > max(dev.count, 1) * 2:
        # CPU processes may share cores (teaching on a 2-core laptop), but past 2 per core gloo crawls.
        c.problems.append(Problem("parallel.num_processes", f"{p.num_processes} CPU processes on {dev.count} cores; "
                                  f"use at most {2 * dev.count}"))  # fmt: skip


def _validate_precision(cfg: RunConfig, c: Checker, dev: DeviceInfo) -> None:
    if not c.need_choice("precision", cfg.precision, PRECISIONS):
        return
    device = cfg.device if cfg.device != "auto" else dev.kind
    if cfg.precision == "fp8" and not (device == "cuda" and dev.supports_fp8):
        c.problems.append(Problem("precision", "fp8 needs an NVIDIA GPU with compute capability >= 8.9 (Ada/Hopper); "
                                  f"this machine has {dev.name or dev.kind} — use bf16"))  # fmt: skip
    elif cfg.precision == "fp8" and dev.fp8_backend is None:
        c.problems.append(Problem("precision", "fp8 needs an fp8 backend for Accelerate and none is installed: "
                                  "pip install torchao (the workbench's fp8 extra; or transformer-engine / ms-amp), "
                                  "or use bf16"))  # fmt: skip
    if not isinstance(cfg.tf32, bool):
        c.problems.append(Problem("tf32", f"must be true or false, got {cfg.tf32!r}"))
    if cfg.precision == "bf16" and device == "cuda" and not dev.supports_bf16:
        c.problems.append(Problem("precision", f"bf16 needs an Ampere or newer GPU ({dev.name}); use fp16 or fp32"))


def _validate_batch(cfg: RunConfig, c: Checker) -> None:
    """The batch, the run's length and its intervals."""
    c.need_int("micro_batch_size", cfg.micro_batch_size, 1, 1 << 16)
    c.need_int("grad_accum_steps", cfg.grad_accum_steps, 1, 1 << 16)
    c.need_int("max_steps", cfg.max_steps, 1, 1 << 31)
    c.need_int("log_every", cfg.log_every, 1, 1 << 31)
    c.need_int("eval_every", cfg.eval_every, 0, 1 << 31, " (0 turns evaluation off)")
    c.need_int("eval_batches", cfg.eval_batches, 1, 1 << 16)
    c.need_int("checkpoint_every", cfg.checkpoint_every, 0, 1 << 31, " (0 = only at stop and at the end)")
    if c.need_int("profile_steps", cfg.profile_steps, 0, 1 << 31, " (0 = off)") and is_int(cfg.max_steps):
        _validate_profile_steps(cfg, c)
    c.need_int("seed", cfg.seed, 0, 2**32 - 1)
    c.need_int("timeout_s", cfg.timeout_s, 5, 3600)
    _validate_trackers(cfg, c)
    if not isinstance(cfg.activation_checkpointing, bool):
        c.problems.append(Problem("activation_checkpointing",
                                  f"must be true or false, got {cfg.activation_checkpointing!r}"))  # fmt: skip


TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # name in trackers -> the module it needs


def _validate_trackers(cfg: RunConfig, c: Checker) -> None:
    """trackers: tensorboard (always: the dashboard's HParams and the run's scalars) and the extra ones, installed."""
    import importlib.util

    t = cfg.trackers
    if not isinstance(t, (list, tuple)) or not all(isinstance(x, str) for x in t):
        c.problems.append(
            Problem("trackers", f"must be a list of tracker names such as [tensorboard, mlflow], got {t!r}")
        )
        return
    unknown = [x for x in t if x not in TRACKERS]
    if unknown:
        c.problems.append(Problem("trackers", f"{unknown} unknown; the trackers are {sorted(TRACKERS)}"))
    elif "tensorboard" not in t:
        c.problems.append(Problem("trackers", "must include tensorboard (the run's scalars and HParams); add others"))
    for x in t:
        if x in TRACKERS and importlib.util.find_spec(TRACKERS[x]) is None:
            c.problems.append(Problem("trackers", f'{x} is not installed: pip install -e ".[{x}]" (or drop it)'))


def _validate_profile_steps(cfg: RunConfig, c: Checker) -> None:
    room = cfg.max_steps - PROFILE_WARMUP
    if cfg.profile_steps > max(0, room):
        c.problems.append(Problem("profile_steps", f"{cfg.profile_steps} profiled steps do not fit in max_steps "
                                  f"{cfg.max_steps} after the {PROFILE_WARMUP} unprofiled warm-up steps: use at most "
                                  f"{max(0, room)}, or raise max_steps"))  # fmt: skip


def _validate_compile(cfg: RunConfig, c: Checker, dev: DeviceInfo) -> None:
    """compile: a bool; on CPU, inductor writes C++ and needs a compiler (its layouts: strategies.py)."""
    if not isinstance(cfg.compile, bool):
        c.problems.append(Problem("compile", f"must be true or false, got {cfg.compile!r}"))
    elif cfg.compile and (cfg.device if cfg.device != "auto" else dev.kind) == "cpu" and not cxx_compiler():
        c.problems.append(Problem("compile", "torch.compile on CPU generates C++ and no compiler (g++, c++ or clang++) "
                                  "is on PATH: install one (apt install g++) or set compile: false"))  # fmt: skip


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on CPU (its CXX variable, else g++ / c++ / clang++ on PATH)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


def _validate_optimizer(cfg: RunConfig, c: Checker) -> None:
    o = cfg.optimizer
    c.need_choice("optimizer.name", o.name, OPTIMIZERS)
    c.need_num("optimizer.lr", o.lr, 0.0, 10.0, lo_open=True)
    c.need_num("optimizer.weight_decay", o.weight_decay, 0.0, 10.0)
    c.need_num("optimizer.grad_clip", o.grad_clip, 0.0)
    b = o.betas
    if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(is_num(x) for x in b)):
        c.problems.append(Problem("optimizer.betas", f"must be two numbers like [0.9, 0.95], got {b!r}"))
    elif not all(0.0 <= x < 1.0 and math.isfinite(x) for x in b):
        c.problems.append(Problem("optimizer.betas", f"each beta must be in [0, 1), got {list(b)}"))


def _validate_schedule(cfg: RunConfig, c: Checker) -> None:
    s = cfg.schedule
    # warmup_steps > max_steps is allowed (a short trial run of a long config): the lr just never peaks.
    c.need_int("schedule.warmup_steps", s.warmup_steps, 0)
    c.need_choice("schedule.decay", s.decay, DECAYS)
    c.need_num("schedule.min_lr_ratio", s.min_lr_ratio, 0.0, 1.0)


def _validate_splits(cfg: RunConfig, P: list[Problem]) -> None:
    """Every rank needs one full micro-batch of each split it uses: the loaders drop an incomplete one, and a
    mean over zero samples is no metric (an eval loss of 0.0 below the entropy floor, before this check)."""
    from workbench.data import num_sequences, split_rule, text_bytes_needed

    per_step = cfg.micro_batch_size * cfg.parallel.num_processes
    splits = ["train"] + (["eval"] if cfg.eval_every > 0 else [])  # eval_every 0: the eval split is never read
    for split in splits:
        n = num_sequences(cfg, split)
        if n is None or n >= per_step:
            continue  # your own data: its size is checked on the data set itself (workbench/prelaunch.py)
        if cfg.data.source == "text" and n == 0:
            P.append(Problem("data.path", f"the {split} split of {cfg.data.path!r} ({split_rule(cfg, split)}) is too short "
                             f"for one sequence of model.seq_len + 1 = {cfg.model.seq_len + 1} bytes: use a file of "
                             f"at least {text_bytes_needed(cfg, split, per_step)} bytes"
                             + (", or set eval_every: 0" if split == "eval" else "")))  # fmt: skip
            continue
        fix = "lower micro_batch_size or parallel.num_processes, or " + (
            "raise data.num_sequences" if cfg.data.source == "synthetic" else "use a longer data.path"
        )
        P.append(Problem("micro_batch_size", f"{cfg.micro_batch_size} x parallel.num_processes "
                         f"{cfg.parallel.num_processes} exceeds the {split} split's {n} sequences "
                         f"({split_rule(cfg, split)}): no rank would get a full micro-batch; {fix}"
                         + (", or set eval_every: 0" if split == "eval" else "")))  # fmt: skip
