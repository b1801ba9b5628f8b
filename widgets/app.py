"""Workbench(): the whole workbench in one object: config panel + Launch, live dashboard, compare, TensorBoard.

    from widgets import Workbench
    Workbench()                                   # starts from the default RunConfig
    Workbench(wb.RunConfig.from_yaml("configs/quickstart.yaml"))

Launch starts the run in the background (``wb.launch``) and points the dashboard at it; the kernel stays free.
The pieces are attributes: ``panel`` (ConfigPanel), ``dashboard`` (Dashboard), ``compare`` (Compare),
``tensorboard`` (the dashboard's TensorBoard button), ``run`` (the last launched Run).
"""

from __future__ import annotations

import os

import ipywidgets as W

from widgets.compare import Compare
from widgets.config_panel import ConfigPanel
from widgets.dashboard import Dashboard
from workbench.config import DeviceInfo, RunConfig
from workbench.runs import Run


class Workbench(W.VBox):
    def __init__(self, config: RunConfig | str | None = None, devices: DeviceInfo | None = None):
        self.panel = ConfigPanel(config, devices=devices)
        runs_dir = self.panel.base.runs_dir
        self.dashboard = Dashboard()
        self.dashboard.tensorboard.runs_dir = runs_dir
        self.tensorboard = self.dashboard.tensorboard
        self.compare = Compare(runs_dir=runs_dir)
        self.run: Run | None = None
        self.panel.on_launch(self._launched)
        title = W.HTML("<h3 style='margin:4px 0'>workbench</h3>")
        # Compare sits in a collapsed accordion: it is for later, the dashboard is for now.
        self.compare_section = W.Accordion([self.compare], titles=("compare runs",), selected_index=None)
        self.compare_section.observe(self._compare_opened, names="selected_index")
        super().__init__(
            [
                title,
                self.panel,
                W.HTML("<h4 style='margin:8px 0 2px'>live run</h4>"),
                self.dashboard,
                self.compare_section,
            ]
        )

    def _launched(self, run: Run) -> None:
        self.run = run
        self.dashboard.set_run(run)  # also points the TensorBoard button at the run's runs folder
        self.compare.runs_dir = os.path.dirname(run.path)
        self.compare.refresh()

    def _compare_opened(self, change) -> None:
        if change["new"] is not None:
            self.compare.refresh()

    def launch(self) -> Run | None:
        """What the Launch button does: launch the panel's config and follow it in the dashboard."""
        return self.panel.launch()
