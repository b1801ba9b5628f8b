"""Activation checkpointing per transformer block, and a count of the activations saved for backward.

``apply_activation_checkpointing(model)`` makes each block run under ``torch.utils.checkpoint.checkpoint``
(non-reentrant): the block's inner activations are dropped after forward and recomputed in backward, so
one block's worth lives at a time instead of all of them. It works under every layout because it wraps the
block's ``forward`` in place: parameter names (and so checkpoints and state dicts) do not change, and the
wrappers that layouts add around a block (FSDP2's hooks, DDP, tensor-parallel hooks on its Linears) stay
where they are: FSDP2's pre-backward hook re-gathers the block's parameters before the recomputation needs
them, exactly as with torch's own ``checkpoint_wrapper``.

What it saves is measured by ``workbench.measure`` (saved_tensors_hooks at the first step): with
checkpointing, only each block's input (kept by the checkpoint for the recomputation) instead of every
intermediate activation inside the block.
"""

from __future__ import annotations

import functools
from typing import Any

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from workbench.models.family import family_of


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model, as its family names them (models/family.py)."""
    return family_of(model).blocks(model)


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Checkpoint every block of ``model``; returns how many. Raises if the model has no blocks to wrap.

    A family with a switch of its own (a Hugging Face model: transformers', which checkpoints the same blocks,
    non-reentrant as well) turns it on instead."""
    blocks = find_blocks(model)
    if blocks and family_of(model).checkpoint_natively(model):
        return len(blocks)
    if not blocks:
        raise ValueError(
            "activation_checkpointing: the model has no repeated blocks (no nn.ModuleList) to checkpoint; "
            "set activation_checkpointing: false"
        )
    for block in blocks:
        if getattr(block, "_wb_checkpointed", False):
            continue
        original = block.forward  # the bound forward of this instance (FSDP2 may change the class, not this)

        @functools.wraps(original)
        def forward(*args: Any, _original=original, **kwargs: Any) -> Any:
            # use_reentrant=False: works with FSDP2/DTensor, keyword arguments and inputs without grad.
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._wb_checkpointed = True
    return len(blocks)
