"""The panel's numbers before launch: derived values (global batch, tokens, parameters, FLOPs) and the plan chart.

All of it is arithmetic over the config: the sizes come from ``wb.plan`` (its torch-free closed forms), so no
model is built per keystroke and the panel shows the same parameter and FLOP counts as ``workbench plan``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from widgets.fmt import fmt_bytes, fmt_count, fmt_step_time
from workbench.config import RunConfig, is_import_string
from workbench.plan import MEMORY_FIELDS  # the names the plan and the worker's measurement share

THIS_MACHINE = "this machine"
OFF_SCALE = 5  # the device's memory over the largest rank's beyond which the chart fits the bars, not the line


def derived_values(cfg: RunConfig, plan: Any | None) -> dict[str, Any]:
    """Global batch, tokens per step and in the run; parameters and FLOPs per token from the plan.

    A figure the config cannot give is absent: parameters of your own model (model.arch a factory) are known
    only once it is built, and without a plan there are no sizes at all.
    """
    d: dict[str, Any] = {}
    try:
        d["dp_degree"] = cfg.dp_degree
        d["global_batch_size"] = cfg.global_batch_size
        d["tokens_per_step"] = cfg.tokens_per_step
        d["total_tokens"] = cfg.tokens_per_step * cfg.max_steps
    except (TypeError, ZeroDivisionError):
        pass
    d["num_params"] = None
    if plan is not None and not is_import_string(cfg.model.arch):
        d["num_params"] = plan.num_params
        d["flops_per_token"] = plan.flops_per_token
    return d


def derived_table(cfg: RunConfig, d: dict[str, Any], plan: Any | None) -> str:
    """The derived values as an HTML table, each with the arithmetic that gives it (plan: where the sizes
    came from, to say when its FLOP count is only approximate)."""

    def num(k: str) -> str:
        v = d.get(k)
        return "-" if v is None else f"{v:,}"

    m, mb, ga = cfg.model, cfg.micro_batch_size, cfg.grad_accum_steps
    if d.get("num_params") is not None:
        params = num("num_params")
    elif is_import_string(m.arch):
        params = "counted when the custom model is built"
    else:
        params = "- (no plan for this config)"
    approximate = plan is not None and "flops_per_token" in plan.approximate
    approx = " (approximate: see the plan's notes)" if approximate and d.get("flops_per_token") else ""
    return (
        "<table style='font-size:95%'>"
        f"<tr><td>global batch</td><td>micro_batch_size {mb} &times; grad_accum_steps {ga} &times; "
        f"data-parallel degree {d.get('dp_degree', '-')} = <b>{num('global_batch_size')}</b> sequences</td></tr>"
        f"<tr><td>tokens per optimizer step</td><td>{num('global_batch_size')} &times; model.seq_len "
        f"{m.seq_len} = <b>{num('tokens_per_step')}</b></td></tr>"
        f"<tr><td>parameters</td><td><b>{params}</b></td></tr>"
        f"<tr><td>FLOPs per token</td><td>{num('flops_per_token')}{approx}</td></tr>"
        f"<tr><td>tokens in the run</td><td>{num('total_tokens')} (max_steps {cfg.max_steps})</td></tr>"
        "</table>"
    )


def _plan_figure() -> go.FigureWidget:
    fig = go.FigureWidget(
        layout=go.Layout(
            title={"text": "plan: memory per rank", "x": 0.02, "font": {"size": 14}},
            barmode="stack",
            width=560,  # fixed: a FigureWidget in a container does not follow its size (plotly.py#5208)
            height=300,
            margin={"l": 60, "r": 20, "t": 40, "b": 40},
            template="plotly_white",
            yaxis={"title": {"text": "bytes"}, "ticksuffix": "B", "exponentformat": "SI"},
            legend={"orientation": "h", "y": -0.2},
        )
    )
    for name in MEMORY_FIELDS:
        fig.add_bar(x=[], y=[], name=name)
    return fig


class PlanChart(W.VBox):
    """The device to plan for, a stacked bar of memory per rank against the device's memory, and the verdict.

    ``show(cfg)`` replans and redraws; ``plan`` is the last Plan (None when there is none).
    """

    def __init__(self, on_device_change: Callable[[], None]):
        # this machine, or one of the planner's known GPUs (plan an H100 job on a laptop)
        self.device = W.Dropdown(options=[THIS_MACHINE], value=THIS_MACHINE, description="plan for")
        try:
            from workbench.plan import DEVICES as PLAN_DEVICES

            self.device.options = [THIS_MACHINE, *PLAN_DEVICES]
        except ImportError:
            pass
        self.device.observe(lambda _: on_device_change(), names="value")
        self.fig = _plan_figure()
        self.html = W.HTML()
        self.plan: Any | None = None
        super().__init__([self.device, self.fig, self.html])

    def show(self, cfg: RunConfig | None) -> Any | None:
        """Plan cfg on the chosen device and draw it; say why when there is no plan."""
        self.plan = None
        try:
            from workbench.plan import plan  # imported here: the panel still works (and says so) without it
        except ImportError as e:
            self.unavailable(f"plan unavailable (workbench.plan: {e})")
            return None
        if cfg is None:
            self.unavailable("plan unavailable: fix the problems first")
            return None
        try:
            p = plan(cfg, device=None if self.device.value == THIS_MACHINE else self.device.value)
        except Exception as e:  # a half-edited config the planner cannot take: say so, do not break the panel
            self.unavailable(f"plan unavailable: {type(e).__name__}: {e}")
            return None
        self.plan = p
        self._draw(p)
        self.html.value = _verdict(p)
        return p

    def _draw(self, p: Any) -> None:
        with self.fig.batch_update():
            for trace in self.fig.data:
                trace.x = [f"rank {r.rank}" for r in p.ranks]
                trace.y = [getattr(r, trace.name, 0) for r in p.ranks]
            mem = p.device_memory_bytes
            shapes, notes = [], []
            if mem:
                shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y", "y0": mem, "y1": mem,
                               "line": {"color": "#d62728", "dash": "dash"}})  # fmt: skip
                notes.append({"xref": "paper", "x": 1, "y": mem, "yref": "y", "text": f"device memory {fmt_bytes(mem)}",
                              "showarrow": False, "xanchor": "right", "yanchor": "bottom", "font": {"color": "#d62728"}})  # fmt: skip
            self.fig.layout.title.text = f"plan: memory per rank on {p.device_label}"
            # A linear axis always (a log one made 1-10 MB bars a sliver under a 20 GB line, with "2 5 2 5" minor
            # labels): up to the device line when it is in reach, else fitted to the bars with the line named,
            # off the scale, at the top edge.
            top = max([r.total_bytes for r in p.ranks] or [0])
            self.fig.layout.yaxis.type = "linear"
            if mem and top and mem / top > OFF_SCALE:
                shapes, notes = [], [
                    {"xref": "paper", "x": 1, "yref": "paper", "y": 1, "showarrow": False, "xanchor": "right",
                     "yanchor": "bottom", "font": {"color": "#d62728"},
                     "text": f"device memory {fmt_bytes(mem)}: {fmt_count(mem / top)}&times; the largest rank, off the scale"}
                ]  # fmt: skip
                self.fig.layout.yaxis.range = [0, 1.1 * top]
            else:
                self.fig.layout.yaxis.range = [0, 1.1 * max(top, mem or 0)] if top or mem else [0, 1]
            self.fig.layout.shapes = shapes
            self.fig.layout.annotations = notes

    def unavailable(self, why: str) -> None:
        """Empty the chart and say why."""
        self.plan = None
        with self.fig.batch_update():
            for trace in self.fig.data:
                trace.x, trace.y = [], []
            self.fig.layout.shapes = []
            self.fig.layout.annotations = []
            self.fig.layout.title.text = "plan unavailable"
        self.html.value = f"<span style='color:#888'>{html.escape(why)}</span>"


def _verdict(p: Any) -> str:
    """The verdict and the estimate in words a person reads aloud; where the peak came from (a measurement's
    date, its matrix sizes, threads) behind a details toggle and the line's tooltip."""
    verdict = "<b style='color:#2ca02c'>fits</b>" if p.fits else "<b style='color:#d62728'>does not fit</b>"
    approx = f" (approximate: {', '.join(p.approximate)})" if p.approximate else ""
    extra = " &mdash; CPU: the ranks share this machine's RAM, the verdict sums them" if p.shared_memory else ""
    largest = fmt_count(p.max_micro_batch_size) if p.max_micro_batch_size else "none (not even 1)"
    source = html.escape(p.peak_flops_source, quote=True)
    return (
        f"<div style='font-size:95%'>{verdict}: headroom {fmt_bytes(p.headroom_bytes)}, largest "
        f"micro_batch_size that fits: {largest}{extra}<br>"
        f"<span title='peak: {source}'>estimate: {fmt_step_time(p.step_time_s)} per step, "
        f"{fmt_count(round(p.tokens_per_s))} tokens/s (MFU {p.mfu:.0%}); comm per step "
        f"rank 0 {fmt_bytes(p.comm_bytes[0] if p.comm_bytes else None)}{approx}</span>"
        f"<details><summary style='color:#888'>where the peak comes from</summary>{source}</details></div>"
    )
