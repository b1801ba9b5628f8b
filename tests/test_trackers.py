"""trackers: [tensorboard, mlflow] hands Accelerate's log_with both: one MLflow run per job (not per rank) in a local
file store, its metrics read back with MLflow's own client, the config as its params; TensorBoard as before."""

from __future__ import annotations

import os

import pytest

import workbench as wb

pytestmark = pytest.mark.slow


def test_mlflow_gets_one_run_per_job_with_the_metrics(small, tmp_path):
    pytest.importorskip("mlflow")
    cfg = small.override({"name": "tracked", "max_steps": 4, "log_every": 2, "eval_every": 0,
                          "trackers": ["tensorboard", "mlflow"], "runs_dir": str(tmp_path / "runs")})  # fmt: skip
    assert cfg.validate() == []
    run = wb.launch(cfg)  # 2 processes: rank 0 alone opens the MLflow run
    run.wait(timeout=600)
    assert run.status == "finished", run.error
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + str(tmp_path / "runs" / "mlruns"))
    exp = client.get_experiment_by_name("workbench")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "tracked"
    losses = client.get_metric_history(runs[0].info.run_id, "loss")
    ours = [e for e in run.metrics() if e.get("loss") is not None]
    assert [m.step for m in losses] == [e["step"] for e in ours]
    assert [round(m.value, 5) for m in losses] == [round(e["loss"], 5) for e in ours]
    assert runs[0].data.params["parallel.strategy"] == "ddp"
    assert os.path.isdir(os.path.join(run.path, "tensorboard"))


def test_unknown_or_missing_trackers_are_refused(quickstart):
    assert [p.key for p in quickstart.override({"trackers": ["neptune"]}).validate()] == ["trackers"]
    assert [p.key for p in quickstart.override({"trackers": ["mlflow"]}).validate()] == ["trackers"]
