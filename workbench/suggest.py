"""The fastest configs that fit: every layout, micro-batch split, precision and checkpointing at the same global batch,
planned and ranked by predicted tokens/s; the top few optionally tried for real.

    cands = wb.suggest(cfg)                  # [Candidate], fastest first; pure arithmetic (wb.plan), no process
    cands[0].config, cands[0].plan.tokens_per_s, cands[0].why
    cands = wb.suggest(cfg, trials=2)        # + a short real run of the top two: .measured_tokens_per_s
    print(wb.suggest_table(cands[:10]))      # what `workbench tune` prints

What varies: ``parallel.strategy`` (every registered layout that ``parallel.num_processes`` allows, with each
``parallel.tp_size`` / ``parallel.pp_size`` > 1 that divides the processes), the split of each process's batch
into ``micro_batch_size`` x ``grad_accum_steps``, ``activation_checkpointing`` and ``precision`` (those the layout
trains with). ``cfg.global_batch_size`` stays what it is, so every candidate trains the same batch; everything
else is cfg's own. A candidate is kept when ``validate()`` finds no problem (against the planned device) and its
plan fits. fp16 is left out on CPU: without an fp16 unit it runs ~10x slower than fp32 (README, "How it runs").

A trial is an ordinary run (``workbench.launch``) of the candidate's config for ``trial_steps`` optimizer steps,
without evaluation, profiling or intermediate checkpoints, in cfg's runs_dir (a free folder name: nothing is
overwritten). Its measured tokens/s is the median of its metric events' ``tokens_per_s``, the first left out
(warm-up). A trial that fails records why in ``Candidate.error``.
"""

from __future__ import annotations

import itertools
import os
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.calibrate import plan
from workbench.config import PRECISIONS, STRATEGY_SPECS, ConfigError, DeviceInfo, RunConfig, fp8_backend
from workbench.config.strategies import divisors
from workbench.fileio import format_bytes
from workbench.plan import DEVICES, GPU_PEAK_FLOPS
from workbench.plan.devices import resolve_device

if TYPE_CHECKING:
    from workbench.plan import Plan

SLOW_ON_CPU = ("fp16",)  # autocast without an fp16 unit: correct, never fast (README, "How it runs")
TRIAL_STEPS = 20


@dataclass
class Candidate:
    """One config that fits, with its plan; ``measured_tokens_per_s`` once tried (``error``: why a trial failed)."""

    config: RunConfig
    plan: Plan
    measured_tokens_per_s: float | None = None
    error: str | None = None
    run_path: str | None = None  # the trial's run folder

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def layout(self) -> str:
        """``parallel.strategy``, with the tensor-parallel / pipeline degree where the layout has one."""
        p = self.config.parallel
        keys = STRATEGY_SPECS[p.strategy].keys if p.strategy in STRATEGY_SPECS else ()
        sizes = [f"{k} {getattr(p, k)}" for k in ("tp_size", "pp_size") if f"parallel.{k}" in keys]
        return p.strategy + (f" ({', '.join(sizes)})" if sizes else "")

    @property
    def batch(self) -> str:
        return f"{self.config.micro_batch_size} x {self.config.grad_accum_steps}"

    @property
    def memory_bytes(self) -> int:
        """What the fullest rank holds (the plan's total per rank)."""
        return max(r.total_bytes for r in self.plan.ranks)

    @property
    def why(self) -> str:
        c = self.config
        return (
            f"{self.layout}, micro_batch_size {c.micro_batch_size} x grad_accum_steps {c.grad_accum_steps}, "
            f"{c.precision}" + (", activation_checkpointing" if c.activation_checkpointing else "")
        )

    @property
    def ratio(self) -> float | None:
        """Predicted over measured tokens/s (None until tried)."""
        m = self.measured_tokens_per_s
        return self.plan.tokens_per_s / m if m else None

    def __repr__(self) -> str:
        measured = f", measured {self.measured_tokens_per_s:.0f}" if self.measured_tokens_per_s else ""
        return f"Candidate({self.name!r}: {self.why}; predicted {self.plan.tokens_per_s:.0f} tokens/s{measured})"


def target_devices(cfg: RunConfig, device: str | None) -> tuple[DeviceInfo | None, bool]:
    """What to validate against for `device` (None: this machine, detected) and whether it is this machine. A GPU
    planned from elsewhere stands in as parallel.num_processes of that card (its bf16 and fp8 from its data sheet;
    the fp8 backend is this environment's)."""
    here = resolve_device(cfg, None)
    key = resolve_device(cfg, device)  # ValueError for an unknown name
    if device is None or key == here:
        return None, True
    if key == "cpu":
        return DeviceInfo("cpu", os.cpu_count() or 1, "cpu"), False
    peaks = GPU_PEAK_FLOPS[DEVICES[key]["gpu"]]
    capability = (8, 9) if "fp8" in peaks else (8, 0) if peaks["bf16"] > peaks["fp32"] else (7, 0)
    return DeviceInfo("cuda", cfg.parallel.num_processes, DEVICES[key]["label"], capability, fp8_backend()), False


VARIED = ("parallel.strategy", "parallel.tp_size", "parallel.pp_size", "micro_batch_size", "grad_accum_steps",
          "activation_checkpointing", "precision")  # fmt: skip


def changed_keys(cfg: RunConfig, other: RunConfig) -> dict[str, Any]:
    """The keys suggest varies whose value in `other` differs from cfg's, with other's values."""

    def value(c: RunConfig, key: str) -> Any:
        head, _, leaf = key.rpartition(".")
        return getattr(getattr(c, head) if head else c, leaf)

    return {k: value(other, k) for k in VARIED if value(cfg, k) != value(other, k)}


def check_trials(cfg: RunConfig, device: str | None, trials: int, steps: int = TRIAL_STEPS) -> DeviceInfo | None:
    """ValueError unless `trials` of `steps` steps each are what `device` can take (trials run here); returns the
    devices to validate against (None: this machine's)."""
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 0:
        raise ValueError(f"trials must be a whole number >= 0, got {trials!r}")
    if trials and (not isinstance(steps, int) or steps < 2):
        raise ValueError(f"a trial needs 2 or more steps (the first event is warm-up), got trial_steps {steps!r}")
    devices, here = target_devices(cfg, device)
    if trials and not here:
        raise ValueError(f"trials run on this machine; device {device!r} is another one: plan it with trials=0, or "
                         "leave device out to try candidates here")  # fmt: skip
    return devices


def layout_overrides(cfg: RunConfig) -> list[dict[str, Any]]:
    """parallel.strategy (+ tp_size / pp_size) of every registered layout the process count allows."""
    n, out = cfg.parallel.num_processes, []
    degrees = [k for k in divisors(n) if k > 1]
    for name, spec in STRATEGY_SPECS.items():
        if spec.min_processes > n:
            continue
        tps = degrees if "parallel.tp_size" in spec.keys else [1]
        pps = degrees if "parallel.pp_size" in spec.keys else [1]
        for tp, pp in itertools.product(tps, pps):
            out.append({"parallel.strategy": name, "parallel.tp_size": tp, "parallel.pp_size": pp})
    return out


def candidate_name(base: str, o: dict[str, Any]) -> str:
    """``quickstart-zero2-mb8x2``, ``-tp2`` / ``-pp2`` for a degree, ``-ckpt``, ``-bf16`` (within 128 characters)."""
    sizes = "".join(f"-{k}{o[f'parallel.{k}_size']}" for k in ("tp", "pp") if o[f"parallel.{k}_size"] > 1)
    tail = f"-{o['parallel.strategy']}{sizes}-mb{o['micro_batch_size']}x{o['grad_accum_steps']}"
    tail += "-ckpt" if o["activation_checkpointing"] else ""
    tail += "" if o["precision"] == "fp32" else f"-{o['precision']}"
    return base[: 128 - len(tail)] + tail


def batch_splits(per_process: int) -> list[tuple[int, int]]:
    """Every (micro_batch_size, grad_accum_steps) whose product is `per_process`, smallest micro-batch first."""
    small = [k for k in range(1, int(per_process**0.5) + 1) if per_process % k == 0]
    micro = sorted(set(small + [per_process // k for k in small]))
    return [(m, per_process // m) for m in micro]


def candidate_overrides(cfg: RunConfig, on_cpu: bool) -> list[dict[str, Any]]:
    """Every combination to plan, at cfg's global batch: micro_batch_size x grad_accum_steps = cfg's product."""
    splits = batch_splits(cfg.micro_batch_size * cfg.grad_accum_steps)
    out = []
    for lay in layout_overrides(cfg):
        spec = STRATEGY_SPECS[lay["parallel.strategy"]]
        precisions = [p for p in spec.precisions if p in PRECISIONS and not (on_cpu and p in SLOW_ON_CPU)]
        for (mb, ga), ckpt, prec in itertools.product(splits, (False, True), precisions):
            out.append({**lay, "micro_batch_size": mb, "grad_accum_steps": ga, "activation_checkpointing": ckpt,
                        "precision": prec})  # fmt: skip
    return out


def suggest(
    cfg: RunConfig,
    device: str | None = None,
    trials: int = 0,
    trial_steps: int = TRIAL_STEPS,
    devices: DeviceInfo | None = None,
) -> list[Candidate]:
    """The configs that fit at cfg's global batch, fastest predicted tokens/s first (module docstring).

    device: what to plan for ("h100", "cpu", ...; None: this machine). trials: try the first `trials` candidates
    for real, one after another, `trial_steps` optimizer steps each (this machine only: ValueError otherwise).
    devices: what this machine offers, for validation when device is None (default: detected; the config panel
    passes its own). Raises ConfigError when cfg itself does not validate.
    """
    devices = check_trials(cfg, device, trials, trial_steps) or devices
    problems = cfg.validate(devices)
    if problems:
        raise ConfigError(problems)
    on_cpu = resolve_device(cfg, device) == "cpu"
    found = []
    for o in candidate_overrides(cfg, on_cpu):
        c = cfg.override({**o, "name": candidate_name(cfg.name, o)})
        if c.validate(devices):
            continue
        try:
            p = plan(c, device=device)
        except ValueError:  # a combination the planner cannot take
            continue
        if p.fits and c.global_batch_size == cfg.global_batch_size:
            found.append(Candidate(c, p))
    # equal predictions (a precision this CPU has no measured facts for is timed as fp32): cfg's own values first
    found.sort(key=lambda k: (-k.plan.tokens_per_s, len(changed_keys(cfg, k.config)), k.memory_bytes, k.name))
    for cand in found[:trials]:
        try_candidate(cand, trial_steps)
    return found


def trial_config(cfg: RunConfig, steps: int) -> RunConfig:
    """cfg as a short run: `steps` optimizer steps, an event every steps / 5, no eval, no profile, a free name."""
    from workbench.runs import next_free_name

    return cfg.override({"name": next_free_name(cfg.runs_dir, cfg.name), "max_steps": steps, "log_every":
                         max(1, steps // 5), "eval_every": 0, "profile_steps": 0, "checkpoint_every": 0})  # fmt: skip


def try_candidate(cand: Candidate, steps: int = TRIAL_STEPS) -> Candidate:
    """Run the candidate's config for `steps` steps here; set its measured tokens/s, or its error."""
    from workbench.launch import launch

    try:
        run = launch(trial_config(cand.config, steps))
    except Exception as e:  # refused before it started (a run folder, your own factories): say so, go on
        cand.error = f"{type(e).__name__}: {e}"
        return cand
    cand.run_path = run.path
    status = run.wait()
    tps = [e["tokens_per_s"] for e in run.metrics() if e.get("tokens_per_s")]
    if status != "finished":
        cand.error = f"trial {status}: {run.error or 'no error recorded'}"
    elif len(tps) < 2:
        cand.error = f"trial finished with {len(tps)} metric event(s) with tokens_per_s; 2 or more are needed"
    else:
        cand.measured_tokens_per_s = statistics.median(tps[1:])  # the first event includes warm-up
    return cand


def suggest_table(cands: list[Candidate]) -> str:
    """The candidates as `workbench tune` prints them, rank 1 the fastest predicted."""
    head = (f"{'rank':>4}  {'layout':22} {'micro x accum':>13}  {'precision':9} {'ckpt':4} {'pred tok/s':>11} "
            f"{'pred step ms':>12} {'mem/rank':>10} {'measured tok/s':>14} {'pred/meas':>9}")  # fmt: skip
    lines = [head]
    for i, c in enumerate(cands, 1):
        meas = f"{c.measured_tokens_per_s:.0f}" if c.measured_tokens_per_s else ("failed" if c.error else "-")
        ratio = f"{c.ratio:.2f}" if c.ratio else "-"
        lines.append(f"{i:>4}  {c.layout:22} {c.batch:>13}  {c.config.precision:9} "
                     f"{'yes' if c.config.activation_checkpointing else 'no':4} {c.plan.tokens_per_s:>11.0f} "
                     f"{1e3 * c.plan.step_time_s:>12.2f} {format_bytes(c.memory_bytes):>10} {meas:>14} {ratio:>9}")  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "VARIED",
    "Candidate",
    "changed_keys",
    "check_trials",
    "suggest",
    "suggest_table",
    "target_devices",
    "try_candidate",
]
