"""The labelled task ("sentiment"), drawn from the synthetic language itself (workbench/data/synthetic.py).

The vocabulary holds one small set of "sentiment words" per label, and a sequence of label k is drawn from the
pretraining chain tilted towards the words of set k (each transition into a set-k word is weighted by
exp(TILT) and the row renormalised). So every class speaks the language the model was pretrained on, with
an accent; because the generator is known, the Bayes-optimal accuracy (the posterior's argmax under the
true chains) is computable, the ceiling above the model just as the entropy floor is below the LM loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from workbench.config import RunConfig
from workbench.data.synthetic import MarkovChain

# log-weight added to every transition into a label's words. 0.75 gives a Bayes accuracy of ~0.93 on
# 64-token sequences of the 64-word quickstart language (a simple "count each label's words" rule: ~0.90),
# so a model has a ceiling to approach and the methods have room to differ.
TILT = 0.75
SPLITS = ("train", "validation", "test")


def _stationary(P: np.ndarray) -> np.ndarray:
    # power iteration, as MarkovChain.make: all entries are positive, so the chain is ergodic and it converges
    pi = np.full(len(P), 1.0 / len(P))
    for _ in range(10_000):
        new = pi @ P
        if np.abs(new - pi).max() < 1e-15:
            break
        pi = new
    return new / new.sum()


@dataclass
class SentimentTask:
    """num_labels Markov chains: the pretraining language tilted towards one set of words per label."""

    chains: list[MarkovChain]
    words: list[np.ndarray]  # words[k]: the token ids whose frequency label k raises

    @classmethod
    def make(cls, base: MarkovChain, num_labels: int, seed: int, tilt: float = TILT) -> SentimentTask:
        V = len(base.stationary)
        per_label = max(1, V // (4 * num_labels))  # a quarter of the vocabulary carries sentiment
        perm = np.random.default_rng([seed, 1009]).permutation(V)
        words = [np.sort(perm[k * per_label : (k + 1) * per_label]) for k in range(num_labels)]
        chains = []
        for w in words:
            weight = np.ones(V)
            weight[w] = np.exp(tilt)
            P = base.transition * weight
            P /= P.sum(axis=1, keepdims=True)
            chains.append(MarkovChain(P, _stationary(P)))
        return cls(chains, words)

    @property
    def num_labels(self) -> int:
        return len(self.chains)

    def sample(self, n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """n sequences with balanced labels, in a seeded random order: (tokens (n, length), labels (n,))."""
        K = self.num_labels
        counts = [n // K + (1 if k < n % K else 0) for k in range(K)]
        xs = [c.sample(m, length, seed=[seed, k]) for k, (c, m) in enumerate(zip(self.chains, counts, strict=True))]
        x = np.concatenate(xs)
        y = np.repeat(np.arange(K), counts)
        order = np.random.default_rng([seed, 99]).permutation(n)
        return x[order], y[order]

    def log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """(n, K): log p(sequence | label k) under the true chains."""
        cols = []
        for c in self.chains:
            ll = np.log(c.stationary[x[:, 0]]) + np.log(c.transition[x[:, :-1], x[:, 1:]]).sum(axis=1)
            cols.append(ll)
        return np.stack(cols, axis=1)

    def bayes_accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Accuracy of the Bayes-optimal classifier (knows the generator) on these sequences: the ceiling."""
        return float((self.log_likelihoods(x).argmax(axis=1) == y).mean())


def _split_size(cfg: RunConfig, split: str) -> int:
    n = cfg.data.num_sequences
    return {"train": n, "validation": max(256, n // 16), "test": max(1024, n // 8)}[split]


@lru_cache(maxsize=4)
def _task(vocab: int, seed: int, num_labels: int) -> SentimentTask:
    from workbench.data import chain

    return SentimentTask.make(chain(vocab, seed), num_labels, seed)


def sentiment_task(cfg: RunConfig) -> SentimentTask:
    return _task(cfg.data.vocab_size, cfg.data.seed, cfg.task.num_labels)


@lru_cache(maxsize=8)
def _sample(vocab: int, seed: int, num_labels: int, split: str, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    code = SPLITS.index(split) + 11  # seeds of their own: the LM's train/eval sequences use other ones
    return _task(vocab, seed, num_labels).sample(n, length, seed=seed * 1000 + code)


def task_arrays(cfg: RunConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic sentiment split as numpy arrays (tokens (n, seq_len), labels (n,))."""
    d = cfg.data
    return _sample(d.vocab_size, d.seed, cfg.task.num_labels, split, _split_size(cfg, split), cfg.model.seq_len)


def dataset(cfg: RunConfig, split: str) -> Dataset:
    """The worker's data: (x, y) pairs, y a label for task.kind classify, the shifted tokens for lm.

    split: train, eval (= validation) or test.
    """
    from workbench.config import is_import_string
    from workbench.data import build_dataset, load_factory

    if cfg.data.source == "files":  # local files (workbench/data/files.py): every task, its own splits
        return build_dataset(cfg, "eval" if split == "validation" else split)
    if cfg.task.kind in ("lm", "mlm"):
        return build_dataset(cfg, "eval" if split in ("validation", "test") else split)
    if is_import_string(cfg.data.source):  # your own labelled data: build(cfg, split) -> Dataset of (x, label)
        return load_factory(cfg.data.source)(cfg, split)  # split: train, eval or test
    split = "validation" if split == "eval" else split
    x, y = task_arrays(cfg, split)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def chance_accuracy(cfg: RunConfig) -> float:
    """Accuracy of guessing: the labels are balanced, so 1 / num_labels."""
    return 1.0 / cfg.task.num_labels


def bayes_accuracy(cfg: RunConfig, split: str = "test") -> float:
    x, y = task_arrays(cfg, split)
    return sentiment_task(cfg).bayes_accuracy(x, y)
