"""Data sets for a RunConfig: the synthetic language, a user's text file, or a user's own factory.

Every source yields a map-style ``torch.utils.data.Dataset`` of ``(x, y)`` pairs of int64 token ids of
shape (seq_len,), where y is x shifted by one. The worker wraps it in a DataLoader that Accelerate shards
across ranks, so each rank reads its own part, in an order fixed by the seed.

Your own data: ``data.source: "mypkg.data:build"`` names a function ``build(cfg: RunConfig, split: str)``
with split "train" or "eval", returning such a Dataset (items ``(x, y)``; x any tensor the model takes).

Importing this package imports neither torch nor numpy (``build_dataset`` and the synthetic language do):
validation reads the split sizes and the vocabulary from here, and the config panel validates on every keystroke.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from workbench.factory import is_import_string, load_factory

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from workbench.config import RunConfig
    from workbench.data.synthetic import MarkovChain

__all__ = [
    "TEXT_VOCAB",
    "MarkovChain",
    "build_dataset",
    "chain",
    "empirical_entropy_rate",
    "entropy_floor",
    "load_factory",
    "num_sequences",
    "split_rule",
    "vocab_size",
    "vocab_size_for",
]

# The text source is byte level: any file, any language, no tokenizer to ship, so its vocabulary is the 256
# byte values whatever data.vocab_size says.
TEXT_VOCAB = 256


def __getattr__(name: str):
    # the synthetic language's names load numpy: on first use, not on import
    if name in ("MarkovChain", "empirical_entropy_rate"):
        from workbench.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'workbench.data' has no attribute {name!r}")


def vocab_size_for(source: str, vocab_size: int) -> int:
    """The vocabulary a data source yields: the byte-level text source has TEXT_VOCAB whatever data.vocab_size
    says; every other source (synthetic, your own factory) the configured data.vocab_size."""
    return TEXT_VOCAB if source == "text" else vocab_size


def vocab_size(cfg: RunConfig) -> int:
    return vocab_size_for(cfg.data.source, cfg.data.vocab_size)


@lru_cache(maxsize=8)
def chain(vocab: int, seed: int) -> MarkovChain:
    """The synthetic language of this vocabulary and seed (built once per process)."""
    from workbench.data.synthetic import MarkovChain

    return MarkovChain.make(vocab, seed)


# The text source splits a file by position: the first 90% of its bytes train, the rest evaluates.
TEXT_TRAIN_FRACTION = 0.9


def _synthetic_sizes(n: int) -> dict[str, int]:
    # held-out splits come on top of the n training sequences; a floor so that small n still measures something
    return {"train": n, "eval": max(256, n // 16), "test": max(1024, n // 8)}


def _text_bytes(size: int, split: str) -> int:
    cut = int(size * TEXT_TRAIN_FRACTION)
    return cut if split == "train" else size - cut


def num_sequences(cfg: RunConfig, split: str) -> int | None:
    """Sequences in a split of a built-in source, without building it; None for your own data (its factory decides).

    split: train or eval (task.kind classify also has test). The worker's loaders drop an incomplete
    micro-batch, so a split needs micro_batch_size x parallel.num_processes sequences for one step on every rank.
    """
    d, T = cfg.data, cfg.model.seq_len
    if d.source == "synthetic":
        return _synthetic_sizes(d.num_sequences)[split]
    if d.source == "text":
        part = _text_bytes(os.path.getsize(d.path), split)
        return max(0, (part - 1) // T)  # each sequence reads seq_len + 1 bytes, consecutive ones overlap by one
    return None


def split_rule(cfg: RunConfig, split: str) -> str:
    """Where a built-in split's size comes from, in config keys (for messages)."""
    if cfg.data.source == "text":
        share = "first 90%" if split == "train" else "last 10%"
        return f"the {share} of data.path's {os.path.getsize(cfg.data.path)} bytes, in model.seq_len pieces"
    n = cfg.data.num_sequences
    if split == "train":
        return "data.num_sequences"
    div, floor = (16, 256) if split == "eval" else (8, 1024)
    return f"data.num_sequences // {div}" if n // div >= floor else f"at least {floor}"


def text_bytes_needed(cfg: RunConfig, split: str, sequences: int) -> int:
    """The smallest text file whose split holds this many sequences of model.seq_len."""
    T = cfg.model.seq_len
    want = sequences * T + 1
    size = int(want / (TEXT_TRAIN_FRACTION if split == "train" else 1 - TEXT_TRAIN_FRACTION))
    while _text_bytes(size, split) < want:  # int() rounding in the cut: step up to the exact size
        size += 1
    while size > 1 and _text_bytes(size - 1, split) >= want:
        size -= 1
    return size


# The run folder whose data/ the files source reads (the worker sets it; default: the config's own run folder).
_files_dir: list[str] = []


def set_files_dir(run_dir: str) -> None:
    _files_dir[:] = [run_dir]


def files_dir(cfg: RunConfig) -> str:
    return _files_dir[0] if _files_dir else os.path.abspath(cfg.run_dir)


def _lm_split(split: str) -> str:
    return "train" if split == "train" else "eval"


def entropy_floor(cfg: RunConfig) -> float | None:
    """The best achievable loss (nats/token) for the synthetic source; None for other sources."""
    if cfg.data.source != "synthetic":
        return None
    return chain(cfg.data.vocab_size, cfg.data.seed).entropy_rate


def build_dataset(cfg: RunConfig, split: str) -> Dataset:
    """The train or eval Dataset of (x, y) pairs for this config."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    d, T = cfg.data, cfg.model.seq_len
    if d.source == "files":  # prepared by the worker (files.prepare) in its run folder
        from workbench.data import files

        return files.dataset(cfg, split if cfg.task.kind == "classify" else _lm_split(split), files_dir(cfg))
    assert split in ("train", "eval")
    if is_import_string(d.source):
        return load_factory(d.source)(cfg, split)
    if d.source == "synthetic":
        n = num_sequences(cfg, split)
        # train and eval sample independent chains (different seeds) from the same language
        toks = chain(d.vocab_size, d.seed).sample(n, T + 1, seed=d.seed * 1000 + (1 if split == "train" else 2))
        t = torch.from_numpy(toks)
        return TensorDataset(t[:, :-1].contiguous(), t[:, 1:].contiguous())
    if d.source == "text":
        with open(d.path, "rb") as f:
            raw = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
        cut = len(raw) - _text_bytes(len(raw), "eval")
        part = raw[:cut] if split == "train" else raw[cut:]
        # A split too short for one sequence is empty (never the training text again): validate() refuses
        # evaluation over it before launch.
        n = max(0, (len(part) - 1) // T)
        x = torch.from_numpy(part[: n * T].reshape(n, T).copy())
        y = torch.from_numpy(part[1 : n * T + 1].reshape(n, T).copy())
        return TensorDataset(x, y)
    raise ValueError(f"data.source {d.source!r} is not known")
