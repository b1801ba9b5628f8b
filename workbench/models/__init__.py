"""Model construction from a RunConfig.

Your own model: ``model.arch: "mypkg.models:build"`` names a function ``build(cfg: RunConfig) -> nn.Module``.
The module's ``forward(x, y)`` returns the mean loss as a scalar tensor, or a tuple ``(logits, loss)``.
Optional ``flops_per_token()`` feeds MFU; without it the worker uses 6 x parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from workbench.config import is_import_string
from workbench.models.gpt import GPT, GPTConfig, gpt_flops_per_token, gpt_num_params

if TYPE_CHECKING:
    from workbench.config import RunConfig

__all__ = ["GPT", "GPTConfig", "build_model", "gpt_flops_per_token", "gpt_num_params", "flops_per_token"]


def gpt_config(cfg: RunConfig) -> GPTConfig:
    from workbench.data import vocab_size

    m = cfg.model
    return GPTConfig(
        vocab_size=vocab_size(cfg),
        seq_len=m.seq_len,
        n_layer=m.n_layer,
        n_head=m.n_head,
        d_model=m.d_model,
        dropout=m.dropout,
    )


def build_model(cfg: RunConfig) -> nn.Module:
    if is_import_string(cfg.model.arch):
        from workbench.data import load_factory

        return load_factory(cfg.model.arch)(cfg)
    return GPT(gpt_config(cfg))


def flops_per_token(model: nn.Module) -> int:
    fn = getattr(model, "flops_per_token", None)
    if callable(fn):
        return int(fn())
    return 6 * sum(p.numel() for p in model.parameters())
