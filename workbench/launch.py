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
starts N processes that never synchronise (../shared/FACTS.md). What really gives N gloo ranks is
`ACCELERATE_USE_CPU=1` together with `--multi_gpu --num_processes N`; the worker also passes
`Accelerator(cpu=True)` and records the world size it really got, which the tests assert.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig, effective_device
from workbench.runs import Run, read_status, write_status


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_launchable(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> list[Problem]:
    problems = cfg.validate()
    if problems:
        return problems
    run_dir = cfg.run_dir
    if os.path.exists(run_dir) and not (overwrite or resume):
        problems.append(
            Problem(
                "name",
                f"run folder {run_dir!r} already exists; pick another name, or ask for resume=True "
                "(continue from its last checkpoint) or overwrite=True (delete it)",
            )
        )
    if resume and not (
        os.path.isdir(os.path.join(run_dir, "checkpoints")) and os.listdir(os.path.join(run_dir, "checkpoints"))
    ):
        problems.append(Problem("name", f"resume asked for, but {run_dir!r} holds no checkpoint"))
    if resume and overwrite:
        problems.append(Problem("name", "ask for resume or overwrite, not both"))
    return problems


def launch(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> Run:
    """Start training in the background and return its Run at once.

    Raises ConfigError (one message per problem, each naming its key) before any process starts.
    """
    problems = check_launchable(cfg, overwrite=overwrite, resume=resume)
    if problems:
        raise ConfigError(problems)
    run_dir = os.path.abspath(cfg.run_dir)
    if overwrite and os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if resume:
        for f in ("STOP",):
            if os.path.exists(os.path.join(run_dir, f)):
                os.remove(os.path.join(run_dir, f))
        for f in os.listdir(run_dir):
            if f.startswith("error_rank"):
                os.remove(os.path.join(run_dir, f))
    cfg.to_yaml(os.path.join(run_dir, "config.yaml"))
    write_status(run_dir, state="starting", error=None, resume=resume, host=os.uname().nodename)
    out = open(os.path.join(run_dir, "supervisor.log"), "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.launch", run_dir],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=_env_with_project_on_path(),
    )
    out.close()
    return Run(run_dir, process=proc)


def _env_with_project_on_path() -> dict[str, str]:
    # The workers import user factories ("mypkg.models:build") by name: put the caller's cwd on their path.
    env = dict(os.environ)
    paths = [os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def accelerate_command(cfg: RunConfig, config_path: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment that give cfg.parallel.num_processes ranks."""
    n = cfg.parallel.num_processes
    device = effective_device(cfg)
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if n > 1:
        cmd.append("--multi_gpu")
    cmd += [
        "--num_processes", str(n),
        "--num_machines", "1",
        "--mixed_precision", "no",  # the worker sets precision on its Accelerator, per the config
        "--dynamo_backend", "no",
        "--main_process_port", str(port),
        "--monitor_interval", "0.2",
    ]  # fmt: skip
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        # One process per core share: without this each rank starts a thread per core and they fight.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    cmd += ["-m", "workbench.worker", config_path]
    return cmd, env


_FAILED_RANK = re.compile(r"rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


def _explain_failure(run_dir: str, rc: int) -> str:
    """The cause of a failed job, in words: which rank, how, and its traceback.

    torchelastic's "Root Cause" names the first rank to fail. A rank killed by a signal leaves no traceback,
    and the survivors then raise "connection closed" errors in its wake: those are not the cause.
    """
    errors = {}
    for f in os.listdir(run_dir):
        if f.startswith("error_rank") and f.endswith(".txt"):
            path = os.path.join(run_dir, f)
            with open(path, errors="replace") as fh:
                errors[f[len("error_rank") : -4]] = (os.path.getmtime(path), fh.read().strip())
    try:
        with open(os.path.join(run_dir, "stderr.log"), errors="replace") as f:
            tail = f.read()[-20000:]
    except OSError:
        tail = ""
    m = _FAILED_RANK.search(tail[tail.find("Root Cause") :] if "Root Cause" in tail else tail)
    if m and m.group(1) in errors:
        # The root-cause rank left a traceback: that is the cause, even when torchelastic reports it as killed
        # (it SIGTERMs, then SIGKILLs, ranks still unwinding once another one failed).
        return f"rank {m.group(1)} raised:\n{errors[m.group(1)][1]}"
    if m and int(m.group(2)) < 0:
        rank, code = int(m.group(1)), int(m.group(2))
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        return (
            f"rank {rank} died ({sig}); the other ranks were shut down. Killed from outside, or by the kernel's "
            "out-of-memory killer (check `dmesg`); metrics and checkpoints written before it are kept."
        )
    if errors:
        rank, (_, text) = min(errors.items(), key=lambda kv: kv[1][0])  # the first to fail is the cause
        return f"rank {rank} raised:\n{text}"
    if m:
        return f"rank {m.group(1)} exited with code {m.group(2)}.\n\n" + tail[-3000:]
    return f"the launcher exited with code {rc}.\n\n" + tail[-3000:]


def supervise(run_dir: str) -> int:
    """Run the job to its end and write the final status. Entry point of `python -m workbench.launch`."""
    cfg = RunConfig.from_yaml(os.path.join(run_dir, "config.yaml"))
    cmd, env = accelerate_command(cfg, os.path.join(run_dir, "config.yaml"), free_port())
    env["WORKBENCH_RUN_DIR"] = run_dir
    with open(os.path.join(run_dir, "stdout.log"), "ab") as out, open(os.path.join(run_dir, "stderr.log"), "ab") as err:
        launcher = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd())
        write_status(
            run_dir,
            state="running",
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
        error = _explain_failure(run_dir, rc) if rc != 0 else "workers exited without reporting an end"
        write_status(run_dir, state="failed", error=error, ended=time.time(), exit_code=rc)
    _reap_workers(run_dir)
    return 0


def _wait_launcher(launcher: subprocess.Popen, run_dir: str, grace_s: float = 3.0) -> int:
    """Wait for the launcher; once a rank has reported an error, give the job grace_s to end by itself.

    torchelastic SIGTERMs the surviving ranks when one fails, then waits 30 s before SIGKILL (not
    configurable from outside). A rank that is stopped (SIGSTOP) or stuck in native code ignores SIGTERM, so
    the run would hang on for those 30 s; killing the ranks ourselves ends it within the grace period.
    """
    first_error = None
    while True:
        try:
            return launcher.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if first_error is None:
            if any(f.startswith("error_rank") for f in os.listdir(run_dir)):
                first_error = time.monotonic()
        elif time.monotonic() - first_error > grace_s:
            _reap_workers(run_dir)
            first_error = float("inf")  # once


def _reap_workers(run_dir: str) -> None:
    """Kill any worker still alive after the launcher ended (e.g. the launcher itself was killed)."""
    for f in os.listdir(run_dir):
        if f.startswith(".rank") and f.endswith(".pid"):
            try:
                with open(os.path.join(run_dir, f)) as fh:
                    pid = int(fh.read().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as fh:  # never a recycled PID of someone else
                    if b"workbench.worker" not in fh.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass


if __name__ == "__main__":
    sys.exit(supervise(os.path.abspath(sys.argv[1])))
