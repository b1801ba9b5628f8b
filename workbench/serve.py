"""Serving a finished run: an HTTP model server on 127.0.0.1 (the standard library's ThreadingHTTPServer).

    workbench serve runs/quickstart --port 8080
    curl -s 127.0.0.1:8080/healthz
    curl -s 127.0.0.1:8080/v1/logits -d '{"tokens": [[1, 2, 3]]}'

Endpoints:
    GET  /healthz       {"status": "ok", "run", "task", "vocab_size", "max_length", "max_batch", "num_labels"}
    POST /v1/logits     {"tokens": [[int, ...], ...]} -> {"logits": [...]}: exactly what model(x) returns
                        (README "What an export serves"): (batch, length, vocab) for a language model,
                        (batch, num_labels) for a classifier
    POST /v1/classify   classify runs only: {"tokens": ...} -> {"labels": [int], "probabilities": [[float]]}
    GET  /v1/models     the OpenAI protocol (workbench/openai_api.py): the run, by its name, as the one model
    POST /v1/completions  language models: OpenAI's completions (prompt, max_tokens, temperature, top_p, stop, n,
                        seed, stream as server-sent events) with usage; the official ``openai`` client talks to it.
                        Errors there carry OpenAI's body {"error": {"message", "type", "param", "code"}}

The model is the run's latest checkpoint through ``workbench.finetune.load_model`` (LoRA merged), its output
read by ``logits_of``: the same model that export and quantize see. Every request is checked before the model
runs: a body above ``max_body_bytes``, JSON that does not parse, tokens that are not a non-empty rectangle of
integers in [0, vocab), a length above ``model.seq_len`` or a batch above ``max_batch`` get a 4xx with a
message naming what was wrong; the server never dies of a request.

Batching: with ``batch_wait_ms > 0`` a single model thread collects the requests that arrive within that window
(up to ``max_batch`` rows; it waits only while other requests are in flight — received, not yet answered — so a
lone client pays nothing),
runs the sequences of equal length as one forward pass and hands each request its rows back. Without it each request runs its own forward pass, one at a time (a lock: concurrent forwards on
the same CPU cores only fight over them). ``benchmarks/serve.py`` measures both.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
import torch.nn as nn

from workbench.data.codec import Codec
from workbench.finetune.load import load_model, logits_of, run_config, run_path
from workbench.openai_api import APIError, completion, completion_events, models_doc, parse_completion
from workbench.textgen import TextGenerator, model_vocab

HOST = "127.0.0.1"  # servers listen on the loopback address only
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BATCH = 64
POLL_S = 0.005  # how often a batching window re-reads the number of requests in flight
UNREAD_BODY = (HTTPStatus.LENGTH_REQUIRED, HTTPStatus.REQUEST_ENTITY_TOO_LARGE)


class RequestError(ValueError):
    """A request the server refuses: its HTTP status and a message for the client."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


@dataclass(frozen=True)
class ServedModel:
    """A model ready to serve, and the limits its inputs must respect."""

    model: nn.Module
    task: str  # "lm" or "classify"
    vocab_size: int
    max_length: int
    num_labels: int | None = None
    name: str = "model"
    generator: TextGenerator | None = None  # a language model's text generation (POST /v1/completions)

    @property
    def model_id(self) -> str:
        """The name the OpenAI protocol knows the model by: the run folder's name."""
        return os.path.basename(self.name.rstrip("/")) or self.name

    @classmethod
    def from_run(cls, run: Any) -> ServedModel:
        """A finished run's model (latest checkpoint, LoRA merged), in eval mode on the CPU."""
        cfg, path = run_config(run), run_path(run)
        kind, model = cfg.task.kind, load_model(run).eval()
        vocab = model_vocab(model, cfg.data.vocab_size)  # the tokenizer's or the bytes', not data.vocab_size's
        generator = None
        if kind == "lm":
            generator = TextGenerator(model, Codec.for_run(cfg, path, vocab), cfg.model.seq_len, name=path)
        return cls(model=model, task=kind, vocab_size=vocab, max_length=cfg.model.seq_len,
                   num_labels=cfg.task.num_labels if kind == "classify" else None, name=path, generator=generator)  # fmt: skip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """model(x)'s logits, fp32, without autograd."""
        with torch.inference_mode():
            return logits_of(self.model(tokens)).float()


def parse_tokens(body: bytes, served: ServedModel, max_batch: int = MAX_BATCH) -> torch.Tensor:
    """The request body's ``tokens`` as an int64 (batch, length) tensor, or a RequestError saying what is wrong."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f'the body is not JSON ({e}); send {{"tokens": [[1, 2, 3]]}}') from None
    if not isinstance(doc, dict) or "tokens" not in doc:
        raise RequestError('the body must be a JSON object with a "tokens" key: {"tokens": [[1, 2, 3]]}')
    rows = doc["tokens"]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
        raise RequestError('"tokens" must be a non-empty list of token lists, one per sequence: [[1, 2, 3]]')
    if len(rows) > max_batch:
        raise RequestError(f"{len(rows)} sequences in one request; at most {max_batch} (split the batch)")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise RequestError(f"the sequences have different lengths {sorted(lengths)}; send equal lengths")
    length = lengths.pop()
    if not 1 <= length <= served.max_length:
        raise RequestError(f"sequence length {length}; it must be 1 to {served.max_length} (the model's seq_len)")
    if not all(type(t) is int for r in rows for t in r):  # bool is an int subclass: refused too
        raise RequestError('"tokens" must hold integers (token ids)')
    v = served.vocab_size
    if not all(0 <= t < v for r in rows for t in r):
        raise RequestError(f"token ids must be in [0, {v}) (the vocabulary)")
    return torch.tensor(rows, dtype=torch.int64)


def classify_answer(logits: torch.Tensor) -> dict[str, list]:
    """Labels (argmax) and the softmax probabilities of a classifier's (batch, num_labels) logits."""
    probs = torch.softmax(logits, dim=-1)
    return {"labels": probs.argmax(dim=-1).tolist(), "probabilities": probs.tolist()}


class Runner:
    """Runs the model for the handler threads: one forward at a time, or dynamically batched."""

    def __init__(self, served: ServedModel, batch_wait_ms: float = 0.0, max_batch: int = MAX_BATCH):
        self.served = served
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_batch = max_batch
        self.lock = threading.Lock()
        self.generating = threading.Lock()  # text generations, one at a time (POST /v1/completions)
        self.queue: queue.Queue[tuple[torch.Tensor, Future]] = queue.Queue()
        self.batches = 0  # forward passes run (the batching's effect: fewer than requests)
        self.inflight = 0  # requests received and not answered yet (Runner.request)
        if self.batch_wait_s > 0:
            threading.Thread(target=self.batch_loop, name="workbench-serve-batcher", daemon=True).start()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_wait_s <= 0:
            with self.lock:
                self.batches += 1
                return self.served.forward(x)
        fut: Future = Future()
        self.queue.put((x, fut))
        return fut.result()

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request in flight, from its arrival (before its body is read and checked) until it is answered or
        refused: the batching window waits for requests the server already holds, not for ones that may never come."""
        with self.lock:
            self.inflight += 1
        try:
            yield
        finally:
            with self.lock:
                self.inflight -= 1

    def collect(self) -> list[tuple[torch.Tensor, Future]]:
        """The first waiting request, then whatever arrives within the window, up to max_batch rows. The window is
        waited out only while other requests are in flight: a lone client is not kept waiting for company."""
        items = [self.queue.get()]
        rows = items[0][0].shape[0]
        deadline = time.monotonic() + self.batch_wait_s
        while rows < self.max_batch and len(items) < self.inflight and (left := deadline - time.monotonic()) > 0:
            try:  # a short timeout re-reads inflight, which falls as answered clients leave
                item = self.queue.get(timeout=min(left, POLL_S))
            except queue.Empty:
                continue
            items.append(item)
            rows += item[0].shape[0]
        return items

    def batch_loop(self) -> None:
        while True:
            items = self.collect()
            by_length: dict[int, list[tuple[torch.Tensor, Future]]] = {}
            for item in items:
                by_length.setdefault(item[0].shape[1], []).append(item)
            for group in by_length.values():
                self.run_group(group)

    def run_group(self, group: list[tuple[torch.Tensor, Future]]) -> None:
        """One forward pass over the requests of one length; each request gets its own rows back."""
        try:
            self.batches += 1
            out = self.served.forward(torch.cat([x for x, _ in group]))
        except Exception as e:  # the model failed: every waiting request hears why, the loop goes on
            for _, fut in group:
                fut.set_exception(e)
            return
        start = 0
        for x, fut in group:
            fut.set_result(out[start : start + x.shape[0]])
            start += x.shape[0]


class Handler(BaseHTTPRequestHandler):
    """GET /healthz and /v1/models, POST /v1/logits, /v1/classify and /v1/completions; JSON in and out."""

    server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive: a client's requests reuse one connection
    timeout = 60  # seconds a connection may sit silent (or send slowly) before it is closed
    disable_nagle_algorithm = True  # headers and body go out as two writes: without it, delayed ACKs add ~40 ms

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def reply(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        served = self.server.runner.served
        if self.path == "/healthz":
            self.reply(HTTPStatus.OK, self.server.health())
        elif self.path == "/v1/models":
            self.reply(HTTPStatus.OK, models_doc(served.model_id, self.server.started))
        elif self.path == f"/v1/models/{served.model_id}":
            self.reply(HTTPStatus.OK, models_doc(served.model_id, self.server.started)["data"][0])
        elif self.path.startswith("/v1/models/"):
            e = APIError(
                f"the model {self.path[11:]!r} does not exist", HTTPStatus.NOT_FOUND, "model", "model_not_found"
            )
            self.reply(e.status, e.body())
        else:
            self.reply(HTTPStatus.NOT_FOUND, {"error": f"no GET {self.path}; try /healthz or /v1/models"})

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/v1/completions":
            self.openai_completion()
            return
        try:
            with self.server.runner.request():
                doc = self.answer(self.read_body())
        except RequestError as e:
            self.close_connection = e.status in UNREAD_BODY  # the rest of the body would be read as a request
            self.reply(e.status, {"error": str(e)})
            return
        except Exception as e:  # the model itself failed: the client hears why, the server goes on
            self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})
            return
        self.reply(HTTPStatus.OK, doc)

    def openai_completion(self) -> None:
        """POST /v1/completions (workbench/openai_api.py): refusals before any event is sent, OpenAI's error body."""
        served, runner = self.server.runner.served, self.server.runner
        try:
            with runner.request():
                try:
                    body = self.read_body()
                except RequestError as e:
                    self.close_connection = e.status in UNREAD_BODY
                    raise APIError(str(e), e.status) from None
                if served.generator is None:
                    raise APIError(f"this run's task.kind is {served.task!r}: only a language model completes text; "
                                   "use /v1/logits", HTTPStatus.NOT_FOUND, code="unsupported_model")  # fmt: skip
                req = parse_completion(body, served.model_id, served.generator)
                with runner.generating:  # one generation at a time (transformers' sampling seeds torch's global RNG)
                    if req.stream:
                        self.send_events(completion_events(served.generator, req, served.model_id))
                        return
                    doc = completion(served.generator, req, served.model_id)
        except APIError as e:
            self.reply(e.status, e.body())
            return
        except Exception as e:  # the model itself failed: the client hears why, the server goes on
            err = APIError(f"{type(e).__name__}: {e}", HTTPStatus.INTERNAL_SERVER_ERROR, kind="server_error")
            self.reply(err.status, err.body())
            return
        self.reply(HTTPStatus.OK, doc)

    def send_events(self, events: Iterator[bytes]) -> None:
        """Server-sent events, each flushed as it comes; the connection closes after the last one (no length)."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for ev in events:
                self.wfile.write(ev)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client left: generation stops with the iterator
            pass
        except Exception as e:  # the model failed mid-stream: an error event, then the end
            err = APIError(f"{type(e).__name__}: {e}", HTTPStatus.INTERNAL_SERVER_ERROR, kind="server_error")
            self.wfile.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")

    def read_body(self) -> bytes:
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError("a POST needs a Content-Length header", HTTPStatus.LENGTH_REQUIRED) from None
        if n < 0 or n > self.server.max_body_bytes:
            raise RequestError(
                f"the body is {n} bytes; at most {self.server.max_body_bytes}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
        return self.rfile.read(n)

    def answer(self, body: bytes) -> dict:
        served = self.server.runner.served
        if self.path not in ("/v1/logits", "/v1/classify"):
            raise RequestError(f"no POST {self.path}; try /v1/logits or /v1/classify", HTTPStatus.NOT_FOUND)
        if self.path == "/v1/classify" and served.task != "classify":
            raise RequestError(
                f"/v1/classify serves classifiers; this run's task.kind is {served.task!r}: use /v1/logits",
                HTTPStatus.NOT_FOUND,
            )
        logits = self.server.runner(parse_tokens(body, served, self.server.runner.max_batch))
        return classify_answer(logits) if self.path == "/v1/classify" else {"logits": logits.tolist()}


class ModelServer(ThreadingHTTPServer):
    """The HTTP server: a thread per connection, the model behind a Runner."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog (socketserver's default 5 resets bursts of new connections)

    def __init__(self, runner: Runner, port: int = 8080, max_body_bytes: int = MAX_BODY_BYTES, verbose: bool = False):
        self.runner = runner
        self.max_body_bytes = max_body_bytes
        self.verbose = verbose
        self.started = int(time.time())  # the model's "created" in /v1/models
        super().__init__((HOST, port), Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def health(self) -> dict:
        s = self.runner.served
        return {
            "status": "ok",
            "run": s.name,
            "task": s.task,
            "vocab_size": s.vocab_size,
            "max_length": s.max_length,
            "max_batch": self.runner.max_batch,
            "num_labels": s.num_labels,
        }


def make_server(
    run: Any,
    port: int = 8080,
    batch_wait_ms: float = 0.0,
    max_batch: int = MAX_BATCH,
    max_body_bytes: int = MAX_BODY_BYTES,
    verbose: bool = False,
) -> ModelServer:
    """A server for a finished run (a Run, a run folder or a ServedModel), bound to 127.0.0.1:port (0 = any free
    port, read it back from ``server.url``). Call ``serve_forever()``, or ``start()`` for a background thread."""
    served = run if isinstance(run, ServedModel) else ServedModel.from_run(run)
    return ModelServer(Runner(served, batch_wait_ms, max_batch), port, max_body_bytes, verbose)


def start(run: Any, port: int = 0, **kwargs: Any) -> ModelServer:
    """make_server, serving from a daemon thread: for a notebook or a test. ``server.shutdown()`` stops it."""
    server = make_server(run, port, **kwargs)
    threading.Thread(target=server.serve_forever, name="workbench-serve", daemon=True).start()
    return server
