"""Generation: the GPT's KV-cache decode equals its full forward, greedy decoding is the argmax continuation of
full forwards, sampling is reproducible by its seed, stop strings and the context end a completion."""

from __future__ import annotations

import pytest
import torch

from workbench.data.codec import Codec
from workbench.models.generation import Sampling, pick_token, stream_tokens, timed_tokens
from workbench.textgen import TextGenerator


@pytest.fixture(scope="module")
def gpt():
    from workbench.models import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, seq_len=32, n_layer=2, n_head=4, d_model=32)).eval()


def test_decode_with_the_cache_equals_the_full_forward(gpt):
    x = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = gpt(x)[0]
    cache = gpt.new_cache()
    parts = [gpt.decode(x[:, :7], cache), gpt.decode(x[:, 7:8], cache), gpt.decode(x[:, 8:20], cache)]
    assert float((torch.cat(parts, dim=1) - full).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="context"):
        gpt.decode(torch.zeros(2, 13, dtype=torch.int64), cache)  # 20 + 13 > seq_len 32


def test_greedy_with_the_cache_is_the_argmax_continuation_of_full_forwards(gpt):
    prompt = [5, 9, 2, 33]
    got = list(stream_tokens(gpt, prompt, Sampling(max_new_tokens=20, temperature=0)))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            seq.append(int(gpt(torch.tensor([seq]))[0][0, -1].argmax()))
    assert got == seq[len(prompt) :]
    assert list(stream_tokens(gpt, prompt, Sampling(max_new_tokens=20, temperature=0), use_cache=False)) == got


def test_timed_tokens_measures_the_first_token_and_the_gaps():
    ticks = iter([10.0, 10.5, 10.6, 10.8])  # the call, then three tokens
    t = timed_tokens(iter([7, 8, 9]), clock=lambda: next(ticks))
    assert t.tokens == [7, 8, 9] and t.first_token_s == 0.5
    assert t.gaps_s == pytest.approx([0.1, 0.2]) and t.per_token_s == pytest.approx(0.15)
    empty = timed_tokens(iter([]))
    assert empty.tokens == [] and empty.first_token_s != empty.first_token_s  # nan
    assert empty.per_token_s != empty.per_token_s


def test_sampling_is_reproducible_by_its_seed_and_top_p_keeps_the_nucleus(gpt):
    s = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    a, b = list(stream_tokens(gpt, [1, 2], s)), list(stream_tokens(gpt, [1, 2], s))
    assert a == b and len(a) == 12
    logits = torch.tensor([4.0, 3.0, -10.0, -10.0])  # p ~ 0.73, 0.27, ~0, ~0: top_p 0.5 keeps the first alone
    g = torch.Generator().manual_seed(0)
    assert {pick_token(logits, Sampling(temperature=1, top_p=0.5), g) for _ in range(50)} == {0}
    assert (
        Sampling(max_new_tokens=0).problems() and Sampling(top_p=0).problems() and Sampling(temperature=-1).problems()
    )


def test_text_in_and_out_stops_and_the_context(gpt):
    gen = TextGenerator(gpt, Codec("ids", 64), max_length=32)
    c = gen.complete("5 9 2", Sampling(max_new_tokens=100, temperature=0))
    assert c.finish_reason == "length" and c.completion_tokens == 29 and c.prompt_tokens == 3  # the context is full
    stop = " " + c.text.split()[2]  # the third token's text: the stream ends where it first appears
    s = gen.stream("5 9 2", Sampling(max_new_tokens=10, temperature=0), stop=(stop,))
    assert "".join(s) == c.text[: c.text.index(stop)] and s.completion.finish_reason == "stop"
    with pytest.raises(ValueError, match="context"):
        gen.prompt_ids([1] * 33)
    with pytest.raises(ValueError, match="vocabulary"):
        gen.prompt_ids("64")
    with pytest.raises(ValueError, match="token ids"):
        gen.prompt_ids("hello")


def test_bytes_stream_never_splits_a_character():
    from workbench.textgen import CompletionStream

    class Fixed(TextGenerator):  # a generator whose "model" emits the UTF-8 bytes of a fixed text
        pass

    text = "é€ ok"
    codec = Codec("bytes", 256)

    def fake(model, prompt, s, eos_id=None):
        yield from list(text.encode())[: s.max_new_tokens]

    import workbench.textgen as tg

    orig, tg.stream_tokens = tg.stream_tokens, fake
    try:
        s = CompletionStream(Fixed(None, codec, 64), [104], Sampling(max_new_tokens=64), ())
        pieces = list(s)
    finally:
        tg.stream_tokens = orig
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_hf_generate_greedy_is_the_argmax_continuation_and_only_our_eos_ends_it():
    """transformers' generate behind the same loop: greedy = argmax of full forwards; the model's own config
    eos (Llama's 2) does not end a run whose tokens have no end-of-text, the codec's eos does."""
    import transformers

    from workbench.data.files import offline

    offline()
    cfg = transformers.AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, vocab_size=50,
                                            max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()

    class Wrapped(torch.nn.Module):  # HFModel's shape: the transformers model as .hf
        def __init__(self):
            super().__init__()
            self.hf = hf

    got = list(stream_tokens(Wrapped(), [5, 6, 7], Sampling(max_new_tokens=12, temperature=0)))
    seq = [5, 6, 7]
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    assert got == seq[3:]
    no_cache = stream_tokens(Wrapped(), [5, 6, 7], Sampling(max_new_tokens=12, temperature=0), use_cache=False)
    assert list(no_cache) == got
    hf.generation_config.eos_token_id = got[1]  # the model's own eos: ignored, ours is None
    assert list(stream_tokens(Wrapped(), [5, 6, 7], Sampling(max_new_tokens=12, temperature=0))) == got
    eos = got[1]
    ended = list(stream_tokens(Wrapped(), [5, 6, 7], Sampling(max_new_tokens=12, temperature=0), eos_id=eos))
    assert ended == got[: got.index(eos)]
    s = Sampling(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=5)
    assert list(stream_tokens(Wrapped(), [1, 2], s)) == list(stream_tokens(Wrapped(), [1, 2], s))
