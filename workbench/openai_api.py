"""The OpenAI completions protocol over a run's TextGenerator: what ``workbench serve`` answers on /v1/models and
/v1/completions, so the official ``openai`` client (or any client of that protocol) talks to a workbench run.

    client = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none")
    client.completions.create(model="quickstart", prompt="import json", max_tokens=16, temperature=0)

POST /v1/completions takes ``model`` (the run's name, as GET /v1/models lists it), ``prompt`` (text, a list of texts,
token ids, or a list of token-id lists), ``max_tokens`` (default 16), ``temperature`` (default 1; 0 is greedy),
``top_p``, ``stop`` (a string or up to 4), ``n``, ``seed``, ``stream`` (server-sent events, ended by
``data: [DONE]``; ``stream_options: {"include_usage": true}`` adds a last chunk with usage) and answers with the
choices and ``usage`` (prompt, completion and total tokens). Choice i of a request with a seed samples with
seed + i. A prompt and its completion fit the model's context (model.seq_len): a longer prompt is refused
(``context_length_exceeded``), a completion that fills the context ends with finish_reason "length".

A request the server cannot honour gets a 4xx and OpenAI's error body, ``{"error": {"message", "type", "param",
"code"}}``: JSON that does not parse, a missing or unknown model (404, ``model_not_found``), a value of the wrong
type or out of range, a parameter the server does not implement (logprobs, echo, best_of > 1, suffix, penalties).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from workbench.models.generation import Sampling
from workbench.textgen import TextGenerator

__all__ = ["APIError", "CompletionRequest", "completion", "completion_events", "models_doc", "parse_completion"]

MAX_N = 16
MAX_STOP = 4
UNSUPPORTED = {
    "logprobs": None,
    "echo": False,
    "suffix": None,
    "best_of": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logit_bias": None,
}  # fmt: skip  (accepted only at these values)


class APIError(Exception):
    """A refused request: its status and OpenAI's error body."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.param, self.code, self.kind = int(status), param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[list[int]]  # token ids, checked against the vocabulary and the context
    sampling: Sampling
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool


def models_doc(model_id: str, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "workbench"}],
    }


def _typed(doc: dict, key: str, types: tuple, default: Any, what: str) -> Any:
    v = doc.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in types or not isinstance(v, types):
        raise APIError(f"{key!r} must be {what}; got {json.dumps(v)[:80]}", param=key, code="invalid_type")
    return v


def _prompts(doc: dict, gen: TextGenerator) -> list[list[int]]:
    p = doc.get("prompt", "")
    ints = lambda xs: isinstance(xs, list) and all(type(i) is int for i in xs)
    if isinstance(p, str) or ints(p):
        raw = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or ints(x) for x in p):
        raw = p
    else:
        raise APIError("'prompt' must be a string, a list of strings, token ids, or a list of token-id lists",
                       param="prompt", code="invalid_type")  # fmt: skip
    out = []
    for one in raw:
        try:
            out.append(gen.prompt_ids(one))
        except ValueError as e:
            code = "context_length_exceeded" if "context" in str(e) else "invalid_value"
            raise APIError(str(e), param="prompt", code=code) from None
    return out


def parse_completion(body: bytes, model_id: str, gen: TextGenerator) -> CompletionRequest:
    """The request body of POST /v1/completions, checked; APIError says what is wrong."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(f"the body is not JSON ({e})", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise APIError("the body must be a JSON object")
    if "model" not in doc:
        raise APIError("you must provide a model parameter", param="model", code="missing_required_parameter")
    if doc["model"] != model_id:
        raise APIError(f"the model {doc['model']!r} does not exist; this server serves {model_id!r} (GET /v1/models)",
                       HTTPStatus.NOT_FOUND, param="model", code="model_not_found")  # fmt: skip
    for key, neutral in UNSUPPORTED.items():
        if doc.get(key) is not None and doc[key] != neutral:
            raise APIError(f"{key!r} is not supported by this server", param=key, code="unsupported_parameter")
    max_tokens = _typed(doc, "max_tokens", (int,), 16, "an integer")
    temperature = float(_typed(doc, "temperature", (int, float), 1.0, "a number"))
    top_p = float(_typed(doc, "top_p", (int, float), 1.0, "a number"))
    seed = _typed(doc, "seed", (int,), None, "an integer")
    n = _typed(doc, "n", (int,), 1, "an integer")
    stream = _typed(doc, "stream", (bool,), False, "true or false")
    options = _typed(doc, "stream_options", (dict,), {}, "an object")
    stop = _typed(doc, "stop", (str, list), [], "a string or a list of strings")
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise APIError(f"'stop' must be a string or up to {MAX_STOP} strings", param="stop", code="invalid_value")
    sampling = Sampling(max_tokens, temperature, top_p, seed)
    for problem in sampling.problems():
        key = problem.split()[0].replace("max_new_tokens", "max_tokens")
        raise APIError(problem.replace("max_new_tokens", "max_tokens"), param=key, code="invalid_value")
    if temperature > 2:
        raise APIError(f"temperature is {temperature}; it must be at most 2", param="temperature", code="invalid_value")
    if not 1 <= n <= MAX_N:
        raise APIError(f"n is {n}; it must be 1 to {MAX_N}", param="n", code="invalid_value")
    return CompletionRequest(_prompts(doc, gen), sampling, tuple(stop), n, stream, bool(options.get("include_usage")))


def _choices(req: CompletionRequest) -> Iterator[tuple[int, list[int], Sampling]]:
    """(choice index, prompt, sampling) for each choice: n per prompt, choice i seeded seed + i."""
    for p, prompt in enumerate(req.prompts):
        for j in range(req.n):
            i = p * req.n + j
            seed = None if req.sampling.seed is None else req.sampling.seed + i
            yield i, prompt, Sampling(req.sampling.max_new_tokens, req.sampling.temperature, req.sampling.top_p, seed)


def _head(model_id: str) -> dict[str, Any]:
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model_id}  # fmt: skip


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(gen: TextGenerator, req: CompletionRequest, model_id: str) -> dict[str, Any]:
    """The whole answer of a non-streamed request."""
    choices, used = [], 0
    for i, prompt, sampling in _choices(req):
        c = gen.complete(prompt, sampling, req.stop)
        used += c.completion_tokens
        choices.append({"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason})
    prompt_tokens = sum(len(p) for p in req.prompts)
    return _head(model_id) | {"choices": choices, "usage": _usage(prompt_tokens, used)}


def completion_events(gen: TextGenerator, req: CompletionRequest, model_id: str) -> Iterator[bytes]:
    """The server-sent events of a streamed request: a chunk per piece of text, a last chunk per choice with its
    finish_reason, the usage chunk when asked for, then ``data: [DONE]``."""
    head, used = _head(model_id), 0

    def event(choices: list[dict], **extra: Any) -> bytes:
        return b"data: " + json.dumps(head | {"choices": choices} | extra).encode() + b"\n\n"

    for i, prompt, sampling in _choices(req):
        s = gen.stream(prompt, sampling, req.stop)
        for piece in s:
            yield event([{"index": i, "text": piece, "logprobs": None, "finish_reason": None}])
        used += s.completion.completion_tokens
        yield event([{"index": i, "text": "", "logprobs": None, "finish_reason": s.completion.finish_reason}])
    if req.include_usage:
        yield event([], usage=_usage(sum(len(p) for p in req.prompts), used))
    yield b"data: [DONE]\n\n"
