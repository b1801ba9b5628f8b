"""Compare(runs): overlay runs' loss curves and tabulate what differs between them.

    from widgets import Compare
    Compare(runs_dir="runs")           # pick runs from the runs folder
    Compare(sweep_runs)                # the Runs that wb.sweep returned, selected

The table has one row per run: the config keys whose values differ between the selected runs (named as in
the YAML file), then the final metrics from ``Run.summary()``. Sort it by any column. The curves use the
dashboard's smoothing (debiased EMA, raw points faint) and downsampling (<= 2,000 points per trace).

Selected runs that were profiled (``profile_steps: N``) are also put side by side inside a step: their per-rank
breakdowns as stacked bars (``profile_fig``) and their step timelines on one time axis (``timeline_fig``), e.g.
ddp next to zero3, or gpipe next to 1f1b (widgets/timeline.py).
"""

from __future__ import annotations

import html
import os
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import yaml

from widgets.controls import flat
from widgets.downsample import MAX_POINTS, lttb, minmax
from widgets.figures import COLORS, FIGURE_WIDTH
from widgets.smoothing import ema
from widgets.timeline import breakdown_figure, timeline_figure
from workbench.metrics_schema import SUMMARY_COLUMNS
from workbench.profiling import load_profile
from workbench.runs import Run, list_runs

# the run's state, then Run.summary()'s columns of the metrics (workbench/metrics_schema.py, column "compare"),
# with the plan's predicted tokens/s and predicted / measured after the measured tokens_per_s
METRIC_COLUMNS = ("status", *SUMMARY_COLUMNS)
HEADING_TIPS = {
    "tokens_per_s": "measured: the mean of the timed log intervals after the first",
    "predicted_tokens_per_s": "the plan's step-time model (status.json planned)",
    "prediction_ratio": "predicted / measured tokens/s; red: more than 1.5x off either way",
}
SKIP_KEYS = ("name",)  # differs between every pair of runs by construction


def _fmt(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if col == "mfu" and isinstance(v, float):
        return f"{100 * v:.2f}%"
    if col == "peak_mem_bytes" and isinstance(v, (int, float)):
        return f"{v / 2**20:,.0f} MiB"
    if col in ("tokens_per_s", "predicted_tokens_per_s") and isinstance(v, (int, float)):
        return f"{v:,.0f}"
    if col == "prediction_ratio" and isinstance(v, (int, float)):
        return f"{v:.2f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(col, x) for x in v)
    return str(v)


def _cell(col: str, row: dict[str, Any]) -> str:
    """A table cell; the ratio of a run more than 1.5x off its prediction in red, the verdict as its tooltip."""
    text = html.escape(_fmt(col, row.get(col)))
    if col == "prediction_ratio" and row.get("prediction_verdict"):
        return (f"<td style='padding:2px 8px;color:#d62728;font-weight:bold' "
                f"title='{html.escape(row['prediction_verdict'])}'>{text}</td>")  # fmt: skip
    return f"<td style='padding:2px 8px'>{text}</td>"


def _sort_key(v: Any) -> tuple:
    # None and "-" last whatever the direction is handled by the caller; numbers before strings
    if isinstance(v, bool):
        return (0, float(v), "")
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    return (1, 0.0, str(v))


class Compare(W.VBox):
    """Pick runs, overlay their loss curves (by step or by tokens), and a sortable table of what differs.

    ``rows``: the table as dicts (sorted); ``columns``: its columns; ``loss_fig``: the overlay figure;
    ``profiles``: the profile summaries of the selected runs that have one (by run name), drawn side by side in
    ``profile_fig`` (stacked bars per run and rank) and ``timeline_fig`` (one row per run and rank).
    """

    def __init__(
        self, runs: list[Run | str] | None = None, runs_dir: str = "runs", smoothing: float = 0.6, x_axis: str = "step"
    ):
        self.runs_dir = runs_dir
        self._extra: dict[str, str] = {}  # path -> label, for given runs outside runs_dir
        self._cache: dict[str, tuple[tuple, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self.diff_keys: list[str] = []

        self.picker = W.SelectMultiple(options=[], rows=6, description="runs", layout=W.Layout(width="420px"))
        self.refresh_button = W.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.x_axis = W.ToggleButtons(options=["step", "tokens"], value=x_axis, description="x axis")
        self.x_axis.style.button_width = "70px"
        self.smoothing = W.FloatSlider(
            value=smoothing, min=0.0, max=0.99, step=0.01, description="smoothing", continuous_update=False
        )
        self.log_y = W.Checkbox(value=False, description="log y", indent=False)
        self.sort_by = W.Dropdown(options=["name"], value="name", description="sort by")
        self.descending = W.Checkbox(value=False, description="descending", indent=False)
        self.loss_fig = go.FigureWidget(
            layout=go.Layout(
                title={"text": "loss: compare runs", "x": 0.02, "font": {"size": 14}},
                width=2 * FIGURE_WIDTH,  # fixed: see widgets/dashboard.py
                height=340,
                margin={"l": 60, "r": 20, "t": 40, "b": 40},
                template="plotly_white",
                xaxis={"title": {"text": x_axis}},
                yaxis={"title": {"text": "loss (nats/token)"}},
                uirevision="keep",
            )
        )
        self.table_html = W.HTML()
        self.profiles: dict[str, dict[str, Any]] = {}
        self.profile_fig = go.FigureWidget(breakdown_figure({}))
        self.profile_fig.layout.width = 2 * FIGURE_WIDTH
        self.timeline_fig = go.FigureWidget(timeline_figure({}))
        self.timeline_fig.layout.width = 2 * FIGURE_WIDTH
        self.profile_box = W.VBox([self.profile_fig, self.timeline_fig], layout=W.Layout(display="none"))
        self._quiet = False
        self.picker.observe(lambda _: None if self._quiet else self.redraw(), names="value")
        for c in (self.x_axis, self.smoothing, self.log_y):
            c.observe(lambda _: self._draw_curves(), names="value")
        for c in (self.sort_by, self.descending):
            c.observe(lambda _: self._draw_table(), names="value")
        top = W.HBox([self.picker, W.VBox([self.refresh_button, self.x_axis, self.smoothing, self.log_y])])
        table = W.HBox([self.sort_by, self.descending])
        super().__init__([top, self.loss_fig, table, self.table_html, self.profile_box])
        if runs:
            for r in runs:
                path = r.path if isinstance(r, Run) else os.path.abspath(r)
                self._extra[path] = os.path.basename(path)
        self.refresh(select=[r.path if isinstance(r, Run) else os.path.abspath(r) for r in runs or []])

    # ---------------------------------------------------------------------------------------------

    def refresh(self, select: list[str] | None = None) -> None:
        """Re-list the runs folder (keeping the selection), then redraw."""
        options: dict[str, str] = {}
        for r in list_runs(self.runs_dir):
            options[r.path] = r.name
        for path, label in self._extra.items():
            options.setdefault(path, label)
        keep = list(select) if select is not None else list(self.picker.value)
        self._quiet = True  # one redraw at the end, not one per trait change
        try:
            self.picker.options = [(label, path) for path, label in options.items()]
            self.picker.value = tuple(p for p in keep if p in options)
        finally:
            self._quiet = False
        self.redraw()

    def select(self, runs: list[Run | str]) -> None:
        """Select these runs (Runs, paths, or names in the runs folder)."""
        paths = []
        names = {label: path for label, path in self.picker.options}
        for r in runs:
            if isinstance(r, Run):
                paths.append(r.path)
            elif r in names:
                paths.append(names[r])
            else:
                paths.append(os.path.abspath(r))
        known = {path for _, path in self.picker.options}
        for p in paths:
            if p not in known:
                self._extra[p] = os.path.basename(p)
        self.refresh(select=paths)

    def _load(self, path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
        """(summary, flat config, curves) of a run, cached until its files change."""
        stamp = []
        for f in ("metrics.jsonl", "status.json", "config.yaml"):
            try:
                st = os.stat(os.path.join(path, f))
                stamp.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        key = tuple(stamp)
        hit = self._cache.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        run = Run(path)
        try:
            with open(os.path.join(path, "config.yaml")) as f:
                cfg = flat(yaml.safe_load(f) or {})
        except (OSError, yaml.YAMLError):
            cfg = {}
        ms = run.metrics()
        summary = run.summary()

        def arr(k: str, rows: list[dict[str, Any]]) -> np.ndarray:
            return np.array([float(m[k]) if m.get(k) is not None else np.nan for m in rows], dtype=float)

        train = [m for m in ms if m.get("loss") is not None]
        evals = [m for m in ms if m.get("eval_loss") is not None]
        curves = {
            "step": arr("step", train),
            "tokens": arr("tokens", train),
            "loss": arr("loss", train),
            "eval_step": arr("step", evals),
            "eval_tokens": arr("tokens", evals),
            "eval_loss": arr("eval_loss", evals),
        }
        value = (summary, cfg, curves)
        self._cache[path] = (key, value)
        return value

    def redraw(self) -> None:
        self._draw_curves()
        self._build_rows()
        self._draw_table()
        self.draw_profiles()

    def draw_profiles(self) -> None:
        """The selected runs' profile summaries side by side (hidden when none of them was profiled)."""
        labels = {p: label for label, p in self.picker.options}
        loaded = {labels.get(p, os.path.basename(p)): load_profile(p) for p in self.picker.value}
        self.profiles = {name: s for name, s in loaded.items() if s is not None}
        for fig, new in ((self.profile_fig, breakdown_figure(self.profiles)),
                         (self.timeline_fig, timeline_figure(self.profiles))):  # fmt: skip
            with fig.batch_update():
                fig.data = []
                fig.layout.shapes = []
                fig.add_traces(list(new.data)) if new.data else None
                fig.layout.shapes = new.layout.shapes
                fig.layout.xaxis = new.layout.xaxis
                fig.layout.yaxis = new.layout.yaxis
                fig.layout.height = new.layout.height
        self.profile_box.layout.display = None if self.profiles else "none"

    def _draw_curves(self) -> None:
        paths = list(self.picker.value)
        labels = {p: label for label, p in self.picker.options}
        xk = self.x_axis.value
        w = float(self.smoothing.value)
        traces = []
        for i, p in enumerate(paths):
            _, _, c = self._load(p)
            color = COLORS[i % len(COLORS)]
            name = labels.get(p, os.path.basename(p))
            x = c[xk]
            rx, ry = minmax(x, c["loss"], MAX_POINTS)
            sx, sy = lttb(x, np.asarray(ema(c["loss"].tolist(), w)), MAX_POINTS)
            ex, ey = lttb(c["eval_" + xk], c["eval_loss"], MAX_POINTS)
            traces += [
                go.Scatter(x=rx, y=ry, mode="lines", line={"color": color, "width": 1}, opacity=0.25,
                           name=name, legendgroup=name, showlegend=False, hoverinfo="skip"),
                go.Scatter(x=sx, y=sy, mode="lines", line={"color": color, "width": 2}, name=name, legendgroup=name),
                go.Scatter(x=ex, y=ey, mode="markers", marker={"color": color, "symbol": "diamond", "size": 7},
                           name=f"{name} eval_loss", legendgroup=name, showlegend=False),
            ]  # fmt: skip
        with self.loss_fig.batch_update():
            self.loss_fig.data = []
            self.loss_fig.add_traces(traces) if traces else None
            self.loss_fig.layout.xaxis.title.text = xk
            self.loss_fig.layout.yaxis.type = "log" if self.log_y.value else "linear"

    def _build_rows(self) -> None:
        paths = list(self.picker.value)
        labels = {p: label for label, p in self.picker.options}
        loaded = [(p, *self._load(p)) for p in paths]
        keys: list[str] = []
        for _, _, cfg, _ in loaded:
            for k in cfg:
                if k not in keys and k not in SKIP_KEYS:
                    keys.append(k)
        missing = object()
        diff = [k for k in keys if len({repr(cfg.get(k, missing)) for _, _, cfg, _ in loaded}) > 1]
        self.diff_keys = diff
        self.columns = ["name", *diff, *METRIC_COLUMNS]
        rows = []
        for p, summary, cfg, _ in loaded:
            row: dict[str, Any] = {"name": labels.get(p, os.path.basename(p)), "path": p}
            for k in diff:
                row[k] = cfg.get(k)
            for k in METRIC_COLUMNS:
                row[k] = summary.get(k)
            row["prediction_verdict"] = summary.get("prediction_verdict")  # not a column: the ratio's tooltip
            rows.append(row)
        self.rows = rows
        current = self.sort_by.value
        with self.sort_by.hold_trait_notifications():
            self.sort_by.options = self.columns
            self.sort_by.value = current if current in self.columns else "name"

    def sort(self, column: str, descending: bool = False) -> list[dict[str, Any]]:
        """Sort the table by a column (runs without a value go last); returns the rows."""
        with self.hold_sync():
            self.descending.value = descending
            self.sort_by.value = column
        self._draw_table()
        return self.rows

    def _draw_table(self) -> None:
        col = self.sort_by.value if self.sort_by.value in self.columns else "name"
        have = [r for r in self.rows if r.get(col) is not None]
        none = [r for r in self.rows if r.get(col) is None]
        have.sort(key=lambda r: _sort_key(r[col]), reverse=self.descending.value)
        self.rows = have + none
        if not self.rows:
            self.table_html.value = "<i>select runs above to compare them</i>"
            return
        arrow = " &#9660;" if self.descending.value else " &#9650;"
        head = "".join(
            f"<th style='padding:2px 8px;text-align:left' title='{html.escape(HEADING_TIPS.get(c, c))}'>"
            f"{html.escape(c)}{arrow if c == col else ''}</th>"
            for c in self.columns
        )
        body = "".join("<tr>" + "".join(_cell(c, r) for c in self.columns) + "</tr>" for r in self.rows)
        self.table_html.value = (
            f"<table style='border-collapse:collapse;font-size:95%'><thead><tr style='border-bottom:1px solid #999'>"
            f"{head}</tr></thead><tbody>{body}</tbody></table>"
        )
