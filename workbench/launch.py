"""launch(config) -> Run: validate, make the run folder, start `accelerate launch` under a supervisor.

Process layout (why each piece exists):

    notebook kernel / CLI
      └─ supervisor   `python -m workbench.launch RUN_DIR` in its OWN session (start_new_session), so a
         │            kernel interrupt or restart does not kill training, and so that someone is always
         │            there to write the final status.json when the job ends, however it ends.
         └─ accelerate launch ... -m workbench.worker RUN_DIR/config.yaml   (torchelastic agent)
              ├─ rank 0   (each rank leads its own process group: torchelastic's start_new_session)
              └─ rank 1

On CPU, `accelerate launch --cpu --num_processes N` silently starts ONE process, and `--multi_gpu` alone
starts N processes that never synchronise (both measured with accelerate 1.15, torch 2.13). What really
gives N gloo ranks is `ACCELERATE_USE_CPU=1` together with `--multi_gpu --num_processes N`; the worker also
passes `Accelerator(cpu=True)` and records the world size it really got, which the tests assert.

Failures are read from torchelastic's structured error files: the worker's ``main`` is wrapped in ``@record``,
which writes the exception (message, traceback, timestamp) as JSON to TORCHELASTIC_ERROR_FILE. ``--log_dir
RUN_DIR/elastic`` puts torchelastic's per-rank files there (``elastic/<run id>/attempt_0/<rank>/error.json``);
a single process runs without torchelastic, so the supervisor sets the variable itself (``elastic/0/error.json``).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench import checkpoints, pool_client, prelaunch
from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig, effective_device, is_int, layout_modules
from workbench.config.strategies import LAYOUT_MODULES_ENV
from workbench.fileio import read_json, write_json_atomic
from workbench.runs import Run, kill_workers, read_status, write_status

ELASTIC_DIR = "elastic"  # torchelastic's log dir inside the run folder: per-rank error.json files
GPU_IDS = "gpu_ids.json"  # the GPUs launch(gpu_ids=...) gave the run (absent: all)
API_ASKS = ("ask for resume=True", "overwrite=True")  # how check_launchable's message names the two ways out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_launchable(
    cfg: RunConfig, overwrite: bool = False, resume: bool = False, asks: tuple[str, str] = API_ASKS
) -> list[Problem]:
    """What stops launch(cfg, overwrite, resume): validation, then the run folder (taken; resume without a
    checkpoint). asks: how the caller's user asks for resume and for overwrite, as the message names them
    (the Python API's keywords; the panel names its checkboxes)."""
    problems = prelaunch.problems(cfg)
    if problems:
        return problems
    run_dir = cfg.run_dir
    if os.path.exists(run_dir) and not (overwrite or resume):
        problems.append(
            Problem(
                "name",
                f"run folder {run_dir!r} already exists; pick another name, or {asks[0]} "
                f"(continue from its last checkpoint) or {asks[1]} (delete it)",
            )
        )
    if resume and checkpoints.latest(run_dir) is None:
        problems.append(Problem("name", f"resume asked for, but {run_dir!r} holds no checkpoint"))
    if resume and overwrite:
        problems.append(Problem("name", "ask for resume or overwrite, not both"))
    return problems


def launch(
    cfg: RunConfig,
    overwrite: bool = False,
    resume: bool = False,
    gpu_ids: list[int] | None = None,
    threads_per_process: int | None = None,
) -> Run:
    """Start training in the background and return its Run at once.

    Raises ConfigError (one message per problem, each naming its key) before any process starts. gpu_ids: the
    GPUs (indices among the visible ones) this run may use, one per process; None: the first num_processes.
    threads_per_process: CPU threads of each rank (OMP_NUM_THREADS); None: OMP_NUM_THREADS if set, else the
    cores divided by the run's processes (a sweep running several runs at once divides them further).
    """
    problems = check_launchable(cfg, overwrite=overwrite, resume=resume)
    if gpu_ids is not None and len(gpu_ids) != cfg.parallel.num_processes:
        problems.append(Problem("gpu_ids", f"one GPU per process: {len(gpu_ids)} given for parallel.num_processes "
                                f"{cfg.parallel.num_processes}"))  # fmt: skip
    if threads_per_process is not None and (not is_int(threads_per_process) or threads_per_process < 1):
        problems.append(Problem("threads_per_process", f"must be a whole number >= 1, got {threads_per_process!r}"))
    if problems:
        raise ConfigError(problems)
    run_dir = os.path.abspath(cfg.run_dir)
    if overwrite and os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if resume:  # the previous job's stop request and error files are not this job's
        if os.path.exists(os.path.join(run_dir, "STOP")):
            os.remove(os.path.join(run_dir, "STOP"))
        shutil.rmtree(os.path.join(run_dir, ELASTIC_DIR), ignore_errors=True)
    cfg.to_yaml(os.path.join(run_dir, "config.yaml"))
    if gpu_ids is not None:
        write_json_atomic(os.path.join(run_dir, GPU_IDS), [int(i) for i in gpu_ids])
    elif os.path.exists(os.path.join(run_dir, GPU_IDS)):
        os.remove(os.path.join(run_dir, GPU_IDS))
    write_status(run_dir, state="starting", error=None, resume=resume, host=os.uname().nodename, launch_dir=os.getcwd())
    env = _env_with_project_on_path()
    if threads_per_process is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_process)
    # Warm: the pool forks the supervisor (workbench/pool.py); CPU runs only. None: no pool answered, go cold.
    proc = pool_client.start_supervisor(run_dir, resume, env) if effective_device(cfg) == "cpu" else None
    if proc is None:
        out = open(os.path.join(run_dir, "supervisor.log"), "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.launch", run_dir] + (["--resume"] if resume else []),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        out.close()
    return Run(run_dir, process=proc)


def _env_with_project_on_path() -> dict[str, str]:
    # The workers import user factories ("mypkg.models:build") by name: put the caller's cwd on their path, and
    # the folder each module that registered a layout here was imported from.
    env = dict(os.environ)
    paths = [os.getcwd()] + [module_root(m) for m in layout_modules()]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env[LAYOUT_MODULES_ENV] = ",".join(layout_modules())  # layouts registered here by your own modules
    return env


def module_root(name: str) -> str:
    """The folder an imported module's top-level package sits in (what puts ``name`` on an import path)."""
    path = os.path.abspath(sys.modules[name].__file__ or "")
    for _ in name.split("."):
        path = os.path.dirname(path)
    if os.path.basename(sys.modules[name].__file__ or "") == "__init__.py":
        path = os.path.dirname(path)
    return path


def cpu_share(num_processes: int, concurrent_runs: int = 1) -> int:
    """CPU threads per process when concurrent_runs runs of num_processes processes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // (num_processes * concurrent_runs))


def accelerate_command(
    cfg: RunConfig,
    config_path: str,
    port: int,
    resume: bool = False,
    log_dir: str | None = None,
    config_file: str | None = None,
    gpu_ids: list[int] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment that give cfg.parallel.num_processes ranks.

    resume: the worker continues from the run folder's last checkpoint. log_dir: where torchelastic (and, for
    one process, the worker itself) writes each rank's error.json. config_file: the run's own Accelerate config
    (write_accelerate_config), so no ``accelerate config`` of the user's fills in what the command line leaves
    out. gpu_ids: the GPUs this run may use (concurrent sweep runs get disjoint ones); None: all.
    """
    n = cfg.parallel.num_processes
    device = effective_device(cfg)
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", inductor_cache_dir())  # compile: true reuses compiled code
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if n > 1:
        cmd.append("--multi_gpu")
    if config_file is not None:
        cmd += ["--config_file", config_file]
    if device == "cuda" and gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(physical_gpu_ids(gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES")))
    cmd += [
        "--num_processes", str(n),
        "--num_machines", "1",
        "--mixed_precision", "no",  # the worker sets precision on its Accelerator, per the config
        "--dynamo_backend", "no",
        "--main_process_port", str(port),
        "--monitor_interval", "0.2",
    ]  # fmt: skip
    if log_dir is not None:
        if n > 1:
            cmd += ["--log_dir", log_dir]  # torchelastic sets TORCHELASTIC_ERROR_FILE per rank under it
        else:  # one process runs without torchelastic: name the file ourselves
            os.makedirs(os.path.join(log_dir, "0"), exist_ok=True)
            env["TORCHELASTIC_ERROR_FILE"] = os.path.join(log_dir, "0", "error.json")
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        # One process per core share: without this each rank starts a thread per core and they fight. A count
        # the caller set (OMP_NUM_THREADS, or launch's threads_per_process) wins: runs started side by side must
        # divide the cores between them. Oversubscribed OpenMP threads spin while they wait for each other;
        # measured on 2 cores with other jobs running: a 20-step 1-process quickstart run took 14.1 s of CPU
        # (40 s) with 2 threads and 3.3 s (4 s) with 1.
        env.setdefault("OMP_NUM_THREADS", str(cpu_share(n)))
    cmd += ["-m", "workbench.worker", config_path] + (["--resume"] if resume else [])
    return cmd, env


ACCELERATE_CONFIG = "accelerate_config.yaml"  # the run's own Accelerate config, in its run folder


def write_accelerate_config(cfg: RunConfig, run_dir: str, gpu_ids: list[int] | None = None) -> str:
    """Write the run's minimal Accelerate config into its folder; returns its path.

    Without ``--config_file``, ``accelerate launch`` reads ~/.cache/huggingface/accelerate/default_config.yaml
    (common on GPU machines) for whatever the command line leaves out: its distributed_type (with one process
    nothing on the command line overrides it), gpu_ids, fsdp and fp8 keys. This file states every one of them
    as the command line means it; the worker sets precision and the layout itself.
    """
    import yaml

    n = cfg.parallel.num_processes
    content = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if n > 1 else "NO",  # on CPU, ACCELERATE_USE_CPU=1 makes it gloo
        "num_processes": n,
        "num_machines": 1,
        "machine_rank": 0,
        "gpu_ids": ",".join(str(i) for i in gpu_ids) if gpu_ids else "all",
        "mixed_precision": "no",  # the worker's Accelerator gets the config's precision
        "use_cpu": False,  # `--cpu` would start ONE process on CPU (see the module's docstring)
        "downcast_bf16": "no",
        "dynamo_config": {},  # compile: true is the workbench's own (workbench/parallel/compiling.py)
        "fsdp_config": {},
        "debug": False,
        "enable_cpu_affinity": False,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    path = os.path.join(run_dir, ACCELERATE_CONFIG)
    with open(path, "w") as f:
        f.write("# Written by workbench.launch for this run: the launch reads this, never ~/.cache/huggingface.\n")
        yaml.safe_dump(content, f, sort_keys=False)
    return path


def physical_gpu_ids(gpu_ids: list[int], cuda_visible: str | None) -> list[str]:
    """gpu_ids index the GPUs this process sees: under CUDA_VISIBLE_DEVICES, they name its entries."""
    seen = [x.strip() for x in cuda_visible.split(",") if x.strip()] if cuda_visible else None
    return [seen[i] if seen is not None and i < len(seen) else str(i) for i in gpu_ids]


def inductor_cache_dir() -> str:
    """Where torch.compile's inductor caches its compiled code between runs: the workbench's cache folder."""
    from workbench.plan.devices import cache_dir

    return os.path.join(cache_dir(), "inductor")


@dataclass
class RankError:
    """One rank's exception, as ``@record`` wrote it to torchelastic's error file."""

    rank: int
    message: str
    traceback: str
    timestamp: float  # seconds; the file's modification time breaks ties of torchelastic's whole seconds


def rank_errors(run_dir: str) -> dict[int, RankError]:
    """rank -> the error its worker recorded, from RUN_DIR/elastic/**/<rank>/error.json (latest attempt wins)."""
    out: dict[int, RankError] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, ELASTIC_DIR, "**", "error.json"), recursive=True)):
        rank_dir = os.path.basename(os.path.dirname(path))
        data = read_json(path)
        if not rank_dir.isdigit() or not isinstance(data, dict):
            continue
        msg = data.get("message", {})
        if not isinstance(msg, dict):  # torchelastic also accepts a plain message
            msg = {"message": str(msg), "extraInfo": {}}
        extra = msg.get("extraInfo") or {}
        stamp = float(extra.get("timestamp") or 0) + (os.path.getmtime(path) % 1)
        out[int(rank_dir)] = RankError(int(rank_dir), str(msg.get("message", "")), extra.get("py_callstack", ""), stamp)
    return out


# torchelastic's failure summary: the one thing its error files cannot say is how a rank that never raised
# died (a signal). Only that exit code is read from its stderr.
# One entry of its summary: "  rank      : 1 (local_rank: 1)" and on the next line "  exitcode  : -9 (pid: ...)".
# Line by line: the agent's own log lines say "failed (exitcode: -15) local_rank: 0" earlier in the same stderr.
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)", re.M)


def elastic_root_cause(stderr_tail: str) -> tuple[int, int] | None:
    """(rank, exit code) of the first rank torchelastic saw fail, from its "Root Cause" summary, or None."""
    text = stderr_tail[stderr_tail.find("Root Cause") :] if "Root Cause" in stderr_tail else stderr_tail
    m = _FAILED_RANK.search(text)
    return (int(m.group(1)), int(m.group(2))) if m else None


# gloo's words for a peer that went away: "Read error", "Connection closed by peer", and (pair.cc:553) "Connection
# closed ... typically caused by a remote worker crashing"
_PEER_GONE = re.compile(r"Read error|Connection closed|Connection reset by peer|Broken pipe|remote worker crash", re.I)


def signalled_ranks(stderr_tail: str, errors: dict[int, RankError]) -> list[tuple[int, int]]:
    """(rank, exit code) of every rank torchelastic lists as ended by a signal that left no error file."""
    found = [(int(r), int(c)) for r, c in _FAILED_RANK.findall(stderr_tail)]
    return [(r, c) for r, c in dict.fromkeys(found) if c < 0 and r not in errors]


def explain_failure(run_dir: str, rc: int) -> str:
    """The cause of a failed job, in words: which rank, how, and its traceback.

    A rank that raised left an error file: torchelastic's root-cause rank, else the earliest, is the cause. A
    rank killed by a signal leaves none, and the survivors then raise "connection closed" errors in its wake:
    those are never the cause while a real exception or a killed rank explains the failure.
    """
    errors = rank_errors(run_dir)
    try:
        with open(os.path.join(run_dir, "stderr.log"), errors="replace") as f:
            tail = f.read()[-20000:]
    except OSError:
        tail = ""
    root = elastic_root_cause(tail)
    # Survivors of a dead peer raise "connection closed"-style errors in its wake: never the cause while a real
    # exception, or a rank killed by a signal (which leaves no error file), explains the failure.
    real = {r: e for r, e in errors.items() if not _PEER_GONE.search(e.message + e.traceback)}
    if real:
        # torchelastic's root-cause rank when it left a real traceback (it SIGTERMs, then SIGKILLs, ranks still
        # unwinding once another failed, so it may list the raiser as killed), else the first to raise
        return _raised(real[root[0]] if root and root[0] in real else min(real.values(), key=lambda e: e.timestamp))
    killed = signalled_ranks(tail, errors)
    if killed:
        return _died(*(root if root in killed else killed[0]))
    if errors:
        return _raised(min(errors.values(), key=lambda e: e.timestamp))
    if root:
        return f"rank {root[0]} exited with code {root[1]}.\n\n" + tail[-3000:]
    return f"the launcher exited with code {rc}.\n\n" + tail[-3000:]


def _raised(e: RankError) -> str:
    return f"rank {e.rank} raised {e.message}:\n{e.traceback.strip() or e.message}"


def _died(rank: int, code: int) -> str:
    try:
        sig = signal.Signals(-code).name
    except ValueError:
        sig = f"signal {-code}"
    return (
        f"rank {rank} died ({sig}); the other ranks were shut down. Killed from outside, or by the kernel's "
        "out-of-memory killer (check `dmesg`); metrics and checkpoints written before it are kept."
    )


def popen_launcher(cmd: list[str], env: dict[str, str], out: Any, err: Any) -> subprocess.Popen:
    """The cold path's launcher: `accelerate launch ...` as a new process."""
    return subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd())


def supervise(run_dir: str, resume: bool = False, start: Callable[..., Any] | None = None) -> int:
    """Run the job to its end and write the final status. Entry point of `python -m workbench.launch`.

    start(cmd, env, stdout, stderr) starts the launcher and returns a Popen-like handle (pid, wait): the cold
    path's popen_launcher by default; the warm pool forks it instead (workbench.pool.fork_launcher).
    """
    cfg = RunConfig.from_yaml(os.path.join(run_dir, "config.yaml"))
    log_dir = os.path.join(run_dir, ELASTIC_DIR)
    ids = read_json(os.path.join(run_dir, GPU_IDS)) if os.path.exists(os.path.join(run_dir, GPU_IDS)) else None
    acc_cfg = write_accelerate_config(cfg, run_dir, ids)
    cmd, env = accelerate_command(
        cfg, os.path.join(run_dir, "config.yaml"), free_port(), resume, log_dir, config_file=acc_cfg, gpu_ids=ids
    )
    env["WORKBENCH_RUN_DIR"] = run_dir
    with open(os.path.join(run_dir, "stdout.log"), "ab") as out, open(os.path.join(run_dir, "stderr.log"), "ab") as err:
        launcher = (start or popen_launcher)(cmd, env, out, err)
        write_status(
            run_dir,
            state="running",
            launch_path="cold" if start is None else "warm",
            supervisor_pid=os.getpid(),
            launcher_pid=launcher.pid,
            started=time.time(),
            command=" ".join(cmd[1:]),
            device=DeviceInfo.detect().kind,
        )

        def forward(signum, frame):  # SIGTERM to the supervisor: ask for a graceful stop
            with open(os.path.join(run_dir, "STOP"), "w") as f:
                f.write(str(time.time()))

        signal.signal(signal.SIGTERM, forward)
        rc = _wait_launcher(launcher, run_dir)
    st = read_status(run_dir)
    state = st.get("state")
    if rc == 0 and state in ("finished", "stopped"):
        write_status(run_dir, ended=time.time(), exit_code=rc)
    else:
        error = explain_failure(run_dir, rc) if rc != 0 else "workers exited without reporting an end"
        write_status(run_dir, state="failed", error=error, ended=time.time(), exit_code=rc)
    kill_workers(run_dir)  # any worker still alive after the launcher ended (e.g. the launcher was killed)
    return 0


def _wait_launcher(launcher: Any, run_dir: str, grace_s: float = 3.0) -> int:
    """Wait for the launcher; once a rank has reported an error, give the job grace_s to end by itself.

    torchelastic SIGTERMs the surviving ranks when one fails, then waits 30 s before SIGKILL (not
    configurable from outside). A rank that is stopped (SIGSTOP) or stuck in native code ignores SIGTERM, so
    the run would hang on for those 30 s; killing the ranks ourselves ends it within the grace period.
    """
    first_error = None
    while True:
        try:
            rc = launcher.wait(timeout=0.2)
            # A warm pool for the next launch, if none, once this run is over: its imports (seconds of CPU) started
            # while the ranks trained took their cores (measured: a 2-process ddp run at 8.3k tokens/s beside a
            # starting pool, 13.1k without).
            pool_client.warm_up()
            return rc
        except subprocess.TimeoutExpired:
            pass
        if first_error is None:
            if rank_errors(run_dir):
                first_error = time.monotonic()
        elif time.monotonic() - first_error > grace_s:
            kill_workers(run_dir)
            first_error = float("inf")  # once


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.launch", description="supervise one run's job")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true", help="the workers continue from the last checkpoint")
    args = p.parse_args(argv)
    return supervise(os.path.abspath(args.run_dir), resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
