"""What a run costs before it trains, cold and warm: CPU seconds and wall seconds of start-up against training.

    python benchmarks/startup.py [--repeats 3] [--steps 41] [--out benchmarks/results/startup.json]

Cold: every launch starts fresh Pythons (``WORKBENCH_POOL=0``). Warm: the run's processes fork from the warm pool
(workbench/pool.py), started once here in a pool folder of the benchmark's own. One OpenMP thread per process, as
the test suite runs. Cases, each the median of ``--repeats``:

- ``python -c "import torch"`` and ``import torch`` + ``torch._dynamo`` (CPU and wall): every cold rank pays both;
- wall seconds from ``wb.launch`` to the first metric event of the quickstart on 2 processes (5 steps, a metric
  every step), and to the end of a 20-step run, measured from one Python process (as a notebook launches);
- CPU seconds of a quickstart run on 1 and on 2 processes for 1 step and for ``--steps`` steps, without
  evaluation or checkpoints in between. The difference is training; the rest is start-up. Cold: the CPU of a
  ``python -c`` child that launches the run and of every process under it (RUSAGE_CHILDREN). Warm: that child's
  own CPU plus what the run's forked processes used (the pool's RUSAGE_CHILDREN before and after).

Why it matters: the test suite and the notebooks launch ~130 real multi-process runs, so start-up, not training,
sets how long ``make test`` takes on a small machine, and how long a person waits for a 1-second experiment.
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
RUN = """
import sys, workbench as wb
cfg = wb.RunConfig.from_yaml(sys.argv[1]).override({
    "runs_dir": sys.argv[2], "name": "startup", "max_steps": int(sys.argv[3]), "parallel.num_processes": int(sys.argv[4]),
    "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "schedule.warmup_steps": 1})
run = wb.launch(cfg, overwrite=True)
assert run.wait(timeout=600) == "finished", run.error
assert run.info["launch_path"] == sys.argv[5], run.info["launch_path"]
"""
# wall seconds from wb.launch to the first metric event and to the end, in one process (the way a notebook does)
LATENCY = """
import json, sys, time, workbench as wb
base = wb.RunConfig.from_yaml(sys.argv[1]).override({"runs_dir": sys.argv[2], "eval_every": 0, "log_every": 1})
out = []
for i in range(int(sys.argv[3])):
    for steps in (5, 20):
        t0 = time.perf_counter()
        run = wb.launch(base.override({"name": f"lat{i}-{steps}", "max_steps": steps}), overwrite=True)
        first = None
        for _ in run.follow():
            first = time.perf_counter() - t0 if first is None else first
        assert run.wait(timeout=600) == "finished", run.error
        assert run.info["launch_path"] == sys.argv[4], run.info["launch_path"]
        out.append({"steps": steps, "first_metric_s": first, "end_s": time.perf_counter() - t0})
print(json.dumps(out))
"""


def env_for(warm: bool, pool_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WORKBENCH_POOL": "1" if warm else "0",
        "WORKBENCH_POOL_DIR": pool_dir,
    }


def pool_info(env: dict[str, str]) -> dict:
    code = "import json; from workbench import pool_client as p; print(json.dumps(p.pool_info()))"
    return json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                                     text=True).stdout)  # fmt: skip


def pool_children_cpu(env: dict[str, str]) -> float:
    """CPU seconds of every run the pool forked and reaped (waits for the last one to be reaped)."""
    for _ in range(100):
        info = pool_info(env)
        if info["runs_running"] == 0:
            return info["children_cpu_s"]
        time.sleep(0.1)
    raise RuntimeError("a forked run was never reaped")


def child_seconds(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of a child process and everything under it that it waited for."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, env=env, cwd=ROOT)
    after, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def run_cpu(args: list[str], warm: bool, pool_dir: str) -> float:
    env = env_for(warm, pool_dir)
    pool_before = pool_children_cpu(env) if warm else 0.0
    cpu, _ = child_seconds(args, env)
    return cpu + (pool_children_cpu(env) - pool_before if warm else 0.0)


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def latency(runs: str, repeats: int, warm: bool, pool_dir: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LATENCY, QUICKSTART, runs, str(repeats), "warm" if warm else "cold"],
                         env=env_for(warm, pool_dir), check=True, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    five, twenty = [r for r in rows if r["steps"] == 5], [r for r in rows if r["steps"] == 20]
    return {
        "first metric, wall s (each)": [round(r["first_metric_s"], 3) for r in five],
        "first metric, wall s": median([r["first_metric_s"] for r in five]),
        "20-step run end to end, wall s (each)": [round(r["end_s"], 3) for r in twenty],
        "20-step run end to end, wall s": median([r["end_s"] for r in twenty]),
    }


def cpu_rows(runs: str, repeats: int, steps: int, warm: bool, pool_dir: str) -> dict:
    rows = {}
    path = "warm" if warm else "cold"
    for n in (1, 2):
        for s in (1, steps):
            args = ["-c", RUN, QUICKSTART, runs, str(s), str(n), path]
            rows[f"{n} process run, {s} steps, CPU s"] = median([run_cpu(args, warm, pool_dir) for _ in range(repeats)])
        per_step = (rows[f"{n} process run, {steps} steps, CPU s"] - rows[f"{n} process run, 1 steps, CPU s"]) / (
            steps - 1
        )
        rows[f"{n} process run: training, CPU s per step"] = round(per_step, 4)
        rows[f"{n} process run: start-up, CPU s"] = round(rows[f"{n} process run, 1 steps, CPU s"] - per_step, 3)
    return rows


def measure(repeats: int, steps: int) -> dict:
    pool_dir = tempfile.mkdtemp(prefix="wb-bench-pool-")
    cold_env = env_for(False, pool_dir)
    imports = {}
    for name, code in (
        ("import torch", "import torch"),
        ("import torch + torch._dynamo", "import torch, torch._dynamo"),
    ):
        both = [child_seconds(["-c", code], cold_env) for _ in range(repeats)]
        imports[f"{name}, CPU s"] = median([c for c, _ in both])
        imports[f"{name}, wall s"] = median([w for _, w in both])
    result: dict = {"imports": imports}
    with tempfile.TemporaryDirectory() as runs:
        result["cold"] = {**latency(runs, repeats, False, pool_dir), **cpu_rows(runs, repeats, steps, False, pool_dir)}
        warm_env = env_for(True, pool_dir)
        t0 = time.perf_counter()
        subprocess.run(["workbench", "pool", "start"], env=warm_env, check=True, capture_output=True)
        info = pool_info(warm_env)
        result["pool"] = {"ready after, wall s": round(time.perf_counter() - t0, 3), "import CPU s": info["cpu_s"],
                          "RSS bytes": info["rss_bytes"], "source files watched": info["source_files"]}  # fmt: skip
        result["warm"] = {**latency(runs, repeats, True, pool_dir), **cpu_rows(runs, repeats, steps, True, pool_dir)}
        result["pool"]["RSS bytes after the runs"] = pool_info(warm_env)["rss_bytes"]
        subprocess.run(["workbench", "pool", "stop"], env=warm_env, check=True, capture_output=True)
    cold, warm = result["cold"]["first metric, wall s"], result["warm"]["first metric, wall s"]
    result["warm first metric / cold"] = round(warm / cold, 3)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=41)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "startup.json"))
    args = p.parse_args()
    result = measure(args.repeats, args.steps)
    for section in ("imports", "pool", "cold", "warm"):
        print(f"-- {section}")
        for name, value in result[section].items():
            print(f"   {name:48} {value}")
    print("warm first metric / cold:", result["warm first metric / cold"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with open(args.out, "w") as f:
        json.dump({"repeats": args.repeats, "steps": args.steps, "cpus": os.cpu_count(), "load_average_at_end": load,
                   "measured_at": time.strftime("%Y-%m-%d %H:%M"), **result}, f, indent=1)  # fmt: skip
    print("wrote", args.out)


if __name__ == "__main__":
    main()
