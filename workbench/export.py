"""Deployment: a finished run's model to ONNX, run with onnxruntime, checked against PyTorch.

    report = wb.export_onnx(run)        # RUN/export/model.onnx
    print(report.table())               # max |logit difference|, latency of PyTorch and onnxruntime

A LoRA run is merged first (W += (alpha / r) B A), so the ONNX graph is the plain GPT: no adapters, no
peft at serving time.

The serving contract: the graph takes one input and returns ``logits``, the model's whole output for the
whole batch, exactly what ``logits_of(model(x))`` gives in PyTorch.

- the reference GPT: ``tokens`` (int64, batch x length, both dynamic; length up to model.seq_len) ->
  (batch, num_labels) for a classifier, (batch, length, vocab) for an LM;
- your own model (``model.arch: "module:build"``): the input of your data set's x (``tokens`` when integer,
  else ``inputs``), batch dynamic, the other axes fixed at the training shape (the workbench cannot know
  whether your second axis is a length); ``forward(x)`` without targets must return the logits, or a tuple
  ``(logits, loss)`` whose first element is taken. Its module is imported from the folder the run was
  launched from, as training did (see finetune.load.launch_dir).

Parity is measured over the whole batch (and a second batch of another size) against the model's own forward.
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
from workbench.config import RunConfig, is_import_string

if TYPE_CHECKING:
    from workbench.runs import Run

PARITY_TOLERANCE = 1e-4  # max |logit difference| accepted in fp32 (measured here: ~3e-7)


class LogitsOnly(nn.Module):
    """model(x) -> logits of the whole batch: the serving signature, for either forward contract (plain
    logits, or a (logits, loss) tuple whose loss is None without targets); see finetune.logits_of."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return ft.logits_of(self.model(tokens))


@dataclass
class ExportReport:
    path: str
    size_bytes: int
    batch_size: int
    threads: int
    max_abs_diff: float  # over the whole batch of held-out sequences and a second, odd-shaped batch
    output_shape: list[int]  # of the logits for the batch of batch_size, the same in PyTorch and ONNX
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
                f"logits {tuple(self.output_shape)} for a batch of {self.batch_size}; max |logit difference| "
                f"vs PyTorch over the whole batch: {self.max_abs_diff:.2e} ({ok})",
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
    PARITY_TOLERANCE over the whole batch; the CLI exits 1 when they do not.
    """
    import onnxruntime as ort

    run_dir = ft.run_path(run)
    cfg = ft.run_config(run_dir)
    model = ft.load_model(run_dir)  # first: it puts your own model's launch folder on sys.path
    x = latency_batch(cfg, batch_size)
    want = serving_logits(model, x, cfg)
    path = path or os.path.join(run_dir, "export", "model.onnx")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    name = "tokens" if not torch.is_floating_point(x) else "inputs"
    _export(LogitsOnly(model).eval(), x, path, name, dynamic_length=not is_import_string(cfg.model.arch), dynamo=dynamo)
    threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # the same threads as PyTorch: a fair latency comparison
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def run_ort(t: torch.Tensor) -> np.ndarray:
        return sess.run(["logits"], {name: t.numpy()})[0]

    odd = x[: max(1, len(x) // 2 + 1)]  # another batch size: the batch axis really is dynamic
    if not is_import_string(cfg.model.arch):
        odd = odd[:, : max(2, cfg.model.seq_len // 2 + 1)]  # and another length, for the GPT's tokens
    with torch.inference_mode():
        diff = max(whole_batch_diff(run_ort(t), ft.logits_of(model(t)).numpy()) for t in (x, odd))
        lat = cpu_latencies_ms({"torch": lambda: model(x), "onnxruntime": lambda: run_ort(x)})
    return ExportReport(
        path=os.path.abspath(path),
        size_bytes=_onnx_size(path),
        batch_size=len(x),
        threads=threads,
        max_abs_diff=diff,
        output_shape=list(want.shape),
        torch_latency_ms=lat["torch"],
        onnxruntime_latency_ms=lat["onnxruntime"],
        exporter="dynamo" if dynamo else "torchscript",
    )


def serving_logits(model: nn.Module, x: torch.Tensor, cfg: RunConfig) -> torch.Tensor:
    """The model's logits for the batch x, checked to be one row per sequence before anything is exported:
    a forward(x) that returns a loss, or drops the batch axis, cannot be served."""
    with torch.inference_mode():
        out = ft.logits_of(model(x))
    if out.dim() < 1 or out.shape[0] != len(x):
        raise ValueError(
            f"model.arch {cfg.model.arch!r}: forward(x) on a batch of {len(x)} returned shape {tuple(out.shape)}; "
            f"export serves the logits of the whole batch, so forward(x) without targets must return a tensor "
            f"whose first axis is the batch ({len(x)}, ...), or a tuple (logits, loss)"
        )
    return out


def whole_batch_diff(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over every element; infinite when the shapes differ (numpy would broadcast a slice)."""
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max())


def _export(model: nn.Module, x: torch.Tensor, path: str, name: str, dynamic_length: bool, dynamo: bool) -> None:
    """torch.onnx.export with the batch axis dynamic (and the length, for token models), quietly."""
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporters' deprecation and progress chatter
        if dynamo:
            # the length is bounded by the position table (x's length is model.seq_len)
            axes = {0: torch.export.Dim("batch", max=1 << 16)}
            if dynamic_length:
                axes[1] = torch.export.Dim("length", max=x.shape[1])
            torch.onnx.export(model, (x,), path, input_names=[name], output_names=["logits"],
                              dynamo=True, dynamic_shapes=(axes,), verbose=False)  # fmt: skip
        else:
            axes = {name: {0: "batch", 1: "length"} if dynamic_length else {0: "batch"}, "logits": {0: "batch"}}
            torch.onnx.export(model, (x,), path, input_names=[name], output_names=["logits"],
                              dynamo=False, dynamic_axes=axes)  # fmt: skip
    quiet.setLevel(level)


def _onnx_size(path: str) -> int:
    # the exporter may put large weights in a side file (path + ".data"): count both
    extra = path + ".data"
    return os.path.getsize(path) + (os.path.getsize(extra) if os.path.exists(extra) else 0)
