"""PEFT: LoRA adapters through the peft library, and their trainable-parameter count by formula."""

from __future__ import annotations

import torch.nn as nn

from workbench.config import RunConfig
from workbench.models.family import GPT_FAMILY, family_of
from workbench.models.shapes import shape_of


def lora_modules(cfg: RunConfig) -> list[str]:
    """peft's target_modules: the reference GPT family's Linear names for peft.target ([attn, mlp] -> q k v o fc1
    fc2; a Hugging Face model's: finetune/hf_peft.py)."""
    targets = GPT_FAMILY.lora_targets
    return sorted({name for t in cfg.peft.target for name in targets.get(t, (t,))})


def wrap_lora(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """LoRA adapters on the chosen Linears through peft; the classification head trains in full.

    peft freezes every base weight and adds W + (alpha / r) B A per target, A (r, in) random and B (out, r)
    zero, so the wrapped model starts out computing exactly what the pretrained one did."""
    from peft import LoraConfig, get_peft_model  # imported here: peft pulls in transformers (seconds)

    lc = LoraConfig(
        r=cfg.peft.r,
        lora_alpha=cfg.peft.alpha,
        target_modules=lora_modules(cfg),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=list(family_of(model).task_head_modules) if cfg.task.kind == "classify" else None,
    )
    return get_peft_model(model, lc)


def lora_param_count(cfg: RunConfig) -> int:
    """Trainable parameters of a LoRA model, by formula: r (in + out) per adapted Linear, plus the head."""
    s, r, targets = shape_of(cfg), cfg.peft.r, set(lora_modules(cfg))
    adapted = [sh for name, sh in s.block_tensors() if name.endswith(".weight") and name.split(".")[-2] in targets]
    n = s.n_layer * sum(r * (out + inp) for out, inp in adapted)
    if cfg.task.kind == "classify":  # the score head, trained in full
        n += s.d_model * cfg.task.num_labels + cfg.task.num_labels
    return n
