"""The step-time model: how long one optimizer step takes on the slowest rank, and why.

    step = compute + optimizer + exposed communication + bubble + overhead

compute    forward and backward of every micro-step on this rank's share of the model and batch: each matmul at
           the rate this device reaches at its size, elementwise work at its bandwidth, and a fixed cost per
           tensor operation (which dominates small models on CPU)
comm       every collective the layout issues (the bytes the plan counts, ``plan/comm.py``) as
           calls x latency + bytes / bandwidth; exposed is what the layout cannot hide behind compute
bubble     a pipeline stage's idle time; optimizer: clipping and the update, per tensor and per byte
overhead   what a step costs outside the model (data, loss bookkeeping, the layout's own hooks)

The device facts (``plan/facts.py``) come from microbenchmarks, never from running the layout being predicted.
Each layout's time function is a field of its ``StrategySpec`` (``workbench/layouts.py``), beside its memory and
comm functions; a registered layout without one is timed as data parallel with all of its communication exposed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.models.shapes import TransformerShape
from workbench.plan.compute import stage_layers
from workbench.plan.facts import DeviceFacts
from workbench.plan.precision import Precision
from workbench.plan.result import StepTime

if TYPE_CHECKING:
    from workbench.config import RunConfig

# Tensor operations (aten calls) of one step's pieces, counted in the reference GPT with a TorchDispatchMode
# (torch 2.13, fp32): one block's forward + backward 132 (39 forward), everything outside the blocks 37
# (embeddings, ln_f, the head, the loss). Views count: they cost the dispatcher as much as the smallest kernel.
OPS_PER_BLOCK = 132
OPS_OUTSIDE = 37
OPS_RECOMPUTE_BLOCK = 39  # activation checkpointing runs a block's forward again
# AdamW (for-loop, torch's CPU default) per tensor, clip_grad_norm_ per tensor, and the step's own bookkeeping
# (data loader, loss sums, the schedule): counted the same way.
OPS_PER_TENSOR_ADAMW = 16
OPS_PER_TENSOR_CLIP = 3
OPS_PER_STEP = 40
# Passes over a (tokens, d_model) tensor besides the norms and the activation, forward and backward: two residual
# adds and their gradients, the attention output's transpose copy forward and back, the gradient sums.
ELEMENTWISE_PASSES = 12
# DDP's reducer: an autograd hook per parameter on the synchronising micro-step; FSDP2: hooks and copies per
# group; both cost about one operation each at this level.
DDP_BUCKET_BYTES = 25 * 1024 * 1024


@dataclass
class Timing:
    """What a layout's time function reads: the config, the model's shape, the precision and the device facts."""

    cfg: RunConfig
    s: TransformerShape
    p: Precision
    f: DeviceFacts
    comm_bytes: list[int]
    comm_by_op: dict[str, int]

    @property
    def W(self) -> int:
        return self.cfg.parallel.num_processes

    @property
    def k(self) -> int:
        return self.cfg.grad_accum_steps

    @property
    def ckpt(self) -> bool:
        return bool(getattr(self.cfg, "activation_checkpointing", False))

    @property
    def tensors(self) -> int:
        """Parameter tensors the optimizer steps (a tied matrix once)."""
        return len(self.s.block_tensors()) * self.s.n_layer + len(self.s.outer_tensors())

    def ops_s(self, n: float, dtensor: bool = False) -> float:
        return n * (self.f.op_s + (self.f.dtensor_op_s if dtensor else 0.0))

    def block_s(self, tokens: int, shard: int = 1, batch: int | None = None) -> float:
        """Forward + backward of one block on `tokens` tokens, its heads and MLP split `shard` ways (no op cost)."""
        s, f = self.s, self.f
        d, hd = s.d_model, s.q_dim
        q_out, kv_out, ff = s.n_head * hd // shard, s.kv_heads * hd // shard, s.ff_dim // shard
        linears = [(d, q_out), (d, kv_out), (d, kv_out), (q_out, d)]
        linears += [(d, ff), (d, ff), (ff, d)] if s.ffn == "swiglu" else [(d, ff), (ff, d)]
        again = 1 if self.ckpt else 0  # checkpointing runs the forward again
        t = sum(f.matmul_s(tokens, k_in, n_out) * (3 + again) for k_in, n_out in linears)  # forward, 2 backward
        seqs = batch if batch is not None else max(1, tokens // s.seq_len)
        heads = max(1, s.n_head // shard)
        T = s.seq_len
        t += f.attention_s(3 * 4.0 * seqs * heads * T * T * hd) * (1 + again / 3)
        act = "silu" if s.ffn == "swiglu" else "gelu"
        t += f.elementwise_s(act, tokens * ff) * (1 + again / 3)
        t += f.elementwise_s("norm", 2 * tokens * d) * (1 + again / 3)
        # residual adds, the heads' transposes back to (B, T, d), their gradients: passes over (tokens, d)
        elem = ELEMENTWISE_PASSES * tokens * d * self.p.resid
        return t + elem / f.mem_bytes_per_s

    def outside_s(self, tokens: int) -> float:
        """Embeddings, the final norm, the tied head and the loss on `tokens` tokens (no op cost)."""
        s, f = self.s, self.f
        t = f.matmul_s(tokens, s.d_model, s.vocab_size, count=3)
        return t + 8 * tokens * (s.d_model + s.vocab_size) * 4 / f.mem_bytes_per_s

    def micro_step_s(
        self, tokens: int, layers: int, shard: int = 1, outside: bool = True, dtensor_ops: int = 0
    ) -> float:
        """One micro-step's forward + backward on this rank: `layers` blocks, and the parts outside them."""
        ops = layers * (OPS_PER_BLOCK + (OPS_RECOMPUTE_BLOCK if self.ckpt else 0)) + (OPS_OUTSIDE if outside else 0)
        work = layers * self.block_s(tokens, shard) + (self.outside_s(tokens) if outside else 0.0)
        host = self.ops_s(ops) + dtensor_ops * self.f.dtensor_op_s
        return max(work, host) if self.f.asynchronous else work + host

    def optimizer_s(self, numel: int, tensors: int, dtensor: bool = False) -> float:
        """clip_grad_norm_ + AdamW over `tensors` tensors of `numel` elements in all: a measured fixed cost per
        tensor (plain, or a sharded DTensor's), and the bytes (AdamW reads 4 and writes 3 fp32 per element, the
        norm reads the gradient twice)."""
        e = self.f.elementwise
        per = e.get("adamw_dtensor_s_per_tensor", 0.0) if dtensor else e.get("adamw_s_per_tensor", 0.0)
        work = (28 + 8) * numel / self.f.mem_bytes_per_s
        host = tensors * (per or self.f.op_s * (OPS_PER_TENSOR_ADAMW + OPS_PER_TENSOR_CLIP))
        return max(work, host) if self.f.asynchronous else work + host

    def ddp_all_reduce(self) -> tuple[float, float]:
        """DDP's bucketed all-reduce of the fp32 gradient on the synchronising micro-step: its seconds, and the
        backward it can overlap with (the last micro-step's, two thirds of its forward + backward)."""
        buckets = max(1, -(-4 * self.s.num_params // DDP_BUCKET_BYTES))
        seconds = self.comm_s("all_reduce", 4 * self.s.num_params, buckets) if self.W > 1 else 0.0
        return seconds, 2 / 3 * self.micro_step_s(self.tokens, self.s.n_layer)

    def comm_s(self, op: str, nbytes: float, calls: int = 1) -> float:
        return self.f.collective_s(op, nbytes, calls)

    def exposed(self, comm: float, hideable: float) -> float:
        """Communication left after overlap: on a GPU collectives run on their own stream beside `hideable`
        compute; on a CPU the collective's copies and reductions need the same cores as compute, so nothing
        hides (measured: DDP's bucketed all-reduce on 2 gloo processes saved no time over a step without it)."""
        return max(0.0, comm - hideable) if self.f.asynchronous else comm

    @property
    def tokens(self) -> int:
        return self.cfg.micro_batch_size * self.s.seq_len

    def result(self, compute: float, optimizer: float, comm: float, exposed: float, bubble: float = 0.0,
               overhead: float = 0.0, by_op: dict[str, float] | None = None) -> StepTime:  # fmt: skip
        overhead += self.ops_s(OPS_PER_STEP)
        step = compute + optimizer + exposed + bubble + overhead
        return StepTime(compute, optimizer, comm, exposed, bubble, overhead, step, self.f.source, by_op or {})


# ---- one function per layout ----


def ddp_time(t: Timing) -> StepTime:
    s, N = t.s, t.s.num_params
    compute = t.k * t.micro_step_s(t.tokens, s.n_layer) + t.ops_s(t.tensors)  # the reducer's hook per parameter
    all_reduce, hideable = t.ddp_all_reduce()
    by_op = {"all_reduce": all_reduce}
    return t.result(compute, t.optimizer_s(N, t.tensors), all_reduce, t.exposed(all_reduce, hideable), by_op=by_op)


def zero1_time(t: Timing) -> StepTime:
    s, N, W = t.s, t.s.num_params, t.W
    compute = t.k * t.micro_step_s(t.tokens, s.n_layer) + t.ops_s(t.tensors)
    all_reduce, hideable = t.ddp_all_reduce()
    # ZeroRedundancyOptimizer broadcasts each parameter from the rank that owns it
    by_op = {"all_reduce": all_reduce, "broadcast": t.comm_s("broadcast", t.p.param * N, t.tensors)}
    exposed = t.exposed(all_reduce, hideable) + by_op["broadcast"]
    opt = t.optimizer_s(N // W, t.tensors // W) + t.ops_s(OPS_PER_TENSOR_CLIP * t.tensors)
    return t.result(compute, opt, sum(by_op.values()), exposed, by_op=by_op)


def fsdp_time(t: Timing, gathers: int) -> StepTime:
    s, N, W, k = t.s, t.s.num_params, t.W, t.k
    groups = s.n_layer + 1  # fully_shard per block, then the root (embeddings, ln_f, head)
    # every micro-step: all-gather each group (zero3: again for backward), reduce-scatter its gradients; each
    # gathered and scattered byte is also copied in and out of the flat buffers FSDP2 communicates through
    ag = t.comm_s("all_gather", k * gathers * t.p.gather * N, k * gathers * groups)
    rs = t.comm_s("reduce_scatter", k * 4 * N, k * groups)
    copies = k * (gathers * t.p.gather + 4) * N * 2 / t.f.mem_bytes_per_s
    hooks = t.ops_s(k * groups * 4 * (1 + gathers), dtensor=True)  # pre/post forward and backward, per group
    compute = k * t.micro_step_s(t.tokens, s.n_layer) + copies + hooks
    by_op = {"all_gather": ag, "reduce_scatter": rs, "all_reduce": t.comm_s("all_reduce", 4)}
    comm = sum(by_op.values())
    # FSDP2 prefetches the next group's all-gather during this one's compute; the reduce-scatter of the last
    # group and the first gather stay exposed
    exposed = t.exposed(comm, k * t.micro_step_s(t.tokens, s.n_layer)) if t.f.asynchronous else comm
    opt = t.optimizer_s(N // W, t.tensors, dtensor=True)
    return t.result(compute, opt, comm, exposed, by_op=by_op)


def zero2_time(t: Timing) -> StepTime:
    return fsdp_time(t, gathers=1)


def zero3_time(t: Timing) -> StepTime:
    return fsdp_time(t, gathers=2)


def tp_time(t: Timing) -> StepTime:
    s, k = t.s, t.k
    tp = max(1, t.cfg.parallel.tp_size)
    tokens = t.tokens * tp  # a row computes on its ranks' micro-batches stacked
    styles = list(s.tp_plan().values())
    linears = len(styles)
    # each sharded Linear's forward and backward runs through DTensor: its measured extra cost per Linear
    tp_linear = t.f.elementwise.get("tp_linear_s", 6 * t.f.dtensor_op_s)
    compute = k * (t.micro_step_s(tokens, s.n_layer, shard=tp) + s.n_layer * linears * tp_linear)
    calls = k * s.n_layer * (styles.count("rowwise") + styles.count("colwise") + (1 if t.ckpt else 0))
    ar_bytes = t.comm_by_op.get("all_reduce", 0)
    by_op = {"all_reduce": t.comm_s("all_reduce", ar_bytes, calls),
             "all_gather": t.comm_s("all_gather", t.comm_by_op.get("all_gather", 0), k)}  # fmt: skip
    comm = sum(by_op.values())
    # the sharded Linears' parameters are DTensors; the norms and the parts outside the blocks stay plain
    dtensors = s.n_layer * len(styles) * (2 if s.bias else 1)  # each sharded Linear's weight and bias
    opt = t.optimizer_s(s.num_params // tp, t.tensors - dtensors) + t.optimizer_s(0, dtensors, dtensor=True)
    return t.result(compute, opt, comm, t.exposed(comm, 0.0), by_op=by_op)


def pp_time(t: Timing) -> StepTime:
    s, W, k, par = t.s, t.W, t.k, t.cfg.parallel
    stages = max(1, par.pp_size)
    m = max(1, par.pp_microbatches)
    pooled = t.cfg.micro_batch_size * (W // stages) * stages  # the stages share the pooled batch
    chunk_tokens = max(1, pooled * s.seq_len // m)
    per_stage = []
    for i, layers in enumerate(stage_layers(s.n_layer, stages)):
        outside = 0.5 if i in (0, stages - 1) else 0.0  # embeddings on the first, head and loss on the last
        chunk = t.micro_step_s(chunk_tokens, len(layers), outside=False) + outside * (
            t.outside_s(chunk_tokens) + t.ops_s(OPS_OUTSIDE)
        )
        per_stage.append(chunk)
    slowest = max(per_stage)
    act = chunk_tokens * s.d_model * t.p.resid
    sendrecv = t.comm_s("send", 2 * m * act, 2 * m)  # activations forward, their gradients backward
    compute = k * m * slowest
    bubble = k * (stages - 1) * (slowest + sendrecv / m)
    by_op = {"send": sendrecv, "all_gather": t.comm_s("all_gather", t.comm_by_op.get("all_gather", 0), k),
             "all_reduce": t.comm_s("all_reduce", t.comm_by_op.get("all_reduce", 0), 2)}  # fmt: skip
    comm = k * by_op["send"] + by_op["all_gather"] + by_op["all_reduce"]
    n_stage = s.num_params // stages
    opt = t.optimizer_s(n_stage, t.tensors // stages)
    return t.result(compute, opt, comm, t.exposed(comm, 0.0), bubble=bubble, by_op=by_op)


def ps_time(t: Timing) -> StepTime:
    s, N, W = t.s, t.s.num_params, t.W
    compute = t.k * t.micro_step_s(t.tokens, s.n_layer)
    # workers push their flat gradient, the server sums, clips and steps, then every worker pulls
    flat = 4 * N
    by_op = {"recv": t.comm_s("send", flat * (W - 1), W - 1), "send": t.comm_s("send", (flat + 4) * (W - 1), W - 1)}
    comm = sum(by_op.values())
    copies = (W + 3) * flat / t.f.mem_bytes_per_s  # cat, the sum over workers, the copies back
    opt = t.optimizer_s(N, t.tensors) + copies
    return t.result(compute, opt, comm, comm, by_op=by_op)


def dp_tp_time(t: Timing) -> StepTime:
    return tp_time(t)


def data_parallel_time(t: Timing) -> StepTime:
    """A registered layout without a time function of its own: data parallel, its communication exposed."""
    compute = t.k * t.micro_step_s(t.tokens, t.s.n_layer)
    comm = sum(t.comm_s(op, b) for op, b in t.comm_by_op.items())
    return t.result(compute, t.optimizer_s(t.s.num_params, t.tensors), comm, comm)
