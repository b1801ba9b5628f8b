"""Sweeps: a grid of configs launched as ordinary runs, and the HParams record that TensorBoard shows.

    runs = wb.sweep(cfg, {"optimizer.lr": [1e-3, 3e-3], "grad_accum_steps": [1, 4]}, parallel_runs=1)
    runs.wait()                              # or watch them: Compare(runs), Dashboard(runs[0])

Each point of the grid is a run folder named by its values (``quickstart-optimizer.lr=0.001-grad_accum_steps=1``)
under the base config's runs_dir; nothing distinguishes it from a run launched by hand. ``sweep`` validates
every config of the grid before it starts anything, then returns at once: a background thread keeps
``parallel_runs`` of them training until the grid is done (processes share the machine: on 2 CPU cores one
at a time is fastest).

HParams: every run writes TensorBoard's HParams summary through its own event writer
(``workbench.telemetry.write_hparams``, called by the worker), so TensorBoard's HParams dashboard lists each run
with its config and its metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import threading
import time
from typing import Any

from workbench import prelaunch
from workbench.config import ConfigError, Problem, RunConfig, effective_device
from workbench.runs import Run, write_status
from workbench.telemetry import hparams_dict, value_str


def run_name(base_name: str, point: dict[str, Any]) -> str:
    """The folder name of one grid point: base-key=value-key=value (a valid config name, <= 128 chars)."""
    name = "-".join([base_name] + [f"{k}={value_str(v)}" for k, v in point.items()])
    name = "".join(c if c.isalnum() or c in "._=,+-" else "_" for c in name)
    if len(name) > 128:  # keep it a single safe folder name; the hash keeps grid points apart
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name[:119] + "-" + digest
    return name


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid, the first key varying slowest."""
    if not grid:
        return [{}]
    keys = list(grid)
    for k in keys:
        if not isinstance(grid[k], (list, tuple)) or not grid[k]:
            raise ConfigError([Problem(k, f"a sweep needs a non-empty list of values for {k}, got {grid[k]!r}")])
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep_configs(base_cfg: RunConfig, grid: dict[str, list[Any]]) -> list[RunConfig]:
    """One validated RunConfig per grid point; ConfigError listing every problem of every point."""
    configs, problems = [], []
    for point in grid_points(grid):
        try:
            cfg = base_cfg.override(point)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        cfg = cfg.override({"name": run_name(base_cfg.name, point)})
        for p in prelaunch.problems(cfg):
            problems.append(Problem(p.key, f"{p.message} (sweep run {cfg.name})"))
        configs.append(cfg)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        problems.append(Problem("name", "two grid points give the same run name; make the grid's values distinct"))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return configs


class Sweep(list):
    """The sweep's Runs (a list), plus ``wait()``, ``cancel()`` and ``configs``."""

    def __init__(self, runs: list[Run], configs: list[RunConfig]):
        super().__init__(runs)
        self.configs = configs
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, timeout: float | None = None) -> list[str]:
        """Block until every run has ended (or timeout seconds pass); returns their statuses."""
        t0 = time.monotonic()
        if self._thread is not None:
            self._thread.join(timeout)
        while not all(r.done for r in self) and not self._cancel.is_set():
            if timeout is not None and time.monotonic() - t0 > timeout:
                break
            time.sleep(0.2)
        return [r.status for r in self]

    def cancel(self) -> None:
        """Launch no more runs, and ask the running ones to stop (they save a checkpoint)."""
        self._cancel.set()
        for r in self:
            if not r.done and os.path.exists(r.path):
                r.stop()


def gpus_per_run(configs: list[RunConfig], parallel_runs: int, problems: list[Problem]) -> int:
    """GPUs each concurrent slot gets (0 on CPU): runs that train at the same time get disjoint GPUs, so
    parallel_runs x the largest num_processes must fit the machine's GPUs (else a problem is added)."""
    from workbench.config import detected_devices  # looked up at call time: tests stand in a GPU machine

    if not configs or effective_device(configs[0]) != "cuda":
        return 0
    per_run, have = max(c.parallel.num_processes for c in configs), detected_devices().count
    if parallel_runs * per_run > have:
        problems.append(Problem("parallel_runs", f"{parallel_runs} concurrent runs x {per_run} processes need "
                                f"{parallel_runs * per_run} GPUs, this machine has {have}: use parallel_runs "
                                f"<= {max(1, have // per_run)}"))  # fmt: skip
    return per_run


def cpu_threads(cfg: RunConfig, parallel_runs: int) -> int | None:
    """Threads per rank when parallel_runs CPU runs train side by side: the cores shared out among all their
    processes (each run alone would take them all, and oversubscribed OpenMP threads spin). None: on GPUs, or
    when the caller chose OMP_NUM_THREADS."""
    from workbench.launch import cpu_share

    if effective_device(cfg) != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return cpu_share(cfg.parallel.num_processes, parallel_runs)


def sweep(base_cfg: RunConfig, grid: dict[str, list[Any]], parallel_runs: int = 1, overwrite: bool = False) -> Sweep:
    """Launch every point of ``grid`` (dotted key -> values) as its own run; returns their Runs at once.

    At most ``parallel_runs`` train at the same time. Every config is validated, and every run folder checked,
    before the first process starts. overwrite=True deletes the grid's existing run folders first.
    """
    from workbench.launch import check_launchable, launch

    if not isinstance(parallel_runs, int) or parallel_runs < 1:
        raise ConfigError([Problem("parallel_runs", f"must be a whole number >= 1, got {parallel_runs!r}")])
    configs = sweep_configs(base_cfg, grid)
    problems = []
    for cfg in configs:
        problems += [p for p in check_launchable(cfg, overwrite=overwrite) if p not in problems]
    per_run = gpus_per_run(configs, parallel_runs, problems)
    if problems:
        raise ConfigError(problems)
    if overwrite:  # now, not at each launch: a Run of a later point must not show the old folder's status
        for cfg in configs:
            if os.path.exists(cfg.run_dir):
                shutil.rmtree(cfg.run_dir)
    runs = Sweep([Run(os.path.abspath(cfg.run_dir)) for cfg in configs], configs)

    def schedule() -> None:
        # Our own handles of the launched runs: they hold the supervisor process, so a supervisor that died
        # counts as ended, and wait() reaps it.
        active: list[Run] = []

        def busy(r: Run) -> bool:
            # A run's status turns "finished" while its processes are still exiting; the next one starts when
            # the supervisor (our child, which outlives the workers) has exited, so runs never share the CPU.
            proc = getattr(r, "_process", None)
            return proc.poll() is None if proc is not None else not r.done

        slots: dict[int, Run] = {}  # slot i of parallel_runs trains on GPUs [i * per_run, (i + 1) * per_run)
        for cfg, run in zip(configs, runs, strict=True):
            while not runs._cancel.is_set() and sum(1 for r in active if busy(r)) >= parallel_runs:
                time.sleep(0.2)
            if runs._cancel.is_set():
                break
            slot = next(i for i in range(parallel_runs) if i not in slots or not busy(slots[i]))
            ids = list(range(slot * per_run, slot * per_run + cfg.parallel.num_processes)) if per_run else None
            try:
                active.append(launch(cfg, gpu_ids=ids, threads_per_process=cpu_threads(cfg, parallel_runs)))
                slots[slot] = active[-1]
            except Exception as e:  # one point that cannot start must not stop the others
                os.makedirs(run.path, exist_ok=True)
                cfg.to_yaml(os.path.join(run.path, "config.yaml"))
                write_status(run.path, state="failed", error=f"sweep could not launch it: {e}")
        for r in active:
            r.wait()

    # Not a daemon: a script that calls sweep() and returns still trains the whole grid.
    runs._thread = threading.Thread(target=schedule, name="workbench-sweep")
    runs._thread.start()
    return runs


__all__ = ["Sweep", "grid_points", "hparams_dict", "run_name", "sweep", "sweep_configs"]
