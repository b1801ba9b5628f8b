"""Predicted against measured, as the dashboard shows it: the plan's tokens/s as a dashed level on the tokens/s
figure, a line of text with the ratio (and the verdict when the run is more than 1.5x off), and, for a run with
``profile_steps``, the predicted parts of a step next to the measured ones. Pure functions of the dicts that
workbench/prediction.py returns, so they are usable (and tested) without a run.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from workbench.prediction import OFF_BY, prediction_line

PREDICTED_COLOR = "#555555"
VERDICT_COLOR = "#d62728"


def predicted_shape(predicted: float) -> dict[str, Any]:
    """A dashed horizontal line across the tokens/s figure at the predicted tokens/s, labelled at its end."""
    return {
        "type": "line", "name": "predicted", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
        "y0": predicted, "y1": predicted, "line": {"color": PREDICTED_COLOR, "width": 1.5, "dash": "dash"},
        "label": {"text": f"predicted {predicted:,.0f}", "textposition": "end", "yanchor": "bottom",
                  "font": {"size": 10, "color": PREDICTED_COLOR}},
    }  # fmt: skip


def prediction_html(result: Mapping[str, Any] | None, profiled: bool = False) -> str:
    """The prediction line under the status: predicted and measured tokens/s, predicted / measured, the predicted
    parts (ms); the verdict on a line of its own, in red, when the run is more than OFF_BY off."""
    if result is None:
        return ""
    line = html.escape(prediction_line(result) or "")
    parts = result.get("predicted_parts_s") or {}
    shown = ", ".join(f"{k} {1e3 * v:.3g}" for k, v in parts.items() if v > 0)
    if shown and result.get("predicted_tokens_per_s") is not None:
        line += f"; predicted ms per step: {html.escape(shown)}"
    out = f"<span style='color:#444'>{line}</span>"
    if result.get("verdict"):
        hint = "" if profiled else " (set profile_steps to measure the parts)"
        out += (f"<br><b style='color:{VERDICT_COLOR}'>more than {OFF_BY}x off the prediction:</b> "
                f"<span style='color:{VERDICT_COLOR}'>{html.escape(result['verdict'] + hint)}</span>")  # fmt: skip
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def parts_table_html(rows: list[dict[str, Any]]) -> str:
    """The rows of ``workbench.prediction.parts_table`` as a small table: part, predicted, measured (mean over the
    ranks, each rank's in the tooltip), what the measured figure is made of."""
    if not rows:
        return ""
    head = "".join(f"<th style='padding:2px 8px;text-align:{a}'>{h}</th>" for h, a in (
        ("part", "left"), ("predicted ms", "right"), ("measured ms", "right"), ("measured as", "left")))  # fmt: skip
    body = []
    for r in rows:
        by_rank = ", ".join(f"rank {i}: {v:.3g}" for i, v in enumerate(r["measured_by_rank_ms"]))
        style = "padding:2px 8px" + ("" if r["in_step"] else ";color:#888")
        top = ";border-top:1px solid #999" if r["part"] == "step" else ""
        body.append(
            f"<tr><td style='{style}{top}'>{html.escape(r['part'])}</td>"
            f"<td style='{style}{top};text-align:right'>{_ms(r['predicted_ms'])}</td>"
            f"<td style='{style}{top};text-align:right' title='{html.escape(by_rank)}'>{_ms(r['measured_ms'])}</td>"
            f"<td style='{style}{top}'><code>{html.escape(r['measured_as'])}</code></td></tr>"
        )
    return (
        "<b>predicted against measured, ms per optimizer step</b> (measured: the profiled steps, mean over ranks)"
        "<table style='border-collapse:collapse;font-size:95%'><thead><tr style='border-bottom:1px solid #999'>"
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
