"""Model construction from a RunConfig.

Your own model: ``model.arch: "mypkg.models:build"`` names a function ``build(cfg: RunConfig) -> nn.Module``.
The module's ``forward(x, y)`` returns the mean loss as a scalar tensor, or a tuple ``(logits, loss)``.
Optional ``flops_per_token()`` feeds MFU; without it the worker uses 6 x parameters.

Importing this package does not import torch (the planner and the config panel read ``models.shapes``
through it); the torch-bound names (GPT, GPTConfig, ...) load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from workbench.config import RunConfig
    from workbench.models.gpt import GPTConfig

__all__ = [
    "GPT",
    "GPTClassifier",
    "GPTConfig",
    "build_model",
    "gpt_flops_per_token",
    "gpt_num_params",
    "flops_per_token",
]

_FROM_GPT = ("GPT", "GPTClassifier", "GPTConfig", "gpt_flops_per_token", "gpt_num_params")


def __getattr__(name: str) -> Any:
    if name in _FROM_GPT:
        from workbench.models import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'workbench.models' has no attribute {name!r}")


def gpt_config(cfg: RunConfig) -> GPTConfig:
    from workbench.models.gpt import GPTConfig
    from workbench.models.shapes import vocab_size_for

    m = cfg.model
    return GPTConfig(
        vocab_size=vocab_size_for(cfg.data.source, cfg.data.vocab_size),
        seq_len=m.seq_len,
        n_layer=m.n_layer,
        n_head=m.n_head,
        d_model=m.d_model,
        dropout=m.dropout,
    )


def build_model(cfg: RunConfig) -> nn.Module:
    """The model a config describes, freshly initialised (init_from's weights and peft: finetune.build)."""
    from workbench.factory import is_hf, is_import_string, load_factory

    if is_hf(cfg.model.arch):  # a Hugging Face model (models/hf.py), its own classifier class for classify
        from workbench.models.hf import build_hf_model

        return build_hf_model(cfg)
    if is_import_string(cfg.model.arch):
        return load_factory(cfg.model.arch)(cfg)
    from workbench.models.gpt import GPT, GPTClassifier

    if cfg.task.kind == "classify":
        return GPTClassifier(gpt_config(cfg), cfg.task.num_labels)
    return GPT(gpt_config(cfg))


def flops_per_token(model: nn.Module) -> int:
    fn = getattr(model, "flops_per_token", None)
    if callable(fn):
        return int(fn())
    return 6 * sum(p.numel() for p in model.parameters())
