"""RunConfig: the one object that describes an experiment.

The YAML keys, the Python attribute paths (``cfg.parallel.num_processes``), the ``--set`` paths of the CLI
and the widget labels are the same names. ``validate()`` returns every problem at once, each naming its
key and the fix, and ``launch`` refuses a config with any problem before a process starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import yaml

ARCHS = ("gpt",)
DATA_SOURCES = ("synthetic", "text")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "tp", "pp", "ps", "dp_tp")
IMPLEMENTED_STRATEGIES = ("ddp",)  # the others arrive with the parallelism issue
PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
OPTIMIZERS = ("adamw", "sgd")
DECAYS = ("cosine", "linear", "constant")
PP_SCHEDULES = ("gpipe", "1f1b")
DEVICES = ("auto", "cpu", "cuda")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]{0,127}$")


class ConfigError(ValueError):
    """A config that cannot be built or is invalid; ``problems`` holds one message per problem."""

    def __init__(self, problems: list[Problem] | list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the dotted key and what to do about it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "gpt"  # "gpt", or an import string "pkg.module:factory" (see README, "Your own model")
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    seq_len: int = 64
    dropout: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic", "text", or an import string "pkg.module:factory"
    vocab_size: int = 64  # synthetic only; text is byte level (256)
    seed: int = 0
    path: str | None = None  # text only
    num_sequences: int = 8192  # synthetic: training sequences generated (held-out ones come on top)


@dataclass(frozen=True)
class ParallelConfig:
    num_processes: int = 2
    strategy: str = "ddp"
    tp_size: int = 1
    pp_size: int = 1
    pp_schedule: str = "gpipe"
    pp_microbatches: int = 4


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3.0e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off


@dataclass(frozen=True)
class ScheduleConfig:
    warmup_steps: int = 20
    decay: str = "cosine"
    min_lr_ratio: float = 0.1  # the decayed lr ends at lr * min_lr_ratio


@dataclass(frozen=True)
class RunConfig:
    name: str = "quickstart"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: str = "fp32"
    micro_batch_size: int = 8
    grad_accum_steps: int = 4
    max_steps: int = 200
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = only at stop and at the end
    seed: int = 0
    device: str = "auto"  # auto: CUDA GPUs when present, else CPU processes with gloo
    runs_dir: str = "runs"
    timeout_s: int = 60  # process-group timeout: a hung rank fails the run after this many seconds

    # ---- derived values: properties, never inputs ----
    @property
    def dp_degree(self) -> int:
        """Data-parallel degree: processes that see different data."""
        p = self.parallel
        if p.strategy == "tp":
            return max(1, p.num_processes // max(1, p.tp_size))
        if p.strategy == "pp":
            return max(1, p.num_processes // max(1, p.pp_size))
        if p.strategy == "dp_tp":
            return max(1, p.num_processes // max(1, p.tp_size))
        return p.num_processes

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step: micro_batch_size x grad_accum_steps x data-parallel degree."""
        return self.micro_batch_size * self.grad_accum_steps * self.dp_degree

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.model.seq_len

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)

    # ---- dict / YAML ----
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunConfig:
        """Build from nested dicts. Unknown keys raise ConfigError with a "did you mean"."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError([Problem("<root>", f"expected a mapping of keys, got {type(data).__name__}")])
        problems: list[Problem] = []
        cfg = _build(cls, data, "", problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    def to_yaml(self, path: str | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_yaml(cls, path: str) -> RunConfig:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as e:
            raise ConfigError([Problem("<file>", f"cannot read {path!r}: {e.strerror or e}")]) from None
        return cls.from_yaml_text(text, source=path)

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<string>") -> RunConfig:
        try:
            data = yaml.safe_load(text)  # safe_load: a config file must never run code
        except yaml.YAMLError as e:
            raise ConfigError([Problem("<file>", f"{source} is not valid YAML: {e}")]) from None
        return cls.from_dict(data)

    # ---- overrides ----
    def override(self, updates: dict[str, Any] | None = None, **kwargs: Any) -> RunConfig:
        """A copy with dotted keys replaced: ``cfg.override({"parallel.num_processes": 2})``.

        Unknown keys raise ConfigError (a KeyError-like "did you mean"); values are checked by validate().
        """
        updates = dict(updates or {}, **kwargs)
        cfg: Any = self
        problems = []
        for key, value in updates.items():
            try:
                cfg = _set_path(cfg, key.split("."), value, key)
            except ConfigError as e:
                problems.extend(e.problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    def override_strings(self, assignments: list[str]) -> RunConfig:
        """``["precision=bf16", "parallel.num_processes=2"]`` as the CLI's ``--set`` gives them."""
        updates: dict[str, Any] = {}
        problems = []
        for a in assignments:
            if "=" not in a:
                problems.append(Problem(a or "<empty>", "expected KEY=VALUE, e.g. --set precision=bf16"))
                continue
            key, raw = a.split("=", 1)
            try:
                updates[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                updates[key.strip()] = raw
        if problems:
            raise ConfigError(problems)
        return self.override(updates)

    # ---- validation ----
    def validate(self, devices: DeviceInfo | None = None) -> list[Problem]:
        """Every problem at once, each naming its key and the fix. Empty list = valid."""
        return _validate(self, devices or DeviceInfo.detect())


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine offers; validation checks the config against it."""

    kind: str  # "cuda" or "cpu"
    count: int  # GPUs, or CPU cores
    name: str = ""
    capability: tuple[int, int] = (0, 0)

    @classmethod
    def detect(cls) -> DeviceInfo:
        global _DETECTED
        if _DETECTED is None:
            _DETECTED = _detect_devices()
        return _DETECTED

    @property
    def supports_fp8(self) -> bool:
        return self.kind == "cuda" and self.capability >= (8, 9)

    @property
    def supports_bf16(self) -> bool:
        return self.kind == "cpu" or self.capability >= (8, 0)


_DETECTED: DeviceInfo | None = None


def _detect_devices() -> DeviceInfo:
    # Ask torch only if it is already imported or CUDA might exist: importing torch costs ~1.7 s, and the
    # config panel validates on every keystroke. nvidia-smi's absence is a cheap "no GPU" signal.
    import shutil

    if shutil.which("nvidia-smi") or os.path.exists("/proc/driver/nvidia"):
        try:
            import torch

            if torch.cuda.is_available():
                n = torch.cuda.device_count()
                return DeviceInfo(
                    "cuda", n, torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
                )
        except Exception:
            pass
    return DeviceInfo("cpu", os.cpu_count() or 1, "cpu")


def effective_device(cfg: RunConfig, devices: DeviceInfo | None = None) -> str:
    devices = devices or DeviceInfo.detect()
    if cfg.device == "auto":
        return devices.kind
    return cfg.device


# ---------------------------------------------------------------------------------------------------------
# helpers


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def _did_you_mean(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f'unknown key; did you mean "{close[0]}"?'
    return "unknown key; valid keys here: " + ", ".join(options)


def _build(cls: type, data: dict[str, Any], prefix: str, problems: list[Problem]) -> Any:
    names = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            problems.append(Problem(path, _did_you_mean(str(key), list(names))))
            continue
        sub = _sub_dataclass(cls, key)
        if sub is not None:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                problems.append(Problem(path, f"expected a mapping of {sub.__name__} keys, got {value!r}"))
                continue
            kwargs[key] = _build(sub, value, path + ".", problems)
        else:
            kwargs[key] = _coerce(names[key], value)
    return cls(**kwargs)


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string: take numeric strings for float keys, lists as tuples."""
    if isinstance(value, list):
        return tuple(value)
    if "float" in str(f.type) and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    if "float" in str(f.type) and _is_int(value):
        return float(value)
    return value


def _sub_dataclass(cls: type, name: str) -> type | None:
    default = {f.name: f for f in fields(cls)}[name]
    if default.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        proto = default.default_factory()  # type: ignore[misc]
        if is_dataclass(proto):
            return type(proto)
    return None


def _set_path(obj: Any, parts: list[str], value: Any, full: str) -> Any:
    names = [f.name for f in fields(obj)]
    head = parts[0]
    if head not in names:
        raise ConfigError([Problem(full, _did_you_mean(head, names))])
    current = getattr(obj, head)
    if len(parts) == 1:
        if is_dataclass(current):
            if isinstance(value, dict):
                for k, v in value.items():
                    current = _set_path(current, [k], v, f"{full}.{k}")
                return replace(obj, **{head: current})
            raise ConfigError([Problem(full, "is a group of keys; set one of its keys, e.g. " + full + ".x")])
        fld = {f.name: f for f in fields(obj)}[head]
        return replace(obj, **{head: _coerce(fld, value)})
    if not is_dataclass(current):
        raise ConfigError([Problem(full, f'"{head}" has no sub-keys')])
    return replace(obj, **{head: _set_path(current, parts[1:], value, full)})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def is_import_string(s: Any) -> bool:
    return isinstance(s, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", s) is not None


def _validate(cfg: RunConfig, dev: DeviceInfo) -> list[Problem]:
    P: list[Problem] = []

    def need_int(key: str, v: Any, lo: int, hi: int | None = None, fix: str = "") -> bool:
        if not _is_int(v):
            P.append(Problem(key, f"must be a whole number, got {v!r}{fix}"))
            return False
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            P.append(Problem(key, f"must be {rng}, got {v}{fix}"))
            return False
        return True

    def need_num(key: str, v: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> bool:
        if not _is_num(v):
            P.append(Problem(key, f"must be a number, got {v!r}"))
            return False
        if not math.isfinite(v):
            P.append(Problem(key, f"must be a finite number, got {v}"))
            return False
        if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            op = ">" if lo_open else ">="
            rng = f"{op} {lo}" if hi is None else f"{op} {lo} and <= {hi}"
            P.append(Problem(key, f"must be {rng}, got {v}"))
            return False
        return True

    def need_choice(key: str, v: Any, options: tuple[str, ...], extra: str = "") -> bool:
        if v not in options:
            close = difflib.get_close_matches(str(v), options, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            P.append(Problem(key, f"must be one of {', '.join(options)}{extra}, got {v!r}{hint}"))
            return False
        return True

    # name: a single safe path component
    if not isinstance(cfg.name, str) or not cfg.name:
        P.append(Problem("name", "must be a non-empty folder name, e.g. name: my-run"))
    elif not _NAME_RE.match(cfg.name) or cfg.name in (".", ".."):
        P.append(
            Problem(
                "name",
                f"{cfg.name!r} is not a safe single folder name: use letters, digits and . _ - = + , "
                "(no '/', no '..', not starting with '.')",
            )
        )
    if not isinstance(cfg.runs_dir, str) or not cfg.runs_dir:
        P.append(Problem("runs_dir", "must be a folder path, e.g. runs"))

    # model
    m = cfg.model
    custom_model = is_import_string(m.arch)
    if not custom_model:
        need_choice("model.arch", m.arch, ARCHS, ' or an import string "pkg.module:factory"')
    ok_l = need_int("model.n_layer", m.n_layer, 1, 256)
    ok_h = need_int("model.n_head", m.n_head, 1, 256)
    ok_d = need_int("model.d_model", m.d_model, 1, 65536)
    need_int("model.seq_len", m.seq_len, 2, 1 << 20)
    need_num("model.dropout", m.dropout, 0.0, 0.9)
    if ok_h and ok_d and m.d_model % m.n_head:
        divisors = [h for h in range(1, min(m.d_model, 64) + 1) if m.d_model % h == 0]
        P.append(
            Problem(
                "model.n_head",
                f"d_model {m.d_model} is not divisible by n_head {m.n_head}; pick n_head from {divisors[-6:]}",
            )
        )
    del ok_l

    # data
    d = cfg.data
    custom_data = is_import_string(d.source)
    if not custom_data:
        need_choice("data.source", d.source, DATA_SOURCES, ' or an import string "pkg.module:factory"')
    need_int("data.vocab_size", d.vocab_size, 2, 1 << 17)
    need_int("data.seed", d.seed, 0)
    need_int("data.num_sequences", d.num_sequences, 16, 1 << 24)
    if d.source == "text":
        if not d.path or not isinstance(d.path, str):
            P.append(Problem("data.path", "data.source is text: set data.path to a UTF-8 or plain text file"))
        elif not os.path.isfile(d.path):
            P.append(Problem("data.path", f"no such file: {d.path!r}"))
        elif not os.access(d.path, os.R_OK):
            P.append(Problem("data.path", f"{d.path!r} is not readable (check its permissions)"))
        else:
            size = os.path.getsize(d.path)
            if _is_int(m.seq_len) and size < 4 * (m.seq_len + 1):
                P.append(
                    Problem(
                        "data.path",
                        f"{d.path!r} holds {size} bytes; it needs at least {4 * (m.seq_len + 1)} "
                        f"(4 sequences of model.seq_len + 1) — use a longer file or a smaller seq_len",
                    )
                )
    elif d.path is not None and not custom_data:
        P.append(Problem("data.path", "only used with data.source: text; remove it or set data.source: text"))

    # parallel
    p = cfg.parallel
    ok_n = need_int("parallel.num_processes", p.num_processes, 1, 1024)
    ok_s = need_choice("parallel.strategy", p.strategy, STRATEGIES)
    if ok_s and p.strategy not in IMPLEMENTED_STRATEGIES:
        P.append(
            Problem(
                "parallel.strategy",
                f"{p.strategy!r} is not available in this version yet; use one of {', '.join(IMPLEMENTED_STRATEGIES)}",
            )
        )
    need_int("parallel.tp_size", p.tp_size, 1, 1024)
    need_int("parallel.pp_size", p.pp_size, 1, 1024)
    need_choice("parallel.pp_schedule", p.pp_schedule, PP_SCHEDULES)
    need_int("parallel.pp_microbatches", p.pp_microbatches, 1, 4096)
    device = cfg.device if cfg.device != "auto" else dev.kind
    need_choice("device", cfg.device, DEVICES)
    if ok_n and cfg.device in DEVICES:
        if device == "cuda" and dev.kind != "cuda":
            P.append(Problem("device", "cuda asked for but no CUDA GPU is visible; use device: auto or cpu"))
        elif device == "cuda" and p.num_processes > dev.count:
            P.append(
                Problem(
                    "parallel.num_processes",
                    f"{p.num_processes} processes but {dev.count} GPU(s); use at most {dev.count}",
                )
            )
        elif device == "cpu" and p.num_processes > max(dev.count, 1) * 2:
            # CPU processes may share cores (teaching on a 2-core laptop), but past 2 per core gloo crawls.
            P.append(
                Problem(
                    "parallel.num_processes",
                    f"{p.num_processes} CPU processes on {dev.count} cores; use at most {2 * dev.count}",
                )
            )

    # precision
    if need_choice("precision", cfg.precision, PRECISIONS):
        if cfg.precision == "fp8" and not (device == "cuda" and dev.supports_fp8):
            P.append(
                Problem(
                    "precision",
                    "fp8 needs an NVIDIA GPU with compute capability >= 8.9 (Ada/Hopper); "
                    f"this machine has {dev.name or dev.kind} — use bf16",
                )
            )
        if cfg.precision == "bf16" and device == "cuda" and not dev.supports_bf16:
            P.append(Problem("precision", f"bf16 needs an Ampere or newer GPU ({dev.name}); use fp16 or fp32"))

    # batch
    need_int("micro_batch_size", cfg.micro_batch_size, 1, 1 << 16)
    need_int("grad_accum_steps", cfg.grad_accum_steps, 1, 1 << 16)
    need_int("max_steps", cfg.max_steps, 1, 1 << 31)
    need_int("log_every", cfg.log_every, 1, 1 << 31)
    need_int("eval_every", cfg.eval_every, 0, 1 << 31, " (0 turns evaluation off)")
    need_int("eval_batches", cfg.eval_batches, 1, 1 << 16)
    need_int("checkpoint_every", cfg.checkpoint_every, 0, 1 << 31, " (0 = only at stop and at the end)")
    need_int("seed", cfg.seed, 0, 2**32 - 1)
    need_int("timeout_s", cfg.timeout_s, 5, 3600)

    # optimizer
    o = cfg.optimizer
    need_choice("optimizer.name", o.name, OPTIMIZERS)
    need_num("optimizer.lr", o.lr, 0.0, 10.0, lo_open=True)
    need_num("optimizer.weight_decay", o.weight_decay, 0.0, 10.0)
    need_num("optimizer.grad_clip", o.grad_clip, 0.0)
    b = o.betas
    if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(_is_num(x) for x in b)):
        P.append(Problem("optimizer.betas", f"must be two numbers like [0.9, 0.95], got {b!r}"))
    elif not all(0.0 <= x < 1.0 and math.isfinite(x) for x in b):
        P.append(Problem("optimizer.betas", f"each beta must be in [0, 1), got {list(b)}"))

    # schedule
    s = cfg.schedule
    # warmup_steps > max_steps is allowed (a short trial run of a long config): the lr just never peaks.
    need_int("schedule.warmup_steps", s.warmup_steps, 0)
    need_choice("schedule.decay", s.decay, DECAYS)
    need_num("schedule.min_lr_ratio", s.min_lr_ratio, 0.0, 1.0)
    return P
