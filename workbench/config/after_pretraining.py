"""Checks for the keys used after pretraining: init_from, task, peft, distill (training: workbench/finetune/)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from workbench.config.schema import (
    GPT_PEFT_METHODS,
    LORA_TARGETS,
    PEFT_METHODS,
    TASK_KINDS,
    ConfigError,
    Problem,
    RunConfig,
    is_int,
)
from workbench.config.strategies import STRATEGY_SPECS, finetune_strategies
from workbench.data import TEXT_VOCAB
from workbench.factory import is_hf

if TYPE_CHECKING:
    from workbench.config.validate import Checker


def model_checkpoint(run_dir: str) -> str | None:
    """The latest checkpoints/step_N folder of a run that holds model weights, or None."""
    from workbench import checkpoints  # the one home of the checkpoints/step_N layout

    return checkpoints.latest(run_dir, with_model_weights=True)


def vocab_of(cfg: RunConfig) -> int | None:
    """The token vocabulary a config trains on; None for your own data (its factory decides)."""
    if cfg.data.source == "text":
        return TEXT_VOCAB
    if cfg.data.source == "files" or is_hf(cfg.model.arch):
        from workbench.config.hf import hf_vocab_of

        return hf_vocab_of(cfg)
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
    if src.model.arch != cfg.model.arch and (src.model.arch != "gpt" or key != "distill.teacher"):
        P.append(Problem(key, f"{path!r} trained model.arch {src.model.arch!r}, this config {cfg.model.arch!r}: "
                         f"set model.arch: {src.model.arch}"))  # fmt: skip
        return None
    if src.model.arch != "gpt" and not is_hf(src.model.arch):
        P.append(Problem(key, f"{path!r} trained model.arch {src.model.arch!r}; only gpt and hf: runs can be loaded"))
        return None
    return src


def validate_after_pretraining(cfg: RunConfig, c: Checker) -> None:
    """task, peft and distill, each key alone and together; then the run folders init_from / distill.teacher name."""
    P, t, pe, di = c.problems, cfg.task, cfg.peft, cfg.distill
    ok_kind = c.need_choice("task.kind", t.kind, TASK_KINDS)
    ok_labels = c.need_int("task.num_labels", t.num_labels, 2, 1024)
    classify = ok_kind and t.kind == "classify"
    if ok_kind and t.kind == "mlm" and not is_hf(cfg.model.arch):
        P.append(Problem("task.kind", "mlm (masked-language pretraining) trains an encoder: set model.arch: hf:bert, "
                         "or task.kind: lm for a decoder"))  # fmt: skip
    if classify:
        if cfg.data.source == "files" and not is_hf(cfg.model.arch):
            pass  # validate_files refuses it with its reason
        elif cfg.data.source == "text":
            P.append(Problem("task.kind", "classify needs labelled data: use data.source synthetic (labels from "
                             'the generator) or your own factory "pkg.module:build" returning (x, label) pairs'))  # fmt: skip
        vocab = vocab_of(cfg)
        if ok_labels and is_int(vocab) and vocab < 4 * t.num_labels and cfg.data.source == "synthetic":
            P.append(Problem("task.num_labels", f"the synthetic task gives each label its own words: "
                             f"data.vocab_size {vocab} allows at most {vocab // 4} labels"))  # fmt: skip
    ok_method = _validate_peft(cfg, c)
    if ok_method and pe.method == "frozen" and ok_kind and t.kind != "classify":
        P.append(Problem("peft.method", "frozen trains only a classification head: set task.kind: classify, "
                         "or use lora / none for a language model"))  # fmt: skip

    c.need_num("distill.temperature", di.temperature, 0.0, 100.0, lo_open=True)
    c.need_num("distill.alpha", di.alpha, 0.0, 1.0)

    uses = [k for k, on in (("task.kind", classify), ("peft.method", ok_method and pe.method != "none"),
                            ("distill.teacher", bool(di.teacher))) if on]  # fmt: skip
    for key in uses:
        if is_hf(cfg.model.arch):
            continue  # a Hugging Face model: its own checks (config/hf.py), every layout it takes
        if cfg.model.arch != "gpt":
            P.append(Problem(key, f"needs model.arch gpt (the reference model's Linear names), got {cfg.model.arch!r}"))
        if cfg.parallel.strategy in STRATEGY_SPECS and cfg.parallel.strategy not in finetune_strategies():
            P.append(Problem(key, f"works with parallel.strategy {' or '.join(finetune_strategies())} in this "
                             f"version, not {cfg.parallel.strategy!r}"))  # fmt: skip
    _validate_init_from(cfg, P)
    _validate_teacher(cfg, P)


def _validate_peft(cfg: RunConfig, c: Checker) -> bool:
    """The peft.* keys alone; True when peft.method is a known one."""
    P, pe = c.problems, cfg.peft
    ok_method = c.need_choice("peft.method", pe.method, PEFT_METHODS)
    if c.need_int("peft.r", pe.r, 1, 4096) and is_int(cfg.model.d_model) and pe.r > cfg.model.d_model:
        P.append(Problem("peft.r", f"rank {pe.r} exceeds model.d_model {cfg.model.d_model}: adds parameters, "
                         f"no capacity; use r <= {cfg.model.d_model}"))  # fmt: skip
    c.need_num("peft.alpha", pe.alpha, 0.0, 1e6, lo_open=True)
    c.need_int("peft.num_virtual_tokens", pe.num_virtual_tokens, 1, 4096)
    if is_hf(cfg.model.arch):
        return ok_method  # peft.target: the model type's module names (config/hf.py)
    if ok_method and pe.method not in GPT_PEFT_METHODS:
        P.append(Problem("peft.method", f"{pe.method} is built for Hugging Face models (model.arch hf:...); the "
                         f"reference GPT takes {', '.join(GPT_PEFT_METHODS)}"))  # fmt: skip
    names = sorted({n for g in LORA_TARGETS.values() for n in g})
    tgt = pe.target
    if not isinstance(tgt, (tuple, list)) or not tgt or not all(isinstance(x, str) for x in tgt):
        P.append(Problem("peft.target", f"must be a list such as [attn, mlp] (or Linear names {names}), got {tgt!r}"))
    else:
        bad = [x for x in tgt if x not in LORA_TARGETS and x not in names]
        if bad:
            P.append(Problem("peft.target", f"unknown {bad}: use attn, mlp or Linear names {', '.join(names)}"))
    return ok_method


def _validate_init_from(cfg: RunConfig, P: list[Problem]) -> None:
    """init_from: same architecture (the weights must fit), checked here, before any process starts."""
    if cfg.init_from is None:
        return
    src = _source_run(cfg, "init_from", cfg.init_from, P)
    if src is None:
        return
    m, sm = cfg.model, src.model
    for k in ("n_layer", "n_head", "d_model", "seq_len"):
        if getattr(m, k) != getattr(sm, k):
            P.append(Problem("init_from", f"{cfg.init_from!r} has model.{k} {getattr(sm, k)}, this config "
                             f"{getattr(m, k)}: its weights cannot load; set model.{k}: {getattr(sm, k)}"))  # fmt: skip
    if vocab_of(src) != vocab_of(cfg):
        P.append(Problem("init_from", f"{cfg.init_from!r} has a vocabulary of {vocab_of(src)} tokens, this "
                         f"config {vocab_of(cfg)}: set data.source / data.vocab_size as in that run"))  # fmt: skip


def _validate_teacher(cfg: RunConfig, P: list[Problem]) -> None:
    """distill.teacher: any size, but the same outputs (task, labels, vocabulary) and enough context."""
    t, di = cfg.task, cfg.distill
    if di.teacher is None:
        return
    src = _source_run(cfg, "distill.teacher", di.teacher, P)
    if src is None:
        return
    if src.task.kind != t.kind or (t.kind == "classify" and src.task.num_labels != t.num_labels):
        what = src.task.kind + (f" with {src.task.num_labels} labels" if src.task.kind == "classify" else "")
        P.append(Problem("distill.teacher", f"{di.teacher!r} solves task {what}; the student needs the "
                         "same task.kind and task.num_labels"))  # fmt: skip
    if vocab_of(src) != vocab_of(cfg):
        P.append(Problem("distill.teacher", f"{di.teacher!r} has a vocabulary of {vocab_of(src)} tokens, "
                         f"the student {vocab_of(cfg)}"))  # fmt: skip
    if is_int(cfg.model.seq_len) and src.model.seq_len < cfg.model.seq_len:
        P.append(Problem("distill.teacher", f"{di.teacher!r} reads at most {src.model.seq_len} tokens; "
                         f"set model.seq_len <= {src.model.seq_len}"))  # fmt: skip
