"""Parallelism layouts: one file per strategy, one entry point for the worker. Each strategy's spec
(workbench/layouts.py, read through STRATEGY_SPECS) names its Layout class here.

    strategy  file                 what is split across processes
    ddp       ddp.py               the data (Accelerate's DistributedDataParallel)
    zero1     fsdp.py              + optimizer states (ZeroRedundancyOptimizer)
    zero2     fsdp.py              + gradients (FSDP2, parameters kept whole between forward and backward)
    zero3     fsdp.py              + parameters (FSDP2 fully_shard)
    tp        tensor.py            each weight matrix (DTensor Colwise/Rowwise)
    dp_tp     tensor.py            2-D mesh: FSDP2 across rows, tensor parallel within a row
    pp        pipeline.py          the layers (torch.distributed.pipelining, GPipe / 1F1B)
    ps        parameter_server.py  nothing: rank 0 holds the parameters and optimizer, workers push/pull

``compile`` (compiling.py: each block torch.compile'd in place) applies to ddp, zero1, zero2 and zero3;
``activation_checkpointing`` (checkpointing.py) applies to any of them; comm.py measures the bytes each
moves. Whatever the layout, a step trains on micro_batch_size x grad_accum_steps x num_processes sequences
and computes the same mean loss, so loss curves of different layouts lie on top of each other.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from workbench.config import STRATEGY_SPECS
from workbench.parallel.checkpointing import apply_activation_checkpointing
from workbench.parallel.comm import CommProbe
from workbench.parallel.common import Layout
from workbench.parallel.compiling import compile_blocks

__all__ = ["CommProbe", "Layout", "setup"]


def setup(
    cfg: Any,
    acc: Any,
    model: torch.nn.Module,
    make_optimizer: Any,
    *,
    scaler: Any = None,
    fwd_ctx: Any = None,
    compute_loss: Any = None,
) -> Layout:
    """Apply ``cfg.parallel.strategy`` (and activation checkpointing) to a freshly built model on this rank.

    ``make_optimizer(module)`` builds the optimizer over a module's parameters (called after sharding, so the
    optimizer state is sharded with them). ``scaler``/``fwd_ctx``: the worker's fp16-on-CPU loss scaler and
    autocast. ``compute_loss(model, x, y)``: a loss replacing the model's own (distillation), for a layout that
    takes one (Layout.takes_compute_loss). Returns the Layout the worker trains with.
    """
    strategy = cfg.parallel.strategy
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)  # before sharding: the wrappers go around checkpointed blocks
    if getattr(cfg, "compile", False):
        compile_blocks(model)  # compiled lazily at the first forward; names and state dicts unchanged
    spec = STRATEGY_SPECS[strategy]  # declared in workbench/layouts.py, or registered by your own module
    if not spec.prepared_by_accelerate:
        # Accelerate never sees these models, so it does not autocast them: do it here. (fp16 with its loss
        # scaler is validated to ddp and zero1 only; zero2/zero3/dp_tp replace autocast by FSDP2's policy.)
        device = acc.device.type
        if cfg.precision == "bf16":
            fwd_ctx = torch.autocast(device, dtype=torch.bfloat16)
        elif cfg.precision == "fp16" and scaler is None:
            scaler = torch.amp.GradScaler(device)
            fwd_ctx = torch.autocast(device, dtype=torch.float16)
    kw = {"compute_loss": compute_loss} if compute_loss is not None else {}
    return spec.build(cfg, acc, model, make_optimizer, scaler=scaler, fwd_ctx=fwd_ctx or nullcontext(), **kw)
