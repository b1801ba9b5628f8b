"""Your own model and data, trained by the workbench: the module of notebooks/12_your_own_model_and_data.ipynb.

The workbench needs two import strings, nothing else:

    model.arch:  "my_model:build"        build(cfg) -> nn.Module whose forward(x, y) returns the mean loss
    data.source: "my_model:build_data"   build_data(cfg, split) -> a Dataset of (x, y) pairs

and, to serve the model (``wb.export_onnx(run)``, ``workbench export RUN --onnx``), forward(x) without y returns
the logits of the whole batch, (batch, 2) here: the ONNX graph returns exactly that.

Strings, not objects, because they cross process boundaries: every rank imports this module itself. The
launch puts the folder you launch from on the workers' PYTHONPATH, so a file next to the notebook is enough.

The task is TensorFlow Playground's spiral: two interleaved spirals of 2-D points, one class each. A straight
line cannot separate them; a small MLP learns the curved boundary in a few hundred steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset


class SpiralNet(nn.Module):
    """An MLP on 2-D points: `depth` tanh layers of `width` units, then 2 logits (one per spiral)."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = []
        d_in = 2
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.Tanh()]
            d_in = width
        layers.append(nn.Linear(d_in, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(x)
        if y is None:  # inference: the notebook draws the decision boundary from these, export serves them
            return logits  # (batch, 2): every point's logits, never just the first one's
        return nn.functional.cross_entropy(logits, y)  # training: the mean loss, what the workbench expects


def build(cfg) -> nn.Module:
    """The model factory: sizes come from the RunConfig, so widgets and --set change them like any model's."""
    return SpiralNet(width=cfg.model.d_model, depth=cfg.model.n_layer)


def spirals(n: int, seed: int, turns: float = 1.25, noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` points on two spirals (class 0 and class 1, half a turn apart), with Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g).sqrt()  # sqrt: as many points far out as near the centre, per unit of area
    y = torch.randint(0, 2, (n,), generator=g)
    angle = t * turns * 2 * math.pi + y * math.pi
    x = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1)
    return x + noise * torch.randn(n, 2, generator=g), y


def build_data(cfg, split: str) -> Dataset:
    """The data factory: `split` is "train" or "eval"; different seeds, so evaluation sees unseen points."""
    seed = cfg.data.seed + (0 if split == "train" else 1)
    n = cfg.data.num_sequences if split == "train" else 1024
    return TensorDataset(*spirals(n, seed))
