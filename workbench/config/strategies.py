"""What each parallel.strategy needs, stated once (STRATEGY_SPECS), and the layout checks derived from it.

The config panel reads the same table to grey out what cannot run (too few processes) and the keys that do not
matter for the chosen strategy, so the panel and ``validate()`` cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from workbench.config.schema import STRATEGIES, Problem, is_int
from workbench.factory import is_import_string
from workbench.models.hf_config import is_hf

if TYPE_CHECKING:
    from workbench.config.schema import RunConfig


@dataclass(frozen=True)
class StrategySpec:
    """One parallel layout's requirements (workbench/parallel/ implements it)."""

    min_processes: int  # validate() refuses fewer parallel.num_processes
    keys: tuple[str, ...]  # the parallel.* keys (besides num_processes and strategy) that matter for it
    precisions: tuple[str, ...]  # the precisions it trains with in this version
    model_parallel: bool  # splits the reference GPT's modules by name: your own model.arch cannot use it
    summary: str  # one line: what it divides across processes
    full_processes: int = 0  # processes at which every axis it is named for is > 1 (0: min_processes)
    compiles: bool = False  # compile: true is built and tested for it (each block torch.compile'd in place)

    @property
    def processes_for_all_axes(self) -> int:
        """dp_tp runs on 2 processes (a 1 x 2 or 2 x 1 grid) but is only both at 4: the panel suggests this."""
        return self.full_processes or self.min_processes


_ALL = ("fp32", "bf16", "fp16", "fp8")
_TP = ("parallel.tp_size",)
_PP = ("parallel.pp_size", "parallel.pp_schedule", "parallel.pp_microbatches")

STRATEGY_SPECS: dict[str, StrategySpec] = {
    # fp8 runs through Accelerate's ddp path only; fp16's loss scaler must agree across shards, built for ddp
    # and zero1 (optimizer state sharded, weights and gradients whole on every rank).
    "ddp": StrategySpec(
        1, (), _ALL, False, "nothing: every process holds the whole model and optimizer", compiles=True
    ),
    "zero1": StrategySpec(2, (), _ALL[:3], False, "the optimizer states", compiles=True),
    "zero2": StrategySpec(2, (), _ALL[:2], False, "the optimizer states and the gradients", compiles=True),
    "zero3": StrategySpec(2, (), _ALL[:2], False, "the optimizer states, the gradients and the weights", compiles=True),
    "tp": StrategySpec(2, _TP, _ALL[:2], True, "every layer's weight matrices (heads and MLP units)"),
    "pp": StrategySpec(2, _PP, _ALL[:2], True, "the blocks, as pipeline stages"),
    "ps": StrategySpec(2, (), _ALL[:2], False, "nothing: a parameter server holds the weights, workers compute"),
    "dp_tp": StrategySpec(2, _TP, _ALL[:2], True, "layers across tp_size ranks, data across the rest", 4),
}
assert tuple(STRATEGY_SPECS) == STRATEGIES

# the message for too few processes, where no size key says it better (tp and pp: tp_size / pp_size below)
_TOO_FEW = {
    **{
        s: f"{s} shards state across processes, and parallel.num_processes 1 has nothing to shard with: use ddp, "
        "or parallel.num_processes >= 2"
        for s in ("zero1", "zero2", "zero3")
    },  # fmt: skip
    "ps": "ps needs a server and at least one worker: set parallel.num_processes >= 2",
    "dp_tp": "dp_tp needs a (dp, tp) grid of processes (>= 4 for both > 1): set parallel.num_processes >= 2",
}


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
    if p.strategy not in STRATEGIES or not all(
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
    if n < spec.min_processes and s in _TOO_FEW:
        P.append(Problem("parallel.strategy", _TOO_FEW[s]))
    if spec.model_parallel and is_import_string(m.arch):
        others = [k for k, v in STRATEGY_SPECS.items() if not v.model_parallel]
        P.append(Problem("parallel.strategy", f"{s} splits the reference GPT's blocks by name; with your own "
                         f"model.arch use {_one_of(others, 'or')}"))  # fmt: skip
    if "parallel.tp_size" in spec.keys:
        _check_tp(cfg, P)
    if "parallel.pp_size" in spec.keys:
        _check_pp(cfg, P)
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


def _check_tp(cfg: RunConfig, P: list[Problem]) -> None:
    p, m = cfg.parallel, cfg.model
    s, n, tp = p.strategy, p.num_processes, p.tp_size
    if s == "tp":
        if tp < 2:
            P.append(Problem("parallel.tp_size", f"tp needs tp_size >= 2 processes sharing each layer; set "
                             f"parallel.tp_size: {n} (= parallel.num_processes)"))  # fmt: skip
        elif tp != n:
            P.append(Problem("parallel.tp_size", f"tp puts all parallel.num_processes ({n}) in one tensor-parallel "
                             f"group: set parallel.tp_size: {n}, or use parallel.strategy dp_tp to combine "
                             f"tp_size {tp} with data parallelism"))  # fmt: skip
    if s == "dp_tp" and n % tp:
        P.append(Problem("parallel.tp_size", f"dp_tp arranges parallel.num_processes ({n}) as a (dp, tp) grid: "
                         f"tp_size must divide it; pick one of {divisors(n)}"))  # fmt: skip
    model_ok = all(is_int(v) and v >= 1 for v in (m.n_layer, m.n_head, m.d_model))
    if tp > 1 and model_ok and not is_hf(m.arch):  # a Hugging Face model's own fields: config/hf.py
        if m.n_head % tp:
            heads = [k for k in divisors(m.n_head) if k > 1 and k <= n]
            P.append(Problem("parallel.tp_size", f"model.n_head {m.n_head} does not divide by parallel.tp_size {tp}: "
                             f"each rank computes n_head / tp_size heads; use tp_size in {heads or [1]} or change "
                             "model.n_head"))  # fmt: skip
        if (4 * m.d_model) % tp:
            P.append(Problem("parallel.tp_size", f"the MLP's 4 x model.d_model = {4 * m.d_model} hidden units do not "
                             f"divide by parallel.tp_size {tp}"))  # fmt: skip


def _check_pp(cfg: RunConfig, P: list[Problem]) -> None:
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
