"""Devices the planner knows, their memory and peak FLOP/s, and the measured peak of this CPU.

The peak is the denominator of MFU. On a GPU it is the data sheet's dense figure for the card torch names;
an unknown card has no honest peak, so ``gpu_peak_flops`` returns None and MFU is left out. A CPU has no data
sheet figure for "this laptop": its peak is a matmul rate measured here, cached per (CPU model, dtype,
threads) under ``cache_dir()``, and re-validated by a short spot measurement before a cached figure is used
(measured: a 0.3 s calibration taken while other jobs ran cached 31.8 GFLOP/s for 2 threads where a quiet
1 s measurement gives 166-171, and every later run on the machine reported MFU up to 521%).

Only ``cpu_peak_flops`` imports torch; the rest stays pure Python, so the plan never loads it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from workbench.fileio import write_json_atomic

GiB = 1024**3

# Dense peak FLOP/s per GPU and precision (vendor data sheets, without sparsity): bf16/fp16/fp8 on tensor cores;
# tf32 the tensor-core rate fp32 matmuls reach with TF32 on (the `tf32` config key), fp32 the CUDA-core rate
# they run at with it off (torch's default). Measured on an H200 with the same fp32 run: 73k tokens/s with TF32
# off, 202k with it on.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "tf32": 494e12, "fp32": 67e12},
    "H200 NVL": {"bf16": 835e12, "fp16": 835e12, "fp8": 1671e12, "tf32": 418e12, "fp32": 60e12},
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "fp8": 1979e12, "tf32": 494e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp8": 1513e12, "tf32": 378e12, "fp32": 51e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "fp8": 1671e12, "tf32": 418e12, "fp32": 60e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp8": 733e12, "tf32": 183e12, "fp32": 91.6e12},
    "L40": {"bf16": 181e12, "fp16": 181e12, "fp8": 362e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp8": 242e12, "tf32": 60e12, "fp32": 30.3e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12, "bf16": 15.7e12},  # no TF32: tf32 falls back to fp32
    "T4": {"fp16": 65e12, "fp32": 8.1e12, "bf16": 8.1e12},
    "RTX 4090": {"bf16": 165e12, "fp16": 165e12, "fp8": 330e12, "tf32": 82.6e12, "fp32": 82.6e12},
}


def peak_dtype(precision: str, tf32: bool) -> str:
    """The GPU_PEAK_FLOPS column a run divides by: "tf32" for fp32 with TF32 on, else the precision itself."""
    return "tf32" if precision == "fp32" and tf32 else precision


# Devices the planner knows: memory per device (bytes, as the data sheet states it) and the GPU_PEAK_FLOPS key.
# CUDA itself, the caching allocator and NCCL take some of that memory, which OVERHEAD_BYTES accounts for.
DEVICES: dict[str, dict[str, Any]] = {
    "a100-40": {"memory": 40 * GiB, "gpu": "A100", "label": "NVIDIA A100 40GB"},
    "a100-80": {"memory": 80 * GiB, "gpu": "A100", "label": "NVIDIA A100 80GB"},
    "a100": {"memory": 80 * GiB, "gpu": "A100", "label": "NVIDIA A100 80GB"},
    "h100": {"memory": 80 * GiB, "gpu": "H100 SXM", "label": "NVIDIA H100 SXM 80GB"},
    "h100-pcie": {"memory": 80 * GiB, "gpu": "H100 PCIe", "label": "NVIDIA H100 PCIe 80GB"},
    "h100-nvl": {"memory": 94 * 10**9, "gpu": "H100 NVL", "label": "NVIDIA H100 NVL 94GB"},
    "h200": {"memory": 141 * 10**9, "gpu": "H200", "label": "NVIDIA H200 141GB"},
    "h200-nvl": {"memory": 141 * 10**9, "gpu": "H200 NVL", "label": "NVIDIA H200 NVL 141GB"},
    "l40s": {"memory": 48 * GiB, "gpu": "L40S", "label": "NVIDIA L40S 48GB"},
    "l40": {"memory": 48 * GiB, "gpu": "L40", "label": "NVIDIA L40 48GB"},
    "l4": {"memory": 24 * GiB, "gpu": "L4", "label": "NVIDIA L4 24GB"},
    "a10": {"memory": 24 * GiB, "gpu": "A10", "label": "NVIDIA A10 24GB"},
    "v100": {"memory": 32 * GiB, "gpu": "V100", "label": "NVIDIA V100 32GB"},
    "v100-16": {"memory": 16 * GiB, "gpu": "V100", "label": "NVIDIA V100 16GB"},
    "t4": {"memory": 16 * GiB, "gpu": "T4", "label": "NVIDIA T4 16GB"},
    "rtx4090": {"memory": 24 * GiB, "gpu": "RTX 4090", "label": "NVIDIA RTX 4090 24GB"},
    "cpu": {"memory": None, "gpu": None, "label": "this machine's CPU and RAM"},
}

# A name as torch reports it ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "Tesla T4") -> DEVICES key:
# every word of an entry must be a whole word of the name, most specific entry first. Whole words, not
# substrings: "NVIDIA L40" is no L4, an A10G no A10, and an H100 NVL no SXM card.
NAME_WORDS: list[tuple[tuple[str, ...], str]] = [
    (("h200", "nvl"), "h200-nvl"),
    (("h200",), "h200"),
    (("h100", "nvl"), "h100-nvl"),
    (("h100", "pcie"), "h100-pcie"),
    (("h100",), "h100"),
    (("a100", "40gb"), "a100-40"),
    (("a100",), "a100-80"),
    (("l40s",), "l40s"),
    (("l40",), "l40"),
    (("l4",), "l4"),
    (("a10",), "a10"),
    (("v100", "16gb"), "v100-16"),
    (("v100",), "v100"),
    (("t4",), "t4"),
    (("rtx", "4090"), "rtx4090"),
]

# Memory a process holds before any tensor of ours: the CUDA context + cuBLAS/NCCL workspaces on a GPU
# (~0.5-1 GiB), or torch's own resident size on CPU (measured: ~0.35-0.45 GiB RSS after `import torch` and
# an Accelerator). Approximate; it enters the verdict, not the per-rank bars.
OVERHEAD_BYTES = {"gpu": 1 * GiB, "cpu": int(0.45 * GiB)}

# Without a cached CPU measurement, a stated default per thread: the order of one AVX-512 core (measured
# on the development machine: 65-74 GFLOP/s fp32, ~170 bf16, ~1 fp16, per thread).
CPU_DEFAULT_FLOPS_PER_THREAD = {"fp32": 70e9, "bf16": 170e9, "fp16": 1e9, "fp8": 70e9}

# Link bandwidth for the communication-time estimate (bus bandwidth a collective reaches): NVLink 4 on
# H100/H200 ~ 350 GB/s per GPU in practice, A100 NVLink 3 ~ 200 GB/s, PCIe cards ~ 20 GB/s; gloo between
# two CPU processes ~0.35 GB/s (measured: all_reduce of 32 MiB in 94 ms on the 2-core machine).
LINK_BYTES_PER_S = {"H100 SXM": 350e9, "H200": 350e9, "A100": 200e9, "cpu": 0.35e9}
DEFAULT_LINK_BYTES_PER_S = 20e9


@dataclass(frozen=True)
class PeakFlops:
    """The denominator of MFU, and where it came from."""

    flops: float  # FLOP/s per device (per process on CPU)
    source: str  # how it was obtained, in words
    measured_at: str | None  # ISO-8601 UTC time of the measurement; None for a data sheet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------
# GPUs


def device_key_for(gpu_name: str) -> str | None:
    """The DEVICES key for a GPU name as torch reports it; None for a card the planner does not know."""
    words = set(re.split(r"[^a-z0-9]+", gpu_name.lower()))
    for need, key in NAME_WORDS:
        if all(w in words for w in need):
            return key
    return None


def peak_of_device(key: str, dtype: str, name: str | None = None) -> PeakFlops:
    """The data-sheet peak of a DEVICES key (a GPU) at `dtype`; a dtype the card has no rate for falls back to
    its fp32 rate, and says so."""
    gpu = DEVICES[key]["gpu"]
    table = GPU_PEAK_FLOPS[gpu]
    label = name or DEVICES[key]["label"]
    if dtype in table:
        return PeakFlops(table[dtype], f"data sheet ({label}: {dtype} dense)", None)
    return PeakFlops(table["fp32"], f"data sheet ({label}: no {dtype} rate, fp32 dense)", None)


def gpu_peak_flops(device_name: str, dtype: str) -> PeakFlops | None:
    """Dense data-sheet FLOP/s for a GPU name as torch reports it, or None for an unknown card (MFU absent)."""
    key = device_key_for(device_name)
    return None if key is None else peak_of_device(key, dtype, device_name)


def resolve_device(cfg: Any, device: str | None) -> str:
    """The DEVICES key to plan for: `device` as given ("h100", "A100-40", ...), or None for this machine (the
    config's device, else what is detected). An unknown name, or a GPU here the planner has no figures for,
    raises ValueError naming the known keys: planning it as some other card would show wrong numbers."""
    if device is not None:
        key = device.lower().replace(" ", "").replace("_", "-")
        if key not in DEVICES:
            raise ValueError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")
        return key
    if cfg.device == "cpu":
        return "cpu"
    import shutil

    from workbench.config import DeviceInfo

    # Detecting runs nvidia-smi (cached after the first call; CUDA is never initialised here); without it there
    # is no GPU to ask about, so a CPU machine plans at once.
    if cfg.device != "cuda" and not shutil.which("nvidia-smi"):
        return "cpu"
    info = DeviceInfo.detect()
    if info.kind != "cuda":
        return "cpu"
    key = device_key_for(info.name)
    if key is None:
        raise ValueError(
            f"this machine's GPU {info.name!r} is not in the planner's table (its memory and peak FLOP/s are "
            f"unknown); plan for a known device with device= one of: {', '.join(k for k in DEVICES if k != 'cpu')}"
        )
    return key


# ---------------------------------------------------------------------------------------------------------
# caches and this machine


def cache_dir() -> str:
    """Where every cache of the workbench lives: $WORKBENCH_CACHE_DIR when set, else the user cache folder
    ($XDG_CACHE_HOME, default ~/.cache) / workbench."""
    explicit = os.environ.get("WORKBENCH_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "workbench")


def cpu_peak_cache_path() -> str:
    return os.path.join(cache_dir(), "cpu_peak.json")


_CPU_MODEL: str | None = None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), read once."""
    global _CPU_MODEL
    if _CPU_MODEL is None:
        _CPU_MODEL = "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        _CPU_MODEL = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return _CPU_MODEL


def cpu_cache_prefix(dtype: str) -> str:
    """The cache key of this CPU and dtype, without the thread count that ends it."""
    return f"{platform.processor() or platform.machine()}|{cpu_model()}|{dtype}|"


_MEM_TOTAL: int | None = None


def cpu_memory() -> int:
    """This machine's RAM in bytes."""
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


def read_cpu_cache() -> dict[str, Any]:
    try:
        with open(cpu_peak_cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cpu_entry_source(entry: dict[str, Any]) -> str:
    """How a cached CPU peak was measured, in words (status.json and the plan show it)."""
    sizes = entry.get("sizes") or []
    size = f"{sizes[0]}-{sizes[-1]}" if len(sizes) > 1 else str(sizes[0] if sizes else "?")
    load, cpus = entry.get("load_average"), entry.get("cpus")
    loaded = f"; under load: 1-min load average {load} on {cpus} CPUs" if load and cpus and load > cpus else ""
    return (
        f"measured matmul rate of this CPU (best of {entry.get('repeats')} at {size}^2, "
        f"{entry.get('threads')} thread(s), {entry.get('dtype')}{loaded})"
    )


def valid_entry(entry: Any) -> bool:
    """A cache entry of the current format: the rate with when and how it was measured. A bare number is the
    old 0.3 s single-matmul calibration, which is not trusted."""
    return isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and entry["flops"] > 0


_PLAN_CACHE: tuple[tuple, dict] | None = None


def cpu_peak_from_cache(dtype: str, threads: int) -> tuple[float, str]:
    """The peak cpu_peak_flops cached for this CPU, for the plan (never measured here: the plan stays fast and
    torch-free), scaled by thread count if only another count is cached; else the stated default."""
    global _PLAN_CACHE
    path = cpu_peak_cache_path()
    try:
        st = os.stat(path)
        stamp = (path, st.st_mtime_ns, st.st_size)  # re-read only when the file changed
        if _PLAN_CACHE is None or _PLAN_CACHE[0] != stamp:
            _PLAN_CACHE = (stamp, read_cpu_cache())
        cache = _PLAN_CACHE[1]
    except OSError:
        cache = {}
    prefix = cpu_cache_prefix(dtype)
    exact = cache.get(prefix + str(threads))
    if valid_entry(exact):
        return float(exact["flops"]), f"{cpu_entry_source(exact)}, at {exact.get('measured_at')}"
    others = [
        (int(k.rsplit("|", 1)[1]), v)
        for k, v in cache.items()
        if k.startswith(prefix) and k.rsplit("|", 1)[1].isdigit() and valid_entry(v)
    ]
    if others:
        n, v = min(others, key=lambda kv: abs(kv[0] - threads))
        return float(v["flops"]) * threads / n, f"cached matmul measurement at {n} thread(s), scaled to {threads}"
    return CPU_DEFAULT_FLOPS_PER_THREAD.get(dtype, 70e9) * threads, "default (no CPU measurement cached yet)"


# ---------------------------------------------------------------------------------------------------------
# measuring this CPU (imports torch)

# Square matmul sizes of the order the models train at (d_model 128-2048, a micro-batch of tokens), and the
# repeats at each: the peak is the best single matmul, so a moment of load only costs a repeat. A time budget
# bounds the whole (measured on 2 threads fp32: ~0.8 s; fp16, ~1 GFLOP/s on CPU, stops after 512).
MATMUL_SIZES = (512, 1024, 2048)
MATMUL_REPEATS = 5
MATMUL_BUDGET_S = 1.5
# The spot check before a cached figure is used: a few matmuls at 1024 (~30 ms on 2 threads fp32). A spot rate
# above the cached peak by more than the margin (timing noise of a best-of-3) means the cache was measured
# under load: measure again and replace it.
SPOT_SIZE, SPOT_REPEATS, SPOT_MARGIN = 1024, 3, 1.03


def matmul_rate(dtype: str, sizes: tuple[int, ...], repeats: int, budget_s: float) -> tuple[float, list[int], float]:
    """The best FLOP/s of single n x n matmuls over `sizes` (each warmed up once, then `repeats` timed), the
    sizes measured, and the seconds it took. A larger size is skipped when the rate so far says it would not
    fit the budget (the first size is always measured)."""
    import torch

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)  # fp8: no CPU kernel; fp32
    gen = torch.Generator().manual_seed(0)
    best, done, t_start = 0.0, [], time.perf_counter()
    for n in sizes:
        flops = 2 * n**3
        spent = time.perf_counter() - t_start
        if done and spent + (repeats + 1) * flops / best > budget_s:
            break
        a = torch.randn(n, n, generator=gen).to(dt)
        b = torch.randn(n, n, generator=gen).to(dt)
        a @ b  # warm-up: first-call allocation and kernel selection
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = max(best, flops / (time.perf_counter() - t0))
        done.append(n)
    return best, done, time.perf_counter() - t_start


def write_cpu_cache(key: str, entry: dict[str, Any]) -> None:
    """Atomically update one entry of the cache file (other entries, other processes' writes kept)."""
    path = cpu_peak_cache_path()
    cache = read_cpu_cache()
    cache[key] = entry
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomic(path, cache)
    except OSError:  # a read-only home: the figure is still used for this run
        pass


def cpu_peak_flops(dtype: str = "fp32", threads: int | None = None, refresh: bool = False) -> PeakFlops:
    """The measured matmul peak of this CPU at `threads` (default: torch's current count), per process.

    Cached per (CPU model, dtype, threads); a cached figure is used only after a short spot measurement does
    not beat it (see SPOT_*). ``refresh=True`` measures anew and replaces the cache (the worker does so when a
    run's achieved model FLOP/s exceeds the peak).
    """
    import torch

    before = torch.get_num_threads()
    threads = threads or before
    key = cpu_cache_prefix(dtype) + str(threads)
    if threads != before:
        torch.set_num_threads(threads)
    try:
        entry = read_cpu_cache().get(key)
        spot = 0.0
        if valid_entry(entry) and not refresh:
            spot, _, _ = matmul_rate(dtype, (SPOT_SIZE,), SPOT_REPEATS, MATMUL_BUDGET_S)
            if spot <= entry["flops"] * SPOT_MARGIN:
                return PeakFlops(float(entry["flops"]), cpu_entry_source(entry), entry.get("measured_at"))
        rate, sizes, seconds = matmul_rate(dtype, MATMUL_SIZES, MATMUL_REPEATS, MATMUL_BUDGET_S)
        rate = max(rate, spot)  # both measured just now: the best is the peak
    finally:
        if threads != before:
            torch.set_num_threads(before)
    entry = {
        "flops": rate,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sizes": sizes,
        "repeats": MATMUL_REPEATS,
        "threads": threads,
        "dtype": dtype,
        "seconds": round(seconds, 3),
        "torch": torch.__version__,
        # what else ran meanwhile: a load above the CPU count means the figure is low, and the source says so
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
    }
    write_cpu_cache(key, entry)
    return PeakFlops(rate, cpu_entry_source(entry), entry["measured_at"])
