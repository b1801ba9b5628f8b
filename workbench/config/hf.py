"""Checks for Hugging Face models (``model.arch: hf:...``) and local files (``data.source: files``), before launch.

Nothing is downloaded: a Hub id is refused here with the offline alternatives, so no worker ever waits on a
network that is not there (a Hub name otherwise retries for about a minute before failing).
"""

from __future__ import annotations

import os

from workbench.config.schema import Problem, RunConfig, is_int
from workbench.config.strategies import STRATEGY_SPECS
from workbench.models.family import HF_FAMILY
from workbench.models.hf_config import (
    HF_TP_REFUSED,
    HF_TYPES,
    hf_source,
    hf_task_kinds,
    hf_tp_fields,
    is_hf,
    model_type_of,
)
from workbench.models.hf_peft import hf_peft_refusal, hf_target_vocabulary

FILE_KINDS = (".txt", ".json", ".jsonl", ".csv", ".parquet")


def hf_refusal(strategy: str) -> str | None:
    """Why a Hugging Face model cannot take a layout: it needs what the family never offers (tp: per type)."""
    spec = STRATEGY_SPECS.get(strategy)
    needs = spec.needs if spec is not None else ()
    return next((HF_FAMILY.refuses[n] for n in needs if n in HF_FAMILY.refuses), None)


def validate_hf_model(cfg: RunConfig, P: list[Problem]) -> None:
    """model.arch hf:<type> | hf:<folder>; model.hf_config; the task and layout such a model takes."""
    m = cfg.model
    kind, name = hf_source(m.arch)
    if kind == "hub":
        P.append(Problem("model.arch", f"{m.arch!r} names a model on the Hugging Face Hub; the workbench trains "
                         "offline and downloads nothing. Download it first (on a machine with a network: "
                         f"`huggingface-cli download {name} --local-dir models/{name.split('/')[1]}`) and set "
                         f"model.arch: hf:models/{name.split('/')[1]} (a local folder), or use a model type with "
                         f"random weights: hf:{', hf:'.join(HF_TYPES)}"))  # fmt: skip
        return
    if kind == "unknown":
        P.append(Problem("model.arch", f"{m.arch!r} is neither a model type (hf:{', hf:'.join(HF_TYPES)}) nor a "
                         "local folder holding a save_pretrained model (config.json)"))  # fmt: skip
        return
    if kind == "folder" and not os.path.isfile(os.path.join(name, "config.json")):
        P.append(Problem("model.arch", f"{name!r} holds no config.json: point hf:<folder> at a save_pretrained folder"))
        return
    if not isinstance(m.hf_config, dict):
        P.append(Problem("model.hf_config", f"must be a mapping of config fields, got {m.hf_config!r}"))
    model_type = model_type_of(m.arch)
    if model_type not in HF_TYPES:
        P.append(Problem("model.arch", f"model type {model_type!r}: the plan and the layouts know "
                         f"{', '.join(HF_TYPES)}"))  # fmt: skip
    kinds = hf_task_kinds(model_type)
    if cfg.task.kind not in kinds:
        P.append(Problem("task.kind", f"{model_type} trains {' or '.join(kinds)}, not {cfg.task.kind!r}"))
    reason = hf_refusal(cfg.parallel.strategy)
    if reason:
        P.append(Problem("parallel.strategy", f"{cfg.parallel.strategy} with model.arch {m.arch}: {reason}"))
    spec = STRATEGY_SPECS.get(cfg.parallel.strategy)
    if spec is not None and "tp_plan" in spec.needs and model_type in HF_TYPES:
        validate_hf_tp(cfg, model_type, P)
    if model_type in HF_TYPES:
        validate_hf_peft(cfg, model_type, P)
    if cfg.distill.teacher:
        P.append(Problem("distill.teacher", "distillation into a Hugging Face model is not built yet"))


def validate_hf_tp(cfg: RunConfig, model_type: str, P: list[Problem]) -> None:
    """tp / dp_tp on a Hugging Face model: a type the split is built for (not gpt2), whose heads, key/value
    heads and MLP units divide by parallel.tp_size (each rank computes its share of each; the fields as the
    model is built)."""
    s, tp = cfg.parallel.strategy, cfg.parallel.tp_size
    if model_type in HF_TP_REFUSED:
        P.append(Problem("parallel.strategy", f"{s} with model.arch {cfg.model.arch}: {HF_TP_REFUSED[model_type]}"))
        return
    if not is_int(tp) or tp < 2:
        return  # strategies.py names the tp_size problem
    try:
        fields = hf_tp_fields(cfg)
    except (KeyError, TypeError, ValueError):
        return  # the model's own fields are invalid: named elsewhere
    where = {f: f"model.hf_config.{f}" for f in fields}
    if hf_source(cfg.model.arch)[0] == "type":
        where["num_attention_heads"] = "model.n_head"
    for field, value in fields.items():
        if is_int(value) and value % tp:
            ok = [k for k in range(2, cfg.parallel.num_processes + 1) if value % k == 0]
            fix = f"use tp_size in {ok} or set" if ok else "set"
            P.append(Problem("parallel.tp_size", f"{field} {value} of model.arch {cfg.model.arch} does not divide "
                             f"by parallel.tp_size {tp}: each rank computes 1/tp_size of them; {fix} "
                             f"{where[field]} to a multiple of {tp}"))  # fmt: skip


def validate_hf_peft(cfg: RunConfig, model_type: str, P: list[Problem]) -> None:
    """peft.method and peft.target on a Hugging Face model (the keys alone: config/after_pretraining.py)."""
    from workbench.config.schema import PEFT_METHODS
    from workbench.config.strategies import finetune_strategies

    pe = cfg.peft
    if pe.method == "none" or pe.method not in PEFT_METHODS:
        return
    reason = hf_peft_refusal(cfg, model_type)
    if reason:
        P.append(Problem("peft.method", f"{pe.method} with model.arch {cfg.model.arch}: {reason}"))
    if cfg.parallel.strategy not in finetune_strategies():
        P.append(Problem("peft.method", f"{pe.method} is built and tested on parallel.strategy "
                         f"{' or '.join(finetune_strategies())}, not {cfg.parallel.strategy!r}"))  # fmt: skip
    if pe.method in ("lora", "adalora"):
        known = hf_target_vocabulary(model_type)
        tgt = pe.target
        if not isinstance(tgt, (tuple, list)) or not tgt or not all(isinstance(x, str) for x in tgt):
            P.append(Problem("peft.target", f"must be a list of module names of {model_type} ({', '.join(known)})"))
        elif [x for x in tgt if x not in known]:
            bad = [x for x in tgt if x not in known]
            P.append(Problem("peft.target", f"{model_type} has no module {bad}: use {', '.join(known)}"))
    if pe.method == "adalora" and is_int(cfg.max_steps) and cfg.max_steps < 3:
        P.append(Problem("peft.method", "adalora reallocates its rank budget over the run: set max_steps >= 3"))


def validate_files(cfg: RunConfig, P: list[Problem]) -> None:
    """data.path (a path or a glob of one kind of file), data.tokenizer, data.text_field / label_field."""
    from workbench.data.files import files_of, tokenizer_vocab

    d = cfg.data
    if not is_hf(cfg.model.arch):
        P.append(Problem("data.source", "files feeds Hugging Face models in this version: set model.arch: hf:llama "
                         "(or another hf: type), or use data.source: text for the reference GPT"))  # fmt: skip
    if not isinstance(d.path, str) or not d.path:
        P.append(Problem("data.path", "data.source is files: set data.path to a file or a glob such as corpus/*.txt"))
    else:
        paths = files_of(d.path)
        kinds = {os.path.splitext(p)[1].lower() for p in paths}
        if not paths:
            P.append(Problem("data.path", f"no file matches {d.path!r}"))
        elif not kinds <= set(FILE_KINDS):
            P.append(Problem("data.path", f"{sorted(kinds - set(FILE_KINDS))} files: use {', '.join(FILE_KINDS)}"))
        elif len({".json" if k == ".jsonl" else k for k in kinds}) > 1:
            P.append(Problem("data.path", f"mixes {sorted(kinds)} files; point it at one kind"))
        elif kinds == {".txt"} and cfg.task.kind == "classify":
            P.append(Problem("task.kind", "classify needs labelled rows: a .json/.jsonl, .csv or .parquet file with "
                             "data.text_field and data.label_field columns"))  # fmt: skip
    extra = cfg.model.hf_config if isinstance(cfg.model.hf_config, dict) else {}
    vocab = tokenizer_vocab(cfg)
    if vocab is not None and "vocab_size" in extra and extra["vocab_size"] != vocab:
        P.append(Problem("model.hf_config", f"vocab_size {extra['vocab_size']} differs from data.tokenizer's "
                         f"{vocab}: the vocabulary comes from the tokenizer; remove vocab_size"))  # fmt: skip


def validate_file_keys(cfg: RunConfig, P: list[Problem]) -> None:
    """data.tokenizer, data.text_field and data.label_field alone (whatever data.source: a typo shows at once)."""
    from workbench.data.files import tokenizer_vocab

    d = cfg.data
    t = d.tokenizer
    vocab = tokenizer_vocab(cfg) if isinstance(t, str) else None
    if not isinstance(t, str) or vocab is None:
        P.append(Problem("data.tokenizer", f"must be bytes, bpe:<vocab> (e.g. bpe:2048) or a folder holding "
                         f"tokenizer.json, got {t!r}"))  # fmt: skip
    elif t.startswith("bpe:") and not 260 <= vocab <= 1 << 18:
        P.append(Problem("data.tokenizer", f"bpe:{vocab}: the vocabulary must be >= 260 (256 bytes and 4 special "
                         "tokens), e.g. bpe:2048"))  # fmt: skip
    for key, value in (("data.text_field", d.text_field), ("data.label_field", d.label_field)):
        if not isinstance(value, str) or not value:
            P.append(Problem(key, f"must be a column name, got {value!r}"))


def hf_vocab_of(cfg: RunConfig) -> int | None:
    """The vocabulary of a files or Hugging Face config (for init_from's check); None when unknown."""
    from workbench.data.files import tokenizer_vocab

    if cfg.data.source == "files":
        return tokenizer_vocab(cfg)
    v = (cfg.model.hf_config or {}).get("vocab_size", cfg.data.vocab_size)
    return v if is_int(v) else None
