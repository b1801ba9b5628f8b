"""Devices and their peaks (workbench/plan/devices.py): GPU names to data-sheet figures, this CPU's measured
peak and its cache (issue 11 item 1: a calibration cached under load gave MFU 521%; item 7: an unknown GPU
was planned as an H100 without saying so)."""

from __future__ import annotations

import json
import os

import pytest

from workbench.config import DeviceInfo, RunConfig
from workbench.plan import devices
from workbench.plan.devices import (
    DEVICES,
    PeakFlops,
    cache_dir,
    cpu_peak_flops,
    device_key_for,
    gpu_peak_flops,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")

# (name as torch reports it, DEVICES key, dense bf16 FLOP/s, memory bytes)
NAMES = [
    ("NVIDIA H100 80GB HBM3", "h100", 989e12, 80 * 1024**3),
    ("NVIDIA H100 PCIe", "h100-pcie", 756e12, 80 * 1024**3),
    ("NVIDIA H100 NVL", "h100-nvl", 835e12, 94 * 10**9),
    ("NVIDIA H200", "h200", 989e12, 141 * 10**9),
    ("NVIDIA H200 NVL", "h200-nvl", 835e12, 141 * 10**9),
    ("NVIDIA A100-SXM4-40GB", "a100-40", 312e12, 40 * 1024**3),
    ("NVIDIA A100-SXM4-80GB", "a100-80", 312e12, 80 * 1024**3),
    ("NVIDIA A100 80GB PCIe", "a100-80", 312e12, 80 * 1024**3),
    ("NVIDIA L40S", "l40s", 362e12, 48 * 1024**3),
    ("NVIDIA L40", "l40", 181e12, 48 * 1024**3),
    ("NVIDIA L4", "l4", 121e12, 24 * 1024**3),
    ("NVIDIA A10", "a10", 125e12, 24 * 1024**3),
    ("Tesla V100-SXM2-32GB", "v100", 15.7e12, 32 * 1024**3),
    ("Tesla V100-PCIE-16GB", "v100-16", 15.7e12, 16 * 1024**3),
    ("Tesla T4", "t4", 8.1e12, 16 * 1024**3),
    ("NVIDIA GeForce RTX 4090", "rtx4090", 165e12, 24 * 1024**3),
]
UNKNOWN = ["NVIDIA A10G", "NVIDIA GH200 480GB", "NVIDIA B200", "NVIDIA GeForce RTX 3090", "AMD Instinct MI300X", ""]


@pytest.mark.parametrize("name,key,bf16,memory", NAMES, ids=[n[0] for n in NAMES])
def test_gpu_names_match_their_own_card(name, key, bf16, memory):
    assert device_key_for(name) == key
    assert DEVICES[key]["memory"] == memory
    peak = gpu_peak_flops(name, "bf16")
    assert isinstance(peak, PeakFlops) and peak.flops == bf16 and peak.measured_at is None
    assert name in peak.source and "bf16 dense" in peak.source


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_gpu_has_no_peak(name):
    """No honest figure for a card the table does not hold: None, so MFU is absent, not guessed."""
    assert device_key_for(name) is None
    assert gpu_peak_flops(name, "bf16") is None


def test_plan_for_an_unknown_gpu_says_so(monkeypatch):
    import workbench as wb

    monkeypatch.setattr(DeviceInfo, "detect", classmethod(lambda cls: DeviceInfo("cuda", 1, "NVIDIA B200", (10, 0))))
    cfg = RunConfig.from_yaml(QUICKSTART).override({"device": "cuda"})
    with pytest.raises(ValueError, match="NVIDIA B200"):
        wb.plan(cfg)
    monkeypatch.setattr(DeviceInfo, "detect", classmethod(lambda cls: DeviceInfo("cuda", 1, "NVIDIA L40", (8, 9))))
    assert wb.plan(cfg).device == "l40"  # not an L4, not an H100


def test_cache_dir_honours_workbench_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("WORKBENCH_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == str(tmp_path / "home" / ".cache" / "workbench")


def _plant(path: str, key: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({key: value}, f)


def _entry(flops: float) -> dict:
    return {"flops": flops, "measured_at": "2000-01-01T00:00:00+00:00", "sizes": [512], "repeats": 5,
            "threads": 1, "dtype": "fp32"}  # fmt: skip


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    path = devices.cpu_peak_cache_path()
    assert path.startswith(str(tmp_path / "cache"))
    return path, devices.cpu_cache_prefix("fp32") + "1"


def _cached(path: str, key: str) -> dict:
    with open(path) as f:
        return json.load(f)[key]


def test_a_peak_cached_under_load_is_detected_and_replaced(cache):
    """The MFU-521% case: a figure measured while other jobs ran (here 1 GFLOP/s) is beaten by the spot
    measurement, so the peak is measured anew, robustly, and the cache replaced."""
    path, key = cache
    _plant(path, key, _entry(1e9))
    peak = cpu_peak_flops("fp32", threads=1)
    assert peak.flops > 1e9 and peak.measured_at != "2000-01-01T00:00:00+00:00"
    entry = _cached(path, key)
    assert entry["flops"] == peak.flops and entry["measured_at"] == peak.measured_at
    assert entry["repeats"] >= 3 and entry["threads"] == 1 and entry["sizes"][0] >= 512
    assert "best of" in peak.source and "1 thread" in peak.source


def test_an_old_bare_number_is_not_trusted(cache):
    """The old cache format (one 0.3 s matmul, a bare number) is measured over, never reused."""
    path, key = cache
    _plant(path, key, 1e9)
    assert cpu_peak_flops("fp32", threads=1).flops > 1e9
    assert isinstance(_cached(path, key), dict)


def test_a_plausible_cached_peak_is_reused_and_refresh_replaces_it(cache):
    path, key = cache
    _plant(path, key, _entry(1e16))  # no CPU beats 10 PFLOP/s: the spot check keeps it
    kept = cpu_peak_flops("fp32", threads=1)
    assert kept.flops == 1e16 and kept.measured_at == "2000-01-01T00:00:00+00:00"
    fresh = cpu_peak_flops("fp32", threads=1, refresh=True)
    assert fresh.flops < 1e16 and _cached(path, key)["flops"] == fresh.flops
    assert set(fresh.to_dict()) == {"flops", "source", "measured_at"}


def test_the_plan_reads_the_cached_peak_and_ignores_the_old_format(cache, monkeypatch):
    import workbench as wb

    path, _ = cache
    cfg = RunConfig.from_yaml(QUICKSTART).override({"parallel.num_processes": 1})
    threads = os.cpu_count() or 1
    key = devices.cpu_cache_prefix("fp32") + str(threads)
    _plant(path, key, 1e9)  # old format: ignored, the stated default instead
    p = wb.plan(cfg, device="cpu")
    assert p.peak_flops_per_device == devices.CPU_DEFAULT_FLOPS_PER_THREAD["fp32"] * threads
    assert "default" in p.peak_flops_source
    _plant(path, key, _entry(123e9))
    p = wb.plan(cfg, device="cpu")
    assert p.peak_flops_per_device == 123e9 and "2000-01-01" in p.peak_flops_source


def test_a_run_on_an_unknown_gpu_records_no_plan(monkeypatch):
    """status.json "planned" for a card without figures: a reason, not an H100's numbers."""
    import torch

    from workbench.measure import planned

    cfg = RunConfig.from_yaml(QUICKSTART)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA B200")
    out = planned(cfg, torch.device("cuda"))
    assert "ranks" not in out and "NVIDIA B200" in out["error"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 NVL")
    assert planned(cfg, torch.device("cuda"))["device"] == "h100-nvl"
