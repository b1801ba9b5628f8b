"""The plan: memory, FLOPs, communication and time per rank for a RunConfig, before anything is launched.

    import workbench as wb
    p = wb.plan(cfg, device="h100")
    print(p.table())        # where the memory goes on each rank, and whether it fits
    p.fits, p.max_micro_batch_size, p.tokens_per_s

Pure arithmetic over the config: no torch, no model, no process; a call takes about a millisecond, so the
config panel can redraw it while a slider moves. Every figure here has a measured counterpart
(``workbench/measure.py``) that the worker records in each run; ``tests/test_plan.py`` checks the two in
process over a grid of layouts, precisions, checkpointing and sizes, and ``tests/test_parallel.py`` over real
multi-process runs of every layout.

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

The package, one concern a module: ``devices`` (known devices, peaks, this CPU's measured peak, caches),
``precision``, ``activations``, ``memory`` (one function per layout), ``finetuning``, ``comm`` (one function per
layout), ``compute`` (kernel FLOPs, the pipeline bubble, the largest micro-batch), ``result`` (Plan, RankMemory,
the table). The model's shapes come from ``workbench.models.shapes``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from workbench.config import STRATEGY_SPECS
from workbench.factory import is_hf
from workbench.models.shapes import TransformerShape, shape_of
from workbench.plan.activations import Activations, block_activation_bytes, outer_activation_bytes
from workbench.plan.comm import comm_per_rank
from workbench.plan.compute import bubble_fraction, bubble_fraction_of, hardware_flops_per_token, max_micro_batch
from workbench.plan.devices import (
    CPU_DEFAULT_FLOPS_PER_THREAD,
    DEFAULT_LINK_BYTES_PER_S,
    DEVICES,
    GPU_PEAK_FLOPS,
    LINK_BYTES_PER_S,
    OVERHEAD_BYTES,
    PeakFlops,
    cache_dir,
    cpu_memory,
    cpu_peak_flops,
    cpu_peak_from_cache,
    device_key_for,
    gpu_peak_flops,
    peak_dtype,
    peak_of_device,
    resolve_device,
)
from workbench.plan.facts import DEFAULT_CPU_FACTS, DeviceFacts, cached_cpu_facts, gpu_facts
from workbench.plan.memory import Counting, memory_per_rank
from workbench.plan.precision import FSDP_BF16, PRECISION, Precision, precision_of
from workbench.plan.result import MEMORY_FIELDS, Plan, RankMemory, StepTime, accuracy
from workbench.plan.timing import Timing, data_parallel_time

if TYPE_CHECKING:
    from workbench.config import RunConfig

__all__ = [
    "CPU_DEFAULT_FLOPS_PER_THREAD",
    "DEFAULT_LINK_BYTES_PER_S",
    "DEVICES",
    "FSDP_BF16",
    "GPU_PEAK_FLOPS",
    "LINK_BYTES_PER_S",
    "MEMORY_FIELDS",
    "OVERHEAD_BYTES",
    "PRECISION",
    "PeakFlops",
    "Plan",
    "Precision",
    "RankMemory",
    "StepTime",
    "DeviceFacts",
    "TransformerShape",
    "accuracy",
    "block_activation_bytes",
    "bubble_fraction",
    "bubble_fraction_of",
    "cache_dir",
    "cpu_peak_flops",
    "cpu_peak_from_cache",
    "device_facts",
    "device_key_for",
    "gpu_peak_flops",
    "hardware_flops_per_token",
    "model_notes",
    "outer_activation_bytes",
    "peak_dtype",
    "peak_of_device",
    "plan",
    "precision_of",
    "shape_of",
]

CUSTOM_MODEL_NOTE = "custom model: every figure is approximate"
# Parameters, gradients, optimizer state and buffers of a Hugging Face model are counted exactly; its
# activations as the reference GPT's block of the same shape (transformers' RMSNorm, rotary and SwiGLU save
# other tensors: a tiny Llama's measured activations were 22% (ddp) and 25% (tp) above this count).
HF_ACTIVATIONS_NOTE = "Hugging Face model: activation_bytes counted as the reference GPT's blocks of the same shape"


def model_notes(cfg: RunConfig) -> list[str]:
    """What the plan says about a model or data set it counts as the reference GPT's shape."""
    from workbench.config import is_import_string

    notes = []
    if cfg.data.source != "text" and is_import_string(cfg.data.source):
        notes.append(f"data.source is a custom factory: vocab counted as data.vocab_size ({cfg.data.vocab_size})")
    if is_import_string(cfg.model.arch):
        notes.append("model.arch is a custom factory: counted as the reference GPT of the same shape")
        notes.append(CUSTOM_MODEL_NOTE)
    if is_hf(cfg.model.arch):
        notes.append(HF_ACTIVATIONS_NOTE)
    return notes


def _count_memory(cfg: RunConfig, s: TransformerShape, B: int, notes: list[str], is_cpu: bool) -> Counting:
    """Memory per rank (and the activations as a function of micro_batch_size) with the labels it earns."""
    p = precision_of(cfg)
    approximate: list[str] = []
    if CUSTOM_MODEL_NOTE in notes:
        approximate.extend([*MEMORY_FIELDS, "flops_per_token", "comm_bytes"])
    if HF_ACTIVATIONS_NOTE in notes:
        approximate.append("activation_bytes")
    peft = getattr(cfg, "peft", None)
    if peft is not None and peft.method != "none":
        # frozen weights skip their weight-gradient matmuls: fewer than 6N FLOPs per token really run
        approximate.append("flops_per_token")
    par = cfg.parallel
    ckpt = bool(getattr(cfg, "activation_checkpointing", False))
    pipeline = max(1, par.pp_microbatches) if pipelined(cfg) else 0
    act_of = Activations(s, p, ckpt, cfg.model.dropout, is_cpu, pipeline)
    act_of.fp16_scaler = cfg.precision == "fp16"
    c = Counting(cfg, s, p, B, act_of, approximate, notes)
    c.ranks = memory_per_rank(c, is_cpu)
    return c


def pipelined(cfg: RunConfig) -> bool:
    spec = STRATEGY_SPECS.get(cfg.parallel.strategy)
    return spec is not None and spec.pipelined


def _peak(cfg: RunConfig, dev: str) -> tuple[float, str]:
    """Peak FLOP/s per device, the denominator of MFU: the cached CPU measurement (never measured here: the plan
    stays fast and torch-free), or the data sheet of the GPU planned for."""
    if dev == "cpu":
        threads = max(1, (os.cpu_count() or 1) // cfg.parallel.num_processes)
        dtype = cfg.precision if cfg.precision in ("fp32", "bf16", "fp16") else "fp32"
        return cpu_peak_from_cache(dtype, threads)
    peak = peak_of_device(dev, peak_dtype(cfg.precision, cfg.tf32 is True))  # fp32 with TF32: the tf32 rate
    return peak.flops, peak.source


def device_facts(cfg: RunConfig, dev: str) -> DeviceFacts:
    """The facts the step-time model reads for `cfg` on DEVICES key `dev`: this CPU's cached measurement for the
    run's process count, threads and precision (else fp32's, else the stated defaults), or a GPU's data sheet."""
    if dev != "cpu":
        return gpu_facts(dev, peak_dtype(cfg.precision, cfg.tf32 is True))
    W = cfg.parallel.num_processes
    threads = max(1, (os.cpu_count() or 1) // W)
    dtype = cfg.precision if cfg.precision in ("fp32", "bf16", "fp16") else "fp32"
    return cached_cpu_facts(dtype, W, threads) or cached_cpu_facts("fp32", W, threads) or DEFAULT_CPU_FACTS


def step_time(cfg: RunConfig, s: TransformerShape, p: Precision, facts: DeviceFacts, comm: list[int],
              by_op: dict[str, int]) -> StepTime:  # fmt: skip
    """The layout's time function over these facts (``plan/timing.py``)."""
    spec = STRATEGY_SPECS.get(cfg.parallel.strategy)
    fn = spec.time if spec is not None and spec.time is not None else data_parallel_time
    return fn(Timing(cfg, s, p, facts, comm, by_op))


def _flops_notes(s: TransformerShape, approximate: list[str], notes: list[str]) -> None:
    # The model-FLOPs formula (what MFU counts) vs the matmuls the kernels really run: they part where
    # attention dominates (long context, narrow model), because flash attention's backward recomputes the
    # scores. Past the 5% the tests hold the formula to, label it.
    hw = hardware_flops_per_token(s, False)
    if abs(hw - s.flops_per_token()) > 0.05 * hw:
        approximate.append("flops_per_token")
        notes.append(
            "flops_per_token is the 6N + 12·L·H·Q·T model-FLOPs convention; attention's share is large here and "
            "flash attention's backward also recomputes the scores (+2·L·T·d per token), which it leaves out"
        )


def _closing_notes(cfg: RunConfig, notes: list[str]) -> None:
    if pipelined(cfg):
        notes.append("step time counts the pipeline bubble; send/recv latency is not modelled")
    notes.append(
        f"master_bytes is 0: {cfg.precision} runs as autocast over fp32 parameters, which serve as the master weights"
        if cfg.precision != "fp32"
        else "fp32: no master copy"
    )


def _summary(cfg: RunConfig, s: TransformerShape, B: int, ckpt: bool) -> str:
    return (
        f"{cfg.name}: GPT {s.summary()}, {cfg.parallel.strategy} on {cfg.parallel.num_processes} process(es), "
        f"{cfg.precision}, micro_batch_size {B} x grad_accum_steps {cfg.grad_accum_steps}"
        + (", activation checkpointing" if ckpt else "")
    )


def plan(
    cfg: RunConfig, device: str | None = None, micro_batch_size: int | None = None, facts: DeviceFacts | None = None
) -> Plan:
    """Memory per rank, FLOPs, time and communication of `cfg` on `device` ("h100", "a100-40", "cpu", ...;
    None: this machine). `facts` replaces the device facts the step-time model reads (``device_facts``)."""
    dev = resolve_device(cfg, device)
    is_cpu = dev == "cpu"
    s, notes = shape_of(cfg), model_notes(cfg)
    B = micro_batch_size or cfg.micro_batch_size
    c = _count_memory(cfg, s, B, notes, is_cpu)
    ranks, approximate = c.ranks, c.approximate

    # verdict: on CPU every process shares this machine's RAM
    mem = cpu_memory() if is_cpu else DEVICES[dev]["memory"]
    overhead = OVERHEAD_BYTES["cpu" if is_cpu else "gpu"]
    needed = sum(r.total_bytes + overhead for r in ranks) if is_cpu else max(r.total_bytes for r in ranks) + overhead
    headroom = mem - needed

    # compute and time
    ckpt = bool(getattr(cfg, "activation_checkpointing", False))
    hw_step = hardware_flops_per_token(s, ckpt) * cfg.tokens_per_step
    _flops_notes(s, approximate, notes)
    world = cfg.parallel.num_processes
    peak, src = _peak(cfg, dev)
    comm, by_op = comm_per_rank(cfg, s, c.p, approximate)
    t = step_time(cfg, s, c.p, facts or device_facts(cfg, dev), comm, by_op)
    step = t.step_s
    mfu = s.flops_per_token() * cfg.tokens_per_step / (step * world * peak) if step > 0 and peak > 0 else 0.0
    _closing_notes(cfg, notes)
    summary = _summary(cfg, s, B, ckpt)
    return Plan(
        device=dev,
        device_label=DEVICES[dev]["label"],
        device_memory_bytes=int(mem),
        ranks=ranks,
        fits=headroom >= 0,
        headroom_bytes=int(headroom),
        max_micro_batch_size=max_micro_batch(ranks, c.act_of, mem, overhead, is_cpu),
        num_params=s.num_params,
        flops_per_token=s.flops_per_token(),
        flops_per_step=s.flops_per_token() * cfg.tokens_per_step,
        hardware_flops_per_step=hw_step,
        peak_flops_per_device=peak,
        peak_flops_source=src,
        mfu=mfu,
        step_time_s=step,
        tokens_per_s=cfg.tokens_per_step / step if step > 0 else 0.0,
        comm_bytes=comm,
        comm_by_op=by_op,
        comm_time_s=t.comm_s,
        bubble_fraction=bubble_fraction_of(cfg),
        overhead_bytes_per_rank=overhead,
        approximate=sorted(set(approximate)),
        notes=notes,
        config_summary=summary,
        shared_memory=is_cpu,
        time=t,
    )
