"""workbench: learn and tune how large models are trained, from a notebook.

    import workbench as wb
    cfg = wb.RunConfig.from_yaml("configs/quickstart.yaml").override({"precision": "bf16"})
    run = wb.launch(cfg)
    for event in run.follow():
        print(event["step"], event["loss"])

Importing workbench does not import torch: the config, the run folders and the plan stay instant.
"""

from workbench import layouts  # noqa: F401  (the built-in layouts register themselves in STRATEGY_SPECS)
from workbench.calibrate import plan
from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig, StrategySpec, register_layout
from workbench.launch import launch
from workbench.notebook import notebook_launch
from workbench.plan import Plan, RankMemory
from workbench.runs import Run, list_runs
from workbench.suggest import Candidate, suggest, suggest_table
from workbench.sweep import Sweep, sweep
from workbench.telemetry import Reporter

__all__ = [
    "Candidate",
    "ConfigError",
    "DeviceInfo",
    "Plan",
    "Problem",
    "RankMemory",
    "Reporter",
    "Run",
    "RunConfig",
    "StrategySpec",
    "Sweep",
    "launch",
    "list_runs",
    "notebook_launch",
    "plan",
    "register_layout",
    "suggest",
    "suggest_table",
    "sweep",
]
__version__ = "0.1.0"

# After pretraining: these import torch (and peft / onnxruntime), so they load on first use, not on import.
_LAZY = {
    "quantize": "workbench.compress",
    "prune": "workbench.compress",
    "export_onnx": "workbench.export",
    "export_hf": "workbench.hf_export",
    "generate": "workbench.textgen",
    "load_model": "workbench.finetune",
    "load_profile": "workbench.profiling",  # imports no torch; lazy all the same (a run folder's summary.json)
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
