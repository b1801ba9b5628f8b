"""Communication per optimizer step, per rank, one function per layout.

Payload bytes handed to collectives and send/recv: the size of the tensor each works on, as a DDP comm hook
sees its buckets (all_reduce, broadcast, send, recv: the tensor; all_gather: the gathered output;
reduce_scatter: the unscattered input). The same quantity ``workbench/parallel/comm.py`` measures in every
run. Reductions at log steps are not per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.config import STRATEGY_SPECS
from workbench.models.shapes import TransformerShape
from workbench.plan.precision import Precision

if TYPE_CHECKING:
    from workbench.config import RunConfig

PerRank = tuple[list[int], dict[str, int]]  # bytes per rank, rank 0's bytes by collective

NORM = 4  # global_grad_norm: one fp32 all-reduce of the summed squares (sharded layouts)


@dataclass
class Comm:
    cfg: RunConfig
    s: TransformerShape
    p: Precision
    approximate: list[str]

    @property
    def W(self) -> int:
        return self.cfg.parallel.num_processes

    @property
    def N(self) -> int:
        return self.s.num_params

    def pooled(self, n: int) -> int:
        """The all_gather of n ranks' micro-batches' token ids and targets (int64) into one batch, per step."""
        return 2 * 8 * self.cfg.micro_batch_size * n * self.s.seq_len * self.cfg.grad_accum_steps


def buffer_broadcast(c: Comm) -> int:
    """DDP broadcasts the module's buffers from rank 0 before a forward that follows a synchronised backward
    (broadcast_buffers, its default): once per optimizer step, at the first micro-step (no_sync turns it off
    for the rest). A Hugging Face model's rotary tables or BERT's ids; the GPT has none."""
    return c.s.buffer_bytes if c.W > 1 else 0


def ddp_comm(c: Comm) -> PerRank:
    # DDP all-reduces the fp32 gradient once per optimizer step (no_sync on the accumulation micro-steps)
    ops = {"all_reduce": 4 * c.N}
    if buffer_broadcast(c):
        ops["broadcast"] = buffer_broadcast(c)
    return [sum(ops.values())] * c.W, ops


def zero1_comm(c: Comm) -> PerRank:
    # DDP's all-reduce + ZeroRedundancyOptimizer broadcasting each rank's updated share to the others
    ops = {"all_reduce": 4 * c.N, "broadcast": c.p.param * c.N + buffer_broadcast(c)}
    return [sum(ops.values())] * c.W, ops


def parameter_server_comm(c: Comm) -> PerRank:
    # workers push their gradient and pull the parameters (+ the grad norm); the server does both with each
    N, W = c.N, c.W
    server = {"recv": 4 * N * (W - 1), "send": 4 * (N + 1) * (W - 1)}
    worker = 4 * N + 4 * (N + 1)
    return [sum(server.values())] + [worker] * (W - 1), server


def zero2_comm(c: Comm) -> PerRank:
    return fsdp_comm(c, gathers=1)


def zero3_comm(c: Comm) -> PerRank:
    return fsdp_comm(c, gathers=2)  # the parameters gathered again for backward


def fsdp_comm(c: Comm, gathers: int) -> PerRank:
    # Every micro-step: all-gather the parameters (forward; ZeRO-3 again for backward) in the compute
    # dtype and reduce-scatter the fp32 gradients into their shards (gradients stay sharded between
    # micro-steps, as in DeepSpeed's ZeRO-2/3).
    k = c.cfg.grad_accum_steps
    ops = {"all_gather": k * gathers * c.p.gather * c.N, "reduce_scatter": k * 4 * c.N, "all_reduce": NORM}
    return [sum(ops.values())] * c.W, ops


def tp_comm(c: Comm) -> PerRank:
    return tensor_parallel_comm(c, dp_tp=False)


def dp_tp_comm(c: Comm) -> PerRank:
    return tensor_parallel_comm(c, dp_tp=True)


def tensor_parallel_comm(c: Comm, dp_tp: bool) -> PerRank:
    cfg, s, p = c.cfg, c.s, c.p
    k, par = cfg.grad_accum_steps, cfg.parallel
    ckpt = bool(getattr(cfg, "activation_checkpointing", False))
    t = max(1, par.tp_size)
    dp = cfg.dp_degree if dp_tp else 1
    tokens = cfg.micro_batch_size * t * s.seq_len  # a row computes on its t ranks' micro-batches stacked
    # Per layer and micro-step: forward all-reduces the outputs of the Rowwise Linears (o and fc2 / down) in
    # the compute dtype; backward all-reduces the input gradients of the Colwise ones (q, k, v and fc1, or
    # SwiGLU's gate and up: five), which arrive in the residual stream's dtype; checkpointing recomputes the
    # forward up to o's all-reduce (the recomputation stops once every saved tensor is back, before fc2's).
    styles = list(s.tp_plan().values())
    fwd = (styles.count("rowwise") + (1 if ckpt else 0)) * p.act
    bwd = styles.count("colwise") * p.resid
    ops = {"all_gather": c.pooled(t), "all_reduce": s.n_layer * k * tokens * s.d_model * (fwd + bwd) + NORM}
    if dp_tp:
        if dp > 1:  # FSDP2 over the dp dimension on the TP-local parameters (not measured here: 4+ ranks)
            c.approximate.append("comm_bytes")
            local = c.N // t
            ops["all_gather"] += k * 2 * p.gather * local
            ops["reduce_scatter"] = k * 4 * local
        ops["all_reduce"] += NORM
    return [sum(ops.values())] * c.W, ops


def pipeline_comm(c: Comm) -> PerRank:
    # Per micro-step the whole pooled batch crosses each stage boundary: activations forward, their
    # gradients backward (the fp32 residual stream), plus the tied embedding/head gradient all-reduce
    # between the first and last stage, and the global grad norm.
    cfg, s, W = c.cfg, c.s, c.W
    per = cfg.micro_batch_size * W * s.seq_len * s.d_model * c.p.resid * cfg.grad_accum_steps
    tied = 4 * s.vocab_size * s.d_model
    comm = []
    for r in range(W):
        links = (r > 0) + (r < W - 1)
        comm.append(c.pooled(W) + 2 * links * per + NORM + (tied if r in (0, W - 1) else 0))
    ops = {"all_gather": c.pooled(W), "send": per, "recv": per, "all_reduce": tied + NORM}
    return comm, ops


def comm_per_rank(cfg: RunConfig, s: TransformerShape, p: Precision, approximate: list[str]) -> PerRank:
    """Payload bytes per optimizer step for each rank, and rank 0's by collective (nothing on one process)."""
    W = cfg.parallel.num_processes
    if W <= 1:
        return [0] * max(1, W), {}
    return STRATEGY_SPECS[cfg.parallel.strategy].comm(Comm(cfg, s, p, approximate))
