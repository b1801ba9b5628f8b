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


# ---------------------------------------------------------------------------------------------------------
# models/shapes.py: the torch-free description the plan, the model and tensor parallelism share


# Published parameter counts (reproduced by transformers on the meta device), from each model's config.
PUBLISHED = {
    "gpt2": (dict(n_layer=12, d_model=768, n_head=12, vocab_size=50257, seq_len=1024), 124_439_808),
    "llama-3-8b": (
        dict(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=14336, vocab_size=128256, seq_len=8192,
             ffn="swiglu", norm="rmsnorm", bias=False, tied_head=False, positional="rope"),
        8_030_261_248,
    ),
    "mistral-7b": (
        dict(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=14336, vocab_size=32000, seq_len=4096,
             ffn="swiglu", norm="rmsnorm", bias=False, tied_head=False, positional="rope"),
        7_241_732_096,
    ),
    "qwen2-1.5b": (
        dict(n_layer=28, d_model=1536, n_head=12, n_kv_head=2, d_ff=8960, vocab_size=151936, seq_len=4096,
             ffn="swiglu", norm="rmsnorm", bias=False, qkv_bias=True, tied_head=True, positional="rope"),
        1_543_714_304,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_shapes_count_published_models(name):
    """The fields describe GQA, SwiGLU, RMSNorm, untied heads and partial biases well enough to count real
    decoders exactly (the seam the Hugging Face configs will feed)."""
    from workbench.models.shapes import TransformerShape

    fields, published = PUBLISHED[name]
    assert TransformerShape(**fields).num_params == published


@pytest.mark.parametrize("bias", [True, False])
def test_shape_is_the_reference_gpts_own(bias):
    from workbench.models.shapes import TransformerShape

    c = GPTConfig(vocab_size=300, seq_len=48, n_layer=3, n_head=6, d_model=96, bias=bias)
    with torch.device("meta"):
        m = GPT(c)
    s = TransformerShape(c.n_layer, c.d_model, c.n_head, c.vocab_size, c.seq_len, bias=bias)
    named = [(n, tuple(p.shape)) for n, p in m.named_parameters()]
    assert named[:2] == s.outer_tensors()[:2]  # token and position tables first
    assert [(n.split(".", 2)[2], sh) for n, sh in named if n.startswith("blocks.0.")] == s.block_tensors()
    assert s.num_params == m.num_params() and s.flops_per_token() == m.flops_per_token()
    # what tensor parallelism shards: exactly the Linears parallel/tensor.py parallelizes (the GPT family's plan),
    # along the plan's dims
    from workbench.parallel.tensor import plan_names_of

    TP_PLAN_NAMES = plan_names_of(m)

    split = {n: s.tp_split_dim(n) for n, _ in s.block_tensors()}
    assert {n.rsplit(".", 1)[0] for n, d in split.items() if d is not None} == set(TP_PLAN_NAMES)
    assert split["attn.q.weight"] == 0 and split["mlp.fc2.weight"] == 1 and split["ln1.weight"] is None
    if bias:
        assert split["attn.q.bias"] == 0 and split["attn.o.bias"] is None  # a Rowwise bias stays replicated


def test_shapes_and_vocabulary_without_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from workbench.models.shapes import TEXT_VOCAB, TransformerShape, vocab_size_for\n"
        "assert TEXT_VOCAB == 256 and vocab_size_for('text', 64) == 256 and vocab_size_for('synthetic', 64) == 64\n"
        "TransformerShape(2, 64, 4, 64, 32).flops_per_token()\n"
        "assert 'torch' not in sys.modules, 'models.shapes imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    from workbench.data import TEXT_VOCAB
    from workbench.models import shapes

    assert TEXT_VOCAB is shapes.TEXT_VOCAB  # one home
