"""Precision as the planner counts it: bytes per element of each kind of state, and how the forward computes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.config import STRATEGY_SPECS

if TYPE_CHECKING:
    from workbench.config import RunConfig


@dataclass(frozen=True)
class Precision:
    """Bytes per element of each kind of state, and how the forward computes."""

    param: int  # parameters at rest
    grad: int
    master: int  # a separate fp32 master copy (0: the parameters are fp32 already)
    act: int  # bytes of the matmul inputs and outputs autograd saves
    autocast: bool  # torch.autocast: weights AND inputs cast per Linear, and the casts saved
    resid: int = 4  # bytes of the residual stream (what the LayerNorms save; their mean/rstd too)
    gather: int = 4  # bytes of a parameter as FSDP all-gathers it (its compute dtype)


PRECISION = {
    # Accelerate's mixed precision, and the autocast the other layouts apply, is autocast over fp32
    # parameters: params, grads and optimizer state stay fp32 and serve as the master weights;
    # the Linears and attention compute on bf16/fp16 copies of their inputs and weights, which autograd saves;
    # LayerNorms and the residual stream stay fp32.
    "fp32": Precision(4, 4, 0, 4, False),
    "bf16": Precision(4, 4, 0, 2, True),
    "fp16": Precision(4, 4, 0, 2, True),  # + a GradScaler (a scale and a growth counter)
    # fp8 through Accelerate (TransformerEngine / torchao) on Hopper: fp32 params, fp8 (1 byte) copies of
    # the linear inputs saved; TE's own caches are not modelled (hence approximate).
    "fp8": Precision(4, 4, 0, 1, True),
}
# zero2, zero3 and dp_tp run bf16 through FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
# instead of autocast: fp32 sharded parameters, gradients and optimizer state; the gathered parameters and
# the whole forward (residual stream and LayerNorms included) in bf16, no per-Linear casts.
FSDP_BF16 = Precision(4, 4, 0, 2, False, resid=2, gather=2)


def precision_of(cfg: RunConfig) -> Precision:
    spec = STRATEGY_SPECS.get(cfg.parallel.strategy)
    if cfg.precision == "bf16" and spec is not None and spec.fsdp_bf16:
        return FSDP_BF16
    return PRECISION.get(cfg.precision, PRECISION["fp32"])
