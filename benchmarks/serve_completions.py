"""OpenAI completions from `workbench serve`, streamed: time to first token and time per output token, one and several
concurrent clients; and the GPT's KV-cache decode against recomputing full forwards, in this process.

    python benchmarks/serve_completions.py [RUN] [--clients 1 4] [--requests 8] [--max-tokens 32] [--out DIR]

Without RUN it first trains a byte-level GPT (the quickstart's shape, data.source text over the standard library's
json and email sources, 1 process, 50 steps). Each setting starts ``workbench serve RUN`` in its own process and
drives it with a closed loop: C client threads, each sending ``--requests`` streamed ``POST /v1/completions``
(a 16-byte prompt, ``--max-tokens`` new tokens, temperature 0, so every request decodes the same number of tokens)
one after the other, over raw HTTP, reading the server-sent events as they arrive. Time to first token: from the
request's send to the first event holding text. Time per output token: (last text event - first) / (tokens - 1).
The server generates one request at a time, so with C clients a request also waits for the ones ahead of it:
time to first token grows with C while the time per token stays the model's. The server runs with
OMP_NUM_THREADS=1 unless it is set (on 2 shared cores more threads only spin). Then, in this process on one thread,
ms per generated token of the GPT's KV-cache decode and of a full forward per token, for the served model and for
a wider GPT with a 512-token context. Prints a markdown table and writes
it, with the raw numbers, to OUT/serve_completions.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import workbench as wb  # noqa: E402
from benchmarks.serve import start_server  # noqa: E402

PROMPT = "import json\nclass "  # 18 bytes


def stream_once(port: int, body: bytes) -> dict:
    """One streamed completion: its time to first token, its time per later token, and how many tokens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    times, tokens = [], None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        doc = json.loads(line[6:])
        if doc.get("usage"):
            tokens = doc["usage"]["completion_tokens"]
        if doc["choices"] and doc["choices"][0]["text"]:
            times.append(time.perf_counter())
    conn.close()
    n = tokens or len(times)
    per = (times[-1] - times[0]) / max(1, n - 1) if len(times) > 1 else float("nan")
    return {"ttft_s": times[0] - t0 if times else float("nan"), "per_token_s": per, "tokens": n}


def drive(port: int, body: bytes, clients: int, requests: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client() -> None:
        mine = [stream_once(port, body) for _ in range(requests)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft_s"] * 1000 for r in results)
    per = sorted(r["per_token_s"] * 1000 for r in results)
    return {"clients": clients, "requests": len(results), "ttft_p50_ms": statistics.median(ttft),
            "ttft_p99_ms": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], "per_token_p50_ms": statistics.median(per),
            "output_tokens_per_s": sum(r["tokens"] for r in results) / wall}  # fmt: skip


def cache_vs_full(model, prompt_len: int, new: int) -> dict:
    """ms per generated token in this process (best of 3): the GPT's KV-cache decode against a full forward of the
    whole sequence per token."""
    import torch

    from workbench.models import generation as g

    prompt = [int(t) for t in torch.randint(0, model.cfg.vocab_size, (prompt_len,))]
    s = g.Sampling(max_new_tokens=new, temperature=0)
    out = {}
    for name, steps in (("kv_cache", g._cached_steps), ("full_forward", g._full_forward_steps)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            step = steps(model, prompt)
            logits = next(step)
            for _ in range(new):
                logits = step.send(g.pick_token(logits, s, None))
            best = min(best, time.perf_counter() - t0)
        out[name + "_ms_per_token"] = 1000 * best / new
    return out


def decode_rows(run: str, new: int) -> list[dict]:
    """The served model, and a wider GPT of a 512-token context (random weights: the speed is the same)."""
    import torch

    from workbench.models import GPT, GPTConfig

    torch.set_num_threads(1)
    wide = GPT(GPTConfig(vocab_size=256, seq_len=512, n_layer=4, n_head=4, d_model=256)).eval()
    served = wb.load_model(run)
    return [{"model": f"the served run (d_model {served.cfg.d_model}, context {served.cfg.seq_len})", "new": new,
             **cache_vs_full(served, 16, new)},
            {"model": "GPT d_model 256, 4 layers, context 512", "new": 496, **cache_vs_full(wide, 16, 496)}]  # fmt: skip


def train_model(out: str) -> str:
    from workbench.data.files import stdlib_corpus

    os.makedirs(out, exist_ok=True)
    corpus = stdlib_corpus(os.path.join(out, "corpus.txt"), ("json", "email"))
    cfg = wb.RunConfig.from_yaml(os.path.join(ROOT, "configs", "quickstart.yaml")).override(
        {
            "name": "served-bytes",
            "runs_dir": out,
            "parallel.num_processes": 1,
            "max_steps": 50,
            "eval_every": 0,
            "data.source": "text",
            "data.path": corpus,
        }  # fmt: skip
    )
    run = wb.launch(cfg, overwrite=True)
    if run.wait() != "finished":
        raise RuntimeError(run.error)
    return run.path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", default=None)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default="runs-bench-serve")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the server's threads: clients and server share the cores
    run = args.run or train_model(args.out)
    model_id = os.path.basename(os.path.abspath(run))
    body = json.dumps({"model": model_id, "prompt": PROMPT, "max_tokens": args.max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()  # fmt: skip
    proc, port = start_server(run, 0.0)
    try:
        drive(port, body, 1, 2)  # warm-up
        rows = [drive(port, body, c, args.requests) for c in args.clients]
    finally:
        proc.terminate()
        proc.wait(10)
    local = decode_rows(run, args.max_tokens)
    lines = [f"streamed /v1/completions, {args.max_tokens} new tokens after an {len(PROMPT)}-byte prompt, greedy; "
             f"{os.cpu_count()} CPU cores", "",
             "| clients | requests | time to first token p50 | p99 | time per output token p50 | output tokens/s |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['ttft_p50_ms']:.1f} ms | {r['ttft_p99_ms']:.1f} ms | "
                     f"{r['per_token_p50_ms']:.2f} ms | {r['output_tokens_per_s']:.0f} |")  # fmt: skip
    lines += ["", "| decode in one process, 1 thread | new tokens | KV cache | a full forward per token |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for r in local:
        lines.append(f"| {r['model']} | {r['new']} | {r['kv_cache_ms_per_token']:.2f} ms/token | "
                     f"{r['full_forward_ms_per_token']:.2f} ms/token |")  # fmt: skip
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "serve_completions.json"), "w") as f:
        json.dump({"run": run, "rows": rows, "decode": local, "table": lines}, f, indent=1)


if __name__ == "__main__":
    main()
