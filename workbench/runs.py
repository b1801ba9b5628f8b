"""Run folders on disk and the Run handle that follows one.

A run folder ``runs/<name>/`` holds:
    config.yaml        the RunConfig, as `workbench train` reads it
    status.json        {"state": running|finished|failed|stopped, "error": ..., "effective": {...}, ...}
    metrics.jsonl      one metric event a line (see workbench.telemetry)
    tensorboard/       TensorBoard event files (one TensorBoard run per job)
    checkpoints/       accelerator.save_state folders, step_<N>/
    stdout.log, stderr.log   what the launcher and workers printed
    STOP               written by Run.stop(); rank 0 sees it and the ranks agree to stop
    .rank<r>.pid       each worker's PID (Run.kill and the supervisor end leftover workers with them)
    elastic/           torchelastic's per-rank error.json files (see workbench.launch.explain_failure)

status.json's keys are defined in workbench.status.

Nothing here imports torch, so a notebook or the CLI can list and follow runs instantly.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

from workbench import checkpoints
from workbench.fileio import JsonlTail, read_jsonl, resolve_runs_dir
from workbench.prediction import check, measured_tokens_per_s, planned_of, predicted_tokens_per_s, prediction_check
from workbench.status import TERMINAL, read_status, write_status

__all__ = [
    "TERMINAL",
    "Run",
    "kill_workers",
    "list_runs",
    "next_free_name",
    "read_status",
    "worker_pids",
    "write_status",
]


def worker_pids(run_dir: str) -> dict[int, int]:
    """rank -> PID of the run's workers, from the .rank<r>.pid files each worker writes when it starts."""
    out = {}
    for f in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        if f.startswith(".rank") and f.endswith(".pid") and f[5:-4].isdigit():
            try:
                with open(os.path.join(run_dir, f)) as fh:
                    out[int(f[5:-4])] = int(fh.read().strip())
            except (OSError, ValueError):
                pass
    return out


def kill_workers(run_dir: str) -> list[int]:
    """SIGKILL every worker of the run still alive; returns the PIDs signalled.

    The workers lead their own process groups (torchelastic starts them with start_new_session), so killing the
    launcher or its group never reaches them: a killed launcher leaves them training on. Each PID is checked to
    still be a workbench worker first, never a recycled PID of someone else.
    """
    killed = []
    for pid in worker_pids(run_dir).values():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            if b"workbench.worker" not in cmdline and b"workbench.pool" not in cmdline:  # cold, or warm (forked)
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ValueError):
            pass
    return killed


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (our own exited child not yet reaped) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class Run:
    """A handle on a run folder: its status, metrics, error, and control (stop, wait)."""

    def __init__(self, path: str, process: Any = None):
        self.path = os.path.abspath(path)
        self._process = process  # the supervisor's Popen when this kernel launched it
        self._tail = JsonlTail(os.path.join(self.path, "metrics.jsonl"))

    def __repr__(self) -> str:
        return f"Run({self.name!r}, status={self.status!r})"

    @classmethod
    def attach(cls, path: str) -> Run:
        """A run started earlier, by another kernel or the CLI."""
        if not os.path.isfile(os.path.join(path, "config.yaml")):
            raise FileNotFoundError(f"{path!r} is not a run folder (no config.yaml)")
        return cls(path)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def config(self):
        from workbench.config import RunConfig

        return RunConfig.from_yaml(os.path.join(self.path, "config.yaml"))

    @property
    def status(self) -> str:
        """running, finished, failed or stopped (or "pending" before the supervisor has written it)."""
        st = read_status(self.path)
        state = st.get("state", "pending")
        if state not in TERMINAL:
            # Nobody left to write the final status (the supervisor died with a machine or was killed).
            pid = st.get("supervisor_pid")
            if self._process is not None:
                if self._process.poll() is not None:
                    st = read_status(self.path)
                    state = st.get("state", "failed")
                    if state not in TERMINAL:
                        state = "failed"
            elif pid and not _pid_alive(pid) and st.get("host") == os.uname().nodename:
                state = "failed"
        return state

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def error(self) -> str | None:
        st = read_status(self.path)
        if st.get("error"):
            return st["error"]
        if self.status == "failed":
            return "the run's supervisor ended without writing a status (killed?); see stderr.log"
        return None

    @property
    def info(self) -> dict[str, Any]:
        """The whole status.json: state, error, the effective world size/backend/wrapper/dtype, ..."""
        return read_status(self.path)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(os.path.join(self.path, "metrics.jsonl"))

    def startup(self) -> tuple[str, float] | None:
        """While the run starts (no metric event yet, not ended): what it is doing, in words, and the seconds
        since it was launched; None once its first event is written or it has ended. Read from the folder:
        status.json's state, and the .rank<r>.pid files each worker writes once its process group is up."""
        metrics = os.path.join(self.path, "metrics.jsonl")
        if self.done or (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
            return None
        from workbench.config import ConfigError

        try:
            launched = os.path.getmtime(os.path.join(self.path, "config.yaml"))
            n = self.config.parallel.num_processes
        except (OSError, ConfigError):
            return None
        return startup_words(self.path, read_status(self.path).get("state"), n, launched), time.time() - launched

    def new_metrics(self) -> list[dict[str, Any]]:
        """Events written since the last call (used by follow() and the dashboard)."""
        return self._tail.read()

    def follow(self, poll_s: float = 0.2, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield new metric events as they are written, until the run ends (then the rest, and return)."""
        t0 = time.monotonic()
        while True:
            done = self.done  # read before draining, so events written just before the end are not missed
            yield from self.new_metrics()
            if done:
                yield from self.new_metrics()
                return
            if timeout is not None and time.monotonic() - t0 > timeout:
                return
            time.sleep(poll_s)

    def wait(self, timeout: float | None = None, poll_s: float = 0.1) -> str:
        """Block until the run ends (or timeout seconds pass); returns the status. Never hangs on a dead run."""
        t0 = time.monotonic()
        while not self.done:
            if timeout is not None and time.monotonic() - t0 > timeout:
                break
            time.sleep(poll_s)
        if self._process is not None and self.done:
            try:
                self._process.wait(timeout=10)
            except Exception:
                pass
        return self.status

    def stop(self, wait: bool = False, timeout: float | None = 120) -> None:
        """Ask the workers to stop: they agree at the next log step, save a checkpoint and exit as stopped."""
        if self.done:
            return
        with open(os.path.join(self.path, "STOP"), "w") as f:
            f.write(str(time.time()))
        if wait:
            self.wait(timeout=timeout)

    def kill(self) -> None:
        """Hard stop: SIGKILL the workers and the launcher (no checkpoint). Prefer stop().

        The workers first (from their .rank<r>.pid files): killing only the launcher would orphan them.
        The supervisor, if alive, then records the run as failed.
        """
        kill_workers(self.path)
        pid = read_status(self.path).get("launcher_pid")
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def checkpoints(self) -> list[str]:
        """The run's checkpoints/step_N folders, oldest first."""
        return checkpoints.list_checkpoints(self.path)

    def prediction(self) -> dict[str, Any] | None:
        """Predicted against measured tokens/s, their ratio and the verdict when more than 1.5x off
        (``workbench.prediction.prediction_check``); None before the first timed log interval."""
        return prediction_check(self)

    def summary(self) -> dict[str, Any]:
        """The run in one row (Compare's table, ``workbench runs``): tokens_per_s is the mean of the timed log
        intervals after the first (``prediction.measured_tokens_per_s``; mfu alike); predicted_tokens_per_s is
        the plan's (status.json "planned"), prediction_ratio predicted / measured, prediction_verdict the words
        when that is more than 1.5x off either way (``prediction.check``)."""
        ms = self.metrics()
        losses = [m for m in ms if m.get("loss") is not None]
        evals = [m["eval_loss"] for m in ms if m.get("eval_loss") is not None]
        tps = [m.get("tokens_per_s") for m in ms]
        mfu = [m["mfu"] for m in ms if m.get("mfu") is not None]
        planned = planned_of(self.info, ms[:1])
        pred = check(planned, tps)
        mem = [max(m["mem_bytes"]) for m in ms if m.get("mem_bytes")]
        return {
            "name": self.name,
            "status": self.status,
            "steps": losses[-1]["step"] if losses else 0,
            "final_loss": losses[-1]["loss"] if losses else None,
            "best_eval_loss": min(evals) if evals else None,
            "tokens_per_s": measured_tokens_per_s(tps),
            "predicted_tokens_per_s": predicted_tokens_per_s(planned),
            "prediction_ratio": (pred or {}).get("ratio"),
            "prediction_verdict": (pred or {}).get("verdict"),
            "mfu": sum(mfu[1:]) / len(mfu[1:]) if len(mfu) > 1 else (mfu[0] if mfu else None),
            "peak_mem_bytes": max(mem) if mem else None,
            "path": self.path,
        }


def list_runs(runs_dir: str = "runs") -> list[Run]:
    """Run folders under runs_dir (a relative one under the project root: fileio.resolve_runs_dir), oldest first."""
    runs_dir = resolve_runs_dir(runs_dir)
    if not os.path.isdir(runs_dir):
        return []
    runs = [
        Run(os.path.join(runs_dir, d))
        for d in os.listdir(runs_dir)
        if os.path.isfile(os.path.join(runs_dir, d, "config.yaml"))
    ]
    runs.sort(key=lambda r: os.path.getmtime(os.path.join(r.path, "config.yaml")))
    return runs


def next_free_name(runs_dir: str, name: str) -> str:
    """name when runs_dir/name is free, else the first free one of name-2, name-3, ... (a name that already
    ends in -N counts on from N: after "quickstart-2" comes "quickstart-3")."""
    runs_dir = resolve_runs_dir(runs_dir)
    if not os.path.exists(os.path.join(runs_dir, name)):
        return name
    m = re.fullmatch(r"(.*\D)-(\d+)", name)
    stem, n = (m.group(1), int(m.group(2))) if m else (name, 1)
    while os.path.exists(os.path.join(runs_dir, f"{stem}-{n + 1}")):
        n += 1
    return f"{stem}-{n + 1}"


def startup_words(run_dir: str, state: str | None, processes: int, launched: float) -> str:
    """The start-up phase of a run that has written no metric event yet, in words."""
    if state in (None, "starting"):
        return "starting the supervisor"
    up = [r for r in worker_pids(run_dir) if _mtime(os.path.join(run_dir, f".rank{r}.pid")) >= launched]
    if not up:
        return f"starting {processes} process{'es' if processes != 1 else ''} (accelerate launch; each imports torch)"
    if len(up) < processes:
        return f"{len(up)} of {processes} processes up"
    return f"{processes} process{'es' if processes != 1 else ''} up: building the model and data, first steps"


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0
