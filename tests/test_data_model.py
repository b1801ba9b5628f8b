"""The synthetic corpus's entropy floor and the reference model's parameter and FLOPs counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from workbench.data import MarkovChain, build_dataset, empirical_entropy_rate, entropy_floor
from workbench.models import GPT, GPTConfig, gpt_num_params


@pytest.mark.parametrize("vocab,seed", [(64, 0), (32, 7)])
def test_entropy_floor_matches_a_long_sample(vocab, seed):
    chain = MarkovChain.make(vocab, seed)
    H = chain.entropy_rate
    assert 0.1 < H < math.log(vocab)  # peaked rows: learnable, well below uniform
    toks = chain.sample(4000, 257, seed=123)  # ~1M predicted tokens
    # the true model's mean NLL on the sample, and a plug-in estimate from bigram counts
    assert abs(chain.nll(toks) - H) / H < 0.01
    assert abs(empirical_entropy_rate(toks, vocab) - H) / H < 0.01


def test_sequences_start_stationary():
    chain = MarkovChain.make(16, 1)
    toks = chain.sample(200_000, 2, seed=5)
    first = np.bincount(toks[:, 0], minlength=16) / len(toks)
    assert np.abs(first - chain.stationary).max() < 0.01


def test_dataset_is_deterministic_and_shifted(quickstart):
    a, b = build_dataset(quickstart, "train"), build_dataset(quickstart, "train")
    x, y = a[5]
    assert torch.equal(x, b[5][0]) and torch.equal(x[1:], y[:-1])
    assert x.shape == (quickstart.model.seq_len,)
    ev = build_dataset(quickstart, "eval")
    assert not torch.equal(ev[0][0], x)
    assert entropy_floor(quickstart) == pytest.approx(MarkovChain.make(64, 0).entropy_rate)


def test_text_dataset(tmp_path, quickstart):
    p = tmp_path / "t.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 100)
    cfg = quickstart.override({"data.source": "text", "data.path": str(p)})
    ds = build_dataset(cfg, "train")
    x, y = ds[0]
    assert int(x.max()) < 256 and torch.equal(x[1:], y[:-1])
    assert entropy_floor(cfg) is None


@pytest.mark.parametrize("n_layer,n_head,d_model,seq_len,vocab", [(2, 4, 64, 64, 64), (3, 2, 32, 16, 256)])
def test_param_count_and_flops(n_layer, n_head, d_model, seq_len, vocab):
    cfg = GPTConfig(vocab_size=vocab, seq_len=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model)
    m = GPT(cfg)
    direct = len({p.data_ptr(): p.numel() for p in m.parameters()})  # distinct tensors
    assert direct == len(list(m.parameters()))
    assert m.num_params() == sum(p.numel() for p in m.parameters()) == gpt_num_params(vocab, seq_len, n_layer, d_model)
    # The FLOPs formula against a count of the matmuls torch actually runs (forward + backward).
    B = 2
    x = torch.randint(0, vocab, (B, seq_len))
    # The math SDPA backend runs attention as plain matmuls, which FlopCounterMode counts (the fused CPU
    # kernel is not counted at all).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        _, loss = m(x, x)
        loss.backward()
    counted = fc.get_total_flops() / (B * seq_len)
    # 6N also counts biases and LayerNorm gains as if they were matmul weights (~1.5% here); both count
    # attention's two matmuls over the full T x T square, as nanoGPT/PaLM do.
    assert abs(m.flops_per_token() - counted) / counted < 0.05, (m.flops_per_token(), counted)
