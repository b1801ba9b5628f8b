"""Device facts: what this machine's compute and links do, the step-time model's inputs.

A fact is measured by a short microbenchmark (``workbench/calibrate.py``: matmul rates at a few sizes, the fixed
cost of one tensor operation, elementwise bandwidth, and every collective's latency and bandwidth between the
processes of a run) and cached per machine with its provenance, as the CPU peak is; never by running the layout
being predicted. A GPU without measured facts plans from its data sheet (peak FLOP/s, memory and link bandwidth)
and says "data sheet, unmeasured"; without any cache on a CPU the stated defaults below are used and the plan
says so.

Pure Python (no torch): the plan reads facts in a millisecond.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.fileio import write_json_atomic
from workbench.plan.devices import DEVICES, GPU_PEAK_FLOPS, LINK_BYTES_PER_S, cache_dir, cpu_cache_prefix

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "send")
ELEMENTWISE_KINDS = ("gelu_s_per_element", "silu_s_per_element", "norm_s_per_element")


@dataclass(frozen=True)
class DeviceFacts:
    """One device's (one process's, on CPU) compute and link, as the step-time model reads them."""

    matmul: tuple[tuple[float, float], ...]  # (FLOPs of one matmul, FLOP/s reached), ascending FLOPs
    op_s: float  # fixed cost of one tensor operation in a training step (dispatch + autograd), seconds
    mem_bytes_per_s: float  # bandwidth of elementwise work (read + written bytes per second)
    collectives: dict[str, tuple[float, float]]  # op -> (latency s, bytes/s of the tensor handed to it)
    dtensor_op_s: float  # extra fixed cost of an operation on a DTensor over a plain tensor's
    attention: tuple[tuple[float, float], ...]  # causal attention forward + backward: (FLOPs, FLOP/s)
    # seconds per element, forward + backward: gelu, silu, norm (_s_per_element); seconds per tensor of the
    # optimizer step (adamw_s_per_tensor, adamw_dtensor_s_per_tensor); a tensor-parallel Linear's extra cost
    # (tp_linear_s)
    elementwise: dict[str, float]
    source: str  # how these were obtained, in words
    measured_at: str | None = None  # ISO-8601 UTC; None for a data sheet or the defaults
    processes: int = 1  # measured with this many processes running at once (they share the machine)
    threads: int = 1
    dtype: str = "fp32"
    asynchronous: bool = False  # a GPU: the host queues operations while the device runs (overheads overlap)
    extra: dict[str, float] = field(default_factory=dict)

    def matmul_rate(self, flops: float) -> float:
        """FLOP/s of one matmul of `flops` FLOPs: log-log interpolation between the measured sizes."""
        return interpolate(self.matmul, flops)

    def attention_s(self, flops: float) -> float:
        return flops / interpolate(self.attention, flops) if flops > 0 else 0.0

    def matmul_s(self, m: int, k: int, n: int, count: int = 1) -> float:
        flops = 2.0 * m * k * n
        return count * flops / self.matmul_rate(flops) if flops > 0 else 0.0

    def elementwise_s(self, kind: str, elements: float) -> float:
        return elements * self.elementwise[f"{kind}_s_per_element"]

    def collective_s(self, op: str, nbytes: float, calls: int = 1) -> float:
        """Seconds of `calls` calls of collective `op` moving `nbytes` in total (the tensor handed to it)."""
        if calls <= 0 or nbytes <= 0:
            return 0.0
        latency, bw = self.collectives.get("send" if op == "recv" else op, self.collectives["all_reduce"])
        return calls * latency + nbytes / bw

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("matmul", "attention"):
            d[k] = [list(p) for p in getattr(self, k)]
        d["collectives"] = {k: list(v) for k, v in self.collectives.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceFacts:
        d = dict(d)
        for k in ("matmul", "attention"):
            d[k] = tuple((float(a), float(b)) for a, b in d[k])
        d["collectives"] = {k: (float(v[0]), float(v[1])) for k, v in d["collectives"].items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def interpolate(pts: tuple[tuple[float, float], ...], flops: float) -> float:
    """A rate at `flops` from measured (FLOPs, rate) points: log-log between them; below the smallest, the
    smallest one's time (a fixed cost dominates there); above the largest, its rate."""
    f0, r0 = pts[0]
    if flops <= f0:
        return r0 * max(flops, 1.0) / f0
    for (fa, ra), (fb, rb) in zip(pts, pts[1:], strict=False):
        if flops <= fb:
            w = (math.log(flops) - math.log(fa)) / (math.log(fb) - math.log(fa))
            return math.exp(math.log(ra) + w * (math.log(rb) - math.log(ra)))
    return pts[-1][1]


# ---- CPU: measured, cached ----


def facts_cache_path() -> str:
    return os.path.join(cache_dir(), "device_facts.json")


def cpu_facts_key(dtype: str, processes: int, threads: int) -> str:
    return f"{cpu_cache_prefix(dtype)}{processes}x{threads}"


_READ: tuple[tuple, dict[str, Any]] | None = None  # the file's (path, mtime, size) and its content


def read_facts_cache() -> dict[str, Any]:
    """The cache file's entries, re-read only when the file changed (the panel plans on every slider move)."""
    global _READ
    path = facts_cache_path()
    try:
        st = os.stat(path)
        stamp = (path, st.st_mtime_ns, st.st_size)
        if _READ is None or _READ[0] != stamp:
            with open(path) as f:
                data = json.load(f)
            _READ = (stamp, data if isinstance(data, dict) else {})
        return _READ[1]
    except (OSError, ValueError):
        return {}


def write_facts(key: str, facts: DeviceFacts) -> None:
    """Atomically update one entry of the cache (other entries and other processes' writes kept)."""
    path = facts_cache_path()
    cache = dict(read_facts_cache())
    cache[key] = facts.to_dict()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, cache)
    except OSError:  # a read-only home: the facts still serve this process
        pass


def cached_cpu_facts(dtype: str, processes: int, threads: int) -> DeviceFacts | None:
    """This CPU's measured facts for `processes` running at once with `threads` each, or None."""
    entry = read_facts_cache().get(cpu_facts_key(dtype, processes, threads))
    try:
        return DeviceFacts.from_dict(entry) if isinstance(entry, dict) else None
    except (KeyError, TypeError, ValueError):
        return None


# Without a measurement: the order of the 2-core development machine (1 thread per process, 2 processes, fp32,
# measured 2026-12-08 by workbench/calibrate.py), stated, so a plan before any calibration is not silent about it.
DEFAULT_CPU_FACTS = DeviceFacts(
    matmul=((2.6e5, 8e9), (4.2e6, 45e9), (3.4e7, 70e9), (2.7e8, 75e9)),
    op_s=6e-6,
    mem_bytes_per_s=10e9,
    collectives={op: (1.5e-4, 0.4e9) for op in COLLECTIVES},
    dtensor_op_s=6e-5,
    attention=((3.1e6, 8e9), (1.3e7, 15e9), (1.0e8, 25e9)),
    elementwise={
        "gelu_s_per_element": 5.6e-9,
        "silu_s_per_element": 4e-9,
        "norm_s_per_element": 4.7e-9,
        "adamw_s_per_tensor": 1.25e-4,
        "adamw_dtensor_s_per_tensor": 7.5e-4,
        "tp_linear_s": 1.2e-3,
    },
    source="default (no measurement of this CPU cached yet: wb.plan or `python -m workbench.calibrate` measures it)",
)

# ---- GPUs: the data sheet ----

# HBM bandwidth per GPU (data sheets, bytes/s)
HBM_BYTES_PER_S = {
    "H200": 4.8e12, "H200 NVL": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12,
    "A100": 2.0e12, "L40S": 0.864e12, "L40": 0.864e12, "L4": 0.3e12, "A10": 0.6e12, "V100": 0.9e12,
    "T4": 0.32e12, "RTX 4090": 1.0e12,
}  # fmt: skip
# The fraction of the dense peak a large matmul reaches, and of HBM an elementwise kernel: measured on an H200,
# a plain 8192^3 bf16 matmul ran at ~790 of 989 TFLOP/s (0.8); STREAM-like kernels reach ~0.8-0.9 of HBM.
LARGE_MATMUL_FRACTION = 0.8
HBM_FRACTION = 0.8
# Small matmuls do not fill the device: the fraction of the large-matmul rate by FLOPs of one matmul (cuBLAS on
# an A100/H100 reaches about 60% of its rate at 1 GFLOP, 5% at 10 MFLOP).
GPU_MATMUL_CURVE = ((1e7, 0.05), (1e8, 0.3), (1e9, 0.6), (1e10, 0.85), (1e11, 1.0))
NCCL_LATENCY_S = 2e-5  # one NCCL collective's fixed cost within a node
GPU_OP_S = 5e-6  # a kernel launch through PyTorch's dispatcher, host side
# Host-side fixed costs (queued while the GPU works): AdamW's foreach step per tensor, a DTensor's per tensor, a
# tensor-parallel Linear's DTensor dispatch.
GPU_HOST_COSTS = {"adamw_s_per_tensor": 2e-5, "adamw_dtensor_s_per_tensor": 2e-4, "tp_linear_s": 3e-4}  # fmt: skip


def gpu_facts(device: str, dtype: str) -> DeviceFacts:
    """Data-sheet facts for a DEVICES key (a GPU): peak at `dtype` x the large-matmul fraction, HBM, the link."""
    gpu = DEVICES[device]["gpu"]
    table = GPU_PEAK_FLOPS[gpu]
    peak = table.get(dtype, table["fp32"])
    top = peak * LARGE_MATMUL_FRACTION
    link = LINK_BYTES_PER_S.get(gpu, 20e9)
    return DeviceFacts(
        matmul=tuple((f, top * frac) for f, frac in GPU_MATMUL_CURVE),
        op_s=GPU_OP_S,
        mem_bytes_per_s=HBM_BYTES_PER_S.get(gpu, 1e12) * HBM_FRACTION,
        collectives={op: (NCCL_LATENCY_S, link) for op in COLLECTIVES},
        dtensor_op_s=3e-5,
        # flash attention reaches about half the dense matmul rate (FlashAttention-2 on an A100: 50-73% of peak
        # forward, less backward); elementwise kernels at HBM speed (a GELU reads and writes 2 x 2 bytes forward,
        # about 3 x that backward)
        attention=tuple((f, top * frac * 0.5) for f, frac in GPU_MATMUL_CURVE),
        elementwise={k: 16 / (HBM_BYTES_PER_S.get(gpu, 1e12) * HBM_FRACTION) for k in ELEMENTWISE_KINDS}
        | GPU_HOST_COSTS,
        source=f"data sheet, unmeasured ({DEVICES[device]['label']}: {dtype} {peak / 1e12:.0f} TFLOP/s dense, "
        f"HBM {HBM_BYTES_PER_S.get(gpu, 1e12) / 1e12:.2f} TB/s, link {link / 1e9:.0f} GB/s)",
        dtype=dtype,
        asynchronous=True,
    )
