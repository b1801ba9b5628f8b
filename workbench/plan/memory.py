"""Memory per rank, one function per layout, as ``workbench/parallel/`` builds it (see the docstring of each
file there). Each layout's spec (STRATEGY_SPECS, declared in workbench/layouts.py) names its function."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from workbench.config import STRATEGY_SPECS
from workbench.models.shapes import TransformerShape, numel
from workbench.plan.activations import Activations
from workbench.plan.compute import stage_layers
from workbench.plan.finetuning import finetune_counts
from workbench.plan.precision import Precision
from workbench.plan.result import RankMemory

if TYPE_CHECKING:
    from workbench.config import RunConfig

Tensors = list[tuple[str, tuple[int, ...]]]


@dataclass
class Counting:
    """What every layout's count starts from: the config, the model's tensors, the precision, and the
    activations as a function of micro_batch_size; approximate and notes collect the plan's labels."""

    cfg: RunConfig
    s: TransformerShape
    p: Precision
    B: int  # micro_batch_size
    act_of: Activations
    approximate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ranks: list[RankMemory] = field(default_factory=list)  # the result, once counted

    def __post_init__(self) -> None:
        self.block: Tensors = self.s.block_tensors()
        self.outer: Tensors = self.s.outer_tensors()
        self.N = self.s.num_params
        self.n_tensors = len(self.outer) + self.s.n_layer * len(self.block)
        self.blk_numel = sum(numel(sh) for _, sh in self.block)
        self.outer_numel = sum(numel(sh) for _, sh in self.outer)
        self.W = self.cfg.parallel.num_processes

    def acts(self, rank: int, layers: int, first: bool, last: bool, tp: int = 1, in_flight: int = 1, pooled: int = 1):
        """Activation bytes of `rank`, remembering its layout for the largest-micro-batch search."""
        a = self.act_of
        return a.bytes(a.set_spec(rank, (layers, first, last, tp, in_flight, pooled)), self.B)

    def optimizer_bytes(self, elements: int, tensors: int) -> int:
        return optimizer_bytes(self.cfg, elements, tensors)


def optimizer_bytes(cfg: RunConfig, elements: int, tensors: int) -> int:
    o = cfg.optimizer
    if o.name == "sgd":
        return 4 * elements if o.betas[0] > 0 else 0  # one momentum buffer
    # AdamW: exp_avg + exp_avg_sq (fp32, like the params) + 'step', a 0-dim fp32 tensor per parameter tensor
    return 8 * elements + 4 * tensors


def chunk(n: int, parts: int, i: int) -> int:
    """Length of piece i when torch.chunk splits n into `parts` (FSDP2 and DTensor Shard use its sizes:
    ceil(n/parts) each, the last ones shorter or empty)."""
    c = -(-n // parts)
    return max(0, min(c, n - i * c))


def dim0_shards(tensors: list[tuple[tuple[int, ...], int]], world: int) -> list[int]:
    """Elements each rank holds when every tensor is Shard(0) across `world` ranks (FSDP2): for each
    (shape, how many such tensors), ranks below n // c hold a full chunk c, the next the remainder.
    A difference array keeps it O(tensors + world), so a 1024-rank plan stays fast."""
    diff = [0] * (world + 1)
    for shape, mult in tensors:
        n, rest = shape[0], numel(shape) // shape[0]
        c = -(-n // world)
        full, rem = divmod(n, c)
        diff[0] += c * rest * mult
        diff[full] -= c * rest * mult
        if rem:
            diff[full] += rem * rest * mult
            diff[full + 1] -= rem * rest * mult
    out, acc = [], 0
    for r in range(world):
        acc += diff[r]
        out.append(acc)
    return out


def zero1_partition(s: TransformerShape, block: Tensors, outer: Tensors, world: int) -> tuple[list[int], list[int]]:
    """ZeroRedundancyOptimizer's partition, replayed: per param group (decay = matrices, no_decay = the
    rest, as optim.build_optimizer makes them), largest tensor first to the rank with the fewest elements."""
    tensors = [sh for _, sh in outer] + [sh for _ in range(s.n_layer) for _, sh in block]
    groups = ([numel(sh) for sh in tensors if len(sh) >= 2], [numel(sh) for sh in tensors if len(sh) < 2])
    heap = [(0, r) for r in range(world)]
    elements = [0] * world
    counts = [0] * world
    for g in groups:
        for n in sorted(g, reverse=True):
            size, r = heapq.heappop(heap)
            elements[r] += n
            counts[r] += 1
            heapq.heappush(heap, (size + n, r))
    return elements, counts


def finetune_memory(c: Counting, counts: tuple) -> list[RankMemory]:
    """task.kind classify / peft: built and validated on ddp only."""
    total, trainable, tensors, act_delta = counts
    act = c.acts(0, c.s.n_layer, True, True) + act_delta(c.B)
    c.act_of.delta = act_delta  # after: acts() above counted the full model, the delta is added once
    ranks = []
    for r in range(c.W):
        rm = RankMemory(r, f"replica {r}", param_bytes=c.p.param * total, grad_bytes=c.p.grad * trainable)
        rm.optimizer_bytes = c.optimizer_bytes(trainable, tensors)
        rm.activation_bytes = act
        rm.buffer_bytes = 4 * trainable if c.W > 1 else 0  # DDP buckets hold the trainable gradients only
        ranks.append(rm)
    return ranks


def ddp_memory(c: Counting) -> list[RankMemory]:
    return replicated_memory(c, zero1=False)


def zero1_memory(c: Counting) -> list[RankMemory]:
    return replicated_memory(c, zero1=True)


def replicated_memory(c: Counting, zero1: bool) -> list[RankMemory]:
    """ddp and zero1: every rank holds the whole model; DDP copies gradients into flat fp32 buckets for the
    all-reduce (gradient_as_bucket_view=False): a second gradient-sized buffer. Accelerate wraps in DDP only
    when there is more than one process. zero1: ZeroRedundancyOptimizer keeps this rank's share of the state."""
    p, N, W = c.p, c.N, c.W
    act = c.acts(0, c.s.n_layer, True, True)
    if zero1:
        opt_el, opt_t = zero1_partition(c.s, c.block, c.outer, W)
    ranks = []
    for r in range(W):
        rm = RankMemory(r, f"replica {r}", param_bytes=p.param * N, grad_bytes=p.grad * N, activation_bytes=act)
        rm.optimizer_bytes = c.optimizer_bytes(opt_el[r], opt_t[r]) if zero1 else c.optimizer_bytes(N, c.n_tensors)
        rm.buffer_bytes = 4 * N if W > 1 else 0
        ranks.append(rm)
    return ranks


def parameter_server_memory(c: Counting) -> list[RankMemory]:
    """ps: rank 0 serves: the only optimizer state, and a receive buffer per worker plus the parameters it
    sends back; every worker keeps one buffer for the parameters it pulls (N + the grad norm)."""
    p, N, W = c.p, c.N, c.W
    act = c.acts(0, c.s.n_layer, True, True)
    ranks = []
    for r in range(W):
        server = r == 0
        rm = RankMemory(r, "server" if server else f"worker {r}", param_bytes=p.param * N, grad_bytes=p.grad * N)
        rm.optimizer_bytes = c.optimizer_bytes(N, c.n_tensors) if server else 0
        rm.activation_bytes = act
        rm.buffer_bytes = 4 * (N + 1) + (4 * N * (W - 1) if server else 0)
        ranks.append(rm)
    c.approximate.append("buffer_bytes")
    c.notes.append("ps: buffer_bytes are the layout's own send/receive tensors, which the run does not measure")
    return ranks


def zero2_memory(c: Counting) -> list[RankMemory]:
    return fsdp_memory(c, reshard_after_forward=False)


def zero3_memory(c: Counting) -> list[RankMemory]:
    return fsdp_memory(c, reshard_after_forward=True)


def fsdp_memory(c: Counting, reshard_after_forward: bool) -> list[RankMemory]:
    """zero2 and zero3: FSDP2 fully_shard per Block and at the root, every parameter Shard(0) across all ranks."""
    p, s = c.p, c.s
    act = c.acts(0, s.n_layer, True, True)
    shards = dim0_shards([(sh, 1) for _, sh in c.outer] + [(sh, s.n_layer) for _, sh in c.block], c.W)
    # Unsharded parameters while they compute (gathered in the compute dtype): ZeRO-3 the root's (kept
    # from forward to backward) + two Blocks (one computing, the next prefetched); ZeRO-2 keeps every
    # Block unsharded from forward to backward. Measured after the step they are 0: this is the peak.
    unsharded = c.outer_numel + 2 * c.blk_numel if reshard_after_forward else c.N
    ranks = []
    for r in range(c.W):
        local = shards[r]
        rm = RankMemory(r, f"shard {r}", param_bytes=p.param * local, grad_bytes=p.grad * local)
        rm.optimizer_bytes = c.optimizer_bytes(local, c.n_tensors)
        rm.activation_bytes = act
        rm.buffer_bytes = p.gather * unsharded
        ranks.append(rm)
    c.approximate.append("buffer_bytes")
    return ranks


def tp_memory(c: Counting) -> list[RankMemory]:
    return tensor_parallel_memory(c, dp_tp=False)


def dp_tp_memory(c: Counting) -> list[RankMemory]:
    return tensor_parallel_memory(c, dp_tp=True)


def tensor_parallel_memory(c: Counting, dp_tp: bool) -> list[RankMemory]:
    """tp and dp_tp: Megatron's split of each Block (models/shapes.py: TENSOR_PARALLEL_PLAN); embeddings,
    norms and the tied head replicated. A tensor-parallel row computes on its ranks' micro-batches stacked.
    dp_tp adds FSDP2 over the dp dimension of a (dp, tp) mesh: each rank keeps 1/dp (dim 0) of its TP-local
    tensors."""
    p, s, W = c.p, c.s, c.W
    t = max(1, c.cfg.parallel.tp_size)
    dp = c.cfg.dp_degree if dp_tp else 1

    def local_shape(name: str, sh: tuple[int, ...], ti: int) -> tuple[int, ...]:
        dim = s.tp_split_dim(name)
        return sh if dim is None else tuple(chunk(n, t, ti) if i == dim else n for i, n in enumerate(sh))

    per, tp_local = {}, {}
    for ti in range(t):
        tp_local[ti] = sum(numel(local_shape(n, sh, ti)) for n, sh in c.block)
        shapes = [(sh, 1) for _, sh in c.outer] + [(local_shape(n, sh, ti), s.n_layer) for n, sh in c.block]
        per[ti] = dim0_shards(shapes, dp) if dp_tp else [sum(numel(sh) * k for sh, k in shapes)]
    ranks = []
    for r in range(W):
        ti, di = r % t, r // t
        local = per[ti][di]
        rm = RankMemory(r, f"tp {ti} dp {di}", param_bytes=p.param * local, grad_bytes=p.grad * local)
        rm.optimizer_bytes = c.optimizer_bytes(local, c.n_tensors)
        rm.activation_bytes = c.acts(r, s.n_layer, True, True, tp=t, pooled=t)
        if dp_tp:  # FSDP2's unsharded TP-local parameters while they compute (the peak)
            rm.buffer_bytes = p.gather * (c.outer_numel + 2 * tp_local[ti])
        ranks.append(rm)
    if dp_tp:
        c.approximate.append("buffer_bytes")
    return ranks


def pipeline_memory(c: Counting) -> list[RankMemory]:
    """pp: one stage per process, consecutive Blocks (any remainder to the first stages); the embeddings on
    stage 0, the final norm and a copy of the tied embedding as the head on the last; the whole pipeline
    computes on all ranks' micro-batches stacked, split into pp_microbatches pipeline micro-batches."""
    par, p, s = c.cfg.parallel, c.p, c.s
    pp, m = c.W, max(1, par.pp_microbatches)
    embeddings = [sh for n, sh in c.outer if n in ("tok_emb.weight", "pos_emb.weight")]
    tail = [sh for n, sh in c.outer if n not in ("tok_emb.weight", "pos_emb.weight")]  # ln_f, an untied head
    head_copy = s.vocab_size * s.d_model if pp > 1 and s.tied_head else 0
    ranks = []
    for st, blocks in enumerate(stage_layers(s.n_layer, pp)):
        layers = len(blocks)
        first, last = st == 0, st == pp - 1
        local = layers * c.blk_numel
        tensors = layers * len(c.block)
        if first:
            local += sum(numel(sh) for sh in embeddings)
            tensors += len(embeddings)
        if last:
            local += sum(numel(sh) for sh in tail) + head_copy
            tensors += len(tail) + (1 if head_copy else 0)
        # GPipe runs every forward before any backward; 1F1B starts backwards after p - stage forwards.
        in_flight = m if par.pp_schedule == "gpipe" else min(m, pp - st)
        rm = RankMemory(st, f"stage {st}", param_bytes=p.param * local, grad_bytes=p.grad * local)
        rm.optimizer_bytes = c.optimizer_bytes(local, tensors)
        rm.activation_bytes = c.acts(st, layers, first, last, in_flight=in_flight, pooled=pp)
        # The pipeline's receive buffers, one per micro-batch: gradients from the next stage, activations
        # from the previous one (those of the micro-batches in flight are this stage's saved input: counted
        # as activations).
        mb_bytes = 4 * (c.B * pp // m) * s.seq_len * s.d_model
        rm.buffer_bytes = mb_bytes * ((0 if last else m) + (0 if first else m - in_flight))
        ranks.append(rm)
    c.approximate.append("buffer_bytes")
    c.notes.append(
        f"pp: {par.pp_schedule} holds {'all ' + str(m) if par.pp_schedule == 'gpipe' else 'p - stage'} "
        "micro-batches in flight per stage"
    )
    return ranks


def memory_per_rank(c: Counting, on_cpu: bool) -> list[RankMemory]:
    """Bytes per rank for cfg's layout; labels what is approximate on the way."""
    cfg, strategy = c.cfg, c.cfg.parallel.strategy
    if not on_cpu:
        # Derived op by op and checked against saved_tensors_hooks on CPU; CUDA's attention kernels save a
        # few extras of their own (an RNG state, a padded logsumexp), so on a GPU the figure is close, not exact.
        c.approximate.append("activation_bytes")
    if cfg.precision == "fp8":
        c.approximate.extend(["activation_bytes", "buffer_bytes"])
    if cfg.model.dropout > 0 and c.p.resid == 2:
        c.approximate.append("activation_bytes")  # the math attention path in pure bf16 is not modelled
    counts = finetune_counts(cfg, c.s, c.p, c.N, c.n_tensors, c.approximate, c.notes)
    # A Hugging Face classifier trained in full has its head in the shape: every layout counts it as it counts
    # any model; only its saved activations differ from a language model's (the delta).
    whole = counts is not None and c.s.task_head_params is not None and cfg.peft.method == "none"
    if counts is not None and not whole:
        ranks = finetune_memory(c, counts)
    elif strategy not in STRATEGY_SPECS:
        raise ValueError(f"parallel.strategy {strategy!r}: the planner knows {', '.join(STRATEGY_SPECS)}")
    else:
        ranks = STRATEGY_SPECS[strategy].memory(c)
    if whole:
        for rm in ranks:
            rm.activation_bytes += counts[3](c.B)
        c.act_of.delta = counts[3]
    for rm in ranks:
        rm.buffer_bytes += c.s.buffer_bytes  # the model's own buffers, on every rank whatever the layout
    return ranks
