"""Generating tokens from a built model, one at a time (so a server can stream them), with a KV cache.

    for token in stream_tokens(model, prompt_ids, Sampling(max_new_tokens=16, temperature=0)):
        ...

- the reference GPT: its own incremental decode (``GPT.decode``: the prompt once, then one position per step,
  keys and values cached), sampling drawn from a ``torch.Generator`` seeded per call;
- a Hugging Face model (HFModel, ``model.hf``): transformers' ``generate`` (its own cache and sampling, seeded
  through ``torch.manual_seed``), its tokens handed over by a streamer as they come;
- your own model: its full forward over the whole sequence at every step (no cache to use).

temperature 0 is greedy (the argmax); top_p < 1 samples from the smallest set of tokens whose probability reaches
top_p (nucleus sampling). Generation ends at ``eos_id`` (not yielded), after max_new_tokens, or when ``halt()``
returns True (the caller has seen a stop string). ``use_cache=False`` decodes the same tokens without the KV cache:
a full forward of the whole sequence for every new token (what the cache saves; transformers' ``use_cache``).

``timed_tokens(stream_tokens(...))`` consumes a stream and measures it: the time to first token (from the call to the
first token: the prefill of the prompt, then one pick) and the time per output token (each later token: one decode
step).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["DecodeTiming", "Sampling", "pick_token", "stream_tokens", "timed_tokens"]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens is {self.max_new_tokens}; it must be at least 1")
        if not self.temperature >= 0:
            out.append(f"temperature is {self.temperature}; it must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p is {self.top_p}; it must be in (0, 1]")
        return out


def pick_token(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> int:
    """The next token from one position's logits (vocab,): argmax at temperature 0, else a draw."""
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1:
        p, order = probs.sort(descending=True)
        keep = (p.cumsum(0) - p) < s.top_p  # the mass before a token is below top_p: it is in the nucleus
        probs = torch.zeros_like(probs).scatter(0, order, p * keep)
    return int(torch.multinomial(probs, 1, generator=gen))


def stream_tokens(
    model: nn.Module,
    prompt: list[int],
    s: Sampling,
    eos_id: int | None = None,
    halt: Callable[[], bool] = lambda: False,
    use_cache: bool = True,
) -> Iterator[int]:
    """The new tokens after prompt, one by one (see the module's docstring). The caller keeps prompt + new tokens
    within the model's context. use_cache=False: a full forward per token instead of the KV cache."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "hf"):
        yield from _hf_stream(inner.hf, prompt, s, eos_id, halt, use_cache)
        return
    gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
    cached = use_cache and hasattr(inner, "decode")
    step = _cached_steps(inner, prompt) if cached else _full_forward_steps(inner, prompt)
    logits = next(step)
    for _ in range(s.max_new_tokens):
        token = pick_token(logits, s, gen)
        if token == eos_id:
            return
        yield token
        if halt():
            return
        logits = step.send(token)


@dataclass(frozen=True)
class DecodeTiming:
    """A stream's tokens and its clock: ``first_token_s`` from the call to the first token (the prompt's prefill and
    one pick), ``gaps_s`` between each later token and the one before (one decode step each)."""

    tokens: list[int]
    first_token_s: float
    gaps_s: list[float]

    @property
    def per_token_s(self) -> float:
        """Time per output token after the first: the mean decode step (nan with fewer than two tokens)."""
        return sum(self.gaps_s) / len(self.gaps_s) if self.gaps_s else math.nan


def timed_tokens(tokens: Iterable[int], clock: Callable[[], float] = time.perf_counter) -> DecodeTiming:
    """Consume a token stream (``stream_tokens(...)``, made just before: it computes nothing until asked), timing
    each token's arrival."""
    t0 = clock()
    out, times = [], []
    for token in tokens:
        out.append(token)
        times.append(clock())
    first = times[0] - t0 if times else math.nan
    return DecodeTiming(out, first, [b - a for a, b in zip(times, times[1:], strict=False)])


def _cached_steps(model: Any, prompt: list[int]) -> Any:
    """A coroutine: the last position's logits of the prompt, then of each token sent in (the KV cache grows)."""
    cache = model.new_cache()
    x = torch.tensor([prompt], dtype=torch.int64)
    while True:
        with torch.inference_mode():
            logits = model.decode(x, cache)[0, -1]
        token = yield logits
        x = torch.tensor([[token]], dtype=torch.int64)


def _full_forward_steps(model: Any, prompt: list[int]) -> Any:
    seq = list(prompt)
    while True:
        with torch.inference_mode():
            out = model(torch.tensor([seq], dtype=torch.int64))
        if not isinstance(out, torch.Tensor):
            out = out.logits if hasattr(out, "logits") else out[0]
        seq.append((yield out[0, -1]))


def _hf_stream(
    hf: Any, prompt: list[int], s: Sampling, eos_id: int | None, halt: Callable[[], bool], use_cache: bool = True
) -> Iterator[int]:
    """transformers' generate in a thread, its new tokens passed over a queue as its streamer receives them."""
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    tokens: queue.Queue = queue.Queue()
    stopped = threading.Event()  # the consumer left (a stop string, or a closed connection)

    class Streamer(BaseStreamer):
        prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:  # generate hands the prompt over first
                self.prompt_seen = True
                return
            for t in value.reshape(-1).tolist():
                tokens.put(int(t))

        def end(self) -> None:
            tokens.put(None)

    class Halt(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), stopped.is_set(), dtype=torch.bool)

    greedy = s.temperature == 0
    config = GenerationConfig(max_new_tokens=s.max_new_tokens, do_sample=not greedy, num_beams=1,
                              temperature=None if greedy else s.temperature, top_p=None if greedy else s.top_p,
                              top_k=None, eos_token_id=eos_id, pad_token_id=eos_id if eos_id is not None else 0,
                              bos_token_id=None, use_cache=use_cache)  # fmt: skip
    x = torch.tensor([prompt], dtype=torch.int64)

    def work() -> None:
        # generate fills every field left None (eos_token_id among them) from the model's own generation_config:
        # ours stands in for it while this runs, so "no end-of-text token" stays none (one generation at a time)
        own = hf.generation_config
        hf.generation_config = config
        try:
            if s.seed is not None:
                torch.manual_seed(s.seed)
            with torch.inference_mode():
                hf.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config,
                            streamer=Streamer(), stopping_criteria=StoppingCriteriaList([Halt()]))  # fmt: skip
        except BaseException as e:  # the consumer hears it
            tokens.put(e)
            tokens.put(None)
        finally:
            hf.generation_config = own

    thread = threading.Thread(target=work, name="workbench-generate", daemon=True)
    thread.start()
    try:
        while (item := tokens.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if item == eos_id:
                return
            yield item
            if halt():
                return
    finally:
        stopped.set()
        thread.join()
