"""Hand the same experiment to an existing engine: an Accelerate config file, per-node commands, a SLURM script.

The workbench does not grow its own cluster launcher. For M machines with G GPUs each it writes:

    <out>/config.yaml            the RunConfig with parallel.num_processes = M x G
    <out>/accelerate.yaml        an Accelerate config file (`accelerate launch --config_file`)
    <out>/launch_node<R>.sh      the exact `accelerate launch` command for machine rank R
    <out>/slurm.sbatch           a SLURM batch script that runs it on every node with srun

and the same as a Python object (`ScaleOut`). On CPU machines (device cpu) the command is prefixed with
ACCELERATE_USE_CPU=1 and keeps `distributed_type: MULTI_GPU`: a config file saying MULTI_CPU, or
`use_cpu: true`, makes `accelerate launch` start ONE process (measured with accelerate 1.15: the CPU path
fans out only through mpirun).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

import yaml

from workbench import prelaunch
from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig


@dataclass
class ScaleOut:
    out_dir: str
    config_path: str
    accelerate_config_path: str
    node_commands: list[str] = field(default_factory=list)
    node_scripts: list[str] = field(default_factory=list)
    slurm_path: str = ""

    def __str__(self) -> str:
        lines = [f"wrote {self.out_dir}/", f"  accelerate config  {self.accelerate_config_path}"]
        for r, c in enumerate(self.node_commands):
            lines.append(f"  machine {r}:  {c}")
        lines.append(f"  SLURM:  sbatch {self.slurm_path}")
        return "\n".join(lines)


def scale_out(
    cfg: RunConfig,
    machines: int = 1,
    gpus_per_machine: int = 8,
    out_dir: str | None = None,
    main_address: str = "MAIN_NODE_ADDRESS",
    main_port: int = 29500,
    device: str = "cuda",
) -> ScaleOut:
    """Write the launch files for `machines` x `gpus_per_machine` processes; returns where and what."""
    target = _target_config(cfg, machines, gpus_per_machine, device)
    out_dir = os.path.abspath(out_dir or cfg.run_dir + "-scale-out")
    os.makedirs(out_dir, exist_ok=True)
    # The worker's run folder is the folder of its config.yaml: the job writes metrics and checkpoints here
    # (on a shared file system for several machines).
    config_path = os.path.join(out_dir, "config.yaml")
    target.to_yaml(config_path)
    acc_path = _write_accelerate_config(out_dir, machines, machines * gpus_per_machine, main_address, main_port)
    env = "ACCELERATE_USE_CPU=1 " if device == "cpu" else ""
    commands, scripts = _write_node_scripts(out_dir, machines, acc_path, config_path, env, main_address, main_port)
    slurm = _write_slurm_script(cfg.name, out_dir, machines, gpus_per_machine, acc_path, config_path, env, main_port)
    return ScaleOut(out_dir, config_path, acc_path, commands, scripts, slurm)


def _target_config(cfg: RunConfig, machines: int, gpus_per_machine: int, device: str) -> RunConfig:
    """The RunConfig for the whole cluster, validated against that cluster (not this laptop)."""
    problems = []
    if not isinstance(machines, int) or machines < 1:
        problems.append(Problem("machines", f"must be a whole number >= 1, got {machines!r}"))
    if not isinstance(gpus_per_machine, int) or gpus_per_machine < 1:
        problems.append(Problem("gpus_per_machine", f"must be a whole number >= 1, got {gpus_per_machine!r}"))
    if device not in ("cuda", "cpu"):
        problems.append(Problem("device", f"must be cuda or cpu, got {device!r}"))
    if problems:
        raise ConfigError(problems)
    world = machines * gpus_per_machine
    target = cfg.override({"parallel.num_processes": world, "device": device})
    # A GPU config made on a CPU machine is fine: validate against the target devices.
    target_devices = DeviceInfo(device, world, "target", (9, 0))
    problems = [p for p in prelaunch.problems(target, target_devices) if p.key not in ("data.path",)]
    if problems:
        raise ConfigError(problems)
    return target


def _write_accelerate_config(out_dir: str, machines: int, world: int, main_address: str, main_port: int) -> str:
    acc_cfg = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if world > 1 else "NO",
        "mixed_precision": "no",  # the worker sets precision on its Accelerator from the RunConfig
        "use_cpu": False,  # on CPU: ACCELERATE_USE_CPU=1 in the command instead (see the module docstring)
        "num_machines": machines,
        "num_processes": world,
        "machine_rank": 0,
        "main_process_ip": main_address if machines > 1 else None,
        "main_process_port": main_port,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "debug": False,
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
    }
    acc_path = os.path.join(out_dir, "accelerate.yaml")
    with open(acc_path, "w") as f:
        yaml.safe_dump({k: v for k, v in acc_cfg.items() if v is not None}, f, sort_keys=False)
    return acc_path


def _write_node_scripts(
    out_dir: str, machines: int, acc_path: str, config_path: str, env: str, main_address: str, main_port: int
) -> tuple[list[str], list[str]]:
    """launch_node<R>.sh: the exact `accelerate launch` command for machine rank R."""
    commands, scripts = [], []
    for rank in range(machines):
        parts = ["accelerate", "launch", "--config_file", acc_path, "--machine_rank", str(rank)]
        if machines > 1:
            parts += ["--main_process_ip", main_address, "--main_process_port", str(main_port)]
        parts += ["-m", "workbench.worker", config_path]
        cmd = env + " ".join(shlex.quote(p) for p in parts)
        commands.append(cmd)
        path = os.path.join(out_dir, f"launch_node{rank}.sh")
        with open(path, "w") as f:
            f.write(f"#!/usr/bin/env bash\n# machine {rank} of {machines}: run this on that machine\nset -e\n{cmd}\n")
        os.chmod(path, 0o755)
        scripts.append(path)
    return commands, scripts


def _write_slurm_script(
    name: str, out_dir: str, machines: int, gpus: int, acc_path: str, config_path: str, env: str, main_port: int
) -> str:
    """slurm.sbatch: one task per node, each running `accelerate launch` for that node's GPUs."""
    slurm = os.path.join(out_dir, "slurm.sbatch")
    with open(slurm, "w") as f:
        f.write(
            f"""#!/usr/bin/env bash
#SBATCH --job-name={name}
#SBATCH --nodes={machines}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --exclusive
#SBATCH --output={out_dir}/slurm-%j.out
# One task per node; each runs `accelerate launch`, which starts {gpus} processes on its node.
set -euo pipefail
# The first host is the rendezvous. Read the whole list, then cut: `scontrol ... | head -n 1` under pipefail
# dies with SIGPIPE (exit 141) whenever scontrol is still writing a long list when head exits.
NODES=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
MAIN_ADDR=${{NODES%%$'\n'*}}
srun bash -c '{env}accelerate launch --config_file {shlex.quote(acc_path)} \\
  --machine_rank "$SLURM_NODEID" --main_process_ip '"$MAIN_ADDR"' --main_process_port {main_port} \\
  -m workbench.worker {shlex.quote(config_path)}'
"""
        )
    return slurm
