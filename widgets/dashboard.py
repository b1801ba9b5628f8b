"""Dashboard(run): live plotly figures for one run, fed from its metrics.jsonl on a background thread.

    from widgets import Dashboard
    Dashboard(run)                 # a run launched from this kernel, a finished one, or wb.Run.attach(path)

How the data flows, and why:
- A daemon thread reads the events written since its last look (``Run.new_metrics()``, a file tail) every
  0.1 s. The kernel stays free: other cells run while the figures move. (Measured in JupyterLab with headless
  Chromium: updates from a background thread reach the browser while the kernel is idle and while another
  cell runs, file write to screen in a median 58-141 ms with the 0.2 s polling of then.)
- Redraws are throttled to at most 5 per second, and each redraw sends one message per figure
  (``batch_update``): a run that logs every step does not flood the browser.
- Each trace is downsampled to at most 2,000 points (widgets/downsample.py): smoothed lines by
  largest-triangle-three-buckets, raw points by min/max buckets so spikes stay visible. A 100,000-step run
  sends as many points as a 2,000-step one.
- Smoothing is a debiased EMA (widgets/smoothing.py), computed incrementally on the full-resolution series
  before downsampling; the raw series stays faint underneath.
- What does not change from step to step is not a time series: the communication payload per optimizer step
  is fixed by the layout, so it is one bar per rank (the last step's bytes), with its range if it ever moved.
- A run with ``profile_steps: N`` writes profile/summary.json once its profiled steps are done; the dashboard
  then shows the step timeline and the per-rank breakdown below the figures (widgets/timeline.py), and the
  predicted parts of a step next to the measured ones (widgets/prediction_view.py).
- Every run checks the prediction (workbench/prediction.py): the plan's tokens/s is a dashed level on the
  tokens/s figure, and a line under the status sets it against the measured tokens/s, with the verdict in red
  when the run is more than 1.5x off either way.
"""

from __future__ import annotations

import html
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from widgets.downsample import MAX_POINTS, lttb, minmax
from widgets.figures import (
    COLORS,
    FIGURE_WIDTH,
    STATE_COLORS,
    RunStore,
    as_float,
    figure,
    line,
    metric_traces,
    show_placeholder,
    smoothed_name,
    trace,
)
from widgets.fmt import fmt_bytes, fmt_duration
from widgets.prediction_view import parts_table_html, predicted_shape, prediction_html
from widgets.smoothing import EMA
from widgets.tensorboard import TensorBoardButton
from widgets.timeline import breakdown_figure, timeline_figure
from workbench.metrics_schema import BY_KEY, EVAL, Metric, figure_metrics
from workbench.prediction import check, parts_table, planned_of, predicted_tokens_per_s
from workbench.profiling import load_profile
from workbench.runs import TERMINAL, Run

# the figures whose traces are the metrics workbench/metrics_schema.py puts in them (Dashboard.<name>_fig), and
# those of them the "log y" box applies to; memory and comm draw one trace or bar per rank instead
SERIES_FIGURES = ("loss", "throughput", "lr", "grad_norm")
LOG_Y_FIGURES = ("loss", "grad_norm")


class Dashboard(W.VBox):
    """Live figures for one Run: loss (train, eval, entropy floor), tokens/s and MFU, memory per rank, lr,
    grad norm, and communication bytes when the run reports them; status, elapsed time, ETA, Stop, TensorBoard.

    The plotly figures are attributes (``loss_fig``, ``throughput_fig``, ``memory_fig``, ``lr_fig``,
    ``grad_norm_fig``, ``comm_fig``; ``timeline_fig`` and ``breakdown_fig`` once a profiled run has written its
    profile summary). ``prediction``: predicted against measured tokens/s (``workbench.prediction.check``), shown
    in ``prediction_html``; ``parts_rows``: a profiled run's predicted and measured parts, in ``parts_html``.
    ``set_run(run)`` points the dashboard at another run.
    """

    MAX_REDRAWS_PER_S = 5.0
    POLL_S = 0.1

    def __init__(self, run: Run | str | None = None, smoothing: float = 0.6, x_axis: str = "step"):
        self.run: Run | None = None
        self._reader: Run | None = None
        self._store = RunStore()
        self._ema: dict[str, EMA] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop_follow = threading.Event()
        self._dirty = False
        self._max_steps: int | None = None
        # what the tests and the closing note measure
        self.redraw_times: list[float] = []  # monotonic time of each redraw
        self.points_sent = 0  # points in all traces, summed over all redraws
        self.last_points = 0  # points in all traces at the last redraw
        self.latencies: list[float] = []  # worker wrote the event -> its point was in a redraw (seconds)
        self._pending_times: list[float] = []

        # ---- controls ----
        self.x_axis = W.ToggleButtons(options=["step", "tokens"], value=x_axis, description="x axis")
        self.x_axis.style.button_width = "70px"
        self.smoothing = W.FloatSlider(
            value=smoothing, min=0.0, max=0.99, step=0.01, description="smoothing", continuous_update=False
        )
        self.log_y = W.Checkbox(value=False, description="log y", indent=False)
        self.status_html = W.HTML("<b>no run</b>")
        self.error_html = W.HTML("")
        self.prediction_html = W.HTML("")
        self.prediction: dict[str, Any] | None = None
        self._planned: dict[str, Any] | None = None  # status.json's "planned", until the first event brings it
        self._shapes: tuple[dict[str, Any], ...] = ()
        # highlighted only while there is a run to stop (see _show_stoppable)
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="", disabled=True)
        self.stop_button.tooltip = "the workers finish the step, save a checkpoint and exit as stopped"
        self.stop_button.on_click(lambda _: self.stop())
        self.tensorboard = TensorBoardButton("runs")
        for c in (self.x_axis, self.smoothing, self.log_y):
            c.observe(lambda _: self.redraw(), names="value")

        grid = self._build_figures()
        self._placeholders: dict[str, str | None] = {}  # figure attribute -> the text it shows instead of data
        self._show_placeholders("no run")
        header = W.HBox([self.status_html, self.stop_button, self.tensorboard], layout=W.Layout(align_items="center"))
        controls = W.HBox([self.x_axis, self.smoothing, self.log_y], layout=W.Layout(align_items="center"))
        self.profile: dict[str, Any] | None = None  # the run's profile/summary.json, once written
        self.profile_box = W.VBox([], layout=W.Layout(display="none"))
        self.parts_rows: list[dict[str, Any]] = []
        self.parts_html = W.HTML("")
        super().__init__([header, self.error_html, self.prediction_html, controls, grid, self.profile_box])
        if run is not None:
            self.set_run(run)

    def _build_figures(self) -> W.Widget:
        """The figures (attributes, so vars(dashboard) finds them), in a grid two wide."""
        self.loss_fig = figure("loss", "loss (nats/token)")
        self.throughput_fig = figure("tokens_per_s and mfu", "tokens/s", secondary="MFU (%)")
        self.memory_fig = figure("mem_bytes per rank", "bytes")
        self.memory_fig.layout.yaxis.ticksuffix = "B"
        self.memory_fig.layout.yaxis.exponentformat = "SI"  # "100MB"; plotly would write billions as "1BB"
        self.lr_fig = figure("lr", "learning rate")
        self.grad_norm_fig = figure("grad_norm", "global grad norm")
        for name in SERIES_FIGURES:  # each metric's traces, in the schema's order
            fig = self.series_figure(name)
            for m in figure_metrics(name):
                fig.add_traces(metric_traces(m))
        self.comm_fig = figure("comm_bytes per rank (per optimizer step)", "bytes", x_title="rank")
        self.comm_fig.layout.yaxis.ticksuffix = "B"
        self.comm_fig.layout.yaxis.exponentformat = "SI"  # "100MB"; plotly would write billions as "1BB"
        self.comm_fig.add_trace(go.Bar(x=[], y=[], name="comm_bytes", marker={"color": COLORS[0]}, showlegend=False,
                                       textposition="inside", hoverinfo="x+text"))  # fmt: skip
        self._comm_box = W.Box([self.comm_fig], layout=W.Layout(display="none", width=f"{FIGURE_WIDTH}px"))

        cell = W.Layout(width=f"{FIGURE_WIDTH}px", overflow="hidden")
        grid = W.GridBox(
            [
                W.Box([self.loss_fig], layout=cell),
                W.Box([self.throughput_fig], layout=cell),
                W.Box([self.memory_fig], layout=cell),
                W.Box([self.lr_fig], layout=cell),
                W.Box([self.grad_norm_fig], layout=cell),
                self._comm_box,
            ],
            layout=W.Layout(grid_template_columns=f"repeat(auto-fill, {FIGURE_WIDTH}px)", grid_gap="4px", width="100%"),
        )
        return grid

    # ---------------------------------------------------------------------------------------------
    # following a run

    def set_run(self, run: Run | str) -> None:
        """Show this run (a Run or a run folder); stops following the previous one."""
        self._stop_following()
        if isinstance(run, str):
            run = Run.attach(run)
        with self._lock:
            self.run = run
            # A reader of our own: the caller's Run keeps its own file offset for follow()/new_metrics().
            self._reader = Run(run.path)
            self._store = RunStore()
            self._ema = {}
            self._pending_times = []
            self._max_steps = None
            self._planned = None
            self.show_profile(None)
            try:
                self._max_steps = int(run.config.max_steps)
            except Exception:
                pass
            self.tensorboard.runs_dir = os.path.dirname(run.path)
            done = run.done
            self._ingest(self._reader.new_metrics())  # what is already on disk, drawn at once
            floor = run.info.get("entropy_floor")  # the worker also records it in status.json
            if self._store.entropy_floor is None and isinstance(floor, (int, float)):
                self._store.entropy_floor = float(floor)
            self.redraw()
            self.update_status()
        self._stop_follow = threading.Event()
        if not done:
            self._thread = threading.Thread(target=self._follow, args=(self._stop_follow,), daemon=True)
            self._thread.start()

    def _ingest(self, events: list[dict[str, Any]], live: bool = False) -> None:
        for ev in events:
            self._store.add(ev)
            t = as_float(ev.get("time"))
            if live and math.isfinite(t):  # latency is measured only for events that arrive while we follow
                self._pending_times.append(t)
        if events:
            self._dirty = True

    def _follow(self, stop: threading.Event) -> None:
        """Background thread: tail metrics.jsonl, redraw at most MAX_REDRAWS_PER_S, until the run ends."""
        last_status = 0.0
        while not stop.is_set():
            # Once the traces are downsampled, a new event moves the picture by less than a pixel: redraw once
            # a second then, not 5 times (each redraw resends every trace: up to ~19k points on a long run).
            min_interval = 1.0 / self.MAX_REDRAWS_PER_S if len(self._store) <= MAX_POINTS else 1.0
            try:
                done = self.run.done  # read before draining, so the last events are not missed
                with self._lock:
                    if stop.is_set():
                        return
                    self._ingest(self._reader.new_metrics(), live=True)
                    now = time.monotonic()
                    last = self.redraw_times[-1] if self.redraw_times else -1e9
                    if self._dirty and now - last >= min_interval:
                        self.redraw()
                    if done or now - last_status >= 0.5:
                        self.update_status()
                        last_status = now
                if done:
                    if self._dirty:  # the final points, once the throttle allows
                        time.sleep(max(0.0, min_interval - (time.monotonic() - self.redraw_times[-1])))
                        with self._lock:
                            if not stop.is_set():
                                self.redraw()
                    return
            except Exception as e:  # a dashboard must never die silently: say what broke
                self.error_html.value = f"<pre style='color:#d62728'>dashboard error: {html.escape(repr(e))}</pre>"
                return
            stop.wait(self.POLL_S)

    def _stop_following(self) -> None:
        self._stop_follow.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the dashboard has drawn the run's last events (True) or timeout seconds pass."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stop(self) -> None:
        """Ask the run to stop (it saves a checkpoint and ends as "stopped")."""
        if self.run is not None:
            self.run.stop()
            self.stop_button.disabled = True
            self.stop_button.button_style = ""
            self.stop_button.description = "Stopping..."

    def series_figure(self, name: str) -> go.FigureWidget:
        """The figure that draws the metrics whose schema figure is ``name`` (``loss`` -> ``loss_fig``)."""
        return getattr(self, f"{name}_fig")

    def close(self) -> None:
        self._stop_following()
        super().close()

    # ---------------------------------------------------------------------------------------------
    # drawing

    def _smoothed(self, key: str) -> np.ndarray:
        w = float(self.smoothing.value)
        e = self._ema.get(key)
        if e is None or e.weight != w:
            e = self._ema[key] = EMA(w)
        col = self._store.cols[key]
        e.extend(col[len(e.values) :])
        return np.asarray(e.values, dtype=float)

    def redraw(self) -> None:
        """Push the current data to the figures: one batched message per figure, each trace <= 2,000 points."""
        with self._lock:
            s = self._store
            xk = self.x_axis.value
            x = np.asarray(s.step if xk == "step" else s.tokens, dtype=float)
            points = 0

            def put(tr: Any, xs: np.ndarray, ys: np.ndarray, how: str = "lttb") -> None:
                nonlocal points
                ok = np.isfinite(xs) & np.isfinite(ys)
                xs, ys = xs[ok], ys[ok]
                xs, ys = (lttb if how == "lttb" else minmax)(xs, ys, MAX_POINTS)
                tr.x, tr.y = xs.tolist(), ys.tolist()
                points += len(xs)

            log_type = "log" if self.log_y.value else "linear"
            for name in SERIES_FIGURES:
                fig = self.series_figure(name)
                with fig.batch_update():
                    for m in figure_metrics(name):
                        self._draw_metric(fig, m, x, put)
                    fig.layout.xaxis.title.text = xk
                    if name in LOG_Y_FIGURES:
                        fig.layout.yaxis.type = log_type
            self._ensure_rank_traces(self.memory_fig, s.ranks)
            with self.memory_fig.batch_update():
                for r, tr in enumerate(self.memory_fig.data):
                    ys = np.array([m[r] if r < len(m) else np.nan for m in s.mem], dtype=float)
                    put(tr, x, ys, "minmax")
                self.memory_fig.layout.xaxis.title.text = xk
            if s.has_comm:
                self._draw_comm()
                points += len(s.comm_last)
            self._draw_prediction()
            if len(s):
                self._show_placeholders(None)
                self._lock_mfu_axis()
            else:
                self._show_placeholders(self._waiting_text())
            now = time.time()
            self.latencies.extend(now - t for t in self._pending_times)
            self._pending_times = []
            self.redraw_times.append(time.monotonic())
            self.points_sent += points
            self.last_points = points
            self._dirty = False

    def _draw_metric(self, fig: go.FigureWidget, m: Metric, x: np.ndarray, put: Callable[..., None]) -> None:
        """A metric's traces, found by name: raw (min/max buckets) and smoothed, or one line; eval points at the
        eval steps; a level across the steps drawn. Fractions (mfu) are drawn in %."""
        s = self._store
        scale = 100.0 if m.unit == "fraction" else None
        if m.constant:  # the entropy floor: a level line across the steps drawn
            level = {"entropy_floor": s.entropy_floor}[m.key]  # what RunStore keeps of each level
            if level is not None and len(x) and np.isfinite(x).any():
                lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
                put(trace(fig, m.key), np.array([lo, hi]), np.array([level] * 2))
            else:
                put(trace(fig, m.key), np.array([]), np.array([]))
        elif m.when == EVAL:  # eval_loss: at the eval steps only
            ex = np.asarray(s.eval_step if self.x_axis.value == "step" else s.eval_tokens, dtype=float)
            put(trace(fig, m.key), ex, np.asarray({"eval_loss": s.eval_loss}[m.key], dtype=float))
        else:
            ys = np.asarray(s.cols[m.key], dtype=float)
            if m.smoothed:
                put(trace(fig, m.key), x, ys if scale is None else scale * ys, "minmax")
                sm = self._smoothed(m.key)
                put(trace(fig, smoothed_name(m.key)), x, sm if scale is None else scale * sm)
            else:
                put(trace(fig, m.key), x, ys if scale is None else scale * ys)

    def _show_placeholders(self, text: str | None) -> None:
        """Each figure of the grid shows text instead of axes (None: the data), sent only when it changes."""
        for name in (*SERIES_FIGURES, "memory"):
            if self._placeholders.get(name, "") != text:
                fig = self.series_figure(name)
                with fig.batch_update():
                    show_placeholder(fig, text)
                self._placeholders[name] = text

    def _waiting_text(self) -> str:
        """What the figures say before the run's first metric event: the start-up phase and its seconds."""
        if self.run is None:
            return "no run"
        start = self.run.startup()
        if start is None:
            return f"{self.run.status}: no metric events" if self.run.done else "waiting for the first metric event"
        phase, secs = start
        return f"{phase} · {secs:.0f} s"

    def _lock_mfu_axis(self) -> None:
        """MFU = tokens/s x FLOPs per token / peak: the right axis is the left one times that ratio (the last
        event's, as the peak may be re-measured), both from 0, so the MFU axis reads the tokens/s curve and
        its ticks are plotly's round percentages. Without MFU (no peak known) the right axis is hidden."""
        s, fig = self._store, self.throughput_fig
        tps = np.asarray(s.cols["tokens_per_s"], dtype=float)
        mfu = np.asarray(s.cols["mfu"], dtype=float) * (100.0 if BY_KEY["mfu"].unit == "fraction" else 1.0)
        both = np.isfinite(tps) & np.isfinite(mfu) & (tps > 0)
        with fig.batch_update():
            if not np.isfinite(tps).any():
                fig.layout.yaxis2.visible = bool(np.isfinite(mfu).any())
                return
            top = 1.1 * max(float(np.nanmax(tps)), predicted_tokens_per_s(self._plan()) or 0.0)  # predicted too
            fig.layout.yaxis.range = [0, top]
            fig.layout.yaxis2.visible = bool(both.any())
            if both.any():
                ratio = float(mfu[both][-1] / tps[both][-1])
                fig.layout.yaxis2.update(range=[0, top * ratio], tickmode="auto", nticks=6, ticksuffix="%")

    def _plan(self) -> dict[str, Any] | None:
        """The run's planned dict: the first event's, else status.json's (read until it is there)."""
        if self._store.planned is not None:
            return self._store.planned
        if self._planned is None and self.run is not None:
            self._planned = planned_of(self.run.info)
        return self._planned

    def _draw_prediction(self) -> None:
        """Predicted against measured tokens/s: the dashed level on the tokens/s figure (once the run has events)
        and the line under the status, with the verdict when more than 1.5x off; each sent only when it changes."""
        plan = self._plan()
        self.prediction = check(plan, self._store.cols["tokens_per_s"])
        predicted = predicted_tokens_per_s(plan)
        shapes = (predicted_shape(predicted),) if predicted is not None and len(self._store) else ()
        if shapes != self._shapes:
            self.throughput_fig.layout.shapes = shapes
            self._shapes = shapes
        text = prediction_html(self.prediction, profiled=self.profile is not None)
        if self.prediction_html.value != text:
            self.prediction_html.value = text
        if self.profile is not None and not self.parts_rows:  # the plan came after the profile summary
            self.parts_rows = parts_table(plan, self.profile)
            self.parts_html.value = parts_table_html(self.parts_rows)

    def _draw_comm(self) -> None:
        """One bar per rank: the last step's payload; the hover and the title say whether it ever moved."""
        s = self._store
        bar = self.comm_fig.data[0]
        moved = [lo != hi for lo, hi in zip(s.comm_min, s.comm_max, strict=True)]
        with self.comm_fig.batch_update():
            bar.x = [f"rank {r}" for r in range(len(s.comm_last))]
            bar.y = list(s.comm_last)
            bar.text = [fmt_bytes(v) for v in s.comm_last]
            bar.hovertext = [
                f"{fmt_bytes(v)} per optimizer step"
                + (f"; ranged {fmt_bytes(lo)} to {fmt_bytes(hi)} over {s.comm_events} reports" if m else "")
                + (f"; measured: {s.comm_scope}" if s.comm_scope else "")
                for v, lo, hi, m in zip(s.comm_last, s.comm_min, s.comm_max, moved, strict=True)
            ]
            if any(moved):
                note = f"varied: the last of {s.comm_events} reports"
            elif s.comm_events > 1:
                note = f"the same in all {s.comm_events} reports"
            else:  # the worker measures it once; say where, claim nothing about other steps
                note = "reported once" + (f": {s.comm_scope.split(' (')[0]}" if s.comm_scope else "")
            self.comm_fig.layout.xaxis.title.text = f"rank ({note})"
        self._comm_box.layout.display = None

    @staticmethod
    def _ensure_rank_traces(fig: go.FigureWidget, ranks: int) -> None:
        have = len(fig.data)
        if have > ranks:
            fig.data = fig.data[:ranks]
        for r in range(have, ranks):
            fig.add_trace(line(f"rank {r}", COLORS[r % len(COLORS)]))

    def update_status(self) -> None:
        """Status line: state, step / max_steps, elapsed, ETA; the worker's error text when it failed. The step
        timeline too, once the run's profile summary appears."""
        if self.run is None:
            self.status_html.value = "<b>no run</b>"
            return
        if self.profile is None:
            self.show_profile(load_profile(self.run.path))
        state = self.run.status
        info = self.run.info
        s = self._store
        step = int(s.step[-1]) if s.step else 0
        now = time.time()
        started = info.get("started")
        ended = info.get("ended") or (info.get("updated") if state in TERMINAL else None)
        elapsed = (ended or now) - started if started else None
        eta = None
        if state not in TERMINAL and self._max_steps and len(s.step) >= 2:
            t0, t1 = s.times[0], s.times[-1]
            if math.isfinite(t0) and math.isfinite(t1) and t1 > t0 and s.step[-1] > s.step[0]:
                rate = (s.step[-1] - s.step[0]) / (t1 - t0)  # optimizer steps per second since the first log
                eta = max(0.0, (self._max_steps - step) / rate - (now - t1))
        color = STATE_COLORS.get(state, "#555555")
        parts = [
            f"<b style='color:{color}'>{html.escape(state)}</b>",
            f"<code>{html.escape(self.run.name)}</code>",
            f"step {step}" + (f" / {self._max_steps}" if self._max_steps else ""),
            f"elapsed {fmt_duration(elapsed)}",
        ]
        if state not in TERMINAL:
            parts.append(f"ETA {fmt_duration(eta)}")
        eff = s.effective or info.get("effective")
        if eff:
            parts.append(f"{eff.get('world_size')} processes, {eff.get('wrapper')}, {eff.get('compute_dtype') or '?'}")
        if not len(s) and state not in TERMINAL:  # the start-up, as it happens, instead of a step count
            waiting = self._waiting_text()
            parts = parts[:2] + [html.escape(waiting)]
            with self._lock:
                if not len(self._store):
                    self._show_placeholders(waiting)
        with self.status_html.hold_sync(), self.stop_button.hold_sync(), self.error_html.hold_sync():
            self.status_html.value = " &middot; ".join(parts)
            self._show_stoppable(state)
            if state == "failed":
                err = self.run.error or "failed (no error text)"
                self.error_html.value = (
                    "<pre style='color:#d62728;white-space:pre-wrap;max-height:300px;overflow:auto'>"
                    + html.escape(err[-4000:])
                    + "</pre>"
                )
            else:
                self.error_html.value = ""

    def _show_stoppable(self, state: str) -> None:
        """Stop is enabled and highlighted only while the run can still be stopped: not once it reached a final
        state (finished, failed, stopped; also a finished run attached later), nor once Stop was asked."""
        asked = os.path.exists(os.path.join(self.run.path, "STOP"))
        running = state not in TERMINAL
        self.stop_button.disabled = not running or asked
        self.stop_button.button_style = "" if self.stop_button.disabled else "warning"
        self.stop_button.description = "Stopping..." if running and asked else "Stop"
        self.stop_button.tooltip = (
            "the workers finish the step, save a checkpoint and exit as stopped"
            if running
            else f"the run has {state}: nothing to stop"
        )

    def show_profile(self, summary: dict[str, Any] | None) -> None:
        """Show a profile summary (profile/summary.json) as the step timeline and the per-rank breakdown; None hides
        them. The dashboard calls it itself when the run's summary appears."""
        self.profile = summary
        self.parts_rows = parts_table(self._plan(), summary) if summary is not None else []
        self.parts_html.value = parts_table_html(self.parts_rows)
        self.prediction_html.value = prediction_html(self.prediction, profiled=summary is not None)  # its hint
        if summary is None:
            self.profile_box.children = []
            self.profile_box.layout.display = "none"
            return
        self.timeline_fig = go.FigureWidget(timeline_figure(summary))
        self.timeline_fig.layout.width = 2 * FIGURE_WIDTH
        self.breakdown_fig = go.FigureWidget(breakdown_figure(summary))
        self.breakdown_fig.layout.width = FIGURE_WIDTH
        steps = summary["ranks"][0]["steps"] if summary.get("ranks") else 0
        title = W.HTML(f"<b>inside a step</b>: {steps} profiled optimizer steps per rank; "
                       f"traces in <code>{html.escape(os.path.join(self.run.path, 'profile'))}</code> (Perfetto, "
                       "chrome://tracing)" if self.run is not None else "<b>inside a step</b>")  # fmt: skip
        parts = W.Box([self.parts_html], layout=W.Layout(padding="8px 0 0 12px"))
        self.profile_box.children = [title, self.timeline_fig, W.HBox([self.breakdown_fig, parts])]
        self.profile_box.layout.display = None

    @property
    def status(self) -> str:
        """The state shown in the status line."""
        return self.run.status if self.run is not None else "no run"

    @property
    def figures(self) -> dict[str, go.FigureWidget]:
        return {k: v for k, v in vars(self).items() if isinstance(v, go.FigureWidget)}
