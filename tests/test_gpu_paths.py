"""The GPU paths' logic, tested on CPU: GPU detection without CUDA (a fake nvidia-smi), fp8 refused without a
backend, TF32 and the peak it implies, the run's own Accelerate config (a planted default config does not leak),
disjoint GPUs for concurrent sweep runs, autocast off after evaluation, the demo on one GPU, the gpu_check dry run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT
from workbench.config import DeviceInfo
from workbench.config import devices as dev_mod

H200x1 = DeviceInfo("cuda", 1, "NVIDIA H200", (9, 0))


def fake_nvidia_smi(folder, lines: list[str]) -> None:
    path = os.path.join(folder, "nvidia-smi")
    with open(path, "w") as f:
        f.write("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_gpus_detected_from_nvidia_smi_without_cuda(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, ["NVIDIA H100 NVL, 9.0", "NVIDIA H100 NVL, 9.0", "NVIDIA H100 NVL, 9.0"])
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    info = dev_mod._detect()
    assert (info.kind, info.count, info.name, info.capability) == ("cuda", 3, "NVIDIA H100 NVL", (9, 0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert dev_mod._detect().count == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert dev_mod._detect().kind == "cpu"
    assert not torch.cuda.is_initialized()


def test_num_processes_checked_against_the_gpu_count(quickstart):
    problems = quickstart.validate(H200x1)  # the quickstart asks for 2 processes
    assert any(p.key == "parallel.num_processes" and "1 GPU" in p.message for p in problems), problems
    assert quickstart.override({"parallel.num_processes": 1}).validate(H200x1) == []


def test_the_demo_fits_one_gpu(monkeypatch):
    from workbench import cli

    monkeypatch.setattr(cli, "detected_devices", lambda: H200x1, raising=False)
    monkeypatch.setattr("workbench.config.detected_devices", lambda: H200x1)
    assert cli.demo_sets([]) == ["parallel.num_processes=1"]
    assert cli.demo_sets(["parallel.num_processes=2"]) == ["parallel.num_processes=2"]  # the user's own wins


def test_fp8_refused_before_launch_without_a_backend(quickstart):
    fp8 = quickstart.override({"precision": "fp8", "parallel.num_processes": 1})
    problems = fp8.validate(H200x1)  # Hopper, but no torchao / transformer_engine / msamp
    assert [p.key for p in problems] == ["precision"] and "pip install torchao" in problems[0].message
    assert fp8.validate(DeviceInfo("cuda", 1, "NVIDIA H200", (9, 0), fp8_backend="torchao")) == []


def test_fp8_conversion_recorded_by_name(quickstart):
    """Which Linears the fp8 backend replaced (torchao skips the first and last; the head is tied): by name."""
    from workbench.device_setup import fp8_modules
    from workbench.models import build_model

    Float8Linear = type("Float8Linear", (torch.nn.Linear,), {"__module__": "torchao.float8.float8_linear"})
    model = build_model(quickstart)
    model.blocks[0].mlp.fc1.__class__ = Float8Linear  # what Accelerate's torchao conversion would leave
    facts = fp8_modules(model)
    assert facts["fp8_linears"] == ["blocks.0.mlp.fc1"]
    assert "head" in facts["high_precision_linears"] and "blocks.0.mlp.fc1" not in facts["high_precision_linears"]


def test_tf32_is_a_key_and_sets_the_peak(quickstart):
    from workbench.plan import peak_dtype, peak_of_device, plan

    assert quickstart.tf32 is True and any(p.key == "tf32" for p in quickstart.override({"tf32": "on"}).validate())
    assert peak_dtype("fp32", True) == "tf32" and peak_dtype("fp32", False) == "fp32"
    assert peak_dtype("bf16", True) == "bf16"
    assert peak_of_device("h200", "tf32").flops == 494e12 and peak_of_device("h200", "fp32").flops == 67e12
    assert peak_of_device("v100", "tf32").flops == 15.7e12  # no TF32 cores: the fp32 rate, and it says so
    on = plan(quickstart, device="h100").peak_flops_per_device
    off = plan(quickstart.override({"tf32": False}), device="h100").peak_flops_per_device
    assert (on, off) == (494e12, 67e12)


def test_tf32_never_in_effect_on_cpu(quickstart):
    from workbench.device_setup import setup_tf32

    assert setup_tf32(quickstart, torch.device("cpu")) is False


def test_the_runs_own_accelerate_config_keeps_a_planted_one_out(quickstart, tmp_path):
    """A planted ~/.cache/huggingface/accelerate/default_config.yaml (FSDP, fp16, 8 processes, GPUs 3,4) must not
    reach the launch: Accelerate's own argument merging, run in a fresh process with HF_HOME pointing at it."""
    from workbench.launch import accelerate_command, write_accelerate_config

    hf = tmp_path / "hf"
    (hf / "accelerate").mkdir(parents=True)
    (hf / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nmixed_precision: fp16\nnum_processes: 8\n"
        "gpu_ids: '3,4'\nfsdp_config: {fsdp_version: 2}\nuse_cpu: true\n"
    )
    cfg = quickstart.override({"parallel.num_processes": 1})
    path = write_accelerate_config(cfg, str(tmp_path))
    cmd, _ = accelerate_command(cfg, "config.yaml", 29500, config_file=path)
    assert cmd[cmd.index("--config_file") + 1] == path
    args = cmd[cmd.index("accelerate.commands.launch") + 1 :]
    probe = (
        "import sys\nfrom accelerate.commands.launch import launch_command_parser, _validate_launch_command\n"
        "a, *_ = _validate_launch_command(launch_command_parser().parse_args(sys.argv[1:]))\n"
        "print(a.use_fsdp, a.mixed_precision, a.num_processes, a.gpu_ids, a.cpu, a.multi_gpu)\n"
    )
    env = {**os.environ, "HF_HOME": str(hf)}
    ours = subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True, timeout=120)
    assert ours.stdout.split() == ["False", "no", "1", "all", "False", "False"], ours.stderr[-2000:]
    bare = [a for i, a in enumerate(args) if a != "--config_file" and (i == 0 or args[i - 1] != "--config_file")]
    leaked = subprocess.run([sys.executable, "-c", probe, *bare], env=env, capture_output=True, text=True, timeout=120)
    assert leaked.stdout.split()[0] == "True"  # without it, the planted FSDP config is what one process gets


def test_concurrent_sweep_runs_get_disjoint_gpus(quickstart, monkeypatch):
    from workbench.launch import physical_gpu_ids
    from workbench.sweep import gpus_per_run

    four = DeviceInfo("cuda", 4, "NVIDIA H200", (9, 0))
    monkeypatch.setattr("workbench.config.detected_devices", lambda: four)
    cfgs = [quickstart.override({"device": "cuda", "name": f"s{i}"}) for i in range(3)]
    problems: list = []
    assert gpus_per_run(cfgs, 2, problems) == 2 and problems == []
    assert gpus_per_run(cfgs, 3, problems) == 2 and [p.key for p in problems] == ["parallel_runs"]
    assert physical_gpu_ids([2, 3], None) == ["2", "3"] and physical_gpu_ids([1], "5,7") == ["7"]
    assert gpus_per_run([quickstart.override({"device": "cpu"})], 4, []) == 0


class _Acc:
    device = torch.device("cpu")

    @staticmethod
    def reduce(t, reduction="sum"):
        return t


@pytest.mark.parametrize("strategy", ["zero1", "ddp"])
def test_autocast_is_off_after_evaluation(quickstart, strategy):
    """The same torch.autocast object entered twice (the worker's evaluate, then the layout's eval_loss) left
    autocast on for the rest of the run: bf16 layouts (zero1) and fp16 on CPU (ddp) both use one."""
    from workbench.parallel.common import Layout
    from workbench.worker import Trainer

    cfg = quickstart.override({"precision": "bf16"})
    layout = Layout(cfg, _Acc(), fwd_ctx=torch.autocast("cpu", dtype=torch.bfloat16))
    layout.model = torch.nn.Linear(4, 4)
    layout.model.forward = lambda x, y: (x @ layout.model.weight).float().mean()  # the GPT's (x, y) -> loss
    trainer = SimpleNamespace(model=layout.model, acc=_Acc(), cfg=cfg, layout=layout, fwd_ctx=layout.fwd_ctx,
                              eval_dl=[(torch.ones(2, 4), None)] * 2)  # fmt: skip
    assert not torch.is_autocast_enabled("cpu")
    assert Trainer.evaluate(trainer) is not None
    assert not torch.is_autocast_enabled("cpu")


def test_gpu_check_dry_run_lists_every_step():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--dry-run"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    for step in ("precisions", "mfu-86.6M", "mfu-124M", "memory", "layouts", "notebook", "overhead"):
        assert f"  {step} " in p.stdout, p.stdout
    assert "gpu_check.json" in p.stdout
