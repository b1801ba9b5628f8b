"""Warm launches (workbench.pool): runs fork from a pool that has imported torch once, and are never stale.

An edited user module is trained by the next warm launch; a killed pool costs one cold launch and is replaced;
`workbench pool stop` and the idle timeout end it; the checks that keep it from forking stale code or CUDA.
This file's pool lives in a folder of its own, so the suite's shared pool is never stopped or killed here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import workbench as wb
from workbench import pool, pool_client

WIDTH_MODULE = """
import torch.nn as nn
WIDTH = {w}
def model(cfg):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(cfg.data.vocab_size, WIDTH)
            self.out = nn.Linear(WIDTH, cfg.data.vocab_size)
        def forward(self, x, y=None):
            logits = self.out(self.emb(x))
            if y is None:
                return logits
            return logits, nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    return M()
"""


@pytest.fixture(scope="module")
def own_pool(tmp_path_factory):
    """A pool folder of this file's own (WORKBENCH_POOL_DIR), with a pool started in it."""
    folder = tmp_path_factory.mktemp("pool")
    os.chmod(folder, 0o700)
    old = os.environ.get(pool_client.DIR_ENV)
    os.environ[pool_client.DIR_ENV] = str(folder)
    out = subprocess.run(["workbench", "pool", "start"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    yield folder
    pool_client.stop_pool()
    if old is None:
        os.environ.pop(pool_client.DIR_ENV, None)
    else:
        os.environ[pool_client.DIR_ENV] = old


def _first_event(run) -> dict:
    events = []
    for ev in run.follow(timeout=300):
        events.append(ev)
    assert run.wait(timeout=300) == "finished", run.error
    return events[0]


def test_an_edited_user_module_is_trained_by_the_next_warm_launch(own_pool, workdir, quickstart):
    counts = []
    for w in (16, 48):
        (workdir / "my_width.py").write_text(WIDTH_MODULE.format(w=w))
        cfg = quickstart.override({"name": f"edit{w}", "model.arch": "my_width:model", "max_steps": 3, "log_every": 1,
                                   "eval_every": 0})  # fmt: skip
        run = wb.launch(cfg)
        counts.append(_first_event(run)["trainable_params"])
        assert run.info["launch_path"] == "warm"
        assert run.info["effective"]["world_size"] == 2
    v = quickstart.data.vocab_size
    assert counts == [v * 16 + 16 * v + v, v * 48 + 48 * v + v], counts


def test_a_killed_pool_falls_back_to_a_cold_launch_and_is_replaced(own_pool, workdir, small):
    pid = pool_client.pool_pid()
    assert pid is not None and pool_client.pool_info() is not None
    os.kill(pid, signal.SIGKILL)  # no clean-up: its socket file and pid file stay behind
    t0 = time.time()
    while pool_client.pool_pid() is not None and time.time() - t0 < 10:
        time.sleep(0.05)
    assert os.path.exists(pool_client.pool_file("sock"))  # a dead pool's socket: connecting is refused
    run = wb.launch(small.override({"name": "after-crash", "max_steps": 4, "log_every": 2}))
    assert run.wait(timeout=300) == "finished", run.error
    assert run.info["launch_path"] == "cold"
    # that cold run's supervisor started a fresh pool when it ended: the next launch is warm again
    assert pool_client.wait_ready(120), "no new pool after the cold run"
    assert pool_client.pool_pid() != pid
    again = wb.launch(small.override({"name": "warm-again", "max_steps": 4, "log_every": 2}))
    assert again.wait(timeout=300) == "finished", again.error
    assert again.info["launch_path"] == "warm"


def test_pool_stop_and_idle_exit(own_pool, workdir):
    assert pool_client.pool_info() is not None or pool_client.wait_ready(120)
    status = subprocess.run(["workbench", "pool", "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "warm pool" in status.stdout and "RSS" in status.stdout, status
    out = subprocess.run(["workbench", "pool", "stop"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "stopped" in out.stdout, out
    assert pool_client.pool_pid() is None and pool_client.pool_info() is None
    assert not os.path.exists(pool_client.pool_file("sock"))
    # a pool asked to end after 0.05 idle minutes (3 s) does, by itself
    out = subprocess.run(["workbench", "pool", "start", "--idle-minutes", "0.05"], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    pid = pool_client.pool_pid()
    t0 = time.time()
    while pool_client.pool_pid() is not None and time.time() - t0 < 60:
        time.sleep(0.2)
    assert pool_client.pool_pid() is None, "the pool did not end when idle"
    with open(pool_client.pool_file("log")) as f:
        assert f"pool {pid}: ended (idle for 3 s)" in f.read()


def test_warm_launches_off(monkeypatch, tmp_path):
    monkeypatch.setenv(pool_client.DIR_ENV, str(tmp_path))
    monkeypatch.setenv(pool_client.ENABLE_ENV, "0")
    assert pool_client.warm_up() is None
    assert pool_client.start_supervisor(str(tmp_path), False, dict(os.environ)) is None


def test_an_edited_source_file_makes_the_pool_refuse(tmp_path, monkeypatch):
    mod = tmp_path / "wb_pool_probe_mod.py"
    mod.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import wb_pool_probe_mod  # noqa: F401  (a module "the pool imported")

    recorded = pool.source_files()
    assert str(mod) in recorded and pool.changed_source(recorded) is None
    mod.write_text("X = 22\n")
    assert pool.changed_source(recorded) == str(mod)
    # an edit between the import and the recording: the file is newer than the moment the import began
    stamp = {str(mod): pool.source_files()[str(mod)]}
    assert pool.edited_since(stamp, time.time() - 60) == str(mod)
    assert pool.edited_since(stamp, time.time() + 1) is None
    assert abs(pool.process_started() - time.time()) < 24 * 3600
    sys.modules.pop("wb_pool_probe_mod")


def test_import_time_environment_must_match():
    base = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/bin", "PYTHONPATH": "/a"}
    assert pool.env_difference(base, dict(base, OMP_NUM_THREADS="2", PATH="/x", PYTHONPATH="/b")) is None
    assert pool.env_difference(base, dict(base, HF_HUB_OFFLINE="0")) == "HF_HUB_OFFLINE"
    assert pool.env_difference(base, dict(base, PYTHONHASHSEED="0")) == "PYTHONHASHSEED"
    # the pool turns the hub offline (as the workbench does before importing transformers): unset means the same
    offline = dict(base, HF_DATASETS_OFFLINE="1")
    assert pool.env_difference(offline, {k: v for k, v in offline.items() if not k.startswith("HF_")}) is None
    assert pool.env_difference(base, dict(base, TORCHELASTIC_SIGNALS_TO_HANDLE="SIGINT")) is None  # read at launch
    # and a launch with other import-time values is routed to a pool of its own (never ending another's)
    assert pool_client.pool_key(base) == pool_client.pool_key(dict(base, OMP_NUM_THREADS="2"))
    assert pool_client.pool_key(base) != pool_client.pool_key(dict(base, HF_HUB_OFFLINE="0"))


def test_no_fork_where_cuda_is_initialised(monkeypatch):
    """The pool never forks from a process where CUDA is initialised (forked children could not use it)."""
    import torch

    assert not pool.cuda_initialised()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert pool.cuda_initialised()
    fake = pool.Pool.__new__(pool.Pool)
    fake.sources, fake.unsure, fake.env, fake.max_rss = {}, None, {}, float("inf")
    assert "CUDA" in fake.refusal({"env": {}})
