"""workbench: learn and tune how large models are trained, from a notebook.

    import workbench as wb
    cfg = wb.RunConfig.from_yaml("configs/quickstart.yaml").override({"precision": "bf16"})
    run = wb.launch(cfg)
    for event in run.follow():
        print(event["step"], event["loss"])

Importing workbench does not import torch: the config, the run folders and the plan stay instant.
"""

from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig
from workbench.launch import launch
from workbench.notebook import notebook_launch
from workbench.runs import Run, list_runs
from workbench.telemetry import Reporter

__all__ = [
    "ConfigError",
    "DeviceInfo",
    "Problem",
    "Reporter",
    "Run",
    "RunConfig",
    "launch",
    "list_runs",
    "notebook_launch",
]
__version__ = "0.1.0"
