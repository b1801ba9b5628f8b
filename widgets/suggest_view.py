"""The config panel's "fastest that fit" view: ``wb.suggest`` for the panel's current config, the top rows with an
Apply button each that shows that candidate in the panel's controls.

Suggesting plans every layout, micro-batch split, precision and checkpointing (a few hundred plans, well under a
second), so it runs when asked: the Suggest button, or opening the view, never on a control change.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import ipywidgets as W

from widgets.fmt import fmt_bytes, fmt_count, fmt_step_time
from workbench.config import ConfigError, DeviceInfo, RunConfig
from workbench.suggest import Candidate, suggest

TOP = 5


class SuggestView(W.VBox):
    """The top `top` candidates for ``get_config()`` planned on ``get_device()`` (None: this machine); Apply calls
    ``apply(candidate.config)``. ``candidates``: the rows shown; ``buttons``: their Apply buttons, in order."""

    def __init__(
        self,
        get_config: Callable[[], RunConfig],
        apply: Callable[[RunConfig], None],
        get_device: Callable[[], str | None] = lambda: None,
        devices: DeviceInfo | None = None,
        top: int = TOP,
    ):
        self.get_config, self.apply, self.get_device, self.devices, self.top = (
            get_config,
            apply,
            get_device,
            devices,
            top,
        )
        self.candidates: list[Candidate] = []
        self.buttons: list[W.Button] = []
        self.suggest_button = W.Button(description="Suggest", icon="bolt", tooltip="plan every layout, micro-batch "
                                       "split, precision and checkpointing at this global batch")  # fmt: skip
        self.suggest_button.on_click(lambda _: self.refresh())
        self.header = W.HTML("<span style='color:#888'>press Suggest: the fastest configs that fit, at this config's "
                             "global batch</span>")  # fmt: skip
        self.rows = W.VBox()
        super().__init__([W.HBox([self.suggest_button, self.header]), self.rows])

    def refresh(self) -> list[Candidate]:
        """Suggest for the current config and show the top rows (or why there are none)."""
        self.candidates, self.buttons, self.rows.children = [], [], ()
        try:
            cfg = self.get_config()
            device = self.get_device()
            found = suggest(cfg, device=device, devices=self.devices)
        except (ConfigError, ValueError) as e:  # fix the config first; an unknown device
            self.header.value = f"<pre style='color:#d62728'>no suggestions: {html.escape(str(e))}</pre>"
            return []
        self.candidates = found[: self.top]
        where = found[0].plan.device_label if found else (device or "this machine")
        self.header.value = (
            f"{len(found)} configs fit on {html.escape(where)} at global batch {cfg.global_batch_size}; the "
            f"{len(self.candidates)} fastest predicted (from the config as it was when Suggest was pressed):"
        )
        self.rows.children = [self._row(i, c) for i, c in enumerate(self.candidates, 1)]
        return self.candidates

    def _row(self, rank: int, c: Candidate) -> W.Widget:
        button = W.Button(description="Apply", icon="check", layout=W.Layout(width="90px"),
                          tooltip=f"set the panel to {c.name}")  # fmt: skip
        button.on_click(lambda _, c=c, b=button: self._apply(c, b))
        self.buttons.append(button)
        text = W.HTML(
            f"{rank}. <b>{fmt_count(round(c.plan.tokens_per_s))} tokens/s</b> "
            f"({fmt_step_time(c.plan.step_time_s)} per step), {fmt_bytes(c.memory_bytes)} on the fullest rank: "
            f"{html.escape(c.why)}"
        )
        return W.HBox([button, text])

    def _apply(self, c: Candidate, button: W.Button) -> None:
        self.apply(c.config)
        for b in self.buttons:
            b.button_style = "success" if b is button else ""


__all__ = ["SuggestView"]
