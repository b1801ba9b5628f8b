"""Data sets for a RunConfig: the synthetic language, a user's text file, or a user's own factory.

Every source yields a map-style ``torch.utils.data.Dataset`` of ``(x, y)`` pairs of int64 token ids of
shape (seq_len,), where y is x shifted by one. The worker wraps it in a DataLoader that Accelerate shards
across ranks, so each rank reads its own part, in an order fixed by the seed.

Your own data: ``data.source: "mypkg.data:build"`` names a function ``build(cfg: RunConfig, split: str)``
with split "train" or "eval", returning such a Dataset (items ``(x, y)``; x any tensor the model takes).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from workbench.config import is_import_string
from workbench.data.synthetic import MarkovChain, empirical_entropy_rate
from workbench.models.shapes import TEXT_VOCAB, vocab_size_for

if TYPE_CHECKING:
    from workbench.config import RunConfig

# TEXT_VOCAB (byte level, 256) is re-exported from its home, workbench.models.shapes
__all__ = [
    "TEXT_VOCAB",
    "MarkovChain",
    "build_dataset",
    "empirical_entropy_rate",
    "entropy_floor",
    "load_factory",
    "vocab_size",
]


def load_factory(spec: str):
    """Import "pkg.module:name" and return the attribute."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def vocab_size(cfg: RunConfig) -> int:
    return vocab_size_for(cfg.data.source, cfg.data.vocab_size)


@lru_cache(maxsize=8)
def _chain(vocab: int, seed: int) -> MarkovChain:
    return MarkovChain.make(vocab, seed)


def entropy_floor(cfg: RunConfig) -> float | None:
    """The best achievable loss (nats/token) for the synthetic source; None for other sources."""
    if cfg.data.source != "synthetic":
        return None
    return _chain(cfg.data.vocab_size, cfg.data.seed).entropy_rate


def build_dataset(cfg: RunConfig, split: str) -> Dataset:
    """The train or eval Dataset of (x, y) pairs for this config."""
    assert split in ("train", "eval")
    d, T = cfg.data, cfg.model.seq_len
    if is_import_string(d.source):
        return load_factory(d.source)(cfg, split)
    if d.source == "synthetic":
        chain = _chain(d.vocab_size, d.seed)
        n = d.num_sequences if split == "train" else max(256, d.num_sequences // 16)
        # train and eval sample independent chains (different seeds) from the same language
        toks = chain.sample(n, T + 1, seed=d.seed * 1000 + (1 if split == "train" else 2))
        t = torch.from_numpy(toks)
        return TensorDataset(t[:, :-1].contiguous(), t[:, 1:].contiguous())
    if d.source == "text":
        with open(d.path, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
        cut = int(len(raw) * 0.9)
        part = raw[:cut] if split == "train" else raw[cut:]
        if len(part) < T + 1:  # tiny files: evaluate on the training text rather than fail
            part = raw
        n = (len(part) - 1) // T
        x = torch.from_numpy(part[: n * T].reshape(n, T).copy())
        y = torch.from_numpy(part[1 : n * T + 1].reshape(n, T).copy())
        return TensorDataset(x, y)
    raise ValueError(f"data.source {d.source!r} is not known")
