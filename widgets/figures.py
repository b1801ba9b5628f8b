"""The dashboard's pieces that hold no widget logic: a run's events column by column, and the figure style.

``RunStore`` keeps every event at full resolution (the figures get downsampled copies); ``figure`` / ``line``
give every dashboard figure the same size, margins and title/legend rows; ``metric_traces`` makes a metric's
traces as workbench/metrics_schema.py describes it (raw and smoothed, a level, eval points), named by its key,
and ``trace`` finds one by that name.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from workbench.metrics_schema import EVAL, Metric, series_keys

# scalar keys of a metric event that the dashboard draws against the steps (workbench/metrics_schema.py)
SCALARS = series_keys()
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
STATE_COLORS = {"running": "#1f77b4", "finished": "#2ca02c", "stopped": "#ff7f0e", "failed": "#d62728"}


def as_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# A FigureWidget inside an ipywidgets container does not follow the container's size (plotly.py#5208: it
# draws 700 px wide and gets clipped), so the figures have a fixed width: two side by side fit a notebook.
FIGURE_WIDTH = 470
FIGURE_HEIGHT = 290
# The top margin holds two rows, so that a title and a legend never share one (they collided on the tokens/s
# figure, whose legend reached left under its title): the title alone at the top, the legend's row (up to two
# lines) sitting on the plot's top edge below it.
TITLE_SIZE = 14
LEGEND_SIZE = 11
TOP_MARGIN = 66


def figure(title: str, y_title: str, x_title: str = "step", secondary: str | None = None) -> go.FigureWidget:
    layout = go.Layout(
        title={
            "text": title,
            "x": 0.02,
            "xanchor": "left",
            "font": {"size": TITLE_SIZE},
            "yref": "container",
            "y": 1 - 6 / FIGURE_HEIGHT,
            "yanchor": "top",
        },  # fmt: skip
        width=FIGURE_WIDTH,
        height=FIGURE_HEIGHT,
        margin={"l": 60, "r": 60 if secondary else 20, "t": TOP_MARGIN, "b": 40},
        template="plotly_white",
        legend={
            "orientation": "h",
            "y": 1,
            "x": 1,
            "xanchor": "right",
            "yanchor": "bottom",
            "font": {"size": LEGEND_SIZE},
        },  # fmt: skip
        xaxis={"title": {"text": x_title}},
        yaxis={"title": {"text": y_title}},
        uirevision="keep",  # user zoom survives redraws
    )
    if secondary:
        layout.yaxis2 = {"title": {"text": secondary}, "overlaying": "y", "side": "right", "showgrid": False}
    return go.FigureWidget(layout=layout)


def line(name: str, color: str, raw: bool = False, yaxis: str = "y", dash: str | None = None, **kw) -> go.Scatter:
    line = {"color": color, "width": 1 if raw else 2}
    if dash:
        line["dash"] = dash
    return go.Scatter(
        x=[], y=[], name=name, mode="lines", line=line, opacity=0.25 if raw else 1.0, yaxis=yaxis,
        showlegend=not raw, hoverinfo="x+y+name", **kw,
    )  # fmt: skip


# how each metric the dashboard draws looks (which figure, smoothed or not: workbench/metrics_schema.py)
STYLE: dict[str, dict[str, Any]] = {
    "loss": {"color": COLORS[0]},
    "eval_loss": {"color": COLORS[1]},
    "entropy_floor": {"color": "#555555", "dash": "dash"},
    "lr": {"color": COLORS[5]},
    "grad_norm": {"color": COLORS[3]},
    "tokens_per_s": {"color": COLORS[2]},
    # MFU is tokens/s times a constant (FLOPs per token over the peak), so on axes locked to that ratio
    # (Dashboard._lock_mfu_axis) its line lies on the tokens/s line: dotted, so that both stay visible
    "mfu": {"color": COLORS[4], "yaxis": "y2", "dash": "dot"},
}


def smoothed_name(key: str) -> str:
    return f"{key} (smoothed)"


def metric_traces(m: Metric) -> list[go.Scatter]:
    """A metric's traces, named by its key: raw (faint) and smoothed for a noisy series, points joined by lines
    for one written at eval steps, else one line."""
    style = STYLE[m.key]
    if m.when == EVAL:
        return [go.Scatter(x=[], y=[], name=m.key, mode="lines+markers", line={"color": style["color"], "width": 2})]
    if m.smoothed:
        return [line(m.key, raw=True, **style), line(smoothed_name(m.key), **style)]
    return [line(m.key, **style)]


def show_placeholder(fig: go.FigureWidget, text: str | None) -> None:
    """A figure with no data: no axes (plotly would invent -1..4 ticks, "-1B" bytes, and lay an empty axis's
    title out at Infinity: console errors), finite placeholder ranges, and ``text`` in the middle. None: the
    axes and the legend back, autoscaled (call it only on a change, so that a user's zoom survives redraws)."""
    empty = text is not None
    axes = [fig.layout.xaxis, fig.layout.yaxis] + ([fig.layout["yaxis2"]] if "yaxis2" in fig.layout else [])
    for ax in axes:
        ax.visible = not empty
        if empty:
            ax.range = [0, 1]
        else:
            ax.autorange = True
    fig.layout.showlegend = not empty
    fig.layout.annotations = (
        [{"text": text, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5, "showarrow": False,
          "font": {"color": "#888888", "size": 12}}] if empty else []
    )  # fmt: skip


def trace(fig: go.FigureWidget, name: str) -> Any:
    """The figure's trace of this name (traces are found by name, never by position)."""
    for t in fig.data:
        if t.name == name:
            return t
    raise KeyError(f"{fig.layout.title.text!r} has no trace named {name!r}")


class RunStore:
    """The run's events at full resolution, column by column (the figures get downsampled copies)."""

    def __init__(self) -> None:
        self.step: list[float] = []
        self.tokens: list[float] = []
        self.cols: dict[str, list[float]] = {k: [] for k in SCALARS}
        self.mem: list[list[float]] = []  # per event, one value per rank
        self.comm_last: list[float] = []  # comm_bytes per rank at the last event that reported them
        self.comm_min: list[float] = []
        self.comm_max: list[float] = []
        self.comm_events = 0
        self.comm_scope: str | None = None  # what the worker says it measured ("optimizer step 1 (...)")
        self.eval_step: list[float] = []
        self.eval_tokens: list[float] = []
        self.eval_loss: list[float] = []
        self.times: list[float] = []  # the worker's wall-clock time of each event
        self.entropy_floor: float | None = None
        self.effective: dict[str, Any] | None = None
        self.planned: dict[str, Any] | None = None  # the first event's wb.plan(cfg).to_dict()
        self.has_comm = False
        self.ranks = 0

    def add(self, ev: dict[str, Any]) -> None:
        if "step" not in ev:
            return
        step = as_float(ev["step"])
        tokens = as_float(ev.get("tokens"))
        self.step.append(step)
        self.tokens.append(tokens)
        for k in SCALARS:
            self.cols[k].append(as_float(ev.get(k)))
        mem = ev.get("mem_bytes")
        mem = [as_float(v) for v in mem] if isinstance(mem, list) else []
        self.mem.append(mem)
        self.ranks = max(self.ranks, len(mem))
        comm = ev.get("comm_bytes")
        if isinstance(comm, list):
            self._add_comm([as_float(v) for v in comm])
            if isinstance(ev.get("comm_bytes_scope"), str):
                self.comm_scope = ev["comm_bytes_scope"]
        if ev.get("eval_loss") is not None:
            self.eval_step.append(step)
            self.eval_tokens.append(tokens)
            self.eval_loss.append(as_float(ev["eval_loss"]))
        if ev.get("entropy_floor") is not None:
            self.entropy_floor = as_float(ev["entropy_floor"])
        if isinstance(ev.get("effective"), dict):
            self.effective = ev["effective"]
        if isinstance(ev.get("planned"), dict):
            self.planned = ev["planned"]
        self.times.append(as_float(ev.get("time")))

    def _add_comm(self, comm: list[float]) -> None:
        if len(comm) != len(self.comm_last):  # a new rank count: start the range over
            self.comm_min, self.comm_max = list(comm), list(comm)
        self.comm_last = comm
        self.comm_min = [min(a, b) for a, b in zip(self.comm_min, comm, strict=True)]
        self.comm_max = [max(a, b) for a, b in zip(self.comm_max, comm, strict=True)]
        self.comm_events += 1
        self.has_comm = True
        self.ranks = max(self.ranks, len(comm))

    def __len__(self) -> int:
        return len(self.step)
