"""Compression of a finished run's model: dynamic int8 quantization and magnitude pruning, each measured.

    report = wb.quantize(run)                      # fp32 vs int8: size on disk, CPU latency, accuracy / F1
    report = wb.prune(run, [0.25, 0.5, 0.75, 0.9])  # accuracy against the exact sparsity reached

Both load the run's latest checkpoint (a LoRA run merged into plain weights), measure on the task's test
split (accuracy, F1 and loss for task.kind classify; loss for lm), time a forward pass on this CPU, and save
each variant's state dict under RUN/compressed/ so its size on disk is a real file's size.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from workbench import finetune as ft
from workbench.config import RunConfig

if TYPE_CHECKING:
    from workbench.runs import Run

EVAL_SEQUENCES_LM = 256  # held-out sequences for an LM's loss: enough for ~0.01 nats of noise, fast


# ---------------------------------------------------------------------------------------------------------
# measuring a model


def cpu_latencies_ms(
    fns: dict[str, Callable[[], Any]], min_time_s: float = 0.3, min_repeats: int = 10
) -> dict[str, float]:
    """Best wall time (ms) of each function, timed in turns: one call of each per round, so a burst of
    load from other processes on a shared CPU hits every contender alike instead of whichever ran then.

    After warm-up (first calls allocate and pick kernels); the best, as timeit advises: slower calls did the
    same work plus interference."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    t_end = time.perf_counter() + min_time_s * len(fns)
    while len(next(iter(times.values()))) < min_repeats or time.perf_counter() < t_end:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: 1000.0 * min(v) for k, v in times.items()}


def eval_tensors(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out data a compressed model is judged on: the test split (classify) or eval sequences (lm)."""
    if cfg.task.kind == "classify":
        ds = ft.dataset(cfg, "test")
    else:
        ds = ft.dataset(cfg, "eval")
    n = len(ds) if cfg.task.kind == "classify" else min(len(ds), EVAL_SEQUENCES_LM)
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.stack(ys)


@torch.inference_mode()
def quality(
    model: nn.Module, cfg: RunConfig, data: tuple[torch.Tensor, torch.Tensor] | None = None
) -> dict[str, float]:
    """accuracy, f1 and loss on the test split for a classifier; loss (nats/token) for a language model."""
    x, y = data if data is not None else eval_tensors(cfg)
    logits = torch.cat([ft.logits_of(model(x[i : i + 256])).float() for i in range(0, len(x), 256)])
    if cfg.task.kind == "classify":
        K = cfg.task.num_labels
        confusion = torch.zeros(K, K, dtype=torch.float64)
        confusion.index_put_((y, logits.argmax(-1)), torch.ones(len(y), dtype=torch.float64), accumulate=True)
        out = ft.classification_metrics(confusion.numpy())
        out["loss"] = float(F.cross_entropy(logits, y))
        return out
    return {"loss": float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)))}


def latency_batch(cfg: RunConfig, batch_size: int | None) -> torch.Tensor:
    """A fixed batch of held-out sequences to time a forward pass on."""
    x, _ = eval_tensors(cfg)
    return x[: batch_size or cfg.micro_batch_size]


def file_size(model: nn.Module, path: str) -> int:
    """Bytes of the model's state dict saved with torch.save (int8 packed weights included)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(model.state_dict(), path)
    return os.path.getsize(path)


# ---------------------------------------------------------------------------------------------------------
# the report


@dataclass
class Variant:
    """One model variant and what it measured."""

    method: str
    size_bytes: int | None
    latency_ms: float
    metrics: dict[str, float]
    path: str | None = None
    sparsity: float | None = None  # exact fraction of zero weights in the pruned layers
    zeros: int | None = None
    prunable: int | None = None  # weights in the pruned layers


@dataclass
class CompressionReport:
    """Rows of variants of one run's model, measured the same way; ``table()`` prints them."""

    run: str
    task: str
    batch_size: int
    threads: int
    variants: list[Variant] = field(default_factory=list)

    def row(self, method: str) -> Variant:
        return next(v for v in self.variants if v.method == method)

    def table(self) -> str:
        keys = ["accuracy", "f1", "loss"] if self.task == "classify" else ["loss"]
        head = f"{'method':18} {'size':>10} {'latency':>11} " + " ".join(f"{k:>8}" for k in keys) + f" {'sparsity':>9}"
        lines = [
            f"{os.path.basename(self.run)}: CPU latency of one forward pass, batch {self.batch_size}, "
            f"{self.threads} thread(s); metrics on the held-out split",
            head,
        ]
        for v in self.variants:
            size = f"{v.size_bytes / 1024:.1f} KiB" if v.size_bytes is not None else "-"
            sp = f"{v.sparsity:.4f}" if v.sparsity is not None else "-"
            vals = " ".join(f"{v.metrics.get(k, float('nan')):8.4f}" for k in keys)
            lines.append(f"{v.method:18} {size:>10} {v.latency_ms:8.3f} ms {vals} {sp:>9}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:  # a notebook cell ending in a report shows the table
        return self.table()

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)


def _start(run: str | Run, batch_size: int | None) -> tuple[str, RunConfig, nn.Module, CompressionReport, Any]:
    path = ft.run_path(run)
    cfg = ft.run_config(path)
    model = ft.load_model(path)
    x = latency_batch(cfg, batch_size)
    report = CompressionReport(path, cfg.task.kind, len(x), torch.get_num_threads())
    return path, cfg, model, report, x


def _latencies(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, float]:
    with torch.inference_mode():
        return cpu_latencies_ms({k: (lambda m=m: m(x)) for k, m in models.items()})


# ---------------------------------------------------------------------------------------------------------
# quantization


def is_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections), recognised by name: this module does not import
    transformers, which only Hugging Face runs need."""
    return type(m).__name__ == "Conv1D"


def conv1d_as_linear(model: nn.Module) -> int:
    """Swap every transformers ``Conv1D`` (GPT-2's attention and MLP projections: y = x @ W + b with W stored
    (in, out)) for the nn.Linear it equals, W transposed, in place; returns how many. Dynamic quantization
    converts nn.Linear only: without this a GPT-2 would keep every block weight in fp32."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not is_conv1d(child):
                continue
            n_in, n_out = child.weight.shape
            lin = nn.Linear(n_in, n_out, bias=child.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(child.weight.t())
                if child.bias is not None:
                    lin.bias.copy_(child.bias)
            setattr(parent, name, lin)
            swapped += 1
    return swapped


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every nn.Linear (and transformers' Conv1D, as the Linear it is): int8
    weights (one scale per tensor), activations quantized on the fly per batch, int8 matmuls with int32
    accumulation (fbgemm/x86 kernels on CPU). Returns a new model; the one given is left as it was."""
    model = copy.deepcopy(model)
    conv1d_as_linear(model)
    with warnings.catch_warnings():
        # torch.ao.quantization is marked deprecated in favour of torchao, which is not a dependency here;
        # quantize_dynamic is still shipped and works in this torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize(run: str | Run, batch_size: int | None = None) -> CompressionReport:
    """fp32 against dynamic int8 of a finished run's model: size on disk, CPU latency, accuracy/F1 or loss.

    Saves RUN/compressed/model_fp32.pt, model_int8.pt and quantize.json. To reuse the int8 model:
    ``quantize_dynamic_int8(wb.load_model(run)).load_state_dict(torch.load(path, weights_only=True))``.
    """
    path, cfg, model, report, x = _start(run, batch_size)
    data = eval_tensors(cfg)
    out = os.path.join(path, "compressed")
    models = {"fp32": model, "int8 dynamic": quantize_dynamic_int8(model)}
    lat = _latencies(models, x)
    for method, m in models.items():
        f = os.path.join(out, "model_fp32.pt" if method == "fp32" else "model_int8.pt")
        report.variants.append(Variant(method, file_size(m, f), lat[method], quality(m, cfg, data), f))
    report.save(os.path.join(out, "quantize.json"))
    return report


# ---------------------------------------------------------------------------------------------------------
# pruning


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The Linears inside the transformer blocks (q k v o fc1 fc2). The embeddings and the output head
    stay dense, as usual: they are few weights and every token or label depends on each row."""
    if getattr(model, "hf", None) is None:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    # A Hugging Face model (HFModel.hf): the Linears of its blocks, the entries of the one ModuleList it keeps
    # them in (bert encoder.layer, llama model.layers, gpt2 transformer.h). GPT-2's are transformers' Conv1D
    # (a Linear with its weight transposed): magnitude pruning treats them alike.
    blocks = tuple(f"{n}.{i}." for n, m in model.named_modules() if isinstance(m, nn.ModuleList) for i in range(len(m)))
    return [(n, m) for n, m in model.named_modules()
            if (isinstance(m, nn.Linear) or is_conv1d(m)) and n.startswith(blocks)]  # fmt: skip


def magnitude_prune(model: nn.Module, sparsity: float) -> tuple[int, int]:
    """Zero the smallest-|w| weights of each block Linear with torch.nn.utils.prune; returns (zeros, total).

    Each layer loses its own share (per-layer L1, so a layer with smaller weights is not emptied first),
    counted in whole weights: floor(sparsity * n) per layer, then the leftover weights of round(sparsity * N)
    to the layers with the largest remainders. So the model reaches exactly round(sparsity * N) zeros and
    every layer is within one weight of the request (a float amount would round each layer on its own and
    miss the total by up to one weight a layer). prune.remove folds the mask into the weight: an ordinary
    module with exact zeros."""
    from torch.nn.utils import prune

    layers = [lin for _, lin in prunable_linears(model)]
    sizes = [lin.weight.numel() for lin in layers]
    want = [sparsity * n for n in sizes]
    counts = [int(w) for w in want]
    leftover = int(round(sparsity * sum(sizes))) - sum(counts)
    for i in sorted(range(len(layers)), key=lambda i: counts[i] - want[i])[:leftover]:
        counts[i] += 1
    zeros = 0
    for lin, k in zip(layers, counts, strict=True):
        prune.l1_unstructured(lin, "weight", amount=k)
        prune.remove(lin, "weight")
        zeros += int((lin.weight == 0).sum())
    return zeros, sum(sizes)


def _zeros(model: nn.Module) -> tuple[int, int]:
    lins = [m for _, m in prunable_linears(model)]
    return sum(int((m.weight == 0).sum()) for m in lins), sum(m.weight.numel() for m in lins)


def prune(
    run: str | Run, sparsities: Sequence[float] = (0.25, 0.5, 0.75, 0.9), batch_size: int | None = None
) -> CompressionReport:
    """Magnitude pruning of a finished run's model at several sparsities: accuracy/F1 (or loss) against the
    exact sparsity reached. Unstructured zeros keep a dense file as large and dense kernels as fast; what
    they buy is shown by the metrics (how many weights the task did not need).

    Saves RUN/compressed/model_pruned_<s>%.pt for each sparsity and prune.json.
    """
    for s in sparsities:
        if not 0.0 <= float(s) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {s}")
    path, cfg, model, report, x = _start(run, batch_size)
    data = eval_tensors(cfg)
    out = os.path.join(path, "compressed")
    models = {"dense": model}
    counts = {"dense": _zeros(model)}
    files = {"dense": "model_fp32.pt"}
    for s in sparsities:
        m = ft.load_model(path)
        name = f"pruned {100 * float(s):g}%"
        models[name], counts[name], files[name] = m, magnitude_prune(m, float(s)), f"model_pruned_{float(s):g}.pt"
    lat = _latencies(models, x)
    for method, m in models.items():
        zeros, total = counts[method]
        f = os.path.join(out, files[method])
        q = quality(m, cfg, data)
        report.variants.append(Variant(method, file_size(m, f), lat[method], q, f, zeros / total, zeros, total))
    report.save(os.path.join(out, "prune.json"))
    return report
