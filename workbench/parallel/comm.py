"""Bytes moved: the payload every collective and send/recv is handed, per rank, per optimizer step.

One mechanism for every layout: a ``TorchDispatchMode`` that sees each communication op as it is dispatched.
DDP's C++ reducer, FSDP2's all-gathers and reduce-scatters, ZeroRedundancyOptimizer's broadcasts, the
functional collectives DTensor issues for tensor parallelism, pipelining's send/recv and the parameter
server's own send/recv all go through the dispatcher as ``c10d.*`` / ``_c10d_functional.*`` ops, so one
counter measures them all without touching the libraries (torch's own ``CommDebugMode`` counts the same ops,
but only their number, not their bytes).

A dispatch mode puts Python on every op (~15-20% slower steps for the tiny GPT on CPU), so the worker keeps it
on for ONE optimizer step only: the first. Shapes are static, so every later step moves the same bytes; the
run labels the figure ``comm_bytes_kind: "measured"`` with ``comm_bytes_scope: "optimizer step 1"``.

What "payload" means (the same quantity ``wb.plan`` predicts): the size of the tensor a collective works on,
as a DDP comm hook sees its buckets: all_reduce / broadcast / send / recv: the tensor; all_gather: the
gathered (full) output; reduce_scatter: the full input. Not the bytes on the wire (a ring all-reduce puts
2(N-1)/N times the tensor on each link).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Dispatcher op names -> one name per kind of communication (the keys of comm_bytes_by_op).
OP_NAMES = {
    "allreduce_": "all_reduce",
    "allreduce_coalesced_": "all_reduce",
    "all_reduce": "all_reduce",
    "all_reduce_": "all_reduce",
    "all_reduce_coalesced": "all_reduce",
    "all_reduce_coalesced_": "all_reduce",
    "broadcast_": "broadcast",
    "broadcast": "broadcast",
    "_allgather_base_": "all_gather",
    "allgather_": "all_gather",
    "allgather_coalesced_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_out": "all_gather",
    "all_gather_into_tensor_coalesced": "all_gather",
    "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "reduce_": "reduce",
    "gather_": "gather",
    "scatter_": "scatter",
    "send": "send",
    "recv_": "recv",
    "recv_any_source_": "recv",
    "alltoall_": "all_to_all",
    "alltoall_base_": "all_to_all",
    "all_to_all_single": "all_to_all",
}
# Synchronisation and bookkeeping ops: no payload.
NOT_COMM = {"barrier", "monitored_barrier_", "wait_tensor", "_wrap_tensor_autograd"}
NAMESPACES = {"c10d", "_c10d_functional", "c10d_functional"}


def _tensor_bytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_tensor_bytes(v) for v in x)
    return 0


def payload_bytes(args: tuple, out: Any) -> int:
    """The largest tensor argument (or result) of a communication op: the full-size tensor it works on.

    all_reduce's tensor, all_gather's gathered output (N shards), reduce_scatter's unscattered input: in every
    case the biggest thing the op touches, which is the quantity a DDP comm hook reports for its buckets.
    """
    return max([_tensor_bytes(a) for a in args] + [_tensor_bytes(out)])


class CommProbe(TorchDispatchMode):
    """Counts the payload bytes of every communication op dispatched while active, by op.

    ``with CommProbe() as probe: <one optimizer step>`` then ``probe.by_op`` -> {"all_reduce": bytes, ...}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor

        # DTensor ops first desugar into plain-tensor ops (including the collectives we want to see): let the
        # subclass run and count what it dispatches, as torch's CommDebugMode does.
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented
        out = func(*args, **(kwargs or {}))
        namespace = getattr(func, "namespace", "")
        if namespace in NAMESPACES:
            name = func._overloadpacket.__name__
            if name not in NOT_COMM:
                kind = OP_NAMES.get(name, name)
                self.by_op[kind] += payload_bytes(args, out)
                self.calls[kind] += 1
        return out

    @property
    def total(self) -> int:
        return int(sum(self.by_op.values()))

    def summary(self) -> dict[str, Any]:
        return {"comm_bytes": self.total, "comm_bytes_by_op": dict(self.by_op), "comm_calls_by_op": dict(self.calls)}
