"""The layout registry: every parallel.strategy is one ``StrategySpec`` in ``STRATEGY_SPECS``, and the layout checks
derived from it.

A spec states what a layout needs (processes, the parallel.* keys it reads, the precisions it trains with, what it
needs of the model), its data-parallel degree, and its functions: memory and communication per rank (the plan), the
Layout class that applies it (``build``, in workbench/parallel/). The built-in specs are declared in
``workbench/layouts.py``; ``register_layout`` adds one from anywhere (a test, your own package). Validation, the plan,
the config panel, the worker and sweeps all read this table, so they cannot disagree.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.config.schema import NAME_RE, Problem, is_int
from workbench.factory import is_hf, is_import_string

if TYPE_CHECKING:
    from workbench.config.schema import ParallelConfig, RunConfig

ALL_PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
LAYOUT_MODULES_ENV = "WORKBENCH_LAYOUT_MODULES"  # launch -> every process of the run: modules that declare layouts


def every_process(p: ParallelConfig) -> int:
    """The data-parallel degree of a layout whose processes all see different data."""
    return p.num_processes


@dataclass(frozen=True)
class StrategySpec:
    """One parallel layout: what it needs, and the functions that plan and apply it.

    needs: what the model family must offer ("stages": pipeline cut points; "tp_plan": a tensor-parallel plan);
    a layout that needs anything splits the model's modules, so your own model.arch cannot take it.
    memory(Counting) -> [RankMemory], comm(Comm) -> (bytes per rank, rank 0's by collective) and
    time(Timing) -> StepTime (the predicted step and its parts): workbench/plan/.
    build(cfg, acc, model, make_optimizer, scaler=, fwd_ctx=) -> Layout: workbench/parallel/.
    """

    name: str
    summary: str  # one line: what it divides across processes
    min_processes: int  # validate() refuses fewer parallel.num_processes
    memory: Callable[..., Any]
    comm: Callable[..., Any]
    build: Callable[..., Any]
    keys: tuple[str, ...] = ()  # the parallel.* keys (besides num_processes and strategy) that matter for it
    precisions: tuple[str, ...] = ALL_PRECISIONS[:2]  # the precisions it trains with in this version
    needs: tuple[str, ...] = ()
    full_processes: int = 0  # processes at which every axis it is named for is > 1 (0: min_processes)
    compiles: bool = False  # compile: true is built and tested for it (each block torch.compile'd in place)
    finetunes: bool = False  # classify / peft / distill are built and tested on it
    too_few: str = ""  # the message for fewer than min_processes, where no size key says it better
    dp_degree: Callable[[ParallelConfig], int] = every_process  # processes that see different data
    check: Callable[[RunConfig, list[Problem]], None] | None = None  # its own parallel.* rules
    pipelined: bool = False  # a pipeline: its step stretches by the bubble (plan/compute.py)
    fsdp_bf16: bool = False  # bf16 through FSDP2's MixedPrecisionPolicy instead of autocast (plan/precision.py)
    prepared_by_accelerate: bool = False  # Accelerate wraps (and autocasts) the model; otherwise parallel/ does
    time: Callable[..., Any] | None = None  # time(Timing) -> StepTime (plan/timing.py); None: timed as data parallel
    module: str = ""  # the module that declared it: every rank of a run imports it (launch passes it on)

    @property
    def model_parallel(self) -> bool:
        """Splits the model's modules by what its family declares: your own model.arch cannot use it."""
        return bool(self.needs)

    @property
    def processes_for_all_axes(self) -> int:
        """The processes at which every axis it is named for is > 1 (dp_tp runs on 2, a 1 x 2 grid, but is both at 4)."""
        return self.full_processes or self.min_processes


STRATEGY_SPECS: dict[str, StrategySpec] = {}  # filled by register_layout (workbench/layouts.py: the built-in ones)


def register_layout(spec: StrategySpec, replace: bool = False) -> StrategySpec:
    """Add a layout to the registry (``replace``: redeclare one of the same name). Returns the spec."""
    if not (isinstance(spec.name, str) and NAME_RE.match(spec.name) and ":" not in spec.name):
        raise ValueError(f"a layout's name is a word (letters, digits, _ and -), got {spec.name!r}")
    if spec.name in STRATEGY_SPECS and not replace:
        raise ValueError(f"layout {spec.name!r} is registered already (by {STRATEGY_SPECS[spec.name].module})")
    if spec.min_processes < 1:
        raise ValueError(f"layout {spec.name!r}: min_processes must be >= 1, got {spec.min_processes}")
    if not spec.module:
        spec = dataclasses.replace(spec, module=getattr(spec.build, "__module__", "") or "")
    STRATEGY_SPECS[spec.name] = spec
    return spec


def unregister_layout(name: str) -> None:
    STRATEGY_SPECS.pop(name, None)


def layout_modules() -> list[str]:
    """The modules outside the workbench that declared layouts: each rank of a run imports them."""
    return sorted({s.module for s in STRATEGY_SPECS.values() if s.module and not s.module.startswith("workbench.")})


def import_layout_modules(env: dict[str, str] | None = None) -> None:
    """In a run's process: import the modules that declared its layouts in the launching process."""
    for name in (env if env is not None else os.environ).get(LAYOUT_MODULES_ENV, "").split(","):
        if name:
            importlib.import_module(name)


def finetune_strategies() -> tuple[str, ...]:
    return tuple(s for s, spec in STRATEGY_SPECS.items() if spec.finetunes)


def strategies_using(key: str) -> tuple[str, ...]:
    """The strategies for which a parallel.* key matters (e.g. parallel.tp_size -> ("tp", "dp_tp"))."""
    return tuple(s for s, spec in STRATEGY_SPECS.items() if key in spec.keys)


def strategies_with(precision: str) -> tuple[str, ...]:
    return tuple(s for s, spec in STRATEGY_SPECS.items() if precision in spec.precisions)


def _one_of(names: tuple[str, ...] | list[str], last: str) -> str:
    return ", ".join(names[:-1]) + f" {last} " + names[-1] if len(names) > 1 else "".join(names)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def validate_layout(cfg: RunConfig, P: list[Problem]) -> None:
    """The combinations of parallel.* with each other, the model and the precision (workbench/parallel/)."""
    p, m = cfg.parallel, cfg.model
    if p.strategy not in STRATEGY_SPECS or not all(
        is_int(v) and v >= 1 for v in (p.num_processes, p.tp_size, p.pp_size, p.pp_microbatches)
    ):
        return  # the single-key checks already name the problem
    s, n, spec = p.strategy, p.num_processes, STRATEGY_SPECS[p.strategy]
    if p.tp_size != 1 and "parallel.tp_size" not in spec.keys:
        P.append(Problem("parallel.tp_size", f"only {_one_of(strategies_using('parallel.tp_size'), 'and')} split "
                         f"layers across processes; with parallel.strategy {s} set parallel.tp_size: 1"))  # fmt: skip
    if p.pp_size != 1 and "parallel.pp_size" not in spec.keys:
        P.append(Problem("parallel.pp_size", f"only {_one_of(strategies_using('parallel.pp_size'), 'and')} has "
                         f"pipeline stages; with parallel.strategy {s} set parallel.pp_size: 1"))  # fmt: skip
    if n < spec.min_processes and spec.too_few:
        P.append(Problem("parallel.strategy", spec.too_few))
    if spec.model_parallel and is_import_string(m.arch):
        others = [k for k, v in STRATEGY_SPECS.items() if not v.model_parallel]
        P.append(Problem("parallel.strategy", f"{s} splits the reference GPT's blocks by name; with your own "
                         f"model.arch use {_one_of(others, 'or')}"))  # fmt: skip
    if spec.check is not None:
        spec.check(cfg, P)
    if cfg.precision == "fp16" and cfg.precision not in spec.precisions:
        P.append(Problem("precision", f"fp16's loss scaler must agree across shards; this version has it for "
                         f"{_one_of(strategies_with('fp16'), 'and')}: use bf16 with parallel.strategy {s}"))  # fmt: skip
    if cfg.compile is True and not spec.compiles:
        ok = _one_of([k for k, v in STRATEGY_SPECS.items() if v.compiles], "or")
        P.append(Problem("compile", f"compile: true is built for {ok} in this version (the tensor-parallel, pipeline "
                         f"and parameter-server layouts split or drive the blocks themselves): set compile: false "
                         f"with parallel.strategy {s}"))  # fmt: skip
    if cfg.precision == "fp8" and cfg.precision not in spec.precisions:
        P.append(Problem("precision", f"fp8 runs through Accelerate's {_one_of(strategies_with('fp8'), 'and')} path "
                         f"only: use bf16 with parallel.strategy {s}"))  # fmt: skip


def check_tp(cfg: RunConfig, P: list[Problem]) -> None:
    """tp: all processes in one tensor-parallel group."""
    n, tp = cfg.parallel.num_processes, cfg.parallel.tp_size
    if tp < 2:
        P.append(Problem("parallel.tp_size", f"tp needs tp_size >= 2 processes sharing each layer; set "
                         f"parallel.tp_size: {n} (= parallel.num_processes)"))  # fmt: skip
    elif tp != n:
        P.append(Problem("parallel.tp_size", f"tp puts all parallel.num_processes ({n}) in one tensor-parallel "
                         f"group: set parallel.tp_size: {n}, or use parallel.strategy dp_tp to combine "
                         f"tp_size {tp} with data parallelism"))  # fmt: skip
    check_heads_split(cfg, P)


def check_dp_tp(cfg: RunConfig, P: list[Problem]) -> None:
    """dp_tp: a (dp, tp) grid of processes."""
    n, tp = cfg.parallel.num_processes, cfg.parallel.tp_size
    if n % tp:
        P.append(Problem("parallel.tp_size", f"dp_tp arranges parallel.num_processes ({n}) as a (dp, tp) grid: "
                         f"tp_size must divide it; pick one of {divisors(n)}"))  # fmt: skip
    check_heads_split(cfg, P)


def check_heads_split(cfg: RunConfig, P: list[Problem]) -> None:
    """The reference GPT's heads and MLP units divide by tp_size (a Hugging Face model's own fields: config/hf.py)."""
    m, n, tp = cfg.model, cfg.parallel.num_processes, cfg.parallel.tp_size
    model_ok = all(is_int(v) and v >= 1 for v in (m.n_layer, m.n_head, m.d_model))
    if tp > 1 and model_ok and not is_hf(m.arch):
        if m.n_head % tp:
            heads = [k for k in divisors(m.n_head) if k > 1 and k <= n]
            P.append(Problem("parallel.tp_size", f"model.n_head {m.n_head} does not divide by parallel.tp_size {tp}: "
                             f"each rank computes n_head / tp_size heads; use tp_size in {heads or [1]} or change "
                             "model.n_head"))  # fmt: skip
        if (4 * m.d_model) % tp:
            P.append(Problem("parallel.tp_size", f"the MLP's 4 x model.d_model = {4 * m.d_model} hidden units do not "
                             f"divide by parallel.tp_size {tp}"))  # fmt: skip


def check_pp(cfg: RunConfig, P: list[Problem]) -> None:
    """pp: one pipeline, one stage per process."""
    p, m = cfg.parallel, cfg.model
    n, pp, mb = p.num_processes, p.pp_size, p.pp_microbatches
    if pp < 2:
        P.append(Problem("parallel.pp_size", f"pp needs at least 2 stages; set parallel.pp_size: {n} "
                         "(= parallel.num_processes)"))  # fmt: skip
    elif pp != n:
        P.append(Problem("parallel.pp_size", f"pp runs one pipeline, one stage per process: parallel.pp_size "
                         f"({pp}) must equal parallel.num_processes ({n})"))  # fmt: skip
    model_ok = all(is_int(v) and v >= 1 for v in (m.n_layer, m.n_head, m.d_model))
    if model_ok and pp > m.n_layer:
        P.append(Problem("parallel.pp_size", f"{pp} stages but model.n_layer is {m.n_layer}: each stage needs a "
                         f"block; use parallel.pp_size <= {m.n_layer} or more layers"))  # fmt: skip
    if is_int(cfg.micro_batch_size) and cfg.micro_batch_size >= 1 and (cfg.micro_batch_size * pp) % mb:
        batch = cfg.micro_batch_size * pp
        P.append(Problem("parallel.pp_microbatches", f"the pipeline's batch (micro_batch_size x pp_size = "
                         f"{batch} sequences) does not split into {mb} equal micro-batches; use one of "
                         f"{divisors(batch)}"))  # fmt: skip
    if p.pp_schedule == "1f1b" and mb < pp:
        P.append(Problem("parallel.pp_microbatches", f"1f1b needs at least as many micro-batches as stages "
                         f"({pp}): set parallel.pp_microbatches >= {pp}, or parallel.pp_schedule: gpipe"))  # fmt: skip
