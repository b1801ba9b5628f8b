"""What a worker sets up about its device: TF32, and the peak FLOP/s MFU divides by (and the gather it uses).

Kept apart from the training loop (workbench/worker.py), which imports these.
"""

from __future__ import annotations

from typing import Any

import torch


def resolve_peak(cfg, acc: Any, refresh: bool = False, tf32: bool = False) -> tuple[float | None, dict[str, Any]]:
    """Peak FLOP/s per device, the denominator of MFU: (peak or None when unknown, facts for status.json).

    The one place the worker decides the peak. A data sheet figure on GPUs (None for a GPU not in the table:
    MFU is then left out, never guessed); on CPU a measured matmul rate (workbench.plan.devices re-validates a
    cached figure before trusting it), taken by rank 0 alone while the others wait, so the measurement does
    not share the cores with them, and sent to every rank. ``refresh`` measures anew (see Trainer.check_peak).
    ``tf32``: fp32 matmuls run on TF32 tensor cores (setup_tf32), so a GPU's peak is its TF32 rate.
    """
    from workbench.plan.devices import cpu_peak_flops, gpu_peak_flops, peak_dtype

    dtype = cfg.precision  # fp32 | bf16 | fp16 | fp8: the peak tables use the same names
    if acc.device.type == "cpu":
        found = cpu_peak_flops(dtype, refresh=refresh) if acc.is_main_process else None
        facts = gather_objects(found.to_dict() if found else None)[0]  # rank 0's measurement, on every rank
    else:
        name = torch.cuda.get_device_name()
        found = gpu_peak_flops(name, peak_dtype(dtype, tf32))
        facts = found.to_dict() if found else None
        if facts is None:
            facts = {"flops": None, "source": f"unknown: {name} is not in the peak table (MFU left out)"}
    return facts["flops"], {
        "peak_flops_per_device": facts["flops"],
        "peak_flops_source": facts["source"],
        "peak_flops_measured_at": facts.get("measured_at"),
    }


def setup_tf32(cfg, device: torch.device) -> bool:
    """TF32 for fp32 matmuls and convolutions, per the ``tf32`` key; returns whether it is in effect.

    torch's defaults keep it off (allow_tf32 False): an fp32 run on an H200 measured 73k tokens/s with it off
    and 202k with it on. Only CUDA GPUs of compute capability 8.0 (Ampere) and newer have it; on CPU, and on
    older GPUs, it is never in effect.
    """
    if device.type != "cuda":
        return False
    on = bool(cfg.tf32) and torch.cuda.get_device_capability(device) >= (8, 0)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a JSON-able dict), on every rank; [obj] for a single process."""
    if not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def fp8_modules(model: torch.nn.Module) -> dict[str, Any]:
    """Which Linears the fp8 conversion replaced, by name, and which it left in high precision.

    Accelerate's torchao path skips the first and last Linear (and any whose sizes do not divide by 16); the
    GPT's head shares its weight with the token embedding, so what happened to it is recorded, not assumed.
    """
    converted, kept = [], []
    for name, m in model.named_modules():
        origin = type(m).__module__
        if origin.startswith(("torchao", "transformer_engine", "msamp")) and "linear" in type(m).__name__.lower():
            converted.append(name)
        elif isinstance(m, torch.nn.Linear):
            kept.append(name)
    return {"fp8_linears": converted, "high_precision_linears": kept}
