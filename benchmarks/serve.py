"""workbench serve under a bounded load on 127.0.0.1: latency p50 / p99 and requests/s, with and without batching.

    python benchmarks/serve.py [RUN] [--clients 1 8 32] [--requests 50] [--batch-wait-ms 2] [--out runs-bench-serve]

Without RUN it first trains the quickstart GPT (1 process, 50 steps) as the model to serve. For each setting
(batching off; ``--batch-wait-ms`` on) it starts ``workbench serve RUN`` as its own process and drives it
with a closed loop: C client threads, each with one keep-alive connection, each sending ``--requests``
``POST /v1/logits`` requests of one sequence of ``model.seq_len`` tokens, one after the other (so at most C
requests are in flight: the load is bounded). Latency is each request's round trip as the client sees it;
requests/s is all requests over the wall time of the loop. The clients run in this process, the server in
another, both on the same cores: on a 2-core machine the clients' own work is part of what is measured.
Prints a markdown table and writes it, with the raw numbers, to OUT/serve.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import workbench as wb  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, batch_wait_ms: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "workbench.cli",
        "serve",
        run,
        "--port",
        str(port),
        "--batch-wait-ms",
        str(batch_wait_ms),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(240):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"workbench serve {run} did not answer /healthz within 60 s")


def drive(port: int, body: bytes, clients: int, requests: int) -> dict:
    """Closed loop: each client sends its requests one after the other; all latencies, and the wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/logits", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            if resp.status != 200:
                errors.append(str(resp.status))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    return {
        "clients": clients,
        "requests": len(ms),
        "errors": len(errors),
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "requests_per_s": len(ms) / wall,
    }


def train_model(out: str) -> str:
    cfg = wb.RunConfig.from_yaml(os.path.join(ROOT, "configs", "quickstart.yaml")).override(
        {"name": "served", "runs_dir": out, "parallel.num_processes": 1, "max_steps": 50, "eval_every": 0}
    )
    run = wb.launch(cfg, overwrite=True)
    if run.wait() != "finished":
        raise RuntimeError(run.error)
    return run.path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", default=None)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--out", default="runs-bench-serve")
    args = p.parse_args()
    run = args.run or train_model(args.out)
    cfg = wb.RunConfig.from_yaml(os.path.join(run, "config.yaml"))
    body = json.dumps({"tokens": [[i % cfg.data.vocab_size for i in range(cfg.model.seq_len)]]}).encode()
    rows = []
    for wait in (0.0, args.batch_wait_ms):
        proc, port = start_server(run, wait)
        try:
            drive(port, body, 2, 10)  # warm-up: first calls allocate
            for c in args.clients:
                rows.append({"batch_wait_ms": wait, **drive(port, body, c, args.requests)})
        finally:
            proc.terminate()
            proc.wait(10)
    lines = [
        f"one sequence of {cfg.model.seq_len} tokens a request, /v1/logits; {os.cpu_count()} CPU cores",
        "",
        "| batching | clients | requests | p50 latency | p99 latency | requests/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mode = "off" if r["batch_wait_ms"] == 0 else f"{r['batch_wait_ms']:g} ms window"
        lines.append(f"| {mode} | {r['clients']} | {r['requests']} | {r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
                     f"{r['requests_per_s']:,.0f} |")  # fmt: skip
        assert r["errors"] == 0, r
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "serve.json"), "w") as f:
        json.dump({"run": run, "rows": rows, "table": lines}, f, indent=1)


if __name__ == "__main__":
    main()
