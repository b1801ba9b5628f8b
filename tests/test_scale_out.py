"""Scale-out: the files Accelerate and SLURM need for the same experiment, loaded by Accelerate itself."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from tests.conftest import QUICKSTART
from workbench.config import ConfigError
from workbench.scale_out import scale_out


def test_multi_node_files(workdir, quickstart):
    s = scale_out(quickstart, machines=2, gpus_per_machine=8, out_dir="out", main_address="10.0.0.1")
    acc = load_config_from_file(s.accelerate_config_path)  # Accelerate's own loader
    assert acc.num_machines == 2 and acc.num_processes == 16 and str(acc.distributed_type).endswith("MULTI_GPU")
    assert acc.main_process_ip == "10.0.0.1" and not acc.use_cpu
    assert len(s.node_commands) == 2 and "--machine_rank 1" in s.node_commands[1]
    slurm = open(s.slurm_path).read()
    assert "#SBATCH --nodes=2" in slurm and "#SBATCH --gpus-per-node=8" in slurm and "srun" in slurm
    assert '"$SLURM_NODEID"' in slurm
    import yaml

    assert yaml.safe_load(open(s.config_path))["parallel"]["num_processes"] == 16


def test_bad_scale_out_refused(workdir, quickstart):
    with pytest.raises(ConfigError, match="machines"):
        scale_out(quickstart, machines=0)
    with pytest.raises(ConfigError, match="model.n_head"):
        scale_out(quickstart.override({"model.n_head": 3}), machines=1)


@pytest.mark.slow
def test_one_machine_command_really_trains_here(workdir):
    out = subprocess.run(
        ["workbench", "scale-out", QUICKSTART, "--machines", "1", "--gpus-per-machine", "2", "--device", "cpu",
         "--out", "so", "--set", "max_steps=10", "--set", "log_every=5", "--set", "schedule.warmup_steps=2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = subprocess.run(["bash", "so/launch_node0.sh"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    events = [json.loads(line) for line in open("so/metrics.jsonl")]
    assert [e["step"] for e in events] == [5, 10]
    assert events[0]["effective"]["world_size"] == 2 and events[0]["effective"]["backend"] == "gloo"
    assert os.path.isdir("so/checkpoints/step_10")


def test_slurm_script_survives_a_long_node_list(workdir, quickstart, tmp_path):
    """`scontrol ... | head -n 1` under `set -o pipefail` exits 141 (SIGPIPE) when the node list is long."""
    s = scale_out(quickstart, machines=2, gpus_per_machine=8, out_dir="out")
    fake = tmp_path / "bin"
    fake.mkdir()
    bodies = {
        "scontrol": 'for i in $(seq 1 3000); do echo "gpu-node-$i"; done',
        "srun": 'for i in 0 1; do SLURM_NODEID=$i "$@" || exit $?; done',
        "accelerate": 'echo accelerate "$@"',
    }
    for name, body in bodies.items():
        (fake / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
        (fake / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-node-[1-3000]")
    for _ in range(5):
        p = subprocess.run(["bash", s.slurm_path], capture_output=True, text=True, timeout=60, env=env)
        assert p.returncode == 0, (p.returncode, p.stderr[-500:])
        assert p.stdout.count("--main_process_ip gpu-node-1 ") == 2, p.stdout
