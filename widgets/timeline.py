"""The step timeline: pure functions from a run's ``profile/summary.json`` (``profile_steps: N``) to plotly figures.

    from widgets.timeline import timeline_figure, breakdown_figure
    summary = wb.load_profile(run.path)
    timeline_figure(summary)                                  # one row per rank, over the profiled steps
    timeline_figure({"ddp": s_ddp, "zero3": s_zero3})         # several runs, one row per run and rank
    breakdown_figure({"ddp": s_ddp, "zero3": s_zero3})        # the summary as a stacked bar per run and rank

The timeline draws the summary's ``timeline`` entry, the merged spans the engine already computed
(workbench/profiling.py), never the trace's kernels: a few hundred bars per rank. Each rank's row has two lanes:
the upper one what the training thread does (forward, backward, optimizer, data, idle), the lower one each
communication op moving bytes, so communication hidden under compute shows as a bar below a compute bar, exposed
communication as a bar below a gap. Dotted lines mark the optimizer steps' boundaries.

The stacked bar splits each rank's ``step_ms`` into compute_ms, comm_exposed_ms, idle_ms, data_ms and other_ms
(they add up to the step: README, "Inside a step"); the hover adds the whole of comm_ms and the hidden share.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

LANE_KINDS = ("forward", "backward", "optimizer", "data", "idle")  # the training thread's lane, in legend order
KIND_COLORS = {
    "forward": "#4292c6",
    "backward": "#fd8d3c",
    "optimizer": "#41ab5d",
    "data": "#8c6d31",
    "idle": "#d9d9d9",
    "all_reduce": "#d62728",
    "all_gather": "#9467bd",
    "reduce_scatter": "#e377c2",
    "broadcast": "#17becf",
    "send": "#bcbd22",
    "recv": "#7f7f7f",
    "all_to_all": "#8c564b",
    "barrier": "#525252",
    "wait": "#969696",
}
OTHER_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02")
# the stacked bar: (summary key, label, colour); the five add up to step_ms
BREAKDOWN = (
    ("compute_ms", "compute", "#4292c6"),
    ("comm_exposed_ms", "exposed communication", "#d62728"),
    ("idle_ms", "idle", "#bdbdbd"),
    ("data_ms", "data", "#8c6d31"),
    ("other_ms", "other", "#f0f0f0"),
)
ROW_HEIGHT = 56  # pixels per rank row of the timeline


def kind_color(kind: str) -> str:
    """The colour of a span kind: fixed for the known ones, a stable pick for any other op name."""
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    return OTHER_COLORS[sum(map(ord, kind)) % len(OTHER_COLORS)]


def kind_order(kind: str) -> tuple[int, str]:
    """The legend's order: the training thread's kinds first (forward ... idle), then the ops by name."""
    return (LANE_KINDS.index(kind), "") if kind in LANE_KINDS else (len(LANE_KINDS), kind)


def as_runs(summaries: dict[str, Any] | dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A single summary (it has "ranks") as {"": summary}; a dict of labelled summaries as it is."""
    if "ranks" in summaries:
        return {"": summaries}
    return dict(summaries)


def row_label(run: str, rank: int) -> str:
    return f"{run} · rank {rank}" if run else f"rank {rank}"


def timeline_rows(summaries: dict[str, Any] | dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and rank: {"label", "steps": [[start, end], ...], "spans": {kind: [(start, end), ...]}},
    times in ms from the run's first profiled step (each run starts at 0, so runs line up side by side)."""
    rows = []
    for run, summary in as_runs(summaries).items():
        for entry in sorted(summary.get("timeline") or [], key=lambda t: t["rank"]):
            spans: dict[str, list[tuple[float, float]]] = {}
            for start, end, kind in entry["spans"]:
                spans.setdefault(kind, []).append((float(start), float(end)))
            label = row_label(run, int(entry["rank"]))
            rows.append({"label": label, "steps": [list(s) for s in entry["steps"]], "spans": spans})
    return rows


def timeline_figure(summaries: dict[str, Any] | dict[str, dict[str, Any]], title: str | None = None) -> go.Figure:
    """The step timeline: one row per rank (per run and rank for several runs), one bar trace per span kind."""
    rows = timeline_rows(summaries)
    kinds = sorted({k for r in rows for k in r["spans"]}, key=kind_order)
    fig = go.Figure()
    for kind in kinds:
        lane = kind in LANE_KINDS  # upper lane: the training thread; lower lane: communication
        ys, xs, bases, hover = [], [], [], []
        for i, r in enumerate(rows):
            for s, e in r["spans"].get(kind, []):
                ys.append(i)
                xs.append(e - s)
                bases.append(s)
                hover.append(f"{r['label']}: {kind} {s:.2f}-{e:.2f} ms ({e - s:.2f} ms)")
        fig.add_bar(y=ys, x=xs, base=bases, orientation="h", name=kind, marker_color=kind_color(kind),
                    marker_line_width=0, width=0.42 if lane else 0.3, offset=-0.45 if lane else 0.03,
                    hovertext=hover, hoverinfo="text")  # fmt: skip
    for i, r in enumerate(rows):
        for s, e in r["steps"]:
            for x in (s, e):
                fig.add_shape(type="line", x0=x, x1=x, y0=i - 0.5, y1=i + 0.5, line={"dash": "dot", "width": 1,
                              "color": "#636363"})  # fmt: skip
    fig.update_layout(
        title={"text": title or "step timeline (profiled optimizer steps)", "x": 0.02, "font": {"size": 14}},
        barmode="overlay",
        template="plotly_white",
        height=120 + ROW_HEIGHT * max(1, len(rows)),
        margin={"l": 110, "r": 20, "t": 70, "b": 40},
        legend={"orientation": "h", "y": 1, "yanchor": "bottom", "x": 0, "font": {"size": 11}},
        xaxis={"title": {"text": "ms from the first profiled step"}},
        yaxis={
            "tickvals": list(range(len(rows))),
            "ticktext": [r["label"] for r in rows],
            "autorange": "reversed",
            "showgrid": False,
            "zeroline": False,
        },  # fmt: skip
    )
    return fig


def breakdown_rows(summaries: dict[str, Any] | dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run and rank: the run's label, the rank and the summary's figures (ms per optimizer step)."""
    rows = []
    for run, summary in as_runs(summaries).items():
        for r in sorted(summary.get("ranks") or [], key=lambda r: r["rank"]):
            rows.append({"run": run, **r})
    return rows


def breakdown_figure(summaries: dict[str, Any] | dict[str, dict[str, Any]], title: str | None = None) -> go.Figure:
    """The summary as one stacked bar per run and rank: compute, exposed communication, idle, data, other."""
    rows = breakdown_rows(summaries)
    several = any(r["run"] for r in rows)
    x = [[r["run"] for r in rows], [f"rank {r['rank']}" for r in rows]] if several else [
        f"rank {r['rank']}" for r in rows]  # fmt: skip
    hover = []
    for r in rows:
        hidden = r.get("comm_hidden_fraction")
        hover.append(f"{row_label(r['run'], r['rank'])}: step {r['step_ms']:.1f} ms, communication "
                     f"{r['comm_ms']:.1f} ms" + (f" ({hidden:.0%} hidden under compute)" if hidden is not None
                                                  else ""))  # fmt: skip
    fig = go.Figure()
    for key, label, color in BREAKDOWN:
        ys = [float(r.get(key) or 0.0) for r in rows]
        fig.add_bar(x=x, y=ys, name=label, marker_color=color, marker_line={"color": "#969696", "width": 0.5},
                    customdata=hover, hovertemplate=f"{label}: %{{y:.1f}} ms<br>%{{customdata}}<extra></extra>")  # fmt: skip
    fig.update_layout(
        title={"text": title or "inside a step, per rank (ms per optimizer step)", "x": 0.02, "font": {"size": 14}},
        barmode="stack",
        template="plotly_white",
        height=360,
        margin={"l": 60, "r": 20, "t": 70, "b": 60},
        legend={"orientation": "h", "y": 1, "yanchor": "bottom", "x": 0, "font": {"size": 11}, "traceorder": "normal"},
        yaxis={"title": {"text": "ms per optimizer step"}},
    )
    return fig
