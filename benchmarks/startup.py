"""What a run costs before it trains: CPU seconds of start-up against CPU seconds of training.

    python benchmarks/startup.py [--repeats 3] [--steps 41] [--out benchmarks/results/startup.json]

Each case runs in its own `python -c` child, one at a time, and is charged the CPU time (user + system) of that
child and of every process under it (resource.getrusage(RUSAGE_CHILDREN) before and after). One OpenMP thread per
process, as the test suite runs. Cases:

- ``import torch``, and ``import torch`` + ``torch._dynamo``: every rank pays both, even in a run that never
  compiles (DDP's constructor and torch.optim's first parameter group import dynamo);
- a quickstart run on 1 and on 2 processes (``wb.launch``: supervisor, ``accelerate launch``, the ranks) for 1
  step and for ``--steps`` steps, without evaluation or checkpoints in between. The difference is training; the
  rest (the run at 1 step, less one step) is start-up.

The median of ``--repeats``. Why it matters: the test suite and the notebooks launch ~130 real multi-process
runs, so start-up, not training, sets how long ``make test`` takes on a small machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = """
import sys, workbench as wb
cfg = wb.RunConfig.from_yaml(sys.argv[1]).override({
    "runs_dir": sys.argv[2], "name": "startup", "max_steps": int(sys.argv[3]), "parallel.num_processes": int(sys.argv[4]),
    "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "schedule.warmup_steps": 1})
run = wb.launch(cfg, overwrite=True)
assert run.wait(timeout=600) == "finished", run.error
"""


def cpu_seconds(args: list[str]) -> float:
    """CPU seconds (user + system) of a child process and everything under it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *args], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_of(args: list[str], repeats: int) -> float:
    return statistics.median(cpu_seconds(args) for _ in range(repeats))


def measure(repeats: int, steps: int) -> dict:
    quickstart = os.path.join(ROOT, "configs", "quickstart.yaml")
    rows = {
        "import torch": median_of(["-c", "import torch"], repeats),
        "import torch + torch._dynamo": median_of(["-c", "import torch, torch._dynamo"], repeats),
    }
    with tempfile.TemporaryDirectory() as runs:
        for n in (1, 2):
            for s in (1, steps):
                rows[f"{n} process run, {s} steps"] = median_of(["-c", RUN, quickstart, runs, str(s), str(n)], repeats)
    for n in (1, 2):
        per_step = (rows[f"{n} process run, {steps} steps"] - rows[f"{n} process run, 1 steps"]) / (steps - 1)
        rows[f"{n} process run: training, per step"] = per_step
        rows[f"{n} process run: start-up"] = rows[f"{n} process run, 1 steps"] - per_step
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=41)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "startup.json"))
    args = p.parse_args()
    rows = measure(args.repeats, args.steps)
    for name, seconds in rows.items():
        print(f"{name:40} {seconds:7.3f} CPU s")
    twenty = {n: rows[f"{n} process run: training, per step"] * 20 for n in (1, 2)}
    for n in (1, 2):
        share = rows[f"{n} process run: start-up"] / (rows[f"{n} process run: start-up"] + twenty[n])
        print(f"{n} process run of 20 steps: start-up is {share:.0%} of its CPU time")
    with open(args.out, "w") as f:
        json.dump({"repeats": args.repeats, "steps": args.steps, "cpu_seconds": rows}, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
