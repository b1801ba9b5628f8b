"""notebook_launch: run a training loop written in a notebook cell on N processes, as a run folder.

Wraps ``accelerate.notebook_launcher`` (which forks, so functions defined in cells work). Two traps it
handles (measured with accelerate 1.15): on CPU each worker silently has world size 1 unless ACCELERATE_USE_CPU=1 is
set, and the launcher's own ``mixed_precision=`` argument has no effect — pass precision to the
``Accelerator`` you build inside ``fn``.

Inside ``fn``, ``wb.Reporter(accelerator)`` writes metric events to this run's metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from typing import Any

from workbench.config import NAME_RE, ConfigError, Problem
from workbench.fileio import resolve_runs_dir
from workbench.runs import Run, write_status


def notebook_launch(
    fn: Callable[..., Any],
    *args: Any,
    num_processes: int = 2,
    name: str = "notebook",
    runs_dir: str = "runs",
    overwrite: bool = True,
    use_port: str | None = None,
) -> Run:
    """Run ``fn(*args)`` on ``num_processes`` processes (CPU/gloo, or GPUs when present); blocks until done.

    Returns the Run of the folder ``runs_dir/name``: status finished or failed (with the worker's error).
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError([Problem("name", f"{name!r} is not a safe single folder name")])
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigError([Problem("parallel.num_processes", f"must be a whole number >= 1, got {num_processes!r}")])
    from accelerate import notebook_launcher

    from workbench.config import DeviceInfo

    run_dir = os.path.join(resolve_runs_dir(runs_dir), name)
    if os.path.exists(run_dir):
        if not overwrite:
            raise ConfigError([Problem("name", f"run folder {run_dir!r} exists; pass overwrite=True or another name")])
        import shutil

        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(f"# notebook_launch of {getattr(fn, '__name__', 'fn')}\nname: {name}\n")
        f.write(f"parallel: {{num_processes: {num_processes}}}\n")
    write_status(run_dir, state="running", started=time.time(), kind="notebook_launch", host=os.uname().nodename)
    old = {k: os.environ.get(k) for k in ("ACCELERATE_USE_CPU", "WORKBENCH_RUN_DIR")}
    if DeviceInfo.detect().kind == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # without it each forked worker has world size 1
    os.environ["WORKBENCH_RUN_DIR"] = run_dir
    try:
        notebook_launcher(fn, args, num_processes=num_processes, use_port=use_port or str(_free_port()))
        write_status(run_dir, state="finished", ended=time.time())
    except BaseException as e:  # ChildFailedError carries the worker's message
        write_status(
            run_dir, state="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc()}", ended=time.time()
        )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Run(run_dir)


def _free_port() -> int:
    from workbench.launch import free_port

    return free_port()
