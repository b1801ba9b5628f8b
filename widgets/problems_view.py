"""Validation problems shown where they are fixed: under the control of their key, and as one list above Launch."""

from __future__ import annotations

import html

import ipywidgets as W

from workbench.config import Problem


def show_problems(problems: list[Problem], messages: dict[str, W.HTML], summary: W.HTML) -> None:
    """Each problem's message under its key's control; the count and the list in ``summary``."""
    by_key: dict[str, list[str]] = {}
    for p in problems:
        by_key.setdefault(p.key, []).append(p.message)
    for key, msg in messages.items():
        text = "".join(
            f"<div style='color:#d62728;font-size:90%'>{html.escape(key)}: {html.escape(m)}</div>"
            for m in by_key.get(key, [])
        )
        if msg.value != text:  # an unchanged widget sends nothing to the browser
            msg.value = text
    summary.value = problems_summary(problems)


def problems_summary(problems: list[Problem]) -> str:
    if not problems:
        return "<span style='color:#2ca02c'>no problems: ready to launch</span>"
    items = "".join(f"<li><code>{html.escape(p.key)}</code>: {html.escape(p.message)}</li>" for p in problems)
    n = len(problems)
    return (
        f"<div style='color:#d62728'><b>{n} problem{'s' if n > 1 else ''}</b> "
        f"&mdash; Launch is disabled until {'they are' if n > 1 else 'it is'} fixed:<ul>{items}</ul></div>"
    )


def note_html(lines: list[str]) -> str:
    """The grey note under a control (why options are off, when the key matters); "" when there is none."""
    if not lines:
        return ""
    return "<div style='color:#888;font-size:85%'>" + "<br>".join(html.escape(x) for x in lines) + "</div>"
