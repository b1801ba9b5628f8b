"""A synthetic language with a known entropy floor.

Tokens follow a seeded first-order Markov chain: each token's successor is drawn from a row of a fixed
transition matrix. Rows are sparse-ish Dirichlet draws, so some successors are likely and most are rare,
like words. Because the generator is known, its entropy rate

    H = sum_i pi_i * H(P[i, :])        (nats per token; pi is the chain's stationary distribution)

is the best loss any model can reach on a long sample: the floor the dashboard draws under the loss curve.
Each sequence starts from a token drawn from pi, so every position has the same distribution and a model
that has learnt the chain reaches exactly H per predicted token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MarkovChain:
    transition: np.ndarray  # (V, V), rows sum to 1
    stationary: np.ndarray  # (V,)

    @classmethod
    def make(cls, vocab_size: int, seed: int, concentration: float = 0.1) -> MarkovChain:
        rng = np.random.default_rng(seed)
        # A small Dirichlet concentration gives peaked rows: an entropy well below log(V), so learning shows.
        P = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
        P = np.maximum(P, 1e-12)  # no exact zeros: every transition has some probability, log is finite
        P /= P.sum(axis=1, keepdims=True)
        # Stationary distribution: the left eigenvector of P for eigenvalue 1 (power iteration converges, as
        # the chain with all-positive entries is irreducible and aperiodic).
        pi = np.full(vocab_size, 1.0 / vocab_size)
        for _ in range(10_000):
            new = pi @ P
            if np.abs(new - pi).max() < 1e-15:
                pi = new
                break
            pi = new
        return cls(P, pi / pi.sum())

    @property
    def entropy_rate(self) -> float:
        """Nats per token: the expected loss of the true model, the floor for any model."""
        row_h = -(self.transition * np.log(self.transition)).sum(axis=1)
        return float(self.stationary @ row_h)

    def sample(self, num_sequences: int, length: int, seed: int) -> np.ndarray:
        """(num_sequences, length) int64 tokens; sequences are independent chains started from pi.

        Vectorised across sequences: one Python step per position, not per token.
        """
        rng = np.random.default_rng(seed)
        V = len(self.stationary)
        cdf = np.cumsum(self.transition, axis=1)
        cdf[:, -1] = 1.0
        out = np.empty((num_sequences, length), dtype=np.int64)
        out[:, 0] = rng.choice(V, size=num_sequences, p=self.stationary)
        for t in range(1, length):
            u = rng.random(num_sequences)
            rows = cdf[out[:, t - 1]]
            out[:, t] = (rows < u[:, None]).sum(axis=1)
        return np.minimum(out, V - 1)

    def nll(self, tokens: np.ndarray) -> float:
        """Mean negative log-likelihood (nats) of the predicted tokens under the true chain."""
        prev, nxt = tokens[:, :-1].ravel(), tokens[:, 1:].ravel()
        return float(-np.log(self.transition[prev, nxt]).mean())


def empirical_entropy_rate(tokens: np.ndarray, vocab_size: int) -> float:
    """Plug-in estimate of the conditional entropy H(x_t | x_{t-1}) from bigram counts."""
    prev, nxt = tokens[:, :-1].ravel(), tokens[:, 1:].ravel()
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (prev, nxt), 1)
    total = counts.sum()
    row = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_cond = np.where(counts > 0, counts / np.maximum(row, 1), 1.0)
        return float(-(counts * np.log(p_cond)).sum() / total)
