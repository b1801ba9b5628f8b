"""The plan: memory, FLOPs, communication and time per rank for a RunConfig, before anything is launched.

    import workbench as wb
    p = wb.plan(cfg, device="h100")
    print(p.table())        # where the memory goes on each rank, and whether it fits
    p.fits, p.max_micro_batch_size, p.tokens_per_s

Pure arithmetic over the config: no torch, no model, no process; a call takes about a millisecond, so the
config panel can redraw it while a slider moves. Every figure here has a measured counterpart
(``workbench/measure.py``) that the worker records in each run, and ``tests/test_plan.py`` checks the two
against each other over a grid of layouts, precisions, checkpointing and sizes.

What the numbers mean (per rank, bytes):
  param_bytes       the parameters this rank holds at rest (its shard under ZeRO-3/TP/PP)
  grad_bytes        their gradients after backward
  optimizer_bytes   optimizer state (AdamW: exp_avg + exp_avg_sq + a step counter per tensor; SGD: momentum)
  master_bytes      a separate fp32 copy of the weights kept by mixed precision. Accelerate's bf16/fp16 is
                    autocast over fp32 parameters: the parameters ARE the fp32 master weights, so this is 0
                    for every precision the workbench runs (a pure-bf16 setup would keep 4 bytes/param here)
  activation_bytes  tensors autograd saves for backward, for the micro-batches a rank holds at once
                    (one, or several in flight on a pipeline stage)
  buffer_bytes      communication buffers: DDP's gradient buckets, FSDP's unsharded parameters
"""

from __future__ import annotations

import heapq
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.config import RunConfig

GiB = 1024**3

# Devices the planner knows: memory per device (bytes) and the key of telemetry.GPU_PEAK_FLOPS for its peak.
# Memory is what the data sheet states; CUDA itself, the caching allocator and NCCL take some of it, which
# OVERHEAD_BYTES below accounts for.
DEVICES: dict[str, dict[str, Any]] = {
    "a100-40": {"memory": 40 * GiB, "gpu": "A100", "label": "NVIDIA A100 40GB"},
    "a100-80": {"memory": 80 * GiB, "gpu": "A100", "label": "NVIDIA A100 80GB"},
    "a100": {"memory": 80 * GiB, "gpu": "A100", "label": "NVIDIA A100 80GB"},
    "h100": {"memory": 80 * GiB, "gpu": "H100 SXM", "label": "NVIDIA H100 SXM 80GB"},
    "h100-pcie": {"memory": 80 * GiB, "gpu": "H100 PCIe", "label": "NVIDIA H100 PCIe 80GB"},
    "h200": {"memory": 141 * 10**9, "gpu": "H200", "label": "NVIDIA H200 141GB"},
    "l40s": {"memory": 48 * GiB, "gpu": "L40S", "label": "NVIDIA L40S 48GB"},
    "l4": {"memory": 24 * GiB, "gpu": "L4", "label": "NVIDIA L4 24GB"},
    "a10": {"memory": 24 * GiB, "gpu": "A10", "label": "NVIDIA A10 24GB"},
    "v100": {"memory": 32 * GiB, "gpu": "V100", "label": "NVIDIA V100 32GB"},
    "t4": {"memory": 16 * GiB, "gpu": "T4", "label": "NVIDIA T4 16GB"},
    "rtx4090": {"memory": 24 * GiB, "gpu": "RTX 4090", "label": "NVIDIA RTX 4090 24GB"},
    "cpu": {"memory": None, "gpu": None, "label": "this machine's CPU and RAM"},
}

# Memory a process holds before any tensor of ours: the CUDA context + cuBLAS/NCCL workspaces on a GPU
# (~0.5-1 GiB), or torch's own resident size on CPU (measured: ~0.35-0.45 GiB RSS after `import torch` and
# an Accelerator). Approximate; it enters the verdict, not the per-rank bars.
OVERHEAD_BYTES = {"gpu": 1 * GiB, "cpu": int(0.45 * GiB)}

# The efficiency assumption: the fraction of peak FLOP/s a training step reaches (MFU). Well-tuned large
# GPU runs reach 35-55%; 40% is the Playbook's and PaLM's ballpark. On this 2-core CPU the tiny GPTs reach
# 0.4-0.45 of the measured matmul rate when the machine is otherwise idle (FACTS.md: 12.5k-16k tokens/s for
# the 4-layer d128 model on 2 ranks) and 0.15-0.2 when other jobs share the cores: 35% is stated between.
EFFICIENCY = {"gpu": 0.40, "cpu": 0.35}

# Without a cached CPU calibration (telemetry.cpu_peak_flops writes it on the first run), a stated default
# per thread: the order of one AVX-512 core (FACTS.md measured 65-74 GFLOP/s fp32, ~170 bf16, ~1 fp16).
CPU_DEFAULT_FLOPS_PER_THREAD = {"fp32": 70e9, "bf16": 170e9, "fp16": 1e9, "fp8": 70e9}

# Link bandwidth for the communication-time estimate (bus bandwidth a collective reaches): NVLink 4 on
# H100/H200 ~ 350 GB/s per GPU in practice, A100 NVLink 3 ~ 200 GB/s, PCIe cards ~ 20 GB/s; gloo between
# two CPU processes on this machine ~0.35 GB/s (FACTS: all_reduce of 32 MiB in 94 ms).
LINK_BYTES_PER_S = {"H100 SXM": 350e9, "H200": 350e9, "A100": 200e9, "cpu": 0.35e9}
DEFAULT_LINK_BYTES_PER_S = 20e9

MEMORY_FIELDS = (
    "param_bytes",
    "grad_bytes",
    "optimizer_bytes",
    "master_bytes",
    "activation_bytes",
    "buffer_bytes",
)


@dataclass
class RankMemory:
    """Bytes one rank holds; the same names the worker's measured counterpart uses."""

    rank: int
    role: str = ""  # "dp 0", "stage 1 of 2", "tp 0 / dp 1", "server"
    param_bytes: int = 0
    grad_bytes: int = 0
    optimizer_bytes: int = 0
    master_bytes: int = 0
    activation_bytes: int = 0
    buffer_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.param_bytes
            + self.grad_bytes
            + self.optimizer_bytes
            + self.master_bytes
            + self.activation_bytes
            + self.buffer_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": self.rank, "role": self.role}
        d.update({f: int(getattr(self, f)) for f in MEMORY_FIELDS})
        d["total_bytes"] = int(self.total_bytes)
        return d


@dataclass
class Plan:
    """What a config costs per rank, and how fast it could run on a device. Built by ``plan(cfg)``."""

    device: str
    device_label: str
    device_memory_bytes: int
    ranks: list[RankMemory]
    fits: bool
    headroom_bytes: int  # device memory left on the fullest device (negative: short by that much)
    max_micro_batch_size: int  # the largest micro_batch_size that fits (0: not even 1)
    num_params: int
    flops_per_token: int  # model FLOPs (6N + 12·L·H·Q·T): what MFU counts
    flops_per_step: int  # model FLOPs per optimizer step, all ranks together
    hardware_flops_per_step: int  # + the forward recomputed under activation checkpointing
    peak_flops_per_device: float
    peak_flops_source: str
    efficiency: float
    step_time_s: float  # compute at peak x efficiency, stretched by the pipeline bubble
    tokens_per_s: float
    comm_bytes: list[int]  # payload handed to collectives per optimizer step, one entry per rank
    comm_by_op: dict[str, int]  # rank 0's payload by collective
    comm_time_s: float  # comm_bytes / link bandwidth, as if nothing overlapped (an upper bound)
    bubble_fraction: float
    overhead_bytes_per_rank: int
    approximate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config_summary: str = ""
    shared_memory: bool = False  # CPU: all ranks share one RAM, so the verdict sums them

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "ranks"}
        d["ranks"] = [r.to_dict() for r in self.ranks]
        return d

    @property
    def total_bytes(self) -> list[int]:
        return [r.total_bytes for r in self.ranks]

    def table(self) -> str:
        """The plan as fixed-width text (what ``workbench plan CONFIG.yaml`` prints)."""
        lines = [f"plan: {self.config_summary}", f"device: {self.device_label} ({_fmt(self.device_memory_bytes)})"]
        head = ["ranks", "role"] + [f.replace("_bytes", "") for f in MEMORY_FIELDS] + ["total"]
        rows = []
        for idx, r in _group_ranks(self.ranks):
            # a row of several ranks names their kind ("replica"), not the first one's index
            role = r.role if "-" not in idx else " ".join(w for w in r.role.split() if not w.isdigit())
            rows.append(
                [idx, role]
                + [_fmt(getattr(r, f)) + ("~" if f in self.approximate else "") for f in MEMORY_FIELDS]
                + [_fmt(r.total_bytes)]
            )
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        for row in [head] + rows:
            lines.append(
                "  ".join(
                    str(x).rjust(w) if i > 1 else str(x).ljust(w)
                    for i, (x, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        need = "sum over ranks" if self.shared_memory else "fullest rank"
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(
            f"verdict: {verdict} ({need} + {_fmt(self.overhead_bytes_per_rank)} runtime per process); "
            f"headroom {_fmt(self.headroom_bytes)}; largest micro_batch_size that fits: {self.max_micro_batch_size}"
        )
        lines.append(
            f"compute: {self.num_params / 1e6:.2f} M params, {self.flops_per_token / 1e6:.2f} MFLOP/token, "
            f"{self.flops_per_step:.3g} FLOP/step; peak {self.peak_flops_per_device / 1e12:.3g} TFLOP/s per device "
            f"({self.peak_flops_source}) x efficiency {self.efficiency:.0%}"
        )
        lines.append(
            f"time: {self.step_time_s * 1e3:.3g} ms/step, {self.tokens_per_s:,.0f} tokens/s"
            + (f" (pipeline bubble {self.bubble_fraction:.0%})" if self.bubble_fraction else "")
        )
        ops = ", ".join(f"{k} {_fmt(v)}" for k, v in self.comm_by_op.items()) or "none"
        lines.append(f"communication per step, rank 0: {ops}; ~{self.comm_time_s * 1e3:.3g} ms if not overlapped")
        if self.approximate:
            lines.append("approximate (~): " + ", ".join(self.approximate))
        for n in self.notes:
            lines.append("note: " + n)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()


def _fmt(n: float | None) -> str:
    if n is None:
        return "-"
    neg, n = n < 0, abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            s = f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            return "-" + s if neg else s
        n /= 1024
    return str(n)


def _group_ranks(ranks: list[RankMemory]) -> list[tuple[str, RankMemory]]:
    """Consecutive ranks with identical memory share one row ("0-7")."""
    out: list[tuple[str, RankMemory]] = []
    start = 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or _key(ranks[i]) != _key(ranks[start]):
            out.append(
                (str(ranks[start].rank) if i - 1 == start else f"{ranks[start].rank}-{ranks[i - 1].rank}", ranks[start])
            )
            start = i
    return out


def _key(r: RankMemory) -> tuple:
    return (r.role.split(" ")[0],) + tuple(getattr(r, f) for f in MEMORY_FIELDS)


# ---------------------------------------------------------------------------------------------------------
# the model, counted without building it


@dataclass(frozen=True)
class _Shape:
    V: int  # vocabulary
    T: int  # context length
    L: int  # layers
    H: int  # heads
    d: int  # model width
    bias: bool = True

    @property
    def Q(self) -> int:  # head size
        return self.d // self.H


def num_params(s: _Shape) -> int:
    """GPT.num_params() in closed form (the tied embedding/head counted once). Kept here, not imported from
    workbench.models, because that module imports torch and the plan must not."""
    b = 1 if s.bias else 0
    d = s.d
    per_block = 2 * (d + b * d) + 4 * (d * d + b * d) + (4 * d * d + b * 4 * d) + (4 * d * d + b * d)
    return s.V * d + s.T * d + s.L * per_block + d + b * d


def flops_per_token(s: _Shape) -> int:
    """6N + 12·L·H·Q·T (nanoGPT/PaLM): N without the position table, which takes part in no matmul."""
    return 6 * (num_params(s) - s.T * s.d) + 12 * s.L * s.H * s.Q * s.T


def hardware_flops_per_token(s: _Shape, checkpointing: bool = False) -> int:
    """The matmul FLOPs the kernels really run per token (what torch.utils.flop_counter counts): the model
    FLOPs + flash attention's backward recomputing the scores (2·L·T·d), + under activation checkpointing
    each Block's forward again (2·12·d² + 4·T·d per layer)."""
    out = flops_per_token(s) + 2 * s.L * s.T * s.d
    if checkpointing:
        out += s.L * (2 * 12 * s.d * s.d + 4 * s.T * s.d)
    return out


def _block_tensors(d: int, bias: bool) -> list[tuple[str, tuple[int, ...]]]:
    """One Block's parameters in model.parameters() order, with the layout each gets under tensor parallel:
    'col' = Colwise (Shard(0) of the weight and bias), 'row' = Rowwise (Shard(1) of the weight, bias replicated),
    'rep' = replicated."""
    t: list[tuple[str, tuple[int, ...]]] = [("ln1.weight", (d,))]
    if bias:
        t.append(("ln1.bias", (d,)))
    for n in ("q", "k", "v", "o"):
        t.append((f"attn.{n}.weight", (d, d)))
        if bias:
            t.append((f"attn.{n}.bias", (d,)))
    t.append(("ln2.weight", (d,)))
    if bias:
        t.append(("ln2.bias", (d,)))
    t.append(("mlp.fc1.weight", (4 * d, d)))
    if bias:
        t.append(("mlp.fc1.bias", (4 * d,)))
    t.append(("mlp.fc2.weight", (d, 4 * d)))
    if bias:
        t.append(("mlp.fc2.bias", (d,)))
    return t


_TP_LAYOUT = {
    "attn.q.weight": "col0",
    "attn.q.bias": "col0",
    "attn.k.weight": "col0",
    "attn.k.bias": "col0",
    "attn.v.weight": "col0",
    "attn.v.bias": "col0",
    "mlp.fc1.weight": "col0",
    "mlp.fc1.bias": "col0",
    "attn.o.weight": "row1",
    "mlp.fc2.weight": "row1",
}


def _chunk(n: int, parts: int, i: int) -> int:
    """Length of piece i when torch.chunk splits n into `parts` (FSDP2 and DTensor Shard use its sizes:
    ceil(n/parts) each, the last ones shorter or empty)."""
    c = -(-n // parts)
    return max(0, min(c, n - i * c))


def _dim0_shards(tensors: list[tuple[tuple[int, ...], int]], world: int) -> list[int]:
    """Elements each rank holds when every tensor is Shard(0) across `world` ranks (FSDP2): for each
    (shape, how many such tensors), ranks below n // c hold a full chunk c, the next the remainder.
    A difference array keeps it O(tensors + world), so a 1024-rank plan stays fast."""
    diff = [0] * (world + 1)
    for shape, mult in tensors:
        n, rest = shape[0], _numel(shape) // shape[0]
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


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _shard_numel(shape: tuple[int, ...], dim: int, parts: int, i: int) -> int:
    if parts == 1:
        return _numel(shape)
    rest = _numel(shape) // shape[dim]
    return _chunk(shape[dim], parts, i) * rest


# ---------------------------------------------------------------------------------------------------------
# precision: bytes per element of each kind of state, and what the worker actually does


@dataclass(frozen=True)
class _Precision:
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
    # parameters (FACTS.md): params, grads and optimizer state stay fp32 and serve as the master weights;
    # the Linears and attention compute on bf16/fp16 copies of their inputs and weights, which autograd saves;
    # LayerNorms and the residual stream stay fp32.
    "fp32": _Precision(4, 4, 0, 4, False),
    "bf16": _Precision(4, 4, 0, 2, True),
    "fp16": _Precision(4, 4, 0, 2, True),  # + a GradScaler (a scale and a growth counter)
    # fp8 through Accelerate (TransformerEngine / torchao) on Hopper: fp32 params, fp8 (1 byte) copies of
    # the linear inputs saved; TE's own caches are not modelled (hence approximate).
    "fp8": _Precision(4, 4, 0, 1, True),
}
# zero2, zero3 and dp_tp run bf16 through FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
# instead of autocast: fp32 sharded parameters, gradients and optimizer state; the gathered parameters and
# the whole forward (residual stream and LayerNorms included) in bf16, no per-Linear casts.
FSDP_BF16 = _Precision(4, 4, 0, 2, False, resid=2, gather=2)


def precision_of(cfg: RunConfig) -> _Precision:
    if cfg.precision == "bf16" and cfg.parallel.strategy in ("zero2", "zero3", "dp_tp"):
        return FSDP_BF16
    return PRECISION.get(cfg.precision, PRECISION["fp32"])


# ---------------------------------------------------------------------------------------------------------
# activations: what autograd saves for backward, derived op by op from workbench/models/gpt.py and checked
# against saved_tensors_hooks (workbench/measure.py) in tests/test_plan.py


def block_activation_bytes(
    s: _Shape,
    tokens: int,
    p: _Precision,
    tp: int = 1,
    dropout: float = 0.0,
    cpu_dropout: bool = True,
    casts: bool = True,
) -> int:
    """Bytes one Block saves for backward for `tokens` tokens (micro_batch_size x seq_len), its Linears
    split `tp` ways (Colwise q/k/v/fc1, Rowwise o/fc2, no sequence parallelism). r = bytes of the residual
    stream (4; 2 under FSDP's bf16), a = bytes of the compute dtype (4 fp32, 2 bf16/fp16); per token:

      ln1, ln2       their input, the residual x (r·d), + mean and rstd (r each)  -> 2 x (r·d + 2r)
      q, k, v        ln1's output: one tensor; under autocast each Linear casts its input itself
                     (autocast caches casts of weights only), so three copies       -> a·d or 3·a·d
      attention      SDPA (flash kernel): q, k, v, its output (a·d/tp each) and the logsumexp (fp32, one per head)
      o              its input is SDPA's output itself: the kernel lays it out (B, T, H, Q), so the
                     transpose + reshape back to (B, T, d) is a view, not a copy                -> 0
      fc1            ln2's output                                                   -> a·d
      gelu, fc2      fc1's output and gelu's output                                 -> 2 x a·4d/tp
    Under autocast the casts of the four d x d and two 4d x d weights are saved too, once per autocast
    region (autocast caches them: a pipeline's micro-batches, all run in one region, share them).

    With model.dropout > 0 on CPU, SDPA takes its math path (the flash kernel has no dropout there), in fp32
    under autocast: copies of q, k, v (3 x 4d), the softmax, the dropout mask and the dropped probabilities
    (3 x 4·H·T, quadratic in T), then o's input (a·d: a copy, or its cast); and the two residual dropouts
    save their masks, in the dtype of their input (CPU dropout multiplies by a mask tensor) -> 2 x a·d.
    """
    a, d, r = p.act, s.d, p.resid
    qkv_in = (3 if p.autocast else 1) * a * d
    ln = 2 * (r * d + 2 * r)
    if dropout > 0:
        if cpu_dropout:
            m = 4 if p.autocast or a == 4 else a  # the math path runs in fp32 under autocast
            attn = (3 * m * d + 3 * m * s.H * s.T + a * d) // tp
            masks = 2 * a * d
        else:  # GPUs keep the flash kernel (it drops inside, saving an RNG state); masks of 1 byte
            attn = (4 * a * d + 4 * s.H) // tp
            masks = 2 * d
        per_token = ln + qkv_in + attn + masks + a * d + 2 * a * 4 * d // tp
    else:
        per_token = ln + qkv_in + (4 * a * d + 4 * s.H) // tp + a * d + 2 * a * 4 * d // tp
    out = per_token * tokens
    if p.autocast and casts:
        out += a * (12 * d * d) // tp
    return out


def outer_activation_bytes(
    s: _Shape,
    batch: int,
    p: _Precision,
    first: bool = True,
    last: bool = True,
    dropout: float = 0.0,
    ids: bool = True,
    casts: bool = True,
) -> int:
    """Bytes saved outside the Blocks: token ids (int64) for the embedding, the position ids (+ the mask of
    the embedding dropout), ln_f, the head's input, log_softmax's fp32 output (V per token; nll_loss saves
    the same tensor), the int64 targets and nll_loss's total_weight (one fp32). ids=False leaves out the
    token ids and targets (a pipeline stage holds them once for all its micro-batches)."""
    tokens = batch * s.T
    out = 0
    if first:
        out += 8 * s.T + (8 * tokens if ids else 0)  # embedding(pos) saves pos; embedding(idx) saves idx
        if dropout > 0:
            out += p.resid * s.d * tokens
    if last:
        out += tokens * ((p.resid * s.d + 2 * p.resid) + p.act * s.d + 4 * s.V + (8 if ids else 0)) + 4
        if p.autocast and casts:
            out += p.act * s.V * s.d  # the head's (tied) weight, cast
    return out


# ---------------------------------------------------------------------------------------------------------
# the planner


def _shape_of(cfg: RunConfig) -> tuple[_Shape, list[str]]:
    from workbench.config import is_import_string

    notes = []
    m, d = cfg.model, cfg.data
    if d.source == "text":
        V = 256  # byte level (workbench.data.TEXT_VOCAB)
    else:
        V = d.vocab_size
        if is_import_string(d.source):
            notes.append(f"data.source is a custom factory: vocab counted as data.vocab_size ({V})")
    if is_import_string(m.arch):
        notes.append("model.arch is a custom factory: counted as the reference GPT of the same shape")
        notes.append("custom model: every figure is approximate")
    return _Shape(V=V, T=m.seq_len, L=m.n_layer, H=m.n_head, d=m.d_model), notes


def _resolve_device(cfg: RunConfig, device: str | None) -> str:
    if device is None:
        if cfg.device == "cpu":
            return "cpu"
        from workbench import config as _c

        info = _c._DETECTED
        if info is None and cfg.device == "cuda":
            info = _c.DeviceInfo.detect()
        if info is None:
            import shutil

            # Asking torch costs ~1.7 s; without nvidia-smi there is no GPU to ask about.
            info = _c.DeviceInfo.detect() if shutil.which("nvidia-smi") else _c.DeviceInfo("cpu", os.cpu_count() or 1)
        if info.kind != "cuda":
            return "cpu"
        return device_key_for(info.name) or "h100"
    key = device.lower().replace(" ", "").replace("_", "-")
    if key not in DEVICES:
        raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
    return key


def device_key_for(gpu_name: str) -> str | None:
    """The DEVICES key for a name as torch reports it ("NVIDIA H100 80GB HBM3")."""
    n = gpu_name.lower().replace(" ", "")
    if "h200" in n:
        return "h200"
    if "h100" in n:
        return "h100-pcie" if "pcie" in n else "h100"
    if "a100" in n:
        return "a100-40" if "40gb" in n else "a100-80"
    for k in ("l40s", "l4", "a10", "v100", "t4", "rtx4090"):
        if k in n.replace("-", ""):
            return k
    return None


_MEM_TOTAL: int | None = None


def _cpu_memory() -> int:
    global _MEM_TOTAL
    if _MEM_TOTAL is None:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        _MEM_TOTAL = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        if _MEM_TOTAL is None:
            try:
                _MEM_TOTAL = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                _MEM_TOTAL = 16 * GiB
    return _MEM_TOTAL


_CPU_CACHE: tuple[float, dict] | None = None
_CPU_MODEL: str | None = None


def cpu_peak_from_cache(dtype: str, threads: int) -> tuple[float, str]:
    """The matmul rate telemetry.cpu_peak_flops cached for this CPU (never measured here: plan stays fast),
    scaled by thread count if only another count is cached; else the stated default."""
    global _CPU_CACHE, _CPU_MODEL
    from workbench.telemetry import _cache_path, _cpu_model

    if _CPU_MODEL is None:
        _CPU_MODEL = _cpu_model()  # /proc/cpuinfo: read once
    path = _cache_path()
    try:
        mtime = os.path.getmtime(path)
        if _CPU_CACHE is None or _CPU_CACHE[0] != mtime:
            with open(path) as f:
                _CPU_CACHE = (mtime, json.load(f))
        cache = _CPU_CACHE[1]
    except (OSError, ValueError):
        cache = {}
    prefix = f"{platform.processor() or platform.machine()}|{_CPU_MODEL}|{dtype}|"
    exact = cache.get(prefix + str(threads))
    if exact:
        return float(exact), f"cached matmul calibration, {threads} thread(s)"
    others = [(int(k.rsplit("|", 1)[1]), v) for k, v in cache.items() if k.startswith(prefix)]
    if others:
        n, v = min(others, key=lambda kv: abs(kv[0] - threads))
        return float(v) * threads / n, f"cached matmul calibration at {n} thread(s), scaled to {threads}"
    return CPU_DEFAULT_FLOPS_PER_THREAD.get(dtype, 70e9) * threads, "default (no calibration cached yet)"


def plan(
    cfg: RunConfig, device: str | None = None, efficiency: float | None = None, micro_batch_size: int | None = None
) -> Plan:
    """Memory per rank, FLOPs, time and communication of `cfg` on `device` ("h100", "a100-40", "cpu", ...;
    None: this machine). `efficiency` overrides the assumed fraction of peak FLOP/s."""
    dev = _resolve_device(cfg, device)
    shape, notes = _shape_of(cfg)
    prec = precision_of(cfg)
    B = micro_batch_size or cfg.micro_batch_size
    approximate: list[str] = []
    if "custom model: every figure is approximate" in notes:
        approximate.extend([*MEMORY_FIELDS, "flops_per_token", "comm_bytes"])
    peft = getattr(cfg, "peft", None)
    if peft is not None and peft.method != "none":
        # frozen weights skip their weight-gradient matmuls: fewer than 6N FLOPs per token really run
        approximate.append("flops_per_token")

    is_cpu = dev == "cpu"
    ranks, act_of = _memory(cfg, shape, prec, B, approximate, notes, is_cpu)

    # ---- verdict ----
    mem = _cpu_memory() if is_cpu else DEVICES[dev]["memory"]
    overhead = OVERHEAD_BYTES["cpu" if is_cpu else "gpu"]

    if is_cpu:  # every process shares this machine's RAM
        needed = sum(r.total_bytes + overhead for r in ranks)
    else:
        needed = max(r.total_bytes for r in ranks) + overhead
    headroom = mem - needed
    fits = headroom >= 0
    max_mb = _max_micro_batch(ranks, act_of, mem, overhead, is_cpu)

    # ---- compute ----
    n = num_params(shape)
    fpt = flops_per_token(shape)
    flops_step = fpt * cfg.tokens_per_step
    ckpt = bool(getattr(cfg, "activation_checkpointing", False))
    hw_step = hardware_flops_per_token(shape, ckpt) * cfg.tokens_per_step
    # The model-FLOPs formula (what MFU counts) vs the matmuls the kernels really run: they part where
    # attention dominates (long context, narrow model), because flash attention's backward recomputes the
    # scores. Past the 5% the tests hold the formula to, label it.
    if abs(hardware_flops_per_token(shape, False) - fpt) > 0.05 * hardware_flops_per_token(shape, False):
        approximate.append("flops_per_token")
        notes.append(
            "flops_per_token is the 6N + 12·L·H·Q·T model-FLOPs convention; attention's share is large here and "
            "flash attention's backward also recomputes the scores (+2·L·T·d per token), which it leaves out"
        )
    world = cfg.parallel.num_processes
    if is_cpu:
        threads = max(1, (os.cpu_count() or 1) // world)
        dtype = cfg.precision if cfg.precision in ("fp32", "bf16", "fp16") else "fp32"
        peak, src = cpu_peak_from_cache(dtype, threads)
    else:
        from workbench.telemetry import GPU_PEAK_FLOPS

        table = GPU_PEAK_FLOPS[DEVICES[dev]["gpu"]]
        peak = table.get(cfg.precision) or table["fp32"]
        src = f"data sheet, {cfg.precision} dense"
    eff = efficiency if efficiency is not None else EFFICIENCY["cpu" if is_cpu else "gpu"]
    bubble = bubble_fraction_of(cfg)
    step_time = hw_step / (world * peak * eff) / (1.0 - bubble) if peak > 0 and eff > 0 else float("inf")
    tps = cfg.tokens_per_step / step_time if step_time > 0 else 0.0

    comm, by_op = _comm(cfg, shape, prec, approximate)
    link = LINK_BYTES_PER_S["cpu"] if is_cpu else LINK_BYTES_PER_S.get(DEVICES[dev]["gpu"], DEFAULT_LINK_BYTES_PER_S)
    comm_time = max(comm) / link if comm else 0.0
    if cfg.parallel.strategy == "pp":
        notes.append("step time counts the pipeline bubble; send/recv latency is not modelled")
    notes.append(
        f"master_bytes is 0: {cfg.precision} runs as autocast over fp32 parameters, which serve as the master weights"
        if cfg.precision != "fp32"
        else "fp32: no master copy"
    )
    summary = (
        f"{cfg.name}: GPT L{shape.L} d{shape.d} H{shape.H} T{shape.T} V{shape.V}, {cfg.parallel.strategy} on {world} "
        f"process(es), {cfg.precision}, micro_batch_size {B} x grad_accum_steps {cfg.grad_accum_steps}"
        + (", activation checkpointing" if ckpt else "")
    )
    return Plan(
        device=dev,
        device_label=DEVICES[dev]["label"],
        device_memory_bytes=int(mem),
        ranks=ranks,
        fits=fits,
        headroom_bytes=int(headroom),
        max_micro_batch_size=max_mb,
        num_params=n,
        flops_per_token=fpt,
        flops_per_step=flops_step,
        hardware_flops_per_step=hw_step,
        peak_flops_per_device=peak,
        peak_flops_source=src,
        efficiency=eff,
        step_time_s=step_time,
        tokens_per_s=tps,
        comm_bytes=comm,
        comm_by_op=by_op,
        comm_time_s=comm_time,
        bubble_fraction=bubble,
        overhead_bytes_per_rank=overhead,
        approximate=sorted(set(approximate)),
        notes=notes,
        config_summary=summary,
        shared_memory=is_cpu,
    )


def bubble_fraction_of(cfg: RunConfig) -> float:
    """The pipeline bubble: (p - 1) / (m + p - 1) of a step idle, for p stages and m micro-batches."""
    p = cfg.parallel
    if p.strategy != "pp" or p.pp_size <= 1:
        return 0.0
    m = p.pp_microbatches
    return (p.pp_size - 1) / (m + p.pp_size - 1)


def _max_micro_batch(ranks: list[RankMemory], act_of, mem: int, overhead: int, shared: bool) -> int:
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


def _optimizer_bytes(cfg: RunConfig, elements: int, tensors: int) -> int:
    o = cfg.optimizer
    if o.name == "sgd":
        return 4 * elements if o.betas[0] > 0 else 0  # one momentum buffer
    # AdamW: exp_avg + exp_avg_sq (fp32, like the params) + 'step', a 0-dim fp32 tensor per parameter tensor
    return 8 * elements + 4 * tensors


class _Activations:
    """Activation bytes of a rank as a function of micro_batch_size, from its layout ("spec"): blocks held,
    first/last stage, tp degree, pipeline micro-batches in flight, and how many processes pool their
    micro-batches into the batch this rank computes on (a tensor-parallel row, a pipeline). The planner's
    bisection over micro_batch_size reuses it without recounting the rest."""

    def __init__(self, s: _Shape, p: _Precision, ckpt: bool, dropout: float, on_cpu: bool, pp_microbatches: int):
        self.s, self.p, self.ckpt, self.dropout, self.on_cpu = s, p, ckpt, dropout, on_cpu
        self.m = pp_microbatches  # 0: no pipeline; else each pooled batch flows as m pipeline micro-batches
        self.fp16_scaler = False
        self._specs: dict[int, tuple] = {}
        self._default: tuple | None = None

    def set_spec(self, rank: int, spec: tuple) -> tuple:
        if self._default is None:
            self._default = spec
        elif spec != self._default:
            self._specs[rank] = spec
        return spec

    def spec(self, rank: int) -> tuple:
        return self._specs.get(rank, self._default)

    def _one(self, layers: int, first: bool, last: bool, tp: int, batch: int, ids: bool, casts: bool = True) -> int:
        s, p = self.s, self.p
        if self.ckpt:
            # checkpoint(block, x, use_reentrant=False) keeps only each Block's input (the residual stream)
            per_block = p.resid * s.d * batch * s.T
        else:
            per_block = block_activation_bytes(s, batch * s.T, p, tp, self.dropout, self.on_cpu, casts)
        out = layers * per_block + outer_activation_bytes(s, batch, p, first, last, self.dropout, ids, casts)
        # fp16's GradScaler multiplies the loss by its scale, a tensor autograd saves
        return out + (4 if self.fp16_scaler and last else 0)

    delta = staticmethod(lambda B: 0)  # fine-tuning's difference from the full model (see _finetune)

    def bytes(self, spec: tuple, B: int) -> int:
        layers, first, last, tp, in_flight, pooled = spec
        batch = B * pooled
        if not self.m:
            return self._one(layers, first, last, tp, batch, True) + self.delta(B)
        # A pipeline stage holds `in_flight` micro-batches of batch/m sequences; the token ids (first stage)
        # and targets (last) are views into the one pooled batch, held once.
        mb = max(1, batch // self.m)
        ids = 8 * batch * self.s.T * (int(first) + int(last))
        # The schedule runs all its micro-batches in one autocast region: the weight casts are made once.
        casts = self._one(layers, first, last, tp, mb, False) - self._one(layers, first, last, tp, mb, False, False)
        return in_flight * self._one(layers, first, last, tp, mb, False, False) + casts + ids


def _memory(
    cfg: RunConfig, s: _Shape, p: _Precision, B: int, approximate: list[str], notes: list[str], on_cpu: bool = True
) -> tuple[list[RankMemory], _Activations]:
    """Bytes per rank for each layout, as workbench/parallel/ builds it (see the docstring of each file)."""
    par = cfg.parallel
    W, strategy = par.num_processes, par.strategy
    ckpt = bool(getattr(cfg, "activation_checkpointing", False))
    block = _block_tensors(s.d, s.bias)
    outer = [("tok_emb.weight", (s.V, s.d)), ("pos_emb.weight", (s.T, s.d)), ("ln_f.weight", (s.d,))]
    if s.bias:
        outer.append(("ln_f.bias", (s.d,)))
    N = num_params(s)
    n_tensors = len(outer) + s.L * len(block)
    blk_numel = sum(_numel(sh) for _, sh in block)
    outer_numel = sum(_numel(sh) for _, sh in outer)

    if not on_cpu:
        # Derived op by op and checked against saved_tensors_hooks on CPU; CUDA's attention kernels save a
        # few extras of their own (an RNG state, a padded logsumexp), so on a GPU the figure is close, not exact.
        approximate.append("activation_bytes")
    if cfg.precision == "fp8":
        approximate.extend(["activation_bytes", "buffer_bytes"])
    if cfg.model.dropout > 0 and p.resid == 2:
        approximate.append("activation_bytes")  # the math attention path in pure bf16 is not modelled

    act_of = _Activations(s, p, ckpt, cfg.model.dropout, on_cpu, max(1, par.pp_microbatches) if strategy == "pp" else 0)
    act_of.fp16_scaler = cfg.precision == "fp16"

    def acts(rank: int, layers: int, first: bool, last: bool, tp: int = 1, in_flight: int = 1, pooled: int = 1) -> int:
        return act_of.bytes(act_of.set_spec(rank, (layers, first, last, tp, in_flight, pooled)), B)

    ranks: list[RankMemory] = []

    ft = _finetune(cfg, s, p, outer_numel, N, n_tensors, approximate, notes)
    if ft is not None:  # task.kind classify / peft: built and validated on ddp only
        total, trainable, tensors, act_delta = ft
        act = acts(0, s.L, True, True) + act_delta(B)
        act_of.delta = act_delta
        for r in range(W):
            rm = RankMemory(r, f"replica {r}", param_bytes=p.param * total, grad_bytes=p.grad * trainable)
            rm.optimizer_bytes = _optimizer_bytes(cfg, trainable, tensors)
            rm.activation_bytes = act
            rm.buffer_bytes = 4 * trainable if W > 1 else 0  # DDP buckets hold the trainable gradients only
            ranks.append(rm)
        return ranks, act_of

    if strategy in ("ddp", "zero1"):
        # Every rank holds the whole model; DDP copies gradients into flat fp32 buckets for the all-reduce
        # (gradient_as_bucket_view=False): a second gradient-sized buffer. Accelerate wraps in DDP only when
        # there is more than one process.
        act = acts(0, s.L, True, True)
        if strategy == "zero1":
            opt_el, opt_t = _zero1_partition(s, block, outer, W)
        for r in range(W):
            rm = RankMemory(r, f"replica {r}", param_bytes=p.param * N, grad_bytes=p.grad * N, activation_bytes=act)
            if strategy == "zero1":  # ZeroRedundancyOptimizer: this rank's share of the parameters' state
                rm.optimizer_bytes = _optimizer_bytes(cfg, opt_el[r], opt_t[r])
            else:
                rm.optimizer_bytes = _optimizer_bytes(cfg, N, n_tensors)
            rm.buffer_bytes = 4 * N if W > 1 else 0
            ranks.append(rm)
        return ranks, act_of

    if strategy == "ps":
        # Rank 0 serves: the only optimizer state, and a receive buffer per worker plus the parameters it
        # sends back; every worker keeps one buffer for the parameters it pulls (N + the grad norm).
        act = acts(0, s.L, True, True)
        for r in range(W):
            server = r == 0
            rm = RankMemory(r, "server" if server else f"worker {r}", param_bytes=p.param * N, grad_bytes=p.grad * N)
            rm.optimizer_bytes = _optimizer_bytes(cfg, N, n_tensors) if server else 0
            rm.activation_bytes = act
            rm.buffer_bytes = 4 * (N + 1) + (4 * N * (W - 1) if server else 0)
            ranks.append(rm)
        approximate.append("buffer_bytes")
        notes.append("ps: buffer_bytes are the layout's own send/receive tensors, which the run does not measure")
        return ranks, act_of

    if strategy in ("zero2", "zero3"):
        # FSDP2 fully_shard per Block and at the root: every parameter Shard(0) across all ranks.
        act = acts(0, s.L, True, True)
        shards = _dim0_shards([(sh, 1) for _, sh in outer] + [(sh, s.L) for _, sh in block], W)
        # Unsharded parameters while they compute (gathered in the compute dtype): ZeRO-3 the root's (kept
        # from forward to backward) + two Blocks (one computing, the next prefetched); ZeRO-2 keeps every
        # Block unsharded from forward to backward. Measured after the step they are 0: this is the peak.
        unsharded = outer_numel + 2 * blk_numel if strategy == "zero3" else N
        for r in range(W):
            local = shards[r]
            rm = RankMemory(r, f"shard {r}", param_bytes=p.param * local, grad_bytes=p.grad * local)
            rm.optimizer_bytes = _optimizer_bytes(cfg, local, n_tensors)
            rm.activation_bytes = act
            rm.buffer_bytes = p.gather * unsharded
            ranks.append(rm)
        approximate.append("buffer_bytes")
        return ranks, act_of

    if strategy in ("tp", "dp_tp"):
        # Megatron's split of each Block (q/k/v/fc1 Colwise, o/fc2 Rowwise); embeddings, LayerNorms and the
        # tied head replicated. A tensor-parallel row computes on its ranks' micro-batches stacked. dp_tp adds
        # FSDP2 over the dp dimension of a (dp, tp) mesh: each rank keeps 1/dp (dim 0) of its TP-local tensor.
        t = max(1, par.tp_size)
        dp = max(1, W // t) if strategy == "dp_tp" else 1

        def local_shape(name: str, sh: tuple[int, ...], ti: int) -> tuple[int, ...]:
            lay = _TP_LAYOUT.get(name)
            if lay is None:
                return sh
            dim = int(lay[-1])
            return tuple(_chunk(n, t, ti) if i == dim else n for i, n in enumerate(sh))

        per, tp_local = {}, {}
        for ti in range(t):
            tp_local[ti] = sum(_numel(local_shape(n, sh, ti)) for n, sh in block)
            shapes = [(sh, 1) for _, sh in outer] + [(local_shape(n, sh, ti), s.L) for n, sh in block]
            per[ti] = _dim0_shards(shapes, dp) if strategy == "dp_tp" else [sum(_numel(sh) * k for sh, k in shapes)]
        for r in range(W):
            ti, di = r % t, r // t
            local = per[ti][di]
            rm = RankMemory(r, f"tp {ti} dp {di}", param_bytes=p.param * local, grad_bytes=p.grad * local)
            rm.optimizer_bytes = _optimizer_bytes(cfg, local, n_tensors)
            rm.activation_bytes = acts(r, s.L, True, True, tp=t, pooled=t)
            if strategy == "dp_tp":  # FSDP2's unsharded TP-local parameters while they compute (the peak)
                rm.buffer_bytes = p.gather * (outer_numel + 2 * tp_local[ti])
            ranks.append(rm)
        if strategy == "dp_tp":
            approximate.append("buffer_bytes")
        return ranks, act_of

    # pp: one stage per process, consecutive Blocks (any remainder to the first stages); the embeddings on
    # stage 0, ln_f and an untied copy of the embedding as the head on the last; the whole pipeline computes
    # on all ranks' micro-batches stacked, split into pp_microbatches pipeline micro-batches.
    pp = W
    m = max(1, par.pp_microbatches)
    ln_f = s.d * (2 if s.bias else 1)
    for r in range(W):
        st = r
        layers = s.L // pp + (1 if st < s.L % pp else 0)
        first, last = st == 0, st == pp - 1
        local = layers * blk_numel
        tensors = layers * len(block)
        if first:
            local += s.V * s.d + s.T * s.d
            tensors += 2
        if last:
            local += ln_f + (s.V * s.d if pp > 1 else 0)
            tensors += (2 if s.bias else 1) + (1 if pp > 1 else 0)
        # GPipe runs every forward before any backward; 1F1B starts backwards after p - stage forwards.
        in_flight = m if par.pp_schedule == "gpipe" else min(m, pp - st)
        rm = RankMemory(r, f"stage {st}", param_bytes=p.param * local, grad_bytes=p.grad * local)
        rm.optimizer_bytes = _optimizer_bytes(cfg, local, tensors)
        rm.activation_bytes = acts(r, layers, first, last, in_flight=in_flight, pooled=pp)
        # The pipeline's receive buffers, one per micro-batch: gradients from the next stage, activations
        # from the previous one (those of the micro-batches in flight are this stage's saved input: counted
        # as activations).
        mb_bytes = 4 * (B * pp // m) * s.T * s.d
        rm.buffer_bytes = mb_bytes * ((0 if last else m) + (0 if first else m - in_flight))
        ranks.append(rm)
    approximate.append("buffer_bytes")
    notes.append(
        f"pp: {par.pp_schedule} holds {'all ' + str(m) if par.pp_schedule == 'gpipe' else 'p - stage'} "
        "micro-batches in flight per stage"
    )
    return ranks, act_of


def _finetune(cfg: RunConfig, s: _Shape, p: _Precision, outer_numel: int, N: int, n_tensors: int, approximate, notes):
    """Fine-tuning (workbench/finetune.py): parameters held, trainable, optimizer tensors, and the change in
    saved activations against the full language model, as a function of micro_batch_size. None if plain."""
    task, peft = getattr(cfg, "task", None), getattr(cfg, "peft", None)
    classify = task is not None and task.kind == "classify"
    method = peft.method if peft is not None else "none"
    if not classify and method == "none":
        return None
    T, d, a = s.T, s.d, p.act
    nl = task.num_labels if classify else 0
    head = d * nl + nl  # GPTClassifier's score Linear (its LM head was the tied embedding: no params freed)
    total = N + head
    tensors = n_tensors + (2 if classify else 0)
    trainable = total

    # The LM's head and loss (counted by outer_activation_bytes) against what replaces them.
    lm_tail = lambda B: B * T * (a * d + 4 * s.V + 8) + (a * s.V * d if p.autocast else 0)  # noqa: E731
    if classify:
        # mean pooling saves nothing; the score Linear saves its (B, d) input; the loss its (B, nl) log-softmax
        tail = lambda B: B * (a * d + 4 * nl + 8) + (a * d * nl if p.autocast else 0)  # noqa: E731
    else:
        tail = lm_tail
    delta = lambda B: tail(B) - lm_tail(B)  # noqa: E731

    if method == "frozen":
        # linear probing: nothing before the head requires grad, so the backbone saves nothing at all, and
        # the head's weight cast is not needed (no gradient flows to its input)
        trainable, tensors = head, 2
        full = lambda B: _Activations(s, p, False, 0.0, True, 0)._one(s.L, True, True, 1, B, True)  # noqa: E731
        delta = lambda B: B * (a * d + 4 * nl + 8) + 4 - full(B)  # noqa: E731
    elif method == "lora":
        from workbench.config import LORA_TARGETS

        names = sorted({n for t in peft.target for n in LORA_TARGETS.get(t, (t,))})
        shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
        lora = s.L * sum(peft.r * (shapes[n][0] + shapes[n][1]) for n in names if n in shapes)
        # peft's modules_to_save keeps the original head and trains a copy of it
        total = N + lora + (2 * head if classify else 0)
        trainable = lora + (head if classify else 0)
        tensors = 2 * s.L * len(names) + (2 if classify else 0)
        lm = _Activations(s, p, False, 0.0, True, 0)
        lm_full = lambda B: lm._one(s.L, True, True, 1, B, True)  # noqa: E731
        delta = lambda B: _lora_activations(s, p, set(names), peft.r, B, classify, nl) - lm_full(B)  # noqa: E731
        if cfg.model.dropout > 0 or getattr(cfg, "activation_checkpointing", False):
            approximate.append("activation_bytes")
    notes.append(f"fine-tuning: {trainable:,} of {total:,} parameters train (grads and optimizer state for those)")
    return total, trainable, tensors, delta


def _lora_activations(s: _Shape, p: _Precision, adapted: set[str], rank: int, B: int, classify: bool, nl: int) -> int:
    """Bytes saved for one micro-batch by a LoRA model (peft: base weights frozen, W x + B A x per adapted
    Linear), walking the GPT in order, because what a frozen op saves depends on whether gradients flow
    through it yet: nothing before the first adapter needs a gradient (the embeddings are frozen too).

    A frozen Linear saves no input (its weight gets no gradient); for its input's gradient it needs its
    weight: under autocast that is the bf16 cast of the weight, saved (a·in·out). An adapter saves A's input
    (under autocast its own cast of it), A's output (r), and under autocast the casts of A and B.
    """
    a, r, d, T = p.act, p.resid, s.d, s.T
    tokens = B * T
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    out = 0  # the frozen embeddings save neither the token nor the position ids
    grad = False  # does the residual stream carry a gradient yet?

    def linear(name: str, x_grad: bool, input_saved: bool) -> tuple[int, bool]:
        i, o = shapes[name]
        b = 0
        if p.autocast and x_grad:
            b += a * i * o  # the frozen weight's cast, for the input's gradient
        if name in adapted:
            if p.autocast or not input_saved:
                b += a * i * tokens  # A's input (autocast casts it per Linear; in fp32 it may be saved already)
            b += a * rank * tokens  # B's input: A's output
            if p.autocast:
                b += a * rank * o  # B's cast (A's output carries a gradient)
                b += a * rank * i if x_grad else 0  # A's cast, only if A's input needs a gradient
        return b, x_grad or name in adapted

    for _ in range(s.L):
        if grad:
            out += (r * d + 2 * r) * tokens  # ln1
        qkv_saved = False
        g = grad
        for n in ("q", "k", "v"):
            b, gn = linear(n, grad, qkv_saved)
            out += b
            qkv_saved = qkv_saved or (n in adapted)
            g = g or gn
        if g:
            out += (4 * a * d + 4 * s.H) * tokens  # SDPA's q, k, v, out, logsumexp
        b, g2 = linear("o", g, g)  # o's input is SDPA's output: saved already when attention saves
        out += b
        grad = g or g2
        if grad:
            out += (r * d + 2 * r) * tokens  # ln2
        b, g3 = linear("fc1", grad, False)
        out += b
        if g3:
            out += a * 4 * d * tokens  # gelu's input
        b, g4 = linear("fc2", g3, False)
        out += b
        grad = grad or g3 or g4
    if grad:
        out += (r * d + 2 * r) * tokens  # ln_f
    if classify:  # the trained head copy (modules_to_save): its input, and the loss
        out += B * (a * d + 4 * nl + 8) + (a * d * nl if p.autocast else 0) + 4
    else:  # the frozen, tied LM head: no input saved, its weight's cast under autocast; the loss
        out += tokens * (4 * s.V + 8) + 4 + (a * s.V * d if p.autocast and grad else 0)
    return out


def _zero1_partition(s: _Shape, block, outer, world: int) -> tuple[list[int], list[int]]:
    """ZeroRedundancyOptimizer's partition, replayed: per param group (decay = matrices, no_decay = the
    rest, as worker.build_optimizer makes them), largest tensor first to the rank with the fewest elements."""
    tensors = [sh for _, sh in outer] + [sh for _ in range(s.L) for _, sh in block]
    groups = ([_numel(sh) for sh in tensors if len(sh) >= 2], [_numel(sh) for sh in tensors if len(sh) < 2])
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


def _comm(cfg: RunConfig, s: _Shape, p: _Precision, approximate: list[str]) -> tuple[list[int], dict[str, int]]:
    """Payload bytes handed to collectives and send/recv per optimizer step, per rank, and rank 0's by op:
    the size of the tensor each works on, as a DDP comm hook sees its buckets (all_reduce, broadcast, send,
    recv: the tensor; all_gather: the gathered output; reduce_scatter: the unscattered input). The same
    quantity workbench/parallel/comm.py measures in every run. Reductions at log steps are not per step."""
    par = cfg.parallel
    W, strategy, k = par.num_processes, par.strategy, cfg.grad_accum_steps
    ckpt = bool(getattr(cfg, "activation_checkpointing", False))
    N = num_params(s)
    if W <= 1:
        return [0] * max(1, W), {}
    B, T, d = cfg.micro_batch_size, s.T, s.d
    norm = 4  # global_grad_norm: one fp32 all-reduce of the summed squares (sharded layouts)

    def pooled(n: int) -> int:  # all_gather of the micro-batches' token ids and targets (int64) into one batch
        return 2 * 8 * B * n * T * k

    if strategy == "ddp":
        # DDP all-reduces the fp32 gradient once per optimizer step (no_sync on the accumulation micro-steps)
        ops = {"all_reduce": 4 * N}
        return [4 * N] * W, ops
    if strategy == "zero1":
        # DDP's all-reduce + ZeroRedundancyOptimizer broadcasting each rank's updated share to the others
        ops = {"all_reduce": 4 * N, "broadcast": p.param * N}
        return [sum(ops.values())] * W, ops
    if strategy == "ps":
        # workers push their gradient and pull the parameters (+ the grad norm); the server does both with each
        server = {"recv": 4 * N * (W - 1), "send": 4 * (N + 1) * (W - 1)}
        worker = 4 * N + 4 * (N + 1)
        return [sum(server.values())] + [worker] * (W - 1), server
    if strategy in ("zero2", "zero3"):
        # Every micro-step: all-gather the parameters (forward; ZeRO-3 again for backward) in the compute
        # dtype and reduce-scatter the fp32 gradients into their shards (gradients stay sharded between
        # micro-steps, as in DeepSpeed's ZeRO-2/3).
        gathers = 2 if strategy == "zero3" else 1
        ops = {"all_gather": k * gathers * p.gather * N, "reduce_scatter": k * 4 * N, "all_reduce": norm}
        return [sum(ops.values())] * W, ops
    if strategy in ("tp", "dp_tp"):
        t = max(1, par.tp_size)
        dp = max(1, W // t) if strategy == "dp_tp" else 1
        tokens = B * t * T  # a row computes on its t ranks' micro-batches stacked
        # Per layer and micro-step: forward all-reduces the outputs of o and fc2 (Rowwise) in the compute
        # dtype; backward all-reduces the input gradients of q, k, v and fc1 (Colwise), which arrive in the
        # residual stream's dtype; checkpointing recomputes the forward up to o's all-reduce (the
        # recomputation stops once every saved tensor is back, before fc2's).
        fwd = (2 + (1 if ckpt else 0)) * p.act
        bwd = 4 * p.resid
        ops = {"all_gather": pooled(t), "all_reduce": s.L * k * tokens * d * (fwd + bwd) + norm}
        if strategy == "dp_tp":
            if dp > 1:  # FSDP2 over the dp dimension on the TP-local parameters (not measured here: 4+ ranks)
                approximate.append("comm_bytes")
                local = N // t
                ops["all_gather"] += k * 2 * p.gather * local
                ops["reduce_scatter"] = k * 4 * local
            ops["all_reduce"] += norm
        return [sum(ops.values())] * W, ops
    # pp: per micro-step the whole pooled batch crosses each stage boundary: activations forward, their
    # gradients backward (the fp32 residual stream), plus the tied embedding/head gradient all-reduce
    # between the first and last stage, and the global grad norm.
    per = B * W * T * d * p.resid * k
    tied = 4 * s.V * d
    comm = []
    for r in range(W):
        links = (r > 0) + (r < W - 1)
        comm.append(pooled(W) + 2 * links * per + norm + (tied if r in (0, W - 1) else 0))
    ops = {"all_gather": pooled(W), "send": per, "recv": per, "all_reduce": tied + norm}
    return comm, ops


def accuracy(planned: Plan | dict[str, Any], measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predicted against measured, per rank and memory field: rows of {rank, field, predicted, measured,
    error, approximate}. ``planned``: a Plan or its to_dict() (status.json "planned"); ``measured``: the
    run's status.json "measured" list."""
    pd = planned.to_dict() if isinstance(planned, Plan) else planned
    approx = set(pd.get("approximate", []))
    rows = []
    for pr, mr in zip(pd.get("ranks", []), measured, strict=False):
        for f in MEMORY_FIELDS:
            if f not in mr:
                continue
            pv, mv = int(pr[f]), int(mr[f])
            err = (pv - mv) / mv if mv else (0.0 if pv == 0 else float("inf"))
            rows.append({"rank": mr.get("rank"), "field": f, "predicted": pv, "measured": mv, "error": err,
                         "approximate": f in approx})  # fmt: skip
    return rows


def timed_plan(cfg: RunConfig, device: str | None = None) -> tuple[Plan, float]:
    """plan() and the seconds it took (the config panel shows it)."""
    t0 = time.perf_counter()
    p = plan(cfg, device)
    return p, time.perf_counter() - t0
