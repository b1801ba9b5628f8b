"""Loading a finished run's model: its config, its latest checkpoint's weights, LoRA merged."""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from workbench.checkpoints import PS_WEIGHTS
from workbench.config import RunConfig, is_import_string, model_checkpoint
from workbench.factory import is_hf
from workbench.finetune.hf_peft import merge_hf_peft, wrap_hf_peft
from workbench.finetune.lora import wrap_lora
from workbench.models import build_model

if TYPE_CHECKING:
    from workbench.runs import Run


def read_weights(ckpt_dir: str, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict in a save_state folder (safetensors, or torch.load with weights_only); the parameter
    server's file (ps); a sharded layout's DCP checkpoint (zero2, zero3, tp) gathered into whole tensors shaped as
    ``model``'s (needed then)."""
    st = os.path.join(ckpt_dir, "model.safetensors")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        return load_file(st)
    ps = os.path.join(ckpt_dir, PS_WEIGHTS)
    if os.path.isfile(ps):  # ps: the server's model (rank 0 holds the weights; workers save none)
        return torch.load(ps, map_location="cpu", weights_only=True)["model"]
    bin_path = os.path.join(ckpt_dir, "pytorch_model.bin")
    if os.path.isfile(bin_path) or model is None:
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    return read_dcp_weights(os.path.join(ckpt_dir, "dcp"), model)


def read_dcp_weights(dcp_dir: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """The "model" part of a DCP checkpoint, in one process with no process group: DCP reads every rank's shards
    into the whole tensors of ``model``'s shapes (its parameters, a tied one once, and buffers; the optimizer's
    state is not read). The names are the unwrapped model's, as get_state_dict saved them."""
    import torch.distributed.checkpoint as dcp

    wanted = dict(model.named_parameters()) | dict(model.named_buffers())
    state = {"model": {k: torch.empty_like(v.detach(), device="cpu") for k, v in wanted.items()}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process")  # what no_dist is for
        dcp.load(state, checkpoint_id=dcp_dir, no_dist=True)
    return state["model"]


def run_path(run: str | Run) -> str:
    """The run's folder, absolute: a Run handle or a path."""
    return os.path.abspath(getattr(run, "path", run))


def launch_dir(run: str | Run) -> str:
    """The folder the run was launched from: launch() put it first on the workers' PYTHONPATH, so that is
    where your own ``model.arch`` / ``data.source`` modules were imported from.

    status.json's ``launch_dir`` when the launch recorded it; otherwise this process's working folder, the
    usual case of exporting from the folder one trained in."""
    from workbench.runs import read_status  # here, not at the top: runs is heavier and imports more

    return read_status(run_path(run)).get("launch_dir") or os.getcwd()


def import_own_modules_from(run: str | Run, cfg: RunConfig) -> None:
    """Put the run's launch folder on sys.path when its config names your own model or data by import string,
    as training did for the workers: without it, `workbench export RUN` (whose sys.path holds the script's
    folder, not the working one) cannot import "mymodule:build" although training could."""
    if not (is_import_string(cfg.model.arch) or is_import_string(cfg.data.source)):
        return
    folder = launch_dir(run)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # first, as the workers' PYTHONPATH had it: the same module wins


def load_model(run: str | Run, merge: bool = True) -> nn.Module:
    """A run's model from its latest checkpoint, on the CPU in eval mode.

    A LoRA run is rebuilt with its adapters and, with merge=True, merged (W += (alpha / r) B A) and
    unwrapped into a plain module: what export, quantize and prune need, and what a next init_from loads.
    """
    path = run_path(run)
    cfg = RunConfig.from_yaml(os.path.join(path, "config.yaml"))
    ckpt = model_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path!r} holds no checkpoint with model weights (checkpoints/step_N/)")
    import_own_modules_from(path, cfg)
    try:
        model = build_model(cfg)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"model.arch {cfg.model.arch!r} of {path!r}: cannot import {e.name!r} from the launch folder "
            f"{launch_dir(path)!r}; run from the folder you trained in, or put the module on PYTHONPATH"
        ) from e
    hf = is_hf(cfg.model.arch)
    if hf and cfg.peft.method != "none":
        model = wrap_hf_peft(cfg, model)
    elif cfg.peft.method == "lora":
        model = wrap_lora(cfg, model)
    sd = read_weights(ckpt, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # the tied LM head is saved once, as tok_emb.weight (safetensors refuses shared tensors)
    # (a Hugging Face model's tied weights likewise: a key that state_dict() lists but named_parameters() does not)
    own = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    missing = [k for k in missing if not k.endswith("head.weight") and k in own]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match its config: missing {missing}, unexpected {unexpected}")
    if hf and merge:
        model = merge_hf_peft(cfg, model)
    elif cfg.peft.method == "lora" and merge:
        model = model.merge_and_unload()
    model.requires_grad_(False)
    return model.eval()


def run_config(run: str | Run) -> RunConfig:
    return RunConfig.from_yaml(os.path.join(run_path(run), "config.yaml"))


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's inference output ``model(x)``, for every forward contract the workbench trains:
    plain logits (a tensor, e.g. your own model's ``forward(x)`` when no targets are given), a tuple
    ``(logits, loss)`` (our GPT and GPTClassifier, loss None without targets), or an object with ``.logits``
    (Hugging Face's ModelOutput). The whole batch, always: indexing ``[0]`` blindly would take the first
    sequence of a plain-logits model."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the model's forward(x) returned {type(out).__name__}; to serve or evaluate it, forward(x) without "
        "targets must return the logits (a tensor whose first axis is the batch) or a tuple (logits, loss)"
    )
