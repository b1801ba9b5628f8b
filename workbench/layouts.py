"""The built-in parallel layouts, each declared once: what it needs, its data-parallel degree, and its functions
(memory, communication and step time per rank in workbench/plan/, its Layout class in workbench/parallel/).

Validation, the plan, the config panel, the worker and sweeps read these through ``STRATEGY_SPECS``
(workbench/config/strategies.py). A new layout is one file (its Layout class, its memory and comm functions) and
one ``register_layout(StrategySpec(...))``: here for the workbench's own, or in your own module, which every rank
of a run then imports as well. Importing this module loads no torch: the Layout classes load when a rank builds one.
"""

from __future__ import annotations

from typing import Any

from workbench.config import StrategySpec, register_layout
from workbench.config.schema import ParallelConfig
from workbench.config.strategies import ALL_PRECISIONS, check_dp_tp, check_pp, check_tp
from workbench.plan import comm, memory, timing

_TP = ("parallel.tp_size",)
_PP = ("parallel.pp_size", "parallel.pp_schedule", "parallel.pp_microbatches")


def _shards(s: str) -> str:
    return (
        f"{s} shards state across processes, and parallel.num_processes 1 has nothing to shard with: use ddp, "
        "or parallel.num_processes >= 2"
    )


def per_tp_group(p: ParallelConfig) -> int:
    return max(1, p.num_processes // max(1, p.tp_size))


def per_pipeline(p: ParallelConfig) -> int:
    return max(1, p.num_processes // max(1, p.pp_size))


# ---- the Layout classes, imported when a rank builds one (they need torch) ----
def build_ddp(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.ddp import DDPLayout

    return DDPLayout(*args, **kw)


def build_zero1(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.fsdp import Zero1Layout

    return Zero1Layout(*args, **kw)


def build_zero2(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.fsdp import FSDPLayout

    return FSDPLayout(*args, reshard_after_forward=False, **kw)


def build_zero3(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.fsdp import FSDPLayout

    return FSDPLayout(*args, reshard_after_forward=True, **kw)


def build_tp(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.tensor import TensorParallelLayout

    return TensorParallelLayout(*args, data_parallel=False, **kw)


def build_dp_tp(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.tensor import TensorParallelLayout

    return TensorParallelLayout(*args, data_parallel=True, **kw)


def build_pp(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.pipeline import PipelineLayout

    return PipelineLayout(*args, **kw)


def build_ps(*args: Any, **kw: Any) -> Any:
    from workbench.parallel.parameter_server import ParameterServerLayout

    return ParameterServerLayout(*args, **kw)


# The order is the panel's and validation's. fp8 runs through Accelerate's ddp path only; fp16's loss scaler
# must agree across shards, built for ddp and zero1 (optimizer state sharded, weights and gradients whole).
BUILT_IN = (
    StrategySpec("ddp", "nothing: every process holds the whole model and optimizer", 1, memory.ddp_memory,
                 comm.ddp_comm, build_ddp, precisions=ALL_PRECISIONS, compiles=True, finetunes=True,
                 prepared_by_accelerate=True, time=timing.ddp_time),
    StrategySpec("zero1", "the optimizer states", 2, memory.zero1_memory, comm.zero1_comm, build_zero1,
                 precisions=ALL_PRECISIONS[:3], compiles=True, too_few=_shards("zero1"), time=timing.zero1_time),
    StrategySpec("zero2", "the optimizer states and the gradients", 2, memory.zero2_memory, comm.zero2_comm,
                 build_zero2, compiles=True, too_few=_shards("zero2"), fsdp_bf16=True, time=timing.zero2_time),
    StrategySpec("zero3", "the optimizer states, the gradients and the weights", 2, memory.zero3_memory,
                 comm.zero3_comm, build_zero3, compiles=True, too_few=_shards("zero3"), fsdp_bf16=True,
                 time=timing.zero3_time),
    StrategySpec("tp", "every layer's weight matrices (heads and MLP units)", 2, memory.tp_memory, comm.tp_comm,
                 build_tp, keys=_TP, needs=("tp_plan",), dp_degree=per_tp_group, check=check_tp, time=timing.tp_time),
    StrategySpec("pp", "the blocks, as pipeline stages", 2, memory.pipeline_memory, comm.pipeline_comm, build_pp,
                 keys=_PP, needs=("stages",), dp_degree=per_pipeline, check=check_pp, pipelined=True,
                 time=timing.pp_time),
    StrategySpec("ps", "nothing: a parameter server holds the weights, workers compute", 2,
                 memory.parameter_server_memory, comm.parameter_server_comm, build_ps,
                 too_few="ps needs a server and at least one worker: set parallel.num_processes >= 2",
                 time=timing.ps_time),
    StrategySpec("dp_tp", "layers across tp_size ranks, data across the rest", 2, memory.dp_tp_memory,
                 comm.dp_tp_comm, build_dp_tp, keys=_TP, needs=("tp_plan",), full_processes=4,
                 too_few="dp_tp needs a (dp, tp) grid of processes (>= 4 for both > 1): set parallel.num_processes >= 2",
                 dp_degree=per_tp_group, check=check_dp_tp, fsdp_bf16=True, time=timing.dp_tp_time),
)  # fmt: skip

for _spec in BUILT_IN:
    register_layout(_spec, replace=True)  # replace: a module reloaded (importlib.reload) redeclares its own
