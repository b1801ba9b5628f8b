"""Overhead of the workbench worker against a bare Accelerate loop: same model, data, config, launcher.

    python benchmarks/overhead.py [--steps 120] [--repeats 3]

Alternates runs (workbench, bare, workbench, bare, ...) for 1 and 2 processes and prints tokens/s of each and
the ratio. Both are timed the same way: wall clock between the optimizer step `--warmup` and the last step,
read from their own logs (no eval, no checkpoint inside the window). Target: workbench >= 0.98 x bare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import workbench as wb
from workbench.launch import accelerate_command, free_port, write_accelerate_config

BARE = r'''
"""The bare loop: what a person would write by hand with Accelerate for the same training."""
import json, math, sys, time
import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader
from workbench.config import RunConfig
from workbench.data import build_dataset
from workbench.models import build_model

cfg = RunConfig.from_yaml(sys.argv[1]); warmup = int(sys.argv[2]); out = sys.argv[3]
acc = Accelerator(cpu=not torch.cuda.is_available(),
                  gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum_steps, sync_with_dataloader=False))
set_seed(cfg.seed)
model = build_model(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas), weight_decay=cfg.optimizer.weight_decay)
dl = DataLoader(build_dataset(cfg, "train"), batch_size=cfg.micro_batch_size, shuffle=True, drop_last=True)
model, opt, dl = acc.prepare(model, opt, dl)
step, loss_sum, marks = 0, torch.zeros((), device=acc.device), {}  # on the device: no host sync per step
while step < cfg.max_steps:
    for x, y in dl:
        with acc.accumulate(model):
            _, loss = model(x, y)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
                opt.step(); opt.zero_grad()
        loss_sum += loss.detach()
        if acc.sync_gradients:
            step += 1
            if step % cfg.log_every == 0:
                acc.reduce(loss_sum).item(); loss_sum.zero_()
                marks[step] = time.perf_counter()
            if step >= cfg.max_steps:
                break
acc.wait_for_everyone()
if acc.is_main_process:
    json.dump({"t0": marks[warmup], "t1": marks[cfg.max_steps], "steps": cfg.max_steps - warmup}, open(out, "w"))
'''


def bare_tokens_per_s(
    cfg: wb.RunConfig, tmp: str, warmup: int, source: str = BARE, extra: tuple[str, ...] = ()
) -> float:
    """tokens/s of a hand-written Accelerate loop (``source``: called as SCRIPT CONFIG *extra WARMUP OUT, it
    writes the perf_counter times t0, t1 of steps warmup and max_steps), launched as the workbench launches."""
    script = os.path.join(tmp, "bare.py")
    with open(script, "w") as f:
        f.write(source)
    cfg_path = os.path.join(tmp, "bare.yaml")
    cfg.to_yaml(cfg_path)
    cmd, env = accelerate_command(cfg, cfg_path, free_port(), config_file=write_accelerate_config(cfg, tmp))
    cmd = cmd[: cmd.index("-m", 3)] + [script, cfg_path, *extra, str(warmup), os.path.join(tmp, "bare.json")]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.load(open(os.path.join(tmp, "bare.json")))
    return r["steps"] * cfg.tokens_per_step / (r["t1"] - r["t0"])


def workbench_tokens_per_s(cfg: wb.RunConfig, warmup: int) -> float:
    run = wb.launch(cfg, overwrite=True)
    run.wait()
    assert run.status == "finished", run.error
    t = {m["step"]: m["time"] for m in run.metrics()}
    return (cfg.max_steps - warmup) * cfg.tokens_per_step / (t[cfg.max_steps] - t[warmup])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = wb.RunConfig.from_yaml(os.path.join(root, "configs", "quickstart.yaml"))
    tmp = tempfile.mkdtemp(prefix="wb-bench-")
    os.chdir(tmp)
    rows = []
    for n in (1, 2):
        cfg = base.override({
            "name": f"bench{n}", "parallel.num_processes": n, "max_steps": args.steps, "log_every": 10,
            "eval_every": 0, "schedule.warmup_steps": 0, "schedule.decay": "constant",
        })  # fmt: skip
        ours, bare = [], []
        for _ in range(args.repeats):  # alternate, so drifts in machine speed hit both alike
            ours.append(workbench_tokens_per_s(cfg, args.warmup))
            bare.append(bare_tokens_per_s(cfg, tmp, args.warmup))
        o, b = statistics.median(ours), statistics.median(bare)
        rows.append((n, o, b, o / b, ours, bare))
    print(f"\nworkbench worker vs bare Accelerate loop ({args.steps} steps, window {args.warmup}..{args.steps}, "
          f"median of {args.repeats} alternating runs, {sys.platform}, {os.cpu_count()} cores)\n")  # fmt: skip
    print("| processes | workbench tokens/s | bare tokens/s | ratio |")
    print("|---:|---:|---:|---:|")
    for n, o, b, r, _, _ in rows:
        print(f"| {n} | {o:,.0f} | {b:,.0f} | {r:.3f} |")
    for n, _, _, _, ours, bare in rows:
        print(f"  n={n} runs: workbench {[round(x) for x in ours]}, bare {[round(x) for x in bare]}")


if __name__ == "__main__":
    main()
