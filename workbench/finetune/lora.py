"""PEFT: LoRA adapters through the peft library, and their trainable-parameter count by formula."""

from __future__ import annotations

import torch.nn as nn

from workbench.config import LORA_TARGETS, RunConfig


def lora_modules(cfg: RunConfig) -> list[str]:
    """peft's target_modules: the GPT's Linear names for peft.target ([attn, mlp] -> q k v o fc1 fc2)."""
    return sorted({name for t in cfg.peft.target for name in LORA_TARGETS.get(t, (t,))})


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
        modules_to_save=["score"] if cfg.task.kind == "classify" else None,
    )
    return get_peft_model(model, lc)


def lora_param_count(cfg: RunConfig) -> int:
    """Trainable parameters of a LoRA model, by formula: r (in + out) per adapted Linear, plus the head."""
    d, r = cfg.model.d_model, cfg.peft.r
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    n = cfg.model.n_layer * sum(r * (i + o) for name, (i, o) in shapes.items() if name in lora_modules(cfg))
    if cfg.task.kind == "classify":
        n += d * cfg.task.num_labels + cfg.task.num_labels
    return n
