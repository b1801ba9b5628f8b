"""The step-time model's accuracy: predicted vs measured tokens/s over a grid of configs on this machine.

    python benchmarks/time_model.py [--quick] [--steps 24] [--out benchmarks/results/time_model.json]

The grid: two model sizes x the 7 layouts that run on 2 CPU processes (ddp, zero1, zero2, zero3, tp, pp, ps), and on
the small size grad_accum_steps 1 and 4, activation checkpointing, and bf16 for ddp and zero2. Each config is
planned (``wb.plan``: this CPU's device facts, measured once by workbench/calibrate.py, never by running a layout)
and then run for real (``wb.launch``, one after another); measured = the median of the run's tokens/s events after
the first. Printed: a markdown table, the error distribution (median and worst |predicted/measured - 1|), the
Spearman rank correlation, and the share of pairs ordered right among those whose measured tokens/s differ by more
than 20%. ``python -c "import torch"`` is timed beside, as every time figure in this project is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import workbench as wb

LAYOUTS = {"ddp": {}, "zero1": {}, "zero2": {}, "zero3": {}, "tp": {"parallel.tp_size": 2},
           "pp": {"parallel.pp_size": 2}, "ps": {}}  # fmt: skip
SIZES = {
    "d128-L4-T64": {"model.d_model": 128, "model.n_head": 4, "model.n_layer": 4, "model.seq_len": 64},
    "d256-L4-T128": {"model.d_model": 256, "model.n_head": 4, "model.n_layer": 4, "model.seq_len": 128},
}


def grid(quick: bool) -> list[tuple[str, dict]]:
    out = []
    for size, shape in SIZES.items():
        for name, extra in LAYOUTS.items():
            out.append((f"{size} {name}", {**shape, "parallel.strategy": name, **extra}))
        if quick:
            break
    small = SIZES["d128-L4-T64"]
    for name in ("ddp", "zero3", "tp", "pp"):
        for k in (1, 4):
            out.append((f"d128 {name} accum {k}", {**small, "parallel.strategy": name, **LAYOUTS[name],
                                                    "grad_accum_steps": k, "micro_batch_size": 16 // k}))  # fmt: skip
        out.append((f"d128 {name} ckpt", {**small, "parallel.strategy": name, **LAYOUTS[name],
                                          "activation_checkpointing": True}))  # fmt: skip
    for name in ("ddp", "zero2"):
        out.append((f"d128 {name} bf16", {**small, "parallel.strategy": name, "precision": "bf16"}))
    return out[:10] if quick else out


def measure(cfg: wb.RunConfig) -> float:
    run = wb.launch(cfg, overwrite=True)
    status = run.wait(timeout=900)
    if status != "finished":
        raise RuntimeError(f"{cfg.name}: {status} {run.error}")
    tps = [e["tokens_per_s"] for e in run.metrics() if e.get("tokens_per_s")]
    return statistics.median(tps[1:])


def ranks(xs: list[float]) -> list[int]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0] * len(xs)
    for k, i in enumerate(order):
        r[i] = k
    return r


def summary(rows: list[dict]) -> dict:
    errs = [abs(r["predicted"] / r["measured"] - 1) for r in rows]
    p, m = ranks([r["predicted"] for r in rows]), ranks([r["measured"] for r in rows])
    n = len(rows)
    rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(p, m, strict=True)) / (n * (n * n - 1))
    pairs = right = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = rows[i], rows[j]
            if max(a["measured"], b["measured"]) > 1.2 * min(a["measured"], b["measured"]):
                pairs += 1
                right += (a["predicted"] > b["predicted"]) == (a["measured"] > b["measured"])
    return {"configs": n, "median_error": statistics.median(errs), "worst_error": max(errs), "spearman": rho,
            "pairs_apart_20pct": pairs, "ordered_right": right, "within_25pct": sum(e <= 0.25 for e in errs)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the small size's 7 layouts and a few variants")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "time_model.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    import_torch_s = time.perf_counter() - t0
    base = wb.RunConfig.from_yaml(os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.yaml"))
    runs_dir = tempfile.mkdtemp(prefix="wb-time-model-")
    common = {"micro_batch_size": 8, "grad_accum_steps": 2, "parallel.num_processes": 2, "max_steps": a.steps,
              "log_every": max(2, a.steps // 6), "eval_every": 0, "runs_dir": runs_dir}  # fmt: skip
    rows = []
    for i, (label, over) in enumerate(grid(a.quick)):
        cfg = base.override({**common, **over, "name": f"tm-{i}"})
        predicted = wb.plan(cfg)
        m = measure(cfg)
        t = predicted.time
        rows.append({"config": label, "predicted": predicted.tokens_per_s, "measured": m,
                     "ratio": predicted.tokens_per_s / m, "parts_ms": {k: v * 1e3 for k, v in t.parts().items()}})  # fmt: skip
        print(f"| {label} | {predicted.tokens_per_s:,.0f} | {m:,.0f} | {predicted.tokens_per_s / m:.2f} |", flush=True)
    s = summary(rows)
    s.update(import_torch_s=round(import_torch_s, 2), facts=t.source, load_average=round(os.getloadavg()[0], 2))
    print(json.dumps(s, indent=1))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"summary": s, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
