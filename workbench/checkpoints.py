"""A run's checkpoints: ``RUN/checkpoints/step_<N>/`` folders, each with a trainer_state.json.

The one place that names, lists, saves and loads them. A checkpoint folder holds:

    (Accelerate's save_state)  model weights (model.safetensors), optimizer, each rank's RNG states, sampler
    (the layout's own files)   what save_state cannot see: sharded model/optimizer state (DCP, ZeRO, ...)
    trainer_state.json         {"step", "tokens", "scheduler", "scaler"?}: written by rank 0 as JSON, not through
                               Accelerate's register_for_checkpointing, which reloads with
                               torch.load(weights_only=False) — a pickle that could run code from a planted file.

Listing needs no torch; save/load take the Accelerator and the layout the worker built.
"""

from __future__ import annotations

import os
from typing import Any

from workbench.fileio import read_json, write_json_atomic

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
PREFIX = "step_"
MODEL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARDED_WEIGHTS = os.path.join("dcp", ".metadata")  # a sharded layout's DCP checkpoint (zero2, zero3, tp, pp)
PS_WEIGHTS = "ps_server.pt"  # the parameter server's model and optimizer (ps: rank 0 saves them, not save_state)


def step_of(folder_name: str) -> int | None:
    """N for a folder named step_N, else None."""
    if folder_name.startswith(PREFIX) and folder_name[len(PREFIX) :].isdigit():
        return int(folder_name[len(PREFIX) :])
    return None


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR, f"{PREFIX}{step}")


def list_checkpoints(run_dir: str) -> list[str]:
    """The run's checkpoint folders, oldest (lowest step) first; [] when there is none."""
    root = os.path.join(run_dir, CHECKPOINTS_DIR)
    try:
        names = os.listdir(root)
    except OSError:
        return []
    steps = sorted((s, d) for d in names if (s := step_of(d)) is not None)
    return [os.path.join(root, d) for _, d in steps]


def has_model_weights(path: str) -> bool:
    """Whether the folder holds the model's weights: Accelerate's file, a sharded layout's DCP checkpoint, or the
    parameter server's file."""
    return any(os.path.isfile(os.path.join(path, f)) for f in (*MODEL_WEIGHT_FILES, SHARDED_WEIGHTS, PS_WEIGHTS))


def latest(run_dir: str, with_model_weights: bool = False) -> str | None:
    """The highest-step checkpoint folder (with Accelerate's model weights in it, if asked), or None."""
    for path in reversed(list_checkpoints(run_dir)):
        if not with_model_weights or has_model_weights(path):
            return path
    return None


def read_trainer_state(path: str) -> dict[str, Any]:
    state = read_json(os.path.join(path, TRAINER_STATE))
    if not isinstance(state, dict) or "step" not in state:
        raise FileNotFoundError(f"{path!r} holds no readable {TRAINER_STATE}: the checkpoint is incomplete")
    return state


def save(acc: Any, layout: Any, run_dir: str, trainer_state: dict[str, Any]) -> str:
    """Save a checkpoint of every rank (a collective: every rank calls it) and return its folder."""
    path = checkpoint_path(run_dir, trainer_state["step"])
    acc.save_state(path)
    layout.save(path)  # what save_state cannot see: sharded model/optimizer state (see the layout)
    if acc.is_main_process:
        write_json_atomic(os.path.join(path, TRAINER_STATE), trainer_state)
    acc.wait_for_everyone()
    return path


def load(acc: Any, layout: Any, path: str) -> dict[str, Any]:
    """Restore a checkpoint on every rank; returns its trainer_state (step, scheduler, scaler)."""
    acc.load_state(path)  # model, optimizer and each rank's RNG; Accelerate loads with weights_only=True
    layout.load(path)  # the sharded layouts' model and optimizer (DCP / ZeRO / parameter server files)
    return read_trainer_state(path)
