"""What the machine offers (GPUs and their capability, or CPU cores): validation checks a config against it.

Detection runs once per process and is cached: ``detected_devices()`` detects (if not done yet) and returns it;
``cached_devices()`` returns what was detected so far, or None, without detecting (for callers that must stay
instant, e.g. the plan on a machine with no GPU driver).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workbench.config.schema import RunConfig


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine offers; validation checks the config against it."""

    kind: str  # "cuda" or "cpu"
    count: int  # GPUs, or CPU cores
    name: str = ""
    capability: tuple[int, int] = (0, 0)
    fp8_backend: str | None = None  # the fp8 package Accelerate would use here (fp8_backend()); GPUs only

    @classmethod
    def detect(cls) -> DeviceInfo:
        """This machine's devices, detected once per process (the same object as ``detected_devices()``)."""
        return detected_devices()

    @property
    def supports_fp8(self) -> bool:
        """The GPU has fp8 tensor cores (Ada/Hopper and newer); training in fp8 also needs ``fp8_backend``."""
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
    """GPUs from ``nvidia-smi`` (the driver's own tool), else the CPU cores.

    Never through torch.cuda in this process: ``torch.cuda.get_device_name`` initialises CUDA, and once CUDA is
    initialised ``accelerate.notebook_launcher`` refuses to fork several GPU processes, so a panel, validate(),
    plan() or launch() in a notebook kernel would break a later ``notebook_launch`` there. nvidia-smi's absence is
    also a cheap "no GPU" signal (importing torch costs ~1.7 s, and the panel validates on every keystroke).
    """
    gpus = query_nvidia_smi()
    if gpus:
        name, cap = gpus[0]
        return DeviceInfo("cuda", len(gpus), name, cap, fp8_backend())
    return DeviceInfo("cpu", os.cpu_count() or 1, "cpu")


def query_nvidia_smi(timeout_s: float = 10.0) -> list[tuple[str, tuple[int, int]]]:
    """(name, compute capability) of each GPU this process may use (CUDA_VISIBLE_DEVICES applied); [] when
    nvidia-smi is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        p = subprocess.run([exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=timeout_s)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    if p.returncode != 0:
        return []
    gpus = [parse_gpu_line(line) for line in p.stdout.splitlines() if line.strip()]
    return visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def parse_gpu_line(line: str) -> tuple[str, tuple[int, int]]:
    """ "NVIDIA H200, 9.0" -> ("NVIDIA H200", (9, 0)); an unreadable capability reads as (0, 0)."""
    name, _, cap = line.rpartition(",")
    try:
        major, minor = (int(x) for x in cap.strip().split("."))
    except ValueError:
        return line.strip(), (0, 0)
    return name.strip(), (major, minor)


def visible(gpus: list[Any], cuda_visible: str | None) -> list[Any]:
    """The GPUs CUDA will show: CUDA_VISIBLE_DEVICES picks indices (UUIDs: that many, in order)."""
    if cuda_visible is None:
        return gpus
    ids = [x.strip() for x in cuda_visible.split(",") if x.strip()]
    out = []
    for x in ids:
        if not x.isdigit():
            return gpus[: len(ids)]
        if int(x) >= len(gpus):
            break  # CUDA stops at the first invalid index
        out.append(gpus[int(x)])
    return out


def fp8_backend() -> str | None:
    """The fp8 backend Accelerate would pick (its order: torchao >= 0.6.1, TransformerEngine, MS-AMP), or None.

    Found by package metadata, without importing any of them. None of them is a dependency of the workbench:
    ``pip install torchao`` (the ``fp8`` extra) gives Accelerate's AORecipeKwargs path.
    """
    from importlib import metadata

    for module, dist, minimum in (("torchao", "torchao", (0, 6, 1)), ("transformer_engine", "transformer-engine", None),
                                  ("msamp", "ms-amp", None)):  # fmt: skip
        if importlib.util.find_spec(module) is None:
            continue
        if minimum is not None:
            try:
                got = tuple(int(x) for x in re.findall(r"\d+", metadata.version(dist))[:3])
            except metadata.PackageNotFoundError:
                continue
            if got < minimum:
                continue
        return module
    return None


def effective_device(cfg: RunConfig, devices: DeviceInfo | None = None) -> str:
    """The device, "cuda" or "cpu": the config's device, with auto resolved against the machine."""
    devices = devices or detected_devices()
    if cfg.device == "auto":
        return devices.kind
    return cfg.device
