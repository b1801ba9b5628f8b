"""A layout from outside the workbench, declared through the registry's public API alone (tests/test_registry.py).

"allreduce": data parallel by hand. Every rank holds the whole model; gradients accumulate locally over the
micro-steps and are averaged at the step with one all_reduce per parameter (no DistributedDataParallel, no buckets),
then every rank applies the same AdamW update. The same mathematics as ddp, so the same loss trajectory.
"""

from __future__ import annotations

import os
from typing import Any

import workbench as wb
from workbench.parallel.common import Layout, clip_, loss_of
from workbench.plan.memory import Counting
from workbench.plan.result import RankMemory

NAME = "allreduce"


def allreduce_memory(c: Counting) -> list[RankMemory]:
    """Every rank: the whole model, its gradient and optimizer state; no communication buffers (in place)."""
    ranks = []
    for r in range(c.W):
        rm = RankMemory(r, f"replica {r}", param_bytes=c.p.param * c.N, grad_bytes=c.p.grad * c.N)
        rm.optimizer_bytes = c.optimizer_bytes(c.N, c.n_tensors)
        rm.activation_bytes = c.acts(0, c.s.n_layer, True, True)
        ranks.append(rm)
    return ranks


def allreduce_comm(c: Any) -> tuple[list[int], dict[str, int]]:
    """One fp32 all_reduce of every gradient per optimizer step."""
    ops = {"all_reduce": 4 * c.N}
    return [sum(ops.values())] * c.W, ops


class AllReduceLayout(Layout):
    strategy = NAME
    checkpoint_format = "torch.save by rank 0: parameters and optimizer state"

    def __init__(self, cfg: Any, acc: Any, model: Any, make_optimizer: Any, **kw: Any) -> None:
        super().__init__(cfg, acc, **kw)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.model)

    def _micro_step(self, x, y, last):
        with self.fwd_ctx:
            loss = loss_of(self.model(x, y))
        (loss / self.accum).backward()
        return loss.detach().float(), self._one

    def _step(self, max_norm):
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if self.world > 1:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in self.params]))
            clip_(self.params, max_norm, norm)
        self.optimizer.step()
        return norm.float()

    def wrapper_name(self) -> str:
        return "AllReduce(by hand)"

    def save(self, path: str) -> None:
        import torch

        if self.rank == 0:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, os.path.join(path, "allreduce.pt"))


def build(cfg: Any, acc: Any, model: Any, make_optimizer: Any, **kw: Any) -> AllReduceLayout:
    return AllReduceLayout(cfg, acc, model, make_optimizer, **kw)


# Registered on import: the test's process imports this module, and so does every rank of its runs (launch passes
# the module on to them).
SPEC = wb.register_layout(
    wb.StrategySpec(
        NAME,
        "nothing: every process holds the whole model; gradients averaged by hand, one all_reduce per parameter",
        2,
        memory=allreduce_memory,
        comm=allreduce_comm,
        build=build,
        too_few="allreduce averages gradients across processes: set parallel.num_processes >= 2",
    ),
    replace=True,
)
