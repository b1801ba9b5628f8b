"""compile: true — ``torch.compile`` each transformer block in place, before the layout wraps the model.

Per block, as torchtitan does, rather than the whole model: ``nn.Module.compile()`` compiles the module's call
in place, so parameter names, state dicts and checkpoints stay those of the eager model (``torch.compile(model)``
would return a wrapper whose keys start with ``_orig_mod.``); the layouts' wrappers (DDP, FSDP2's
``fully_shard`` per block) go around compiled blocks; and the blocks repeat, so one graph serves them all.
The embeddings, the final norm, the head and the loss stay eager.

Compilation happens at the first forward (and again for evaluation, which runs the blocks in eval mode): the
worker times the first optimizer step apart and keeps it out of tokens/s (``compile_s``). Inductor's caches
(FX graph and AOTAutograd) live under TORCHINDUCTOR_CACHE_DIR, which the launcher points at the workbench's
cache folder, so a second run of the same shapes reuses the compiled code.
"""

from __future__ import annotations

import torch.nn as nn

from workbench.parallel.checkpointing import find_blocks


def compile_blocks(model: nn.Module) -> int:
    """Compile each repeated block of ``model`` in place; returns how many. Raises if it has no blocks."""
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError("compile: the model has no repeated blocks (no nn.ModuleList) to compile; set compile: false")
    for block in blocks:
        block.compile()
    return len(blocks)
