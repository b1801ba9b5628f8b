"""The model a fine-tuning config trains: architecture, init_from's weights, then the PEFT method."""

from __future__ import annotations

import torch.nn as nn

from workbench.config import RunConfig
from workbench.factory import is_hf
from workbench.finetune.load import load_model, run_config
from workbench.finetune.lora import wrap_lora
from workbench.models import build_model
from workbench.models.family import family_of


def active(cfg: RunConfig) -> bool:
    """True when the config asks for anything of this module (else the worker builds the plain model)."""
    return bool(cfg.init_from) or cfg.task.kind != "lm" or cfg.peft.method != "none"


def build(cfg: RunConfig) -> nn.Module:
    """The model to train: the config's architecture, weights from init_from, then peft's wrapping.

    Called on every rank right after set_seed, so fresh parts (a new head, LoRA's A) match across ranks.
    """
    model = build_model(cfg)
    if cfg.init_from:
        src = load_model(cfg.init_from).state_dict()
        own = model.state_dict()
        # A head trained for another task (or another label count) does not fit: it starts fresh.
        same_task = run_config(cfg.init_from).task == cfg.task
        family = family_of(model)
        take = {k: v for k, v in src.items() if k in own and (same_task or not family.is_task_head(model, k))}
        fresh = [k for k in own if k not in take and not k.endswith("head.weight") and not task_head(model, k)]
        if fresh:
            raise RuntimeError(f"init_from {cfg.init_from!r} lacks weights for {fresh}")
        model.load_state_dict(take, strict=False)
    if is_hf(cfg.model.arch):
        from workbench.finetune.hf_peft import wrap_hf_peft

        return wrap_hf_peft(cfg, model)  # frozen, lora, adalora, prefix, adapter (finetune/hf_peft.py)
    if cfg.peft.method == "frozen":
        # linear probing: the backbone is a fixed feature extractor, only the head learns
        model.requires_grad_(False)
        for name in family_of(model).task_head_modules:
            model.get_submodule(name).requires_grad_(True)
    elif cfg.peft.method == "lora":
        model = wrap_lora(cfg, model)
    return model


def task_head(model: nn.Module, key: str) -> bool:
    """Whether a state-dict key belongs to a task head that starts fresh (the model's family says)."""
    return family_of(model).is_task_head(model, key)


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
