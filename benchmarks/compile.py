"""compile: true against eager on CPU: the quickstart and a d_model 256 / 4-layer GPT, on 1 and 2 processes.

    python benchmarks/compile.py [--steps 40] [--repeats 1]

Alternates eager and compiled runs of each case and prints tokens/s (median over the log events after the first
interval, which holds the compiling step in a compiled run), the ratio and the compile time (``compile_s`` in
``effective``: the first step, compilation included). Inductor's cache is emptied before each compiled run, so
compile_s is a cold compile; a second run of the same shapes reuses the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile

import workbench as wb
from workbench.launch import inductor_cache_dir

CASES = {
    "quickstart (d64, 2 layers)": {},
    "d256, 4 layers": {"model.d_model": 256, "model.n_layer": 4, "model.n_head": 4, "model.seq_len": 128},
}


def measure(cfg: wb.RunConfig) -> tuple[float, float | None]:
    run = wb.launch(cfg, overwrite=True)
    run.wait(timeout=1800)
    assert run.status == "finished", run.error
    ev = run.metrics()
    tps = statistics.median(e["tokens_per_s"] for e in ev[1:] if e.get("tokens_per_s"))
    return tps, ev[0]["effective"].get("compile_s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = wb.RunConfig.from_yaml(os.path.join(root, "configs", "quickstart.yaml"))
    os.chdir(tempfile.mkdtemp(prefix="wb-compile-"))
    rows = []
    for label, over in CASES.items():
        for n in (1, 2):
            cfg = base.override({**over, "name": "bench", "parallel.num_processes": n, "max_steps": args.steps,
                                 "log_every": 10, "eval_every": 0})  # fmt: skip
            eager, compiled, comp_s = [], [], []
            for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both alike
                eager.append(measure(cfg)[0])
                shutil.rmtree(inductor_cache_dir(), ignore_errors=True)  # a cold compile
                t, s = measure(cfg.override({"compile": True}))
                compiled.append(t)
                comp_s.append(s)
            e, c = statistics.median(eager), statistics.median(compiled)
            rows.append((label, n, e, c, c / e, statistics.median(comp_s)))
            print(f"  {label}, {n} proc: eager {eager}, compiled {compiled}, compile_s {comp_s}", flush=True)
    print(f"\ncompile: true vs eager on CPU ({args.steps} steps, {os.cpu_count()} cores, {sys.platform})\n")
    print("| model | processes | eager tokens/s | compiled tokens/s | ratio | compile_s (cold) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, e, c, r, s in rows:
        print(f"| {label} | {n} | {e:,.0f} | {c:,.0f} | {r:.2f} | {s:.1f} |")


if __name__ == "__main__":
    main()
