"""Classification metrics: accuracy and F1 from a confusion matrix, gathered over ranks at eval steps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from workbench.config import RunConfig
from workbench.finetune.load import logits_of
from workbench.finetune.task import bayes_accuracy, chance_accuracy


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """accuracy and F1 from a (true, predicted) confusion matrix.

    F1: of label 1 (the "positive" class) when there are two labels, as usual for a binary task; the
    unweighted mean over labels (macro-F1) for more."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    tp = np.diag(confusion)
    pred, true = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(pred + true > 0, 2 * tp / (pred + true), 0.0)
    return {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "f1": float(f1[1]) if len(f1) == 2 else float(f1.mean()),
    }


def evaluate(
    acc: Any, model: nn.Module, dl: Any, num_labels: int, max_batches: int | None, ctx: Any
) -> dict[str, float]:
    """loss, accuracy and F1 of a classifier over a prepared DataLoader (max_batches per rank, or all); {}
    when no sample was seen (a split smaller than one batch per rank): no metric is computed over nothing.

    Predictions are gathered with gather_for_metrics, which drops the samples Accelerate repeats to even
    out the last batch across ranks, so every test sequence counts exactly once."""
    model.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64, device=acc.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
    count = 0
    with torch.no_grad(), ctx:
        for i, (x, y) in enumerate(dl):
            if max_batches is not None and i >= max_batches:
                break
            logits = logits_of(model(x)).float()
            ce = F.cross_entropy(logits, y, reduction="none")
            pred, y, ce = acc.gather_for_metrics((logits.argmax(dim=-1), y, ce))
            confusion.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64), accumulate=True)
            loss_sum += ce.double().sum()
            count += len(y)
    model.train()
    if count == 0:  # count is gathered over ranks, so every rank takes this branch alike
        return {}
    out = classification_metrics(confusion.cpu().numpy())
    out["loss"] = float(loss_sum) / count
    return out


def eval_event(
    acc: Any, model: nn.Module, dl: Any, cfg: RunConfig, ctx: Any, split: str = "eval", max_batches: int | None = None
) -> dict[str, float]:
    """{eval_loss, eval_accuracy, eval_f1} (or test_...) for a metric event; {} (the keys absent) when the
    split gave no sample."""
    m = evaluate(acc, model, dl, cfg.task.num_labels, max_batches, ctx)
    if not m:
        return {}
    return {f"{split}_loss": m["loss"], f"{split}_accuracy": m["accuracy"], f"{split}_f1": m["f1"]}


def first_event(cfg: RunConfig, effective: dict[str, Any]) -> dict[str, Any]:
    """Keys for a run's first metric event: trainable_params, and for the synthetic task its chance level
    and Bayes-optimal test accuracy (the ceiling drawn above the accuracy curve)."""
    out: dict[str, Any] = {"trainable_params": effective["trainable_params"]}
    if cfg.task.kind == "classify" and cfg.data.source == "files":
        out["chance_accuracy"] = chance_accuracy(cfg)  # as if balanced: 1 / num_labels
    if cfg.task.kind == "classify" and cfg.data.source == "synthetic":
        out["chance_accuracy"] = chance_accuracy(cfg)
        out["bayes_accuracy"] = bayes_accuracy(cfg, "test")
    return out
