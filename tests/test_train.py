"""Real multi-process training through launch(): DDP, equivalence, precision, stop, failure, notebook_launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import workbench as wb
from workbench.metrics_schema import unknown_keys

pytestmark = pytest.mark.slow


def losses(run):
    return [m["loss"] for m in run.metrics() if m.get("loss") is not None]


def finished(run, timeout=300):
    run.wait(timeout=timeout)
    assert run.status == "finished", (run.status, run.error)
    return run


def test_ddp_two_processes_end_to_end(workdir, small):
    run = wb.launch(small.override({"name": "ddp", "max_steps": 30}))
    events = list(run.follow(timeout=300))
    finished(run)
    assert [e["step"] for e in events] == [m["step"] for m in run.metrics()]
    eff = run.info["effective"]
    # what was in effect, not what the flags asked for
    assert eff["world_size"] == 2 and eff["backend"] == "gloo"
    assert eff["wrapper"] == "DistributedDataParallel" and eff["compute_dtype"] == "torch.float32"
    # identical parameters on both ranks at the end
    digests = [json.load(open(os.path.join(run.path, f"final_rank{r}.json")))["params_sha256"] for r in (0, 1)]
    assert digests[0] == digests[1]
    ls = losses(run)
    assert ls[-1] < ls[0] - 0.5
    last = run.metrics()[-1]
    for key in [
        "step",
        "tokens",
        "loss",
        "eval_loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "step_time_s",
        "mfu",
        "mem_bytes",
    ]:
        assert key in last, key
    assert len(last["mem_bytes"]) == 2 and all(b > 0 for b in last["mem_bytes"])
    assert unknown_keys(run.metrics()) == []  # every key written is in workbench/metrics_schema.py
    assert last["tokens"] == 30 * small.tokens_per_step and 0 < last["mfu"] <= 1  # never above 100%
    assert run.checkpoints() and run.checkpoints()[-1].endswith("step_30")

    # metrics.jsonl and TensorBoard agree step for step (read with TensorBoard's own reader)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb_dirs = {r for r, _, fs in os.walk(run.path) for f in fs if f.startswith("events.out.tfevents")}
    assert len(tb_dirs) == 1, tb_dirs  # one TensorBoard run per job, not one per rank
    ea = EventAccumulator(tb_dirs.pop())
    ea.Reload()
    tb_loss = {e.step: e.value for e in ea.Scalars("loss")}
    js_loss = {m["step"]: m["loss"] for m in run.metrics()}
    assert tb_loss.keys() == js_loss.keys()
    assert all(abs(tb_loss[s] - js_loss[s]) < 1e-6 * max(1, abs(js_loss[s])) for s in js_loss)
    assert set(ea.Tags()["scalars"]) >= {"loss", "eval_loss", "tokens_per_s", "mfu", "mem_bytes/rank1"}

    # attach from "another kernel"
    again = wb.Run.attach(run.path)
    assert again.status == "finished" and len(again.metrics()) == len(run.metrics())

    # the same folder refuses a second launch unless asked
    with pytest.raises(wb.ConfigError, match="already exists"):
        wb.launch(small.override({"name": "ddp"}))


def test_big_batch_equals_accumulation_equals_data_parallel(workdir, quickstart):
    """The seeds' formula: ∇L = 1/N Σ∇L_i — one big batch, accumulated micro-batches and 2 ranks agree."""
    base = quickstart.override(
        {
            "max_steps": 20,
            "log_every": 1,
            "eval_every": 0,
            "schedule.warmup_steps": 5,
            "model.dropout": 0.0,
            "precision": "fp32",
        }
    )
    layouts = {
        "big": {"micro_batch_size": 32, "grad_accum_steps": 1, "parallel.num_processes": 1},
        "accum": {"micro_batch_size": 8, "grad_accum_steps": 4, "parallel.num_processes": 1},
        "ddp": {"micro_batch_size": 4, "grad_accum_steps": 4, "parallel.num_processes": 2},
    }
    curves = {}
    for name, extra in layouts.items():
        run = finished(wb.launch(base.override({"name": name, **extra})))
        curves[name] = losses(run)
        assert len(curves[name]) == 20
    for name in ("accum", "ddp"):
        worst = max(abs(a - b) for a, b in zip(curves["big"], curves[name], strict=True))
        assert worst < 1e-5, (name, worst)


@pytest.mark.parametrize("precision,dtype", [("bf16", "torch.bfloat16"), ("fp16", "torch.float16")])
def test_mixed_precision_on_cpu_is_real(workdir, small, precision, dtype):
    """One process: the claim is about the dtype the Linears compute in, not about ranks (test_parallel.py
    runs bf16 and fp16 on every two-process layout)."""
    one = {"parallel.num_processes": 1, "micro_batch_size": 2 * small.micro_batch_size}
    run = finished(wb.launch(small.override({"name": precision, "precision": precision, "max_steps": 10, **one})))
    ls = losses(run)
    assert all(x == x and abs(x) < 1e6 for x in ls)
    # fp16 really computes in fp16 (Accelerate alone would silently run fp32 on CPU)
    assert run.info["effective"]["compute_dtype"] == dtype
    if precision == "fp16":
        assert run.metrics()[-1]["loss_scale"] > 0
    assert unknown_keys(run.metrics()) == []


def test_stop_saves_a_checkpoint(workdir, small):
    run = wb.launch(small.override({"name": "stopme", "max_steps": 100000, "log_every": 2, "eval_every": 0}))
    t0 = time.time()
    while not run.metrics() and time.time() - t0 < 120:
        time.sleep(0.2)
    assert run.metrics(), run.error
    run.stop()
    assert run.wait(timeout=60) == "stopped", run.error
    ckpts = run.checkpoints()
    assert ckpts
    state = json.load(open(os.path.join(ckpts[-1], "trainer_state.json")))
    assert state["step"] == run.metrics()[-1]["step"] < 100000
    assert os.path.exists(os.path.join(ckpts[-1], "model.safetensors"))


BOOM = """
import torch
from workbench.models import GPT
from workbench.models import gpt_config

class Boom(GPT):
    calls = 0
    def forward(self, idx, targets=None):
        Boom.calls += 1
        if Boom.calls > 6:
            raise RuntimeError("simulated bug in a user model at call 7")
        return super().forward(idx, targets)

def build(cfg):
    return Boom(gpt_config(cfg))
"""


def test_worker_that_raises_fails_the_run_fast(workdir, small):
    (workdir / "boommod.py").write_text(BOOM)
    run = wb.launch(small.override({"name": "boom", "model.arch": "boommod:build", "max_steps": 50}))
    t0 = time.time()
    assert run.wait(timeout=120) == "failed"
    assert time.time() - t0 < 60
    assert "simulated bug in a user model at call 7" in run.error
    assert "Traceback" in run.error  # the worker's traceback, not torchelastic's summary alone
    time.sleep(1)
    for f in os.listdir(run.path):  # no orphan worker left
        if f.startswith(".rank") and f.endswith(".pid"):
            pid = int(open(os.path.join(run.path, f)).read())
            assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[-1][:3]


CUSTOM = '''
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

class Regressor(nn.Module):
    """Any nn.Module: forward(x, y) returns the loss."""
    def __init__(self, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, 1))
    def forward(self, x, y):
        return nn.functional.mse_loss(self.net(x).squeeze(-1), y)

def build_model(cfg):
    return Regressor(cfg.model.d_model)

def build_data(cfg, split):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    x = torch.randn(512, 8, generator=g)
    return TensorDataset(x, x.sum(-1).sin())
'''


def test_your_own_model_and_data(workdir, small):
    (workdir / "mine.py").write_text(CUSTOM)
    cfg = small.override(
        {"name": "mine", "model.arch": "mine:build_model", "data.source": "mine:build_data", "max_steps": 20}
    )
    run = finished(wb.launch(cfg))
    ls = losses(run)
    assert ls[-1] < ls[0]
    assert run.info["effective"]["world_size"] == 2


NB_SCRIPT = """
import torch, workbench as wb
from accelerate import Accelerator

def loop(steps):
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    rep = wb.Reporter(acc)
    for step in range(1, steps + 1):
        x = torch.randn(16, 4)
        loss = ((model(x).squeeze() - x.sum(-1)) ** 2).mean()
        acc.backward(loss)
        opt.step(); opt.zero_grad()
        rep.log(step, loss=loss, world=torch.tensor(float(acc.num_processes)))
    rep.close()

if __name__ == "__main__":
    run = wb.notebook_launch(loop, 12, num_processes=2, name="nb")
    print("STATUS", run.status, run.error)
"""


def test_notebook_launch_from_a_script(workdir):
    (workdir / "nb.py").write_text(NB_SCRIPT)
    out = subprocess.run([sys.executable, "nb.py"], capture_output=True, text=True, timeout=300)
    assert "STATUS finished" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    run = wb.Run.attach("runs/nb")
    ms = run.metrics()
    assert [m["step"] for m in ms] == list(range(1, 13))
    assert all(m["world"] == 2.0 and len(m["mem_bytes"]) == 2 for m in ms)
    assert unknown_keys(ms) == ["world"]  # the loop's own key; what Reporter adds is in the metric schema
    assert ms[-1]["loss"] < ms[0]["loss"]


def test_cli_train_and_runs(workdir):
    from tests.conftest import QUICKSTART

    out = subprocess.run(
        ["workbench", "train", QUICKSTART, "--set", "max_steps=10", "--set", "log_every=5", "--set", "precision=bf16",
         "--set", "parallel.num_processes=2", "--set", "name=cli"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final train loss" in out.stdout and "tokens/s" in out.stdout and "workbench tensorboard" in out.stdout
    listing = subprocess.run(["workbench", "runs"], capture_output=True, text=True).stdout
    assert "cli" in listing and "finished" in listing
    # every run checks the prediction: planned["time"] recorded, the summary's predicted tokens/s and ratio, and the
    # CLI's line (tests/test_prediction.py)
    from tests.test_prediction import check_recorded_prediction

    s = check_recorded_prediction(wb.Run.attach(os.path.join("runs", "cli")))
    assert f"predicted {s['predicted_tokens_per_s']:,.0f} tokens/s, measured" in out.stdout
    assert ("VERDICT" in out.stdout) == (s["prediction_verdict"] is not None)
    assert f"{s['predicted_tokens_per_s']:.0f}" in listing
    bad = subprocess.run(
        ["workbench", "train", QUICKSTART, "--set", "grad_accum_steps=0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "grad_accum_steps" in bad.stderr and "Traceback" not in bad.stderr


def test_no_eval_loss_over_zero_samples_and_resume_only_when_asked(workdir, quickstart):
    # The eval split holds fewer sequences than one micro-batch: the eval loader (drop_last) yields nothing. The
    # worker is run directly (config validation, which refuses this config, is bypassed on purpose): it must
    # leave eval_loss out and say why, never log sum / clamp(count, 1) = 0.
    cfg = quickstart.override({"name": "zero", "micro_batch_size": 600, "model.seq_len": 16, "grad_accum_steps": 1,
                               "parallel.num_processes": 1, "eval_every": 1, "max_steps": 2, "log_every": 1})  # fmt: skip
    run_dir = workdir / "runs" / "zero"
    run_dir.mkdir(parents=True)
    cfg.to_yaml(str(run_dir / "config.yaml"))
    # A stale "resume" in status.json is no instruction: only the --resume argument makes the worker resume.
    (run_dir / "status.json").write_text(json.dumps({"state": "starting", "resume": True}))
    out = subprocess.run([sys.executable, "-m", "workbench.worker", str(run_dir / "config.yaml")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    events = wb.Run(str(run_dir)).metrics()
    assert [e["step"] for e in events] == [1, 2]
    assert all("eval_loss" not in e for e in events), [e.get("eval_loss") for e in events]
    assert "no evaluation sample" in json.load(open(run_dir / "status.json"))["eval_skipped"]
    assert all(e["elapsed_s"] > 0 for e in events)
