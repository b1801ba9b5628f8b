"""What the machine offers (GPUs and their capability, or CPU cores): validation checks a config against it.

Detection runs once per process and is cached: ``detected_devices()`` detects (if not done yet) and returns it;
``cached_devices()`` returns what was detected so far, or None, without detecting (for callers that must stay
instant, e.g. the plan on a machine with no GPU driver).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.config.schema import RunConfig


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine offers; validation checks the config against it."""

    kind: str  # "cuda" or "cpu"
    count: int  # GPUs, or CPU cores
    name: str = ""
    capability: tuple[int, int] = (0, 0)

    @classmethod
    def detect(cls) -> DeviceInfo:
        """This machine's devices, detected once per process (the same object as ``detected_devices()``)."""
        return detected_devices()

    @property
    def supports_fp8(self) -> bool:
        return self.kind == "cuda" and self.capability >= (8, 9)

    @property
    def supports_bf16(self) -> bool:
        return self.kind == "cpu" or self.capability >= (8, 0)


_detected: list[DeviceInfo] = []  # filled once by detected_devices()


def cached_devices() -> DeviceInfo | None:
    """The devices detected so far in this process, or None if nothing has asked yet (detects nothing)."""
    return _detected[0] if _detected else None


def detected_devices() -> DeviceInfo:
    """This machine's devices, detected on the first call and cached for the process."""
    if not _detected:
        _detected.append(_detect())
    return _detected[0]


def _detect() -> DeviceInfo:
    # Ask torch only if CUDA might exist: importing torch costs ~1.7 s, and the config panel validates on every
    # keystroke. nvidia-smi's absence (and no NVIDIA driver in /proc) is a cheap "no GPU" signal.
    if shutil.which("nvidia-smi") or os.path.exists("/proc/driver/nvidia"):
        try:
            import torch

            if torch.cuda.is_available():
                n = torch.cuda.device_count()
                return DeviceInfo("cuda", n, torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)))
        except Exception:
            pass
    return DeviceInfo("cpu", os.cpu_count() or 1, "cpu")


def effective_device(cfg: RunConfig, devices: DeviceInfo | None = None) -> str:
    """The device, "cuda" or "cpu": the config's device, with auto resolved against the machine."""
    devices = devices or detected_devices()
    if cfg.device == "auto":
        return devices.kind
    return cfg.device
