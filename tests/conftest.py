"""Shared fixtures: every test works in its own temporary folder, with the quickstart config at hand."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh temp folder, so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def quickstart():
    import workbench as wb

    return wb.RunConfig.from_yaml(QUICKSTART)


@pytest.fixture
def small(quickstart):
    """A config that trains in a few seconds on 2 CPU processes."""
    return quickstart.override(
        {"max_steps": 20, "log_every": 5, "eval_every": 10, "grad_accum_steps": 2, "schedule.warmup_steps": 5}
    )


@pytest.fixture
def allreduce():
    """The test layout of tests/allreduce_layout.py, registered for one test (then the built-in layouts only)."""
    import importlib

    import workbench as wb
    from workbench.config import unregister_layout

    spec = wb.register_layout(importlib.import_module("tests.allreduce_layout").SPEC, replace=True)
    yield spec
    unregister_layout(spec.name)


def pytest_configure(config):
    """Once per session, in the controlling process (before any xdist worker starts): a cache folder of the
    session's own, so tests never read or write the user's ~/.cache/workbench, and the CPU's fp32 matmul peak
    measured there while the machine is still quiet. Measured later, while two test workers train side by
    side, the peak would read low and every MFU would be left out (workbench/plan/devices.py)."""
    if hasattr(config, "workerinput"):
        return
    # One thread per process, inherited by the test workers, notebook kernels and every rank they launch: the
    # suite runs several of them at once on the machine's few cores, and OpenMP threads that outnumber the cores
    # spin while they wait for each other (measured on 2 cores under load: a 20-step 1-process quickstart run,
    # 14.1 s of CPU with 2 threads against 3.3 s with 1). Ranks follow it: launch() keeps a caller's count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start_warm_pool()
    if os.environ.get("WORKBENCH_CACHE_DIR"):
        return
    import tempfile

    os.environ["WORKBENCH_CACHE_DIR"] = tempfile.mkdtemp(prefix="wb-test-cache-")
    from workbench.plan.devices import cpu_peak_flops

    for threads in (1, 2):  # one per process under 2-process launches, both cores for one process
        cpu_peak_flops("fp32", threads=threads)


SESSION_POOL: list[str] = []  # the pool folder this (controlling) process made, if any


def start_warm_pool() -> None:
    """The session's own warm pool (workbench/pool.py), in a folder of its own: the suite's launches fork from it,
    with the session's environment, and the user's pool is never stopped or used here. Started now, so it is
    importing while the first tests run; stopped when the session ends (pytest_unconfigure)."""
    import tempfile

    from workbench import pool_client

    if not pool_client.enabled():
        return
    os.environ[pool_client.DIR_ENV] = tempfile.mkdtemp(prefix="wb-test-pool-")
    SESSION_POOL.append(os.environ[pool_client.DIR_ENV])
    pool_client.warm_up()


def pytest_unconfigure(config):
    if SESSION_POOL and not hasattr(config, "workerinput"):
        from workbench import pool_client

        pool_client.stop_pool()


# The files that train the most, slowest first (wall seconds each, measured with `pytest -n 3 --durations` on
# the 2-core machine, 2026-11-30). `--dist loadfile` hands whole files to the workers in collection order:
# started last, a long file would run on alone at the end while the other workers sit idle.
LONGEST_FIRST = (
    "tests/test_parallel.py",  # 372
    "tests/test_reliability.py",  # 238
    "tests/test_finetune.py",  # 165
    "notebooks/09_finetuning.ipynb",  # 162
    "tests/test_train.py",  # 159
    "notebooks/05_model_parallel.ipynb",  # 98
    "tests/test_widgets.py",  # 87
    "notebooks/02_mixed_precision.ipynb",  # 81
    "tests/test_hf.py",  # 79
    "notebooks/14_hugging_face.ipynb",  # 71
)


def pytest_collection_modifyitems(config, items):
    """Longest files first (see LONGEST_FIRST); the rest keep their order, the items within a file too."""

    def rank(item) -> int:
        path = os.path.relpath(str(item.path), ROOT)
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: a file's own items stay in order
