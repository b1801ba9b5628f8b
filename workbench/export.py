"""Deployment: a finished run's model to ONNX, run with onnxruntime, checked against PyTorch.

    report = wb.export_onnx(run)        # RUN/export/model.onnx
    print(report.table())               # max |logit difference|, latency of PyTorch and onnxruntime

A LoRA run is merged first (W += (alpha / r) B A), so the ONNX graph is the plain GPT: no adapters, no
peft at serving time. The graph takes ``tokens`` (int64, batch x length, both dynamic; length up to
model.seq_len) and returns ``logits``: (batch, num_labels) for a classifier, (batch, length, vocab) for an LM.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from workbench import finetune as ft
from workbench.compress import cpu_latencies_ms, latency_batch

if TYPE_CHECKING:
    from workbench.runs import Run

PARITY_TOLERANCE = 1e-4  # max |logit difference| accepted in fp32 (measured here: ~3e-7)


class LogitsOnly(nn.Module):
    """model(tokens) -> logits: the serving signature (the training forward also returns a loss)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)[0]


@dataclass
class ExportReport:
    path: str
    size_bytes: int
    batch_size: int
    threads: int
    max_abs_diff: float  # over a batch of held-out sequences and a second, odd-shaped batch
    torch_latency_ms: float
    onnxruntime_latency_ms: float
    exporter: str

    @property
    def parity(self) -> bool:
        return self.max_abs_diff < PARITY_TOLERANCE

    def table(self) -> str:
        ok = "ok" if self.parity else f"ABOVE the {PARITY_TOLERANCE:g} tolerance"
        return "\n".join(
            [
                f"ONNX ({self.exporter} exporter): {self.path} ({self.size_bytes / 1024:.1f} KiB)",
                f"max |logit difference| vs PyTorch: {self.max_abs_diff:.2e} ({ok})",
                f"CPU latency, batch {self.batch_size}, {self.threads} thread(s): PyTorch "
                f"{self.torch_latency_ms:.3f} ms, onnxruntime {self.onnxruntime_latency_ms:.3f} ms",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"parity": self.parity}

    def __repr__(self) -> str:
        return self.table()


def export_onnx(
    run: str | Run, path: str | None = None, batch_size: int | None = None, dynamo: bool = True
) -> ExportReport:
    """Export a finished run's model to ONNX, run it with onnxruntime and compare with PyTorch (fp32).

    dynamo=True uses torch.onnx's default exporter (torch.export + onnxscript); dynamo=False the older
    TorchScript one (faster to export, deprecated). ``report.parity`` says whether the logits agree to
    PARITY_TOLERANCE; the CLI exits 1 when they do not.
    """
    import onnxruntime as ort

    run_dir = ft.run_path(run)
    cfg = ft.run_config(run_dir)
    model = LogitsOnly(ft.load_model(run_dir)).eval()
    path = path or os.path.join(run_dir, "export", "model.onnx")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    x = latency_batch(cfg, batch_size)
    T = cfg.model.seq_len
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporters' deprecation and progress chatter
        if dynamo:
            # both axes dynamic; the length is bounded by the position table (model.seq_len rows)
            shapes = ({0: torch.export.Dim("batch", max=1 << 16), 1: torch.export.Dim("length", max=T)},)
            torch.onnx.export(model, (x,), path, input_names=["tokens"], output_names=["logits"],
                              dynamo=True, dynamic_shapes=shapes, verbose=False)  # fmt: skip
        else:
            axes = {"tokens": {0: "batch", 1: "length"}, "logits": {0: "batch"}}
            torch.onnx.export(model, (x,), path, input_names=["tokens"], output_names=["logits"],
                              dynamo=False, dynamic_axes=axes)  # fmt: skip
    quiet.setLevel(level)
    threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the same threads as PyTorch: a fair latency comparison
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def run_ort(t: torch.Tensor) -> np.ndarray:
        return sess.run(["logits"], {"tokens": t.numpy()})[0]

    diff = 0.0
    odd = x[: max(1, len(x) // 2 + 1), : max(2, T // 2 + 1)]  # another shape: the axes really are dynamic
    with torch.inference_mode():
        for t in (x, odd):
            diff = max(diff, float(np.abs(run_ort(t) - model(t).numpy()).max()))
        lat = cpu_latencies_ms({"torch": lambda: model(x), "onnxruntime": lambda: run_ort(x)})
    torch_ms, ort_ms = lat["torch"], lat["onnxruntime"]
    report = ExportReport(
        path=os.path.abspath(path),
        size_bytes=_onnx_size(path),
        batch_size=len(x),
        threads=threads,
        max_abs_diff=diff,
        torch_latency_ms=torch_ms,
        onnxruntime_latency_ms=ort_ms,
        exporter="dynamo" if dynamo else "torchscript",
    )
    return report


def _onnx_size(path: str) -> int:
    # the exporter may put large weights in a side file (path + ".data"): count both
    extra = path + ".data"
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)
