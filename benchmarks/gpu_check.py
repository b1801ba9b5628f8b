"""Every GPU question in one prepared run: precisions, MFU eager and compiled, memory planned vs measured, the
layouts over NCCL, notebook_launch after a panel, the worker against a bare Accelerate loop.

    python benchmarks/gpu_check.py             # on a machine with NVIDIA GPUs; no network; about 8 minutes
    python benchmarks/gpu_check.py --dry-run   # anywhere: the steps and their expected durations, then exit 0
    make gpu-check

One table is printed and written as JSON (gpu_check.json) under $OUT when set, else under runs/. A step that
cannot run here (fp8 without a backend, the multi-GPU rows on one GPU) is a row that says why; a step that fails
is a row with its error, and the check goes on. Expected durations are for one H200 (startup of each run
included: ~10-15 s of it is importing torch and initialising CUDA in the workers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The 86.6M GPT of the first H200 run: GPT-2 small's shape with the synthetic 64-token vocabulary; and the
# GPT-2-small-sized one (124M) with a 50,304-token vocabulary (random tokens: the synthetic language's
# transition table would be 50k x 50k).
BIG = {"model.n_layer": 12, "model.n_head": 12, "model.d_model": 768, "model.seq_len": 1024, "micro_batch_size": 16,
       "grad_accum_steps": 1, "data.num_sequences": 2048, "precision": "bf16", "max_steps": 30, "log_every": 10,
       "eval_every": 0, "optimizer.lr": 6e-4, "schedule.warmup_steps": 5}  # fmt: skip
GPT2_SMALL = {**BIG, "data.vocab_size": 50304, "data.source": "gpu_check_data:random_tokens"}
DATA_MODULE = '''"""Random tokens over cfg.data.vocab_size (written by benchmarks/gpu_check.py)."""
import torch
from torch.utils.data import TensorDataset


def random_tokens(cfg, split):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 2048 if split == "train" else 64
    t = torch.randint(0, cfg.data.vocab_size, (n, cfg.model.seq_len + 1), generator=g)
    return TensorDataset(t[:, :-1].contiguous(), t[:, 1:].contiguous())
'''
LOSS_TOL = 0.05  # |final loss - fp32's| for the precisions on the quickstart (60 steps)
PARITY_TOL = 2e-3  # layouts vs one process, fp32 (the CPU tests hold 1e-3 on gloo; NCCL reduces in another order)


@dataclass
class Step:
    name: str
    expected_s: int  # on one H200
    min_gpus: int
    fn: Callable[[Check], list[dict[str, Any]]]
    what: str


@dataclass
class Check:
    base: Any  # the quickstart RunConfig
    gpus: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, Any] = field(default_factory=dict)  # name -> (metrics, status) of the runs so far

    def train(self, name: str, overrides: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        """Launch one run of the quickstart with overrides; its facts (raises on failure)."""
        import workbench as wb

        cfg = self.base.override({"name": name, "device": "cuda", "eval_every": 0, **overrides})
        problems = cfg.validate()
        if problems:
            return {"refused": "; ".join(str(p) for p in problems)}
        run = wb.launch(cfg, overwrite=True)
        run.wait(timeout=timeout)
        if run.status != "finished":
            raise RuntimeError(f"{name}: {run.status}: {(run.error or '')[-600:]}")
        ev = run.metrics()
        first = next(e for e in ev if "effective" in e)
        timed = [e["tokens_per_s"] for e in ev if e.get("tokens_per_s") and e["step"] > ev[0]["step"]]
        facts = {
            "final_loss": ev[-1]["loss"],
            "losses": {e["step"]: e["loss"] for e in ev},
            "tokens_per_s": statistics.median(timed) if timed else None,
            "mfu": statistics.median([e["mfu"] for e in ev[1:] if e.get("mfu")] or [0]) or None,
            "effective": first["effective"],
            "loss_scale": ev[-1].get("loss_scale"),
            "measured": first.get("measured"),
            "planned": first.get("planned"),
            "mem_bytes": ev[-1].get("mem_bytes"),
        }
        self.runs[name] = facts
        return facts


def row(step: str, case: str, **kw: Any) -> dict[str, Any]:
    return {"step": step, "case": case, **kw}


def short(eff: dict[str, Any]) -> dict[str, Any]:
    keys = ("compute_dtype", "mixed_precision", "tf32", "fp8_backend", "fp8_linears", "high_precision_linears",
            "compile", "compile_s", "wrapper")  # fmt: skip
    return {k: eff.get(k) for k in keys if eff.get(k) is not None}


# ---- the steps ----
def step_env(c: Check) -> list[dict[str, Any]]:
    import accelerate
    import torch

    from workbench.config import detected_devices, fp8_backend

    dev = detected_devices()
    return [row("env", "machine", torch=torch.__version__, cuda=torch.version.cuda, accelerate=accelerate.__version__,
                gpus=dev.count, gpu=dev.name, capability=list(dev.capability), fp8_backend=fp8_backend(),
                cuda_initialised_by_detect=torch.cuda.is_initialized())]  # fmt: skip


def step_precisions(c: Check) -> list[dict[str, Any]]:
    out = []
    cases = [("fp32, tf32 off", {"precision": "fp32", "tf32": False}), ("fp32, tf32 on", {"precision": "fp32"}),
             ("bf16", {"precision": "bf16"}), ("fp16", {"precision": "fp16"}), ("fp8", {"precision": "fp8"})]  # fmt: skip
    ref = None
    for case, o in cases:
        f = c.train(f"gc-{case.replace(', ', '-').replace(' ', '')}", {"parallel.num_processes": 1, "max_steps": 60,
                                                                       "log_every": 10, **o})  # fmt: skip
        if "refused" in f:
            out.append(row("precision", case, status="refused", reason=f["refused"]))
            continue
        ref = f["final_loss"] if ref is None else ref
        ok = abs(f["final_loss"] - ref) < LOSS_TOL
        out.append(row("precision", case, status="ok" if ok else "loss differs", final_loss=f["final_loss"],
                       loss_vs_fp32=f["final_loss"] - ref, tokens_per_s=f["tokens_per_s"], mfu=f["mfu"],
                       loss_scale=f["loss_scale"], **short(f["effective"])))  # fmt: skip
    return out


def mfu_rows(c: Check, label: str, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for compiled in (False, True):
        case = f"{label} bf16 {'compiled' if compiled else 'eager'}"
        f = c.train(f"gc-{label}-{'compiled' if compiled else 'eager'}",
                    {"parallel.num_processes": 1, "compile": compiled, **overrides})  # fmt: skip
        out.append(row("mfu", case, status="ok", tokens_per_s=f["tokens_per_s"], mfu=f["mfu"], target_mfu=0.45,
                       num_params=f["effective"].get("num_params"), **short(f["effective"])))  # fmt: skip
    return out


def step_mfu_86m(c: Check) -> list[dict[str, Any]]:
    return mfu_rows(c, "86.6M", BIG)


def step_mfu_124m(c: Check) -> list[dict[str, Any]]:
    return mfu_rows(c, "124M", GPT2_SMALL)


def memory_row(case: str, f: dict[str, Any]) -> dict[str, Any]:
    """Planned vs measured per rank: parameters, gradients, optimizer state exact; activations and peak 10%."""
    plan = f.get("planned") or {}
    if "ranks" not in plan:
        return row("memory", case, status="no plan", reason=plan.get("error"))
    worst, ok = {}, True
    for m, p in zip(f["measured"], plan["ranks"], strict=False):
        for k in ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes"):
            if k in m and k in p and p[k]:
                err = m[k] / p[k] - 1
                worst[k] = max(worst.get(k, 0.0), abs(err))
                ok &= abs(err) <= (0.10 if k == "activation_bytes" else 0.0)
        if m.get("max_memory_allocated") and p.get("total_bytes"):
            err = m["max_memory_allocated"] / p["total_bytes"] - 1
            worst["peak"] = max(worst.get("peak", 0.0), abs(err))
            ok &= abs(err) <= 0.10
    return row("memory", case, status="ok" if ok else "off plan", worst_relative_error=worst,
               measured=f["measured"], planned_ranks=plan["ranks"])  # fmt: skip


def step_memory(c: Check) -> list[dict[str, Any]]:
    f = c.runs.get("gc-86.6M-eager") or c.train("gc-86.6M-eager", {"parallel.num_processes": 1, **BIG})
    return [memory_row("86.6M ddp, 1 GPU", f)]


def step_memory_2gpu(c: Check) -> list[dict[str, Any]]:
    if c.gpus < 2:
        return [row("memory", "ddp and zero3 on 2 GPUs", status="not run", reason="needs 2 GPUs")]
    out = []
    for s in ("ddp", "zero3"):
        f = c.train(f"gc-mem-{s}", {"parallel.num_processes": 2, "parallel.strategy": s, **BIG, "max_steps": 10})
        out.append(memory_row(f"86.6M {s}, 2 GPUs", f))
    peaks = {s: max(c.runs[f"gc-mem-{s}"]["mem_bytes"]) for s in ("ddp", "zero3")}
    ok = peaks["zero3"] < peaks["ddp"]
    out.append(row("memory", "zero3 peak below ddp's (2 GPUs)", status="ok" if ok else "not below", peak_bytes=peaks))
    return out


LAYOUTS = {"ddp": {}, "zero1": {}, "zero2": {}, "zero3": {}, "tp": {"parallel.tp_size": 2},
           "pp": {"parallel.pp_size": 2}}  # fmt: skip


def step_layouts(c: Check) -> list[dict[str, Any]]:
    if c.gpus < 2:
        return [row("layouts", s, status="not run", reason="needs 2 GPUs; this machine has 1") for s in LAYOUTS]
    common = {"max_steps": 30, "log_every": 10, "model.dropout": 0.0}
    one = c.train("gc-one", {"parallel.num_processes": 1, "micro_batch_size": 16, **common})
    out = []
    for s, o in LAYOUTS.items():
        f = c.train(f"gc-{s}", {"parallel.num_processes": 2, "parallel.strategy": s, "micro_batch_size": 8, **o,
                                **common})  # fmt: skip
        diff = max(abs(f["losses"][k] - one["losses"][k]) for k in one["losses"])
        out.append(row("layouts", f"{s} (NCCL, 2 GPUs) vs 1 process", status="ok" if diff < PARITY_TOL else
                       "losses differ", max_loss_diff=diff, backend=f["effective"].get("backend"),
                       wrapper=f["effective"].get("wrapper"), tokens_per_s=f["tokens_per_s"]))  # fmt: skip
    return out


def step_notebook(c: Check) -> list[dict[str, Any]]:
    """notebook_launch with 2 GPUs after a ConfigPanel in the same process (CUDA must stay uninitialised here)."""
    if c.gpus < 2:
        return [row("notebook", "notebook_launch after ConfigPanel", status="not run", reason="needs 2 GPUs")]
    import torch

    import workbench as wb
    from widgets.config_panel import ConfigPanel

    ConfigPanel(c.base)
    initialised = torch.cuda.is_initialized()
    run = wb.notebook_launch(nccl_all_reduce, num_processes=2, name="gc-notebook")
    return [row("notebook", "notebook_launch after ConfigPanel", status="ok" if run.status == "finished" and
                not initialised else run.status, cuda_initialised_by_panel=initialised, error=run.error)]  # fmt: skip


def nccl_all_reduce() -> None:
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator

    acc = Accelerator()
    t = torch.ones(1, device=acc.device) * (acc.process_index + 1)
    dist.all_reduce(t)
    assert t.item() == 3.0, t.item()


def step_overhead(c: Check) -> list[dict[str, Any]]:
    """The worker against a bare Accelerate loop (benchmarks/overhead.py's), same 86.6M model, alternating."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from overhead import bare_tokens_per_s, workbench_tokens_per_s

    cfg = c.base.override({"name": "gc-overhead", "device": "cuda", "parallel.num_processes": 1, **BIG,
                           "precision": "fp32", "tf32": False, "max_steps": 40, "schedule.decay": "constant"})  # fmt: skip
    ours, bare = [], []
    for _ in range(1):  # one pair: the H200 run measured 0.997 with two
        ours.append(workbench_tokens_per_s(cfg, 10))
        bare.append(bare_tokens_per_s(cfg, os.getcwd(), 10))
    o, b = statistics.median(ours), statistics.median(bare)
    return [row("overhead", "86.6M fp32, workbench vs bare Accelerate", status="ok" if o / b >= 0.97 else "slower",
                workbench_tokens_per_s=o, bare_tokens_per_s=b, ratio=o / b)]  # fmt: skip


STEPS = [
    Step("env", 5, 1, step_env, "torch, CUDA, accelerate, GPUs (nvidia-smi, CUDA left uninitialised), fp8 backend"),
    Step(
        "precisions",
        100,
        1,
        step_precisions,
        "quickstart on 1 GPU, 60 steps: fp32 TF32 off/on, bf16, fp16, fp8 (or refused): dtype, loss scale, tokens/s",
    ),
    Step("mfu-86.6M", 70, 1, step_mfu_86m, "86.6M GPT bf16, eager and compiled: tokens/s, MFU vs the data sheet"),
    Step("mfu-124M", 75, 1, step_mfu_124m, "124M GPT (GPT-2 small) bf16, eager and compiled: tokens/s, MFU"),
    Step("memory", 5, 1, step_memory, "planned vs measured CUDA bytes per rank: ddp (the 86.6M eager run)"),
    Step("memory-2gpu", 40, 2, step_memory_2gpu, "planned vs measured for ddp and zero3; zero3's peak below ddp's"),
    Step("layouts", 105, 2, step_layouts, "ddp, zero1/2/3, tp, pp over NCCL on 2 GPUs: loss parity with 1 process"),
    Step("notebook", 25, 2, step_notebook, "notebook_launch on 2 GPUs after a ConfigPanel in the same process"),
    Step("overhead", 50, 1, step_overhead, "workbench worker vs a bare Accelerate loop, 86.6M fp32, alternating"),
]


def dry_run() -> int:
    one = sum(s.expected_s for s in STEPS if s.min_gpus == 1)
    two = sum(s.expected_s for s in STEPS)
    print(f"gpu_check: {len(STEPS)} steps, expected {one // 60} min {one % 60:02d} s on one H200, {two // 60} min "
          f"{two % 60:02d} s with 2 GPUs (on 1 GPU the 2-GPU steps are reported as not run)")  # fmt: skip
    for s in STEPS:
        need = f" [needs {s.min_gpus} GPUs]" if s.min_gpus > 1 else ""
        print(f"  {s.name:11} ~{s.expected_s:>3} s  {s.what}{need}")
    print(f"  writes gpu_check.json under $OUT when set, else under {os.path.join('runs', '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="list the steps and their expected durations")
    ap.add_argument("--only", nargs="*", help="run only these steps (names as --dry-run lists them)")
    args = ap.parse_args(argv)
    if args.dry_run:
        return dry_run()
    import workbench as wb
    from workbench.config import detected_devices

    dev = detected_devices()
    if dev.kind != "cuda":
        print("gpu_check: no NVIDIA GPU found (nvidia-smi); --dry-run lists the steps", file=sys.stderr)
        return 2
    out_dir = os.environ.get("OUT") or os.path.join(os.getcwd(), "runs")
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu-check-")
    os.chdir(work)  # run folders and the 124M model's data module live here
    with open("gpu_check_data.py", "w") as f:
        f.write(DATA_MODULE)
    sys.path.insert(0, work)
    c = Check(wb.RunConfig.from_yaml(os.path.join(ROOT, "configs", "quickstart.yaml")), dev.count)
    for s in STEPS:
        if args.only and s.name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            rows = s.fn(c)
        except Exception as e:  # one failing step must not hide the others
            rows = [row(s.name, "step", status="failed", error=f"{type(e).__name__}: {e}"[-800:])]
        for r in rows:
            r.setdefault("seconds", round(time.perf_counter() - t0, 1))
        c.rows += rows
        print_rows(rows)
    path = os.path.join(out_dir, "gpu_check.json")
    with open(path, "w") as f:
        json.dump({"gpus": dev.count, "gpu": dev.name, "rows": c.rows}, f, indent=1, default=str)
    print(f"\nwritten: {path}")
    return 0 if all(r.get("status") in ("ok", "refused", "not run") for r in c.rows) else 1


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        keys = ("tokens_per_s", "mfu", "final_loss", "compute_dtype", "tf32", "loss_scale", "compile_s", "ratio",
                "max_loss_diff", "reason", "error")  # fmt: skip
        facts = ", ".join(f"{k} {fmt(r[k])}" for k in keys if r.get(k) is not None)
        print(f"| {r['step']:10} | {r['case']:42} | {r.get('status', ''):12} | {facts}", flush=True)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
