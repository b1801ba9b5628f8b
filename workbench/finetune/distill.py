"""Knowledge distillation: a frozen teacher's softened outputs as a second target (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from workbench.config import RunConfig
from workbench.finetune.load import load_model, logits_of


def load_teacher(cfg: RunConfig, device: torch.device) -> nn.Module | None:
    """distill.teacher's model, frozen in eval mode on this rank's device (not wrapped: it never trains)."""
    if not cfg.distill.teacher:
        return None
    return load_model(cfg.distill.teacher).to(device)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * hard-label loss.

    Both distributions are softened by the temperature T; the T^2 keeps the soft term's gradients on the
    same scale as the hard one's as T changes. Logits of any shape (..., classes): the KL is averaged over
    every prediction (each sequence for classify, each token for lm)."""
    C = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, C) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, C) / temperature, dim=-1)
    soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    return alpha * soft + (1.0 - alpha) * hard_loss


def distill_step_loss(cfg: RunConfig, teacher: nn.Module):
    """loss(model, x, y) for the worker's micro-step when a teacher is set."""
    T, a = cfg.distill.temperature, cfg.distill.alpha

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, hard = model(x, y)
        with torch.no_grad():
            t_logits = logits_of(teacher(x))
        return distill_loss(logits, t_logits, hard, T, a)

    return loss
