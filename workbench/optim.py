"""The optimizer and the learning-rate schedule a RunConfig asks for (optimizer.*, schedule.*).

Kept apart from the worker so the plan's optimizer-state arithmetic, the tests and the worker all build the
same parameter groups from one place.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_lambda(cfg) -> Any:
    s, total = cfg.schedule, cfg.max_steps

    def f(step: int) -> float:  # LambdaLR calls this with the number of optimizer steps taken so far
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.decay == "constant":
            return 1.0
        progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
        if s.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * shape

    return f


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    # Weight decay on matrices only (nanoGPT): decaying biases and LayerNorm gains only hurts.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0])
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
