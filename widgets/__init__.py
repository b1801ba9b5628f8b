"""The notebook face of workbench: ipywidgets + plotly FigureWidget on top of the headless engine.

    from widgets import Workbench
    Workbench()                  # config panel + Launch + live dashboard + compare + TensorBoard

and the pieces on their own: ConfigPanel(config=None), Dashboard(run), Compare(runs).
"""

from widgets.app import Workbench
from widgets.compare import Compare
from widgets.config_panel import ConfigPanel
from widgets.dashboard import Dashboard

__all__ = ["Compare", "ConfigPanel", "Dashboard", "Workbench"]
