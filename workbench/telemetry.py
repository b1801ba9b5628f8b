"""Metric events: metrics.jsonl (the contract other tools read) and TensorBoard, plus MFU and memory.

Keys of a metric event (add freely, never rename): step, tokens, loss, eval_loss, lr, grad_norm,
tokens_per_s, samples_per_s, step_time_s, mfu, mem_bytes (one entry per rank).
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from typing import Any

# The peak FLOP/s of devices moved to workbench/plan/devices.py (its one home). These two wrappers keep the
# worker's old float-returning calls running until it codes against plan.devices directly.


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """Data-sheet peak FLOP/s for a GPU name as torch reports it, or None for an unknown card."""
    from workbench.plan.devices import gpu_peak_flops as peak

    p = peak(name, precision)
    return None if p is None else p.flops


def cpu_peak_flops(dtype_name: str = "fp32", threads: int | None = None) -> float:
    """The measured (and re-validated) matmul peak of this CPU; see workbench.plan.devices.cpu_peak_flops."""
    from workbench.plan.devices import cpu_peak_flops as peak

    return peak(dtype_name, threads).flops


def peak_memory_bytes(device_type: str) -> int:
    """Peak memory of this process: CUDA's max allocated on GPUs, peak resident set size on CPU."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class MetricsWriter:
    """Appends one JSON object a line to metrics.jsonl and flushes it, so readers see each event at once."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "a", buffering=1)

    def write(self, event: dict[str, Any]) -> None:
        self._f.write(json.dumps(_jsonable(event)) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def read_metrics(path: str) -> list[dict[str, Any]]:
    """All complete events in a metrics.jsonl (a trailing half-written line is skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


def tensorboard_scalars(event: dict[str, Any]) -> dict[str, float]:
    """The scalar part of a metric event, as TensorBoard tags (per-rank memory as mem_bytes/rank{i})."""
    out: dict[str, float] = {}
    for k, v in event.items():
        if k == "step":
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            for i, x in enumerate(v):  # per-rank lists: mem_bytes, comm_bytes, idle_fraction, ...
                if math.isfinite(x):
                    out[f"{k}/rank{i}"] = float(x)
    return out


class Reporter:
    """Telemetry for a training loop written in a notebook cell (see ``workbench.notebook_launch``).

    Inside the function run on N processes: ``rep = wb.Reporter(accelerator)``, then
    ``rep.log(step, loss=loss_tensor, tokens=...)``. Tensors are averaged across ranks; rank 0 appends the
    event to the run's metrics.jsonl and TensorBoard, so the loop appears as an ordinary run folder.
    """

    def __init__(self, accelerator: Any, run_dir: str | None = None):
        self.acc = accelerator
        self.run_dir = run_dir or os.environ.get("WORKBENCH_RUN_DIR") or os.path.join("runs", "notebook")
        self._writer: MetricsWriter | None = None
        self._tb = None
        self._t_last = time.perf_counter()
        if self.acc.is_main_process:
            os.makedirs(self.run_dir, exist_ok=True)
            self._writer = MetricsWriter(os.path.join(self.run_dir, "metrics.jsonl"))
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.run_dir, "tensorboard"))

    def log(self, step: int, **values: Any) -> dict[str, Any] | None:
        import torch

        event: dict[str, Any] = {"step": int(step)}
        for k, v in values.items():
            if isinstance(v, torch.Tensor):
                v = self.acc.reduce(v.detach().float().reshape(1).to(self.acc.device), reduction="mean").item()
            event[k] = v
        now = time.perf_counter()
        event["step_time_s"] = now - self._t_last
        self._t_last = now
        mem = torch.tensor([peak_memory_bytes(self.acc.device.type)], device=self.acc.device, dtype=torch.float64)
        event["mem_bytes"] = [int(x) for x in self.acc.gather(mem).tolist()]
        event["world_size"] = self.acc.num_processes
        if self._writer is not None:
            self._writer.write(event)
            for k, v in tensorboard_scalars(event).items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
            return event
        return None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._tb.close()
