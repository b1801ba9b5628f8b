"""Compute: FLOPs the kernels run, the pipeline bubble, and the largest micro-batch that fits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workbench.config import STRATEGY_SPECS
from workbench.models.shapes import TransformerShape
from workbench.plan.activations import Activations
from workbench.plan.result import RankMemory

if TYPE_CHECKING:
    from workbench.config import RunConfig


def hardware_flops_per_token(s: TransformerShape, checkpointing: bool = False) -> int:
    """The matmul FLOPs the kernels really run per token (what torch.utils.flop_counter counts): the model
    FLOPs + flash attention's backward recomputing the scores (2·L·T·d), + under activation checkpointing
    each Block's forward again (2·12·d² + 4·T·d per layer)."""
    L, T, d = s.n_layer, s.seq_len, s.d_model
    out = s.flops_per_token() + 2 * L * T * d
    if checkpointing:
        out += L * (2 * 12 * d * d + 4 * T * d)
    return out


def stage_layers(n_layer: int, num_stages: int) -> list[range]:
    """Consecutive blocks per pipeline stage; any remainder goes to the first stages (the last one carries the
    head). The pp layout splits the model by it and the plan counts each stage's memory by it."""
    base, extra = divmod(n_layer, num_stages)
    out, start = [], 0
    for s in range(num_stages):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def bubble_fraction(num_stages: int, microbatches: int) -> float:
    """The pipeline bubble: (p - 1) / (m + p - 1) of a step idle, for p stages and m micro-batches (GPipe and
    1F1B alike). The one home of the formula: the pp layout reports it, the plan stretches step time by it."""
    return (num_stages - 1) / (microbatches + num_stages - 1)


def bubble_fraction_of(cfg: RunConfig) -> float:
    """The bubble of cfg's layout: 0 without a pipeline."""
    p = cfg.parallel
    spec = STRATEGY_SPECS.get(p.strategy)
    if spec is None or not spec.pipelined or p.pp_size <= 1:
        return 0.0
    return bubble_fraction(p.pp_size, p.pp_microbatches)


def max_micro_batch(ranks: list[RankMemory], act_of: Activations, mem: int, overhead: int, shared: bool) -> int:
    """The largest micro_batch_size that fits: only the activations grow with it (monotonically), so bisect
    over them, with the rest of each rank's memory fixed. Ranks with the same activation layout are grouped,
    so a 1024-rank plan costs a handful of evaluations per candidate."""
    groups: dict[Any, list[int]] = {}  # activation layout -> static bytes of each rank with it
    for r in ranks:
        groups.setdefault(act_of.spec(r.rank), []).append(r.total_bytes - r.activation_bytes + overhead)
    static = {k: (sum(v), max(v), len(v)) for k, v in groups.items()}

    def ok(b: int) -> bool:
        if shared:
            return sum(tot + n * act_of.bytes(k, b) for k, (tot, _, n) in static.items()) <= mem
        return max(mx + act_of.bytes(k, b) for k, (_, mx, _) in static.items()) <= mem

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
