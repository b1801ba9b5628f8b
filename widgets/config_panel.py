"""ConfigPanel: a control for every RunConfig key, live derived values, inline validation, the plan chart.

    from widgets import ConfigPanel
    panel = ConfigPanel()              # or ConfigPanel(wb.RunConfig.from_yaml("configs/quickstart.yaml"))
    panel                              # edit in the notebook
    cfg = panel.config                 # a validated RunConfig (ConfigError if a problem remains)

Every label is the config key itself (``optimizer.lr``, ``parallel.num_processes``): the names in the YAML
file, in ``cfg.override({...})``, in ``workbench train --set`` and here are the same. The controls are built
from the RunConfig dataclasses (widgets/controls.py), so a key added to workbench/config/schema.py appears here
without a change.

On every change the panel rebuilds the RunConfig, validates it (``cfg.validate()`` + the run-folder checks of
``launch``), disables what cannot run here (widgets/panel_rules.py), and replans (widgets/plan_view.py). All of
it is arithmetic over the config: no model is built per keystroke. "fastest that fit" (widgets/suggest_view.py)
ranks the configs that fit at the same global batch when opened or asked. Save / load / copy-as-CLI and Launch
are the actions at the bottom.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import traitlets

from widgets.controls import (
    CONTROL_W,
    GROUPS,
    LABEL_W,
    ChoiceButtons,
    LogSliderText,
    flat,
    group_of,
    head_options,
    leaf_keys,
    make_control,
    read_values,
    show_value,
)
from widgets.panel_files import PRESET_KEYS, PRESETS, cli_command, matching_preset
from widgets.panel_rules import max_processes, show_availability, strategy_rules
from widgets.plan_view import THIS_MACHINE, PlanChart, derived_table, derived_values
from widgets.problems_view import show_problems
from widgets.suggest_view import SuggestView
from workbench import prelaunch
from workbench.config import ConfigError, DeviceInfo, Problem, RunConfig
from workbench.runs import next_free_name

# how a run-folder problem names the two ways out, in this panel's own controls
PANEL_ASKS = ("tick resume", "tick overwrite")

# names other modules and notebooks import from here
__all__ = ["ChoiceButtons", "ConfigPanel", "LogSliderText", "PRESETS", "flat", "leaf_keys", "max_processes"]


class ConfigPanel(W.VBox):
    """Controls for a RunConfig, grouped, with derived values, validation, the plan, save/load and Launch.

    ``config``: the validated RunConfig (raises ConfigError listing the problems). ``controls[key]``: the
    widget of a key; ``notes[key]`` / ``messages[key]``: the grey note and the red problems under it.
    ``problems``: what stops a launch now. ``derived``: global batch, tokens per step, parameter count.
    ``unavailable[key][option]``: why an option is disabled here. ``base``: the config the controls started
    from (keys without a control come from it). ``suggestions``: the "fastest that fit" view (widgets/suggest_view.py),
    whose Apply sets the controls. ``launch()`` starts the run (the Launch button), returns its Run.
    """

    def __init__(self, config: RunConfig | str | None = None, devices: DeviceInfo | None = None):
        self.yaml_path: str | None = config if isinstance(config, str) else None  # base of the CLI command
        if isinstance(config, str):
            config = RunConfig.from_yaml(config)
        self._base = config or RunConfig()
        self.devices = devices or DeviceInfo.detect()
        self.max_processes = max_processes(self.devices)
        self.rules = strategy_rules()
        self.controls: dict[str, W.Widget] = {}
        self.labels: dict[str, W.Label] = {}
        self.kinds: dict[str, str] = {}
        self.messages: dict[str, W.HTML] = {}
        self.notes: dict[str, W.HTML] = {}
        self._updating = False
        self._cfg: RunConfig | None = None
        self._problems: list[Problem] = []
        self._launch_callbacks: list[Callable[[Any], None]] = []
        self.run = None
        self.derived: dict[str, Any] = {}
        self.unavailable: dict[str, dict[str, str]] = {}
        self.last_update_s = 0.0  # how long the last control change took to update the whole panel

        groups = self._build_controls()
        self.derived_html = W.HTML()
        self.problems_html = W.HTML()
        self.plan_chart = PlanChart(on_device_change=self._update_plan)
        self.plan_device, self.plan_fig, self.plan_html = (
            self.plan_chart.device,
            self.plan_chart.fig,
            self.plan_chart.html,
        )
        launch_row, file_row = self._build_actions()
        side = W.VBox([self.derived_html, self.plan_chart])
        # the fastest configs that fit at this global batch: computed when opened or asked, never per keystroke
        self.suggestions = SuggestView(lambda: self.config, self.set_config, self._plan_device, self.devices)
        self.suggest_section = W.Accordion([self.suggestions], titles=("fastest that fit",), selected_index=None)
        self.suggest_section.observe(self._suggest_opened, names="selected_index")
        super().__init__(
            [groups, W.HBox([side], layout=W.Layout(width="100%")), self.suggest_section, self.problems_html,
             launch_row, file_row, self.cli_text, self.cli_copy]
        )  # fmt: skip
        self._set_n_head_options(self._base.model.d_model)
        self._updating = True
        self.preset.value = self._matching_preset(self._base)
        self._updating = False
        self._update()

    # ---------------------------------------------------------------------------------------------
    # building

    def _build_controls(self) -> W.Widget:
        """A control per config key, in boxes by group, the model-size preset first."""
        rows: dict[str, list[W.Widget]] = {g: [] for g in GROUPS}
        self.preset = W.Dropdown(options=["custom", *PRESETS], value="custom", layout=W.Layout(width=CONTROL_W))
        self.preset.observe(self._on_preset, names="value")
        rows["model"].append(self._row("model size", self.preset, note=False))
        for key, f, value in leaf_keys(self._base):
            ctrl, self.kinds[key] = make_control(key, f, value, self.max_processes)
            self.controls[key] = ctrl
            rows.setdefault(group_of(key), []).append(self._row(key, ctrl))
            ctrl.observe(self._on_change, names="value")
        boxes = [
            W.VBox(
                [W.HTML(f"<b>{html.escape(g)}</b>"), *items],
                layout=W.Layout(border="1px solid #ddd", padding="4px 8px"),
            )
            for g, items in rows.items()
            if items
        ]
        grid = W.Layout(grid_template_columns="repeat(auto-fill, minmax(420px, 1fr))", grid_gap="6px", width="100%")
        return W.GridBox(boxes, layout=grid)

    def _row(self, key: str, ctrl: W.Widget, note: bool = True) -> W.Widget:
        label = W.Label(key, layout=W.Layout(width=LABEL_W))
        self.labels[key] = label
        if not note:
            return W.HBox([label, ctrl])
        self.messages[key] = W.HTML("", layout=W.Layout(margin="0 0 0 " + LABEL_W))
        self.notes[key] = W.HTML("", layout=W.Layout(margin="0 0 0 " + LABEL_W))
        return W.VBox([W.HBox([label, ctrl]), self.notes[key], self.messages[key]], layout=W.Layout(margin="0"))

    def _build_actions(self) -> tuple[W.Widget, W.Widget]:
        """Launch (with overwrite / resume), and save / load / copy as CLI command."""
        self.launch_button = W.Button(description="Launch", icon="play", button_style="success")
        self.launch_button.on_click(lambda _: self.launch())
        self.overwrite = W.Checkbox(value=False, description="overwrite", indent=False, layout=W.Layout(width="100px"))
        self.resume = W.Checkbox(value=False, description="resume", indent=False, layout=W.Layout(width="90px"))
        self.overwrite.observe(self._on_change, names="value")
        self.resume.observe(self._on_change, names="value")
        self.launch_msg = W.HTML()
        self.config_file = W.Text(value=self.yaml_path or "config.yaml", description="config file")
        self.save_button = W.Button(description="Save", icon="save")
        self.load_button = W.Button(description="Load", icon="folder-open")
        self.save_button.on_click(lambda _: self.save())
        self.load_button.on_click(lambda _: self.load())
        self.file_msg = W.HTML()
        self.cli_button = W.Button(description="copy as CLI command", icon="terminal", layout=W.Layout(width="auto"))
        self.cli_button.on_click(lambda _: self.show_cli())
        self.cli_text = W.Textarea(value="", layout=W.Layout(width="100%", height="60px", display="none"))
        self.cli_copy = W.HTML()
        launch_row = W.HBox([self.launch_button, self.overwrite, self.resume, self.launch_msg])
        file_row = W.HBox([self.config_file, self.save_button, self.load_button, self.cli_button, self.file_msg])
        return launch_row, file_row

    # ---------------------------------------------------------------------------------------------
    # controls <-> RunConfig

    @property
    def base(self) -> RunConfig:
        """The config the controls were last set from (the constructor's, or the last set_config / load)."""
        return self._base

    def set_config(self, cfg: RunConfig) -> None:
        """Show this config in the controls."""
        self._updating = True
        try:
            self._base = cfg
            for key, _f, value in leaf_keys(cfg):
                if key in self.controls:
                    self._set_n_head_options(cfg.model.d_model, key == "model.n_head" and value)
                    show_value(self.controls[key], self.kinds[key], value)
            self.preset.value = self._matching_preset(cfg)
        finally:
            self._updating = False
        self._update()

    def set(self, key: str, value: Any) -> None:
        """Set one key, as if typed in its control (used by tests and notebooks)."""
        show_value(self.controls[key], self.kinds[key], value)

    def _build(self) -> tuple[RunConfig | None, list[Problem]]:
        values, problems = read_values(self.controls, self.kinds)
        try:
            cfg = self._base.override(values)
        except ConfigError as e:
            return None, problems + [p if isinstance(p, Problem) else Problem("<config>", str(p)) for p in e.problems]
        return cfg, problems

    @property
    def config(self) -> RunConfig:
        """The RunConfig the controls describe, validated: raises ConfigError naming each problem's key."""
        cfg, problems = self._build()
        if cfg is not None:
            problems += prelaunch.problems(cfg, self.devices)
        if problems:
            raise ConfigError(problems)
        return cfg

    @property
    def problems(self) -> list[Problem]:
        """What stops a launch now: validation problems and run-folder problems, each naming its key."""
        return list(self._problems)

    @property
    def plan(self) -> Any | None:
        """The plan of the current config on the chosen device (None when it cannot be planned)."""
        return self.plan_chart.plan

    # ---------------------------------------------------------------------------------------------
    # live updates

    def _on_change(self, change: Any = None) -> None:
        if self._updating:
            return
        t0 = time.perf_counter()
        self._updating = True
        try:
            key = next((k for k, c in self.controls.items() if change is not None and c is change.get("owner")), None)
            if key == "model.d_model":
                self._set_n_head_options(self.controls["model.d_model"].value)
        finally:
            self._updating = False
        self._update()
        if key in (*PRESET_KEYS, "model.arch", "model.hf_config") and self._cfg is not None:
            self._updating = True
            try:
                self.preset.value = self._matching_preset(self._cfg)
            finally:
                self._updating = False
        self.last_update_s = time.perf_counter() - t0

    def _on_preset(self, change: Any) -> None:
        if self._updating or change["new"] == "custom":
            return
        t0 = time.perf_counter()
        self._updating = True
        try:
            values = PRESETS[change["new"]]  # in PRESET_KEYS order
            self._set_n_head_options(
                values[PRESET_KEYS.index("model.d_model")], values[PRESET_KEYS.index("model.n_head")]
            )
            for key, value in zip(PRESET_KEYS, values, strict=True):
                self.set(key, value)
        finally:
            self._updating = False
        self._update()
        self.last_update_s = time.perf_counter() - t0

    def _matching_preset(self, cfg: RunConfig) -> str:
        m = cfg.model
        return matching_preset((m.n_layer, m.n_head, m.d_model, m.seq_len), m.arch, m.hf_config)

    def _set_n_head_options(self, d_model: Any, keep: Any = None) -> None:
        """n_head offers the head counts that divide d_model (and keeps the current one)."""
        ctrl = self.controls.get("model.n_head")
        if ctrl is None or not isinstance(d_model, int) or d_model < 1:
            return
        current = keep if keep not in (None, False) else ctrl.value
        was = self._updating
        self._updating = True
        try:
            ctrl.options = head_options(d_model, current)
            ctrl.value = current
        finally:
            self._updating = was

    def _update(self) -> None:
        """Rebuild the config from the controls; refresh problems, availability, the plan and derived values."""
        from workbench.launch import check_launchable

        cfg, problems = self._build()
        if cfg is not None:
            problems += prelaunch.problems(cfg, self.devices)
            if not problems:
                # the run-folder checks of launch() (the name is taken; resume without a checkpoint); their
                # validation part runs against the detected devices, which the panel has already done for its own
                detected = set(prelaunch.problems(cfg))
                launch_problems = check_launchable(
                    cfg, overwrite=self.overwrite.value, resume=self.resume.value, asks=PANEL_ASKS
                )
                problems = [p for p in launch_problems if p not in detected]
        self._cfg, self._problems = cfg, problems
        show_problems(problems, self.messages, self.problems_html)
        self.launch_button.disabled = bool(problems)
        if cfg is not None:
            self._update_availability(cfg)
        self._update_plan()

    def _update_plan(self) -> None:
        self.plan_chart.show(self._cfg)
        if self._cfg is not None:
            self.derived = derived_values(self._cfg, self.plan)
            self.derived_html.value = derived_table(self._cfg, self.derived, self.plan)

    def _plan_device(self) -> str | None:
        """The device the plan chart plans for (None: this machine)."""
        value = self.plan_chart.device.value
        return None if value == THIS_MACHINE else value

    def _suggest_opened(self, change: Any) -> None:
        if change["new"] is not None:
            self.suggestions.refresh()

    def _update_availability(self, cfg: RunConfig) -> None:
        """Disable what this machine or this config cannot run, and say why."""
        problem_keys = {p.key for p in self._problems}
        self.unavailable = show_availability(cfg, self.devices, self.rules, self.controls, self.notes, problem_keys)

    # ---------------------------------------------------------------------------------------------
    # actions

    def on_launch(self, callback: Callable[[Any], None]) -> None:
        """Call callback(run) after each launch from this panel."""
        self._launch_callbacks.append(callback)

    def launch(self):
        """Launch the run the controls describe (what the Launch button does); returns its Run."""
        from workbench.launch import launch

        self._update()
        if self._problems:
            self.launch_msg.value = "<span style='color:#d62728'>not launched: fix the problems listed above</span>"
            return None
        try:
            run = launch(self._cfg, overwrite=self.overwrite.value, resume=self.resume.value)
        except ConfigError as e:
            self.launch_msg.value = f"<span style='color:#d62728'>{html.escape(str(e))}</span>"
            return None
        self.run = run
        # The folder is taken now: the next Launch gets a fresh name rather than a red "already exists" for the
        # run just started; the message says how to come back to this folder.
        name = self._cfg.name
        fresh = next_free_name(self._cfg.runs_dir, name)
        self._updating = True
        try:
            self.overwrite.value = False
            self.resume.value = False
            self.set("name", fresh)
        finally:
            self._updating = False
        self.launch_msg.value = (
            f"launched <code>{html.escape(run.path)}</code>; the next Launch is named "
            f"<code>{html.escape(fresh)}</code> (to continue this run later, set name back to "
            f"<code>{html.escape(name)}</code> and tick resume)"
        )
        self._update()
        for cb in self._launch_callbacks:
            cb(run)
        return run

    def save(self, path: str | None = None) -> str | None:
        """Write the config as YAML (the file `workbench train` reads)."""
        path = path or self.config_file.value.strip() or "config.yaml"
        cfg, _ = self._build()
        if cfg is None:
            self.file_msg.value = "<span style='color:#d62728'>not saved: the values do not form a config</span>"
            return None
        cfg.to_yaml(path)
        self.yaml_path = path
        self.config_file.value = path
        warn = f" ({len(self._problems)} problem(s) remain)" if self._problems else ""
        self.file_msg.value = f"saved <code>{html.escape(path)}</code>{warn}"
        return path

    def load(self, path: str | None = None) -> RunConfig | None:
        """Read a YAML config into the controls."""
        path = path or self.config_file.value.strip()
        try:
            cfg = RunConfig.from_yaml(path)
        except ConfigError as e:
            self.file_msg.value = f"<pre style='color:#d62728'>{html.escape(str(e))}</pre>"
            return None
        previous = self._base
        try:
            self.set_config(cfg)
        except (traitlets.TraitError, TypeError, ValueError):
            # a value no control can hold (a word where a number goes): say which, keep the current config
            self.set_config(previous)
            probs = "\n".join(str(p) for p in cfg.validate(self.devices)) or "a value has the wrong type"
            self.file_msg.value = f"<pre style='color:#d62728'>not loaded:\n{html.escape(probs)}</pre>"
            return None
        self.yaml_path = path
        self.config_file.value = path
        self.file_msg.value = f"loaded <code>{html.escape(path)}</code>"
        return cfg

    def cli_command(self) -> str:
        """`workbench train FILE --set key=value ...`: this config as a command, relative to the last saved or
        loaded YAML file (or the quickstart config)."""
        from workbench.cli import QUICKSTART

        base_path = self.yaml_path or QUICKSTART
        try:
            base = RunConfig.from_yaml(base_path)
        except ConfigError:
            base_path, base = QUICKSTART, RunConfig.from_yaml(QUICKSTART)
        cfg, _ = self._build()
        if cfg is None:
            raise ConfigError(self._problems)
        return cli_command(cfg, base_path, base)

    def show_cli(self) -> str:
        cmd = self.cli_command()
        self.cli_text.value = cmd
        self.cli_text.layout.display = None
        # The browser's clipboard, from a click in the page (a kernel cannot reach the user's clipboard).
        self.cli_copy.value = (
            "<button onclick='navigator.clipboard.writeText(" + html.escape(json.dumps(cmd), quote=True) + ")'>"
            "copy to clipboard</button>"
        )
        return cmd
