"""wb.sweep: a grid launched as ordinary runs, one at a time; HParams written through each run's own
TensorBoard writer, read back with TensorBoard's own reader and its HParams HTTP API."""

from __future__ import annotations

import glob
import json
import os
import urllib.request

import pytest

import workbench as wb
from workbench.config import ConfigError
from workbench.sweep import grid_points, hparams_dict, run_name, sweep_configs


def test_grid_points_and_run_names(quickstart):
    grid = {"optimizer.lr": [1e-3, 3e-3], "grad_accum_steps": [1, 4], "precision": ["fp32", "bf16"]}
    points = grid_points(grid)
    assert len(points) == 8
    assert points[0] == {"optimizer.lr": 1e-3, "grad_accum_steps": 1, "precision": "fp32"}
    assert points[1] == {"optimizer.lr": 1e-3, "grad_accum_steps": 1, "precision": "bf16"}
    configs = sweep_configs(quickstart, grid)
    names = [c.name for c in configs]
    assert names[0] == "quickstart-optimizer.lr=0.001-grad_accum_steps=1-precision=fp32"
    assert len(set(names)) == 8
    for cfg, point in zip(configs, points, strict=True):
        assert cfg.optimizer.lr == point["optimizer.lr"] and cfg.grad_accum_steps == point["grad_accum_steps"]
        assert cfg.validate() == []  # the names are valid folder names
    long = run_name("x" * 100, {"optimizer.betas": [0.9, 0.95], "model.d_model": 4096})
    long2 = run_name("x" * 100, {"optimizer.betas": [0.9, 0.95], "model.d_model": 2048})
    assert len(long) <= 128 and long != long2


def test_sweep_refuses_a_bad_grid_before_starting_anything(quickstart, workdir):
    with pytest.raises(ConfigError) as e:
        wb.sweep(quickstart, {"precision": ["fp32", "fp64"], "optimizer.lrr": [1e-3]})
    keys = {p.key for p in e.value.problems}
    assert keys == {"optimizer.lrr"}  # unknown key first: override refuses it
    with pytest.raises(ConfigError) as e:
        wb.sweep(quickstart, {"precision": ["fp32", "fp64"]})
    assert [p.key for p in e.value.problems] == ["precision"] and "fp64" in str(e.value)
    with pytest.raises(ConfigError):
        wb.sweep(quickstart, {"optimizer.lr": []})
    assert not os.path.exists("runs")  # nothing launched


def test_concurrent_cpu_runs_share_the_cores(quickstart, monkeypatch):
    """Runs side by side divide the cores (oversubscribed OpenMP threads spin), and a count the caller set wins."""
    from workbench.launch import accelerate_command
    from workbench.sweep import cpu_threads

    cpu = quickstart.override({"device": "cpu", "parallel.num_processes": 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads(cpu, 2) == 4 and cpu_threads(cpu.override({"parallel.num_processes": 2}), 2) == 2
    assert cpu_threads(cpu, 16) == 1  # never below one
    assert accelerate_command(cpu, "config.yaml", 29500)[1]["OMP_NUM_THREADS"] == "8"  # alone: every core
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(cpu, 2) is None  # the caller's choice stands
    assert accelerate_command(cpu, "config.yaml", 29500)[1]["OMP_NUM_THREADS"] == "3"
    with pytest.raises(ConfigError, match="threads_per_process"):
        wb.launch(cpu, threads_per_process=0)


def test_hparams_dict_is_flat_and_scalar(quickstart):
    h = hparams_dict(quickstart)
    assert h["optimizer.lr"] == quickstart.optimizer.lr and h["parallel.num_processes"] == 2
    assert h["optimizer.betas"] == "0.9,0.95" and h["data.path"] == ""
    assert all(isinstance(v, (int, float, str, bool)) for v in h.values())


@pytest.mark.slow
def test_sweep_runs_one_at_a_time_and_writes_hparams(small, workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from widgets import Compare
    from widgets.tensorboard import TensorBoardButton, stop_tensorboard

    base = small.override({"max_steps": 6, "log_every": 2, "eval_every": 6, "schedule.warmup_steps": 0})
    runs = wb.sweep(base, {"optimizer.lr": [1e-3, 1e-2]}, parallel_runs=1)
    assert [r.name for r in runs] == ["quickstart-optimizer.lr=0.001", "quickstart-optimizer.lr=0.01"]
    assert runs.wait(timeout=240) == ["finished", "finished"], [r.error for r in runs]
    first, second = (r.info for r in runs)
    assert second["started"] >= first["ended"]  # parallel_runs=1: one after the other
    assert runs[0].config.optimizer.lr == 1e-3 and runs[1].config.optimizer.lr == 1e-2

    # HParams in the run's own event file, next to its scalars (TensorBoard's reader)
    for r, lr in zip(runs, (1e-3, 1e-2), strict=True):
        (tb_dir,) = glob.glob(os.path.join(r.path, "tensorboard"))
        acc = EventAccumulator(tb_dir)
        acc.Reload()
        assert "loss" in acc.Tags()["scalars"]
        content = acc.PluginTagToContent("hparams")
        assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hp = start.session_start_info.hparams
        assert hp["optimizer.lr"].number_value == pytest.approx(lr)
        assert hp["precision"].string_value == "fp32" and hp["optimizer.betas"].string_value == "0.9,0.95"
        exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {m.name.tag for m in exp.metric_infos} >= {"loss", "eval_loss"}
        assert not [d for d in os.listdir(tb_dir) if os.path.isdir(os.path.join(tb_dir, d))]  # no sub-runs

    # TensorBoard's HParams dashboard lists both runs with their lr and their final loss linked
    tb = TensorBoardButton("runs")
    try:
        url = tb.start(wait=True)
        body = json.dumps({"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"],
                           "colParams": [], "startIndex": 0, "sliceSize": 100}).encode()  # fmt: skip
        req = urllib.request.Request(url + "data/plugin/hparams/session_groups", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        groups = json.loads(urllib.request.urlopen(req, timeout=30).read())["sessionGroups"]
    finally:
        stop_tensorboard("runs")
    by_lr = {g["hparams"]["optimizer.lr"]: g for g in groups}
    assert set(by_lr) == {1e-3, 1e-2}
    for r, lr in zip(runs, (1e-3, 1e-2), strict=True):
        metrics = {m["name"]["tag"]: m["value"] for m in by_lr[lr]["metricValues"]}
        assert metrics["loss"] == pytest.approx(r.summary()["final_loss"], rel=1e-6)

    # and Compare shows the sweep as one table, the swept key as its column
    cmp = Compare(runs)
    assert cmp.diff_keys == ["optimizer.lr"]
    assert sorted(row["optimizer.lr"] for row in cmp.rows) == [1e-3, 1e-2]
