"""RunConfig: the one object that describes an experiment, its YAML round-trip and its overrides.

The YAML keys, the Python attribute paths (``cfg.parallel.num_processes``), the ``--set`` paths of the CLI
and the widget labels are the same names. ``validate()`` returns every problem at once, each naming its
key and the fix, and ``launch`` refuses a config with any problem before a process starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any

import yaml

from workbench.models.family import GPT_FAMILY

if TYPE_CHECKING:
    from workbench.config.devices import DeviceInfo

ARCHS = ("gpt",)
DATA_SOURCES = ("synthetic", "text", "files")
PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
OPTIMIZERS = ("adamw", "sgd")
DECAYS = ("cosine", "linear", "constant")
PP_SCHEDULES = ("gpipe", "1f1b")
DEVICES = ("auto", "cpu", "cuda")
# profile_steps are traced after this many unprofiled optimizer steps (the first one runs the bytes probe)
PROFILE_WARMUP = 2
TASK_KINDS = ("lm", "mlm", "classify")  # mlm: masked-language pretraining of an encoder (hf:bert)
# none: every weight trains; frozen: the head only; lora; and for Hugging Face models also adalora, prefix, adapter
PEFT_METHODS = ("none", "frozen", "lora", "adalora", "prefix", "adapter")
GPT_PEFT_METHODS = ("none", "frozen", "lora")  # the reference GPT's
# peft.target groups -> the reference GPT's Linear names (a bare name like "q" or "fc1" works too): its family's
LORA_TARGETS = GPT_FAMILY.lora_targets

# a run name: one safe folder name (no "/", no "..", not hidden); notebook_launch checks its names with it too
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]{0,127}$")


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
    # "gpt"; "hf:<model_type>" / "hf:<local folder>" (Hugging Face, models/hf_config.py); or an import string
    # "pkg.module:factory" (see README, "Your own model")
    arch: str = "gpt"
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    seq_len: int = 64
    dropout: float = 0.0
    hf_config: dict[str, Any] = field(default_factory=dict)  # hf: further fields of the model type's config


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic", "text", "files", or an import string "pkg.module:factory"
    vocab_size: int = 64  # synthetic only; text is byte level (256); files: the tokenizer's
    seed: int = 0
    path: str | None = None  # text: a file; files: a path or a glob (.txt, .json/.jsonl, .csv, .parquet)
    text_field: str = "text"  # files: the column holding the text (json, csv, parquet)
    label_field: str = "label"  # files, task.kind classify: the column holding the label
    tokenizer: str = "bytes"  # files: bytes | bpe:<vocab> (trained on the train split) | <tokenizer folder>
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
    kind: str = "lm"  # lm: next-token prediction; mlm: masked tokens (encoders); classify: one label per sequence
    num_labels: int = 2  # classify only


@dataclass(frozen=True)
class PeftConfig:
    # none: every weight trains; frozen: backbone frozen, head trains; lora: low-rank updates of peft.target;
    # Hugging Face models also: adalora (AdaLoRA: the rank budget reallocated while training), prefix
    # (Prefix-Tuning: peft.num_virtual_tokens trained keys/values per layer), adapter (a rank-r bottleneck
    # beside the feed-forward output; workbench/finetune/hf_peft.py says which and why)
    method: str = "none"
    r: int = 8  # LoRA rank (adalora: the initial rank, half of it the target; adapter: the bottleneck width)
    alpha: float = 16.0  # LoRA scale: the update is (alpha / r) B A
    # GPT: attn = q k v o, mlp = fc1 fc2, or Linear names. Hugging Face: module names of the type (query, value;
    # q_proj, v_proj ...), attn / mlp = all of its attention / feed-forward ones; the default means peft's own
    # per-type default (bert: query, value; llama, mistral, qwen2: q_proj, v_proj; gpt2: c_attn)
    target: tuple[str, ...] = ("attn", "mlp")
    num_virtual_tokens: int = 8  # prefix: virtual tokens (trained keys and values) prepended in every layer


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
    # fp32 matmuls on TF32 tensor cores (Ampere and newer GPUs; nanoGPT's default); no effect on CPU
    tf32: bool = True
    compile: bool = False  # torch.compile each transformer block (ddp, zero1, zero2, zero3)
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
    profile_steps: int = 0  # optimizer steps traced by torch.profiler after a short warm-up; 0 = off
    trackers: tuple[str, ...] = ("tensorboard",)  # Accelerate's log_with: tensorboard, plus mlflow where installed
    seed: int = 0
    device: str = "auto"  # auto: CUDA GPUs when present, else CPU processes with gloo
    runs_dir: str = "runs"
    timeout_s: int = 60  # process-group timeout: a hung rank fails the run after this many seconds
    # after pretraining (workbench/finetune/)
    init_from: str | None = None  # a run folder: start from its latest checkpoint
    task: TaskConfig = field(default_factory=TaskConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    # ---- derived values: properties, never inputs ----
    @property
    def dp_degree(self) -> int:
        """Data-parallel degree: processes that see different data (the layout's spec says)."""
        from workbench.config.strategies import STRATEGY_SPECS

        spec = STRATEGY_SPECS.get(self.parallel.strategy)
        return spec.dp_degree(self.parallel) if spec is not None else self.parallel.num_processes

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
        """runs_dir/name, absolute: a relative runs_dir is under the project root (fileio.resolve_runs_dir)."""
        from workbench.fileio import resolve_runs_dir

        return os.path.join(resolve_runs_dir(self.runs_dir), self.name)

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
        """Every problem at once, each naming its key and the fix. Empty list = valid.

        ``devices``: the machine to check against (default: this one, detected once). A config naming your own
        model or data (``"pkg.module:factory"``) has its module looked for here; trying the factories on a
        micro-batch of 2 builds a model and a data set, so it is the pre-launch step above the config
        (``workbench.prelaunch.problems``, which ``launch``, ``workbench train``, sweeps and the panel call).
        """
        from workbench.config.validate import validate

        return validate(self, devices)


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
    if "float" in str(f.type) and is_int(value):
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


def is_int(v: Any) -> bool:
    """A whole number, and not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)
