"""A Playbook-style memory explorer for notebooks 04 and 08: turn the knobs, watch the per-rank bars of the plan.

    from memory_explorer import MemoryExplorer
    explorer = MemoryExplorer(cfg)       # strategy, processes, precision, checkpointing; the chart's own device menu
    explorer                             # display it; explorer.plan is the Plan drawn now

The bars are the config panel's plan chart (widgets.plan_view.PlanChart): parameters, gradients, optimizer state,
fp32 master, activations and buffers per rank, from ``wb.plan`` — arithmetic, so they move as a slider moves.
"""

from __future__ import annotations

import ipywidgets as W

from widgets.plan_view import PlanChart
from workbench.config import ConfigError, DeviceInfo, RunConfig

# validated as for a cluster of Hopper GPUs (not this machine's cores): the chart plans for a GPU
CLUSTER = DeviceInfo(kind="cuda", count=64, name="planned GPUs", capability=(9, 0))


class MemoryExplorer(W.VBox):
    def __init__(self, cfg: RunConfig, device: str = "h100"):
        self.base = cfg
        self.strategy = W.Dropdown(options=["ddp", "zero1", "zero2", "zero3"], value="ddp", description="strategy")
        self.processes = W.IntSlider(value=8, min=1, max=64, description="processes")
        self.precision = W.Dropdown(options=["fp32", "bf16"], value="bf16", description="precision")
        self.checkpointing = W.Checkbox(value=False, description="activation checkpointing")
        self.chart = PlanChart(on_device_change=self.update)
        self.chart.device.value = device
        for w in (self.strategy, self.processes, self.precision, self.checkpointing):
            w.observe(self.update, names="value")
        super().__init__([W.HBox([self.strategy, self.processes]), W.HBox([self.precision, self.checkpointing]),
                          self.chart])  # fmt: skip
        self.update()

    def config(self) -> RunConfig | None:
        """The config the knobs describe; None when it is not a valid one (the chart says so)."""
        try:
            cfg = self.base.override(
                {
                    "parallel.strategy": self.strategy.value,
                    "parallel.num_processes": self.processes.value,
                    "precision": self.precision.value,
                    "activation_checkpointing": self.checkpointing.value,
                }
            )
        except (ConfigError, ValueError):
            return None
        return None if cfg.validate(CLUSTER) else cfg

    def update(self, _=None) -> None:
        self.chart.show(self.config())

    @property
    def plan(self):
        return self.chart.plan
