"""Metric events: metrics.jsonl (the contract other tools read) and TensorBoard, plus MFU and memory.

The keys of a metric event (add freely, never rename) are one table, ``workbench/metrics_schema.py``: each
key's unit, when it is written, and whether it goes to the dashboard, TensorBoard, Compare and HParams. README's
table of metric keys is that table; ``NOT_SCALARS`` (kept out of TensorBoard) and ``HPARAM_METRICS`` come from it.

TensorBoard stores scalars as float32: ``time`` (~1.7e9 s) would be off by up to 128 s there (2^-24 relative),
so it stays in metrics.jsonl only; elapsed_s is exact to well under a millisecond for days.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from typing import Any

from workbench.fileio import read_jsonl
from workbench.metrics_schema import HPARAM_METRICS, NOT_SCALARS


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
    return read_jsonl(path)


def drop_events_after(path: str, step: int) -> None:
    """Keep only the events of metrics.jsonl up to ``step`` (a resumed run rewrites what came after its checkpoint),
    so one metrics file never holds a step twice."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
    with open(path, "w") as f:
        f.writelines(keep)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops_per_device: float | None, world: int) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices.

    None when the peak is unknown, and None above 1: a model cannot run faster than its devices' peak, so such a
    figure means the peak is wrong (the worker then measures it again: Trainer.check_peak), never 130% MFU.
    """
    if peak_flops_per_device is None or not math.isfinite(peak_flops_per_device) or peak_flops_per_device <= 0:
        return None
    value = flops_per_token * tokens_per_s / (peak_flops_per_device * world)
    return value if value <= 1.0 else None


def tensorboard_scalars(event: dict[str, Any]) -> dict[str, float]:
    """The scalar part of a metric event, as TensorBoard tags (per-rank memory as mem_bytes/rank{i})."""
    out: dict[str, float] = {}
    for k, v in event.items():
        if k in NOT_SCALARS or isinstance(v, bool):
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


# ---------------------------------------------------------------------------------------------------------
# HParams: the config beside the run's metrics in TensorBoard's HParams dashboard

# (HPARAM_METRICS, from workbench/metrics_schema.py: the scalar tags HParams links to each run's hyper-parameters)


def value_str(v: Any) -> str:
    """A config value as one string: lists joined with commas, floats with repr (exact)."""
    if isinstance(v, (list, tuple)):
        return ",".join(value_str(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def hparams_dict(cfg: Any) -> dict[str, Any]:
    """The config as HParams wants it: flat dotted keys, int/float/str/bool values (lists joined, None as "")."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, (list, tuple)):
                out[prefix + k] = value_str(list(v))
            elif v is None:
                out[prefix + k] = ""
            else:
                out[prefix + k] = v

    walk(cfg.to_dict(), "")
    return out


def write_hparams(writer: Any, cfg: Any, metrics: tuple[str, ...] = HPARAM_METRICS) -> None:
    """Write TensorBoard's HParams records (experiment, session start, session end) through ``writer``, the
    run's own SummaryWriter, so that HParams links this run's scalars to its config.

    Not Accelerate's ``init_trackers(config=...)``: measured with accelerate 1.15, it puts HParams in a separate
    timestamped sub-run with no metrics linked, and a list value in the config crashes rank 0.
    """
    from torch.utils.tensorboard.summary import hparams

    exp, ssi, sei = hparams(hparams_dict(cfg), {m: 0.0 for m in metrics})
    fw = writer.file_writer if hasattr(writer, "file_writer") else writer._get_file_writer()
    for record in (exp, ssi, sei):
        fw.add_summary(record)
    writer.flush()


def start_trackers(acc: Any, cfg: Any, run_dir: str, step: int, resume: bool) -> None:
    """Accelerate's trackers of ``trackers:`` (log_with), one tracker run per job (Accelerate starts them on rank 0
    only): TensorBoard in RUN/tensorboard, its HParams through the run's own writer; MLflow in a local file store
    RUNS_DIR/mlruns shared by the runs (unless MLFLOW_TRACKING_URI says otherwise), experiment "workbench"
    (MLFLOW_EXPERIMENT_NAME), one MLflow run named after the run with the config's keys as its params."""
    kwargs: dict[str, dict] = {"tensorboard": {"purge_step": step + 1} if resume else {}}
    if "mlflow" in cfg.trackers:
        store = os.path.join(os.path.dirname(os.path.abspath(run_dir)), "mlruns")
        os.environ.setdefault("MLFLOW_TRACKING_URI", "file:" + store)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store unless told
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "workbench")
        kwargs["mlflow"] = {"run_name": cfg.name}
    acc.init_trackers("tensorboard", init_kwargs=kwargs)  # "tensorboard": TensorBoard's folder in the run
    if acc.is_main_process and not resume:
        write_hparams(acc.get_tracker("tensorboard", unwrap=True), cfg)  # through the run's own writer
        for name in cfg.trackers:
            if name != "tensorboard":
                acc.get_tracker(name).store_init_configuration(hparams_dict(cfg))
