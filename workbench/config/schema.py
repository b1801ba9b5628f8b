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
IMPLEMENTED_STRATEGIES = STRATEGIES  # every layout trains for real (workbench/parallel/)
MODEL_PARALLEL = ("tp", "pp", "dp_tp")  # layouts that split the reference GPT's modules by name
PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
OPTIMIZERS = ("adamw", "sgd")
DECAYS = ("cosine", "linear", "constant")
PP_SCHEDULES = ("gpipe", "1f1b")
DEVICES = ("auto", "cpu", "cuda")
TASK_KINDS = ("lm", "classify")
PEFT_METHODS = ("none", "frozen", "lora")
# peft.target groups -> the reference GPT's Linear names (a bare name like "q" or "fc1" works too)
LORA_TARGETS = {"attn": ("q", "k", "v", "o"), "mlp": ("fc1", "fc2")}
FINETUNE_STRATEGIES = ("ddp",)  # classify / peft / distill are built and tested on plain data parallel

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
class TaskConfig:
    kind: str = "lm"  # lm: next-token prediction; classify: one label per sequence (workbench/finetune.py)
    num_labels: int = 2  # classify only


@dataclass(frozen=True)
class PeftConfig:
    method: str = "none"  # none: every weight trains; frozen: backbone frozen, head trains; lora: adapters
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scale: the update is (alpha / r) B A
    target: tuple[str, ...] = ("attn", "mlp")  # attn = q k v o, mlp = fc1 fc2, or Linear names


@dataclass(frozen=True)
class DistillConfig:
    teacher: str | None = None  # a finished run folder; its model's softened outputs teach this one
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the teacher's soft loss; 1 - alpha on the hard labels


@dataclass(frozen=True)
class RunConfig:
    name: str = "quickstart"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: str = "fp32"
    micro_batch_size: int = 8
    grad_accum_steps: int = 4
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
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
    # after pretraining (workbench/finetune.py)
    init_from: str | None = None  # a run folder: start from its latest checkpoint
    task: TaskConfig = field(default_factory=TaskConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

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
        """Sequences per optimizer step: micro_batch_size x grad_accum_steps x num_processes, in EVERY layout.

        Each process loads micro_batch_size sequences per micro-step; ranks that share one model replica
        (a tensor-parallel row, a pipeline) train on their micro-batches stacked, so a replica sees
        micro_batch_size x (num_processes / dp_degree) sequences. Switching layouts changes how the work is
        split, never the batch, so loss curves of different layouts compare directly.
        """
        return self.micro_batch_size * self.grad_accum_steps * self.parallel.num_processes

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
                return DeviceInfo("cuda", n, torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)))
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


def _check_importable(key: str, spec: str, P: list[Problem]) -> None:
    """The module of "pkg.module:factory" must be findable from here (the workers get the same path)."""
    import importlib.util
    import sys

    module = spec.split(":", 1)[0]
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())  # launch() puts the cwd on the workers' PYTHONPATH too
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not found:
        P.append(Problem(key, f"cannot find module {module!r} of {spec!r}; is it on PYTHONPATH or in this folder?"))


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
    if custom_model:
        _check_importable("model.arch", m.arch, P)
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
    if custom_data:
        _check_importable("data.source", d.source, P)
    if not custom_data:
        need_choice("data.source", d.source, DATA_SOURCES, ' or an import string "pkg.module:factory"')
    need_int("data.vocab_size", d.vocab_size, 2, 1 << 17)
    need_int("data.seed", d.seed, 0)
    need_int("data.num_sequences", d.num_sequences, 16, 1 << 24)
    if d.source == "text":
        if not d.path or not isinstance(d.path, str):
            P.append(Problem("data.path", "data.source is text: set data.path to a UTF-8 or plain text file"))
        elif os.path.isdir(d.path):
            P.append(Problem("data.path", f"{d.path!r} is a folder; point data.path at a text file"))
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
    if not isinstance(cfg.activation_checkpointing, bool):
        P.append(Problem("activation_checkpointing", f"must be true or false, got {cfg.activation_checkpointing!r}"))
    _validate_layout(cfg, P)
    _validate_after_pretraining(cfg, P, need_int, need_num, need_choice)
    return P


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _validate_layout(cfg: RunConfig, P: list[Problem]) -> None:
    """The combinations of parallel.* with each other, the model and the precision (workbench/parallel/)."""
    p, m = cfg.parallel, cfg.model
    if p.strategy not in STRATEGIES or not all(
        _is_int(v) and v >= 1 for v in (p.num_processes, p.tp_size, p.pp_size, p.pp_microbatches)
    ):
        return  # the single-key checks above already name the problem
    n, s, tp, pp, mb = p.num_processes, p.strategy, p.tp_size, p.pp_size, p.pp_microbatches
    model_ok = all(_is_int(v) and v >= 1 for v in (m.n_layer, m.n_head, m.d_model))
    if tp != 1 and s not in ("tp", "dp_tp"):
        P.append(Problem("parallel.tp_size", f"only tp and dp_tp split layers across processes; with "
                         f"parallel.strategy {s} set parallel.tp_size: 1"))  # fmt: skip
    if pp != 1 and s != "pp":
        P.append(Problem("parallel.pp_size", f"only pp has pipeline stages; with parallel.strategy {s} set "
                         "parallel.pp_size: 1"))  # fmt: skip
    if s in ("zero1", "zero2", "zero3") and n < 2:
        P.append(Problem("parallel.strategy", f"{s} shards state across processes, and parallel.num_processes 1 "
                         "has nothing to shard with: use ddp, or parallel.num_processes >= 2"))  # fmt: skip
    if s in ("ps", "dp_tp") and n < 2:
        why = "a server and at least one worker" if s == "ps" else "a (dp, tp) grid of processes (>= 4 for both > 1)"
        P.append(Problem("parallel.strategy", f"{s} needs {why}: set parallel.num_processes >= 2"))
    if s in MODEL_PARALLEL and is_import_string(m.arch):
        P.append(Problem("parallel.strategy", f"{s} splits the reference GPT's blocks by name; with your own "
                         "model.arch use ddp, zero1, zero2, zero3 or ps"))  # fmt: skip
    if s == "tp":
        if tp < 2:
            P.append(Problem("parallel.tp_size", f"tp needs tp_size >= 2 processes sharing each layer; set "
                             f"parallel.tp_size: {n} (= parallel.num_processes)"))  # fmt: skip
        elif tp != n:
            P.append(Problem("parallel.tp_size", f"tp puts all parallel.num_processes ({n}) in one tensor-parallel "
                             f"group: set parallel.tp_size: {n}, or use parallel.strategy dp_tp to combine "
                             f"tp_size {tp} with data parallelism"))  # fmt: skip
    if s == "dp_tp" and n % tp:
        P.append(Problem("parallel.tp_size", f"dp_tp arranges parallel.num_processes ({n}) as a (dp, tp) grid: "
                         f"tp_size must divide it; pick one of {_divisors(n)}"))  # fmt: skip
    if s in ("tp", "dp_tp") and tp > 1 and model_ok:
        if m.n_head % tp:
            heads = [k for k in _divisors(m.n_head) if k > 1 and k <= n]
            P.append(Problem("parallel.tp_size", f"model.n_head {m.n_head} does not divide by parallel.tp_size {tp}: "
                             f"each rank computes n_head / tp_size heads; use tp_size in {heads or [1]} or change "
                             "model.n_head"))  # fmt: skip
        if (4 * m.d_model) % tp:
            P.append(Problem("parallel.tp_size", f"the MLP's 4 x model.d_model = {4 * m.d_model} hidden units do not "
                             f"divide by parallel.tp_size {tp}"))  # fmt: skip
    if s == "pp":
        if pp < 2:
            P.append(Problem("parallel.pp_size", f"pp needs at least 2 stages; set parallel.pp_size: {n} "
                             "(= parallel.num_processes)"))  # fmt: skip
        elif pp != n:
            P.append(Problem("parallel.pp_size", f"pp runs one pipeline, one stage per process: parallel.pp_size "
                             f"({pp}) must equal parallel.num_processes ({n})"))  # fmt: skip
        if model_ok and pp > m.n_layer:
            P.append(Problem("parallel.pp_size", f"{pp} stages but model.n_layer is {m.n_layer}: each stage needs a "
                             f"block; use parallel.pp_size <= {m.n_layer} or more layers"))  # fmt: skip
        if _is_int(cfg.micro_batch_size) and cfg.micro_batch_size >= 1 and (cfg.micro_batch_size * pp) % mb:
            batch = cfg.micro_batch_size * pp
            P.append(Problem("parallel.pp_microbatches", f"the pipeline's batch (micro_batch_size x pp_size = "
                             f"{batch} sequences) does not split into {mb} equal micro-batches; use one of "
                             f"{_divisors(batch)}"))  # fmt: skip
        if p.pp_schedule == "1f1b" and mb < pp:
            P.append(Problem("parallel.pp_microbatches", f"1f1b needs at least as many micro-batches as stages "
                             f"({pp}): set parallel.pp_microbatches >= {pp}, or parallel.pp_schedule: gpipe"))  # fmt: skip
    if cfg.precision == "fp16" and s not in ("ddp", "zero1"):
        P.append(Problem("precision", f"fp16's loss scaler must agree across shards; this version has it for ddp "
                         f"and zero1: use bf16 with parallel.strategy {s}"))  # fmt: skip
    if cfg.precision == "fp8" and s != "ddp":
        P.append(
            Problem("precision", f"fp8 runs through Accelerate's ddp path only: use bf16 with parallel.strategy {s}")
        )


# ---------------------------------------------------------------------------------------------------------
# after pretraining: init_from, task, peft, distill (the training side lives in workbench/finetune.py)


def model_checkpoint(run_dir: str) -> str | None:
    """The latest checkpoints/step_N folder of a run that holds model weights, or None."""
    root = os.path.join(run_dir, "checkpoints")
    try:
        steps = sorted((int(d[5:]), d) for d in os.listdir(root) if d.startswith("step_") and d[5:].isdigit())
    except OSError:
        return None
    for _, d in reversed(steps):
        path = os.path.join(root, d)
        if any(os.path.isfile(os.path.join(path, f)) for f in ("model.safetensors", "pytorch_model.bin")):
            return path
    return None


def _vocab(cfg: RunConfig) -> int | None:
    if cfg.data.source == "text":
        return 256  # byte level, as workbench.data.TEXT_VOCAB
    return cfg.data.vocab_size if cfg.data.source == "synthetic" else None


def _source_run(cfg: RunConfig, key: str, path: Any, P: list[Problem]) -> RunConfig | None:
    """The config of the run folder named by key (init_from or distill.teacher), or None with a problem."""
    if not isinstance(path, str) or not path:
        P.append(Problem(key, f"must be a run folder path such as runs/quickstart (run.path), got {path!r}"))
        return None
    if not os.path.isfile(os.path.join(path, "config.yaml")):
        P.append(Problem(key, f"{path!r} is not a run folder (no config.yaml); give a finished run's folder"))
        return None
    if os.path.abspath(path) == os.path.abspath(cfg.run_dir):
        P.append(Problem(key, f"{path!r} is this run's own folder; give another run, or change name"))
        return None
    try:
        src = RunConfig.from_yaml(os.path.join(path, "config.yaml"))
    except ConfigError as e:
        P.append(Problem(key, f"cannot read {path!r}'s config: {e.problems[0]}"))
        return None
    if model_checkpoint(path) is None:
        if os.path.isdir(os.path.join(path, "checkpoints")) and os.listdir(os.path.join(path, "checkpoints")):
            P.append(Problem(key, f"{path!r} trained with parallel.strategy {src.parallel.strategy}, whose sharded "
                             "checkpoints hold no model.safetensors; start from a run trained with ddp"))  # fmt: skip
        else:
            P.append(Problem(key, f"{path!r} holds no checkpoint with model weights yet; let that run finish first"))
        return None
    if src.model.arch != "gpt":
        P.append(Problem(key, f"{path!r} trained model.arch {src.model.arch!r}; only gpt runs can be loaded"))
        return None
    return src


def _validate_after_pretraining(cfg: RunConfig, P: list[Problem], need_int, need_num, need_choice) -> None:
    t, pe, di = cfg.task, cfg.peft, cfg.distill
    ok_kind = need_choice("task.kind", t.kind, TASK_KINDS)
    ok_labels = need_int("task.num_labels", t.num_labels, 2, 1024)
    classify = ok_kind and t.kind == "classify"
    if classify:
        if cfg.data.source == "text":
            P.append(Problem("task.kind", "classify needs labelled data: use data.source synthetic (labels from "
                             'the generator) or your own factory "pkg.module:build" returning (x, label) pairs'))  # fmt: skip
        vocab = _vocab(cfg)
        if ok_labels and _is_int(vocab) and vocab < 4 * t.num_labels:
            P.append(Problem("task.num_labels", f"the synthetic task gives each label its own words: "
                             f"data.vocab_size {vocab} allows at most {vocab // 4} labels"))  # fmt: skip

    ok_method = need_choice("peft.method", pe.method, PEFT_METHODS)
    if need_int("peft.r", pe.r, 1, 4096) and _is_int(cfg.model.d_model) and pe.r > cfg.model.d_model:
        P.append(Problem("peft.r", f"rank {pe.r} exceeds model.d_model {cfg.model.d_model}: adds parameters, "
                         f"no capacity; use r <= {cfg.model.d_model}"))  # fmt: skip
    need_num("peft.alpha", pe.alpha, 0.0, 1e6, lo_open=True)
    names = sorted({n for g in LORA_TARGETS.values() for n in g})
    tgt = pe.target
    if not isinstance(tgt, (tuple, list)) or not tgt or not all(isinstance(x, str) for x in tgt):
        P.append(Problem("peft.target", f"must be a list such as [attn, mlp] (or Linear names {names}), got {tgt!r}"))
    else:
        bad = [x for x in tgt if x not in LORA_TARGETS and x not in names]
        if bad:
            P.append(Problem("peft.target", f"unknown {bad}: use attn, mlp or Linear names {', '.join(names)}"))
    if ok_method and pe.method == "frozen" and ok_kind and t.kind != "classify":
        P.append(Problem("peft.method", "frozen trains only a classification head: set task.kind: classify, "
                         "or use lora / none for a language model"))  # fmt: skip

    need_num("distill.temperature", di.temperature, 0.0, 100.0, lo_open=True)
    need_num("distill.alpha", di.alpha, 0.0, 1.0)

    uses = [k for k, on in (("task.kind", classify), ("peft.method", ok_method and pe.method != "none"),
                            ("distill.teacher", bool(di.teacher))) if on]  # fmt: skip
    for key in uses:
        if cfg.model.arch != "gpt":
            P.append(Problem(key, f"needs model.arch gpt (the reference model's Linear names), got {cfg.model.arch!r}"))
        if cfg.parallel.strategy in STRATEGIES and cfg.parallel.strategy not in FINETUNE_STRATEGIES:
            P.append(Problem(key, f"works with parallel.strategy {' or '.join(FINETUNE_STRATEGIES)} in this "
                             f"version, not {cfg.parallel.strategy!r}"))  # fmt: skip

    # init_from: same architecture (the weights must fit), checked here, before any process starts
    if cfg.init_from is not None:
        src = _source_run(cfg, "init_from", cfg.init_from, P)
        if src is not None:
            m, sm = cfg.model, src.model
            for k in ("n_layer", "n_head", "d_model", "seq_len"):
                if getattr(m, k) != getattr(sm, k):
                    P.append(Problem("init_from", f"{cfg.init_from!r} has model.{k} {getattr(sm, k)}, this config "
                                     f"{getattr(m, k)}: its weights cannot load; set model.{k}: {getattr(sm, k)}"))  # fmt: skip
            if _vocab(src) != _vocab(cfg):
                P.append(Problem("init_from", f"{cfg.init_from!r} has a vocabulary of {_vocab(src)} tokens, this "
                                 f"config {_vocab(cfg)}: set data.source / data.vocab_size as in that run"))  # fmt: skip

    # distill.teacher: any size, but the same outputs (task, labels, vocabulary) and enough context
    if di.teacher is not None:
        src = _source_run(cfg, "distill.teacher", di.teacher, P)
        if src is not None:
            if src.task.kind != t.kind or (t.kind == "classify" and src.task.num_labels != t.num_labels):
                what = src.task.kind + (f" with {src.task.num_labels} labels" if src.task.kind == "classify" else "")
                P.append(Problem("distill.teacher", f"{di.teacher!r} solves task {what}; the student needs the "
                                 "same task.kind and task.num_labels"))  # fmt: skip
            if _vocab(src) != _vocab(cfg):
                P.append(Problem("distill.teacher", f"{di.teacher!r} has a vocabulary of {_vocab(src)} tokens, "
                                 f"the student {_vocab(cfg)}"))  # fmt: skip
            if _is_int(cfg.model.seq_len) and src.model.seq_len < cfg.model.seq_len:
                P.append(Problem("distill.teacher", f"{di.teacher!r} reads at most {src.model.seq_len} tokens; "
                                 f"set model.seq_len <= {src.model.seq_len}"))  # fmt: skip
