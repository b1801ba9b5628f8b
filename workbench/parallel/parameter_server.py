"""ps: a synchronous parameter server, to compare with all-reduce.

Rank 0 is the server: it holds the authoritative parameters and the only optimizer state, and applies every
update. Every rank (the server too) computes gradients on its own micro-batches; at the end of a step each
worker pushes its whole gradient to the server (send), the server averages the N gradients, clips, updates,
and each worker pulls the new parameters back (recv). Same arithmetic as DDP (the mean gradient, then
AdamW), so the same loss trajectory; different costs:

    bytes per step   worker: P sent + P received;  server: (N-1) P received + (N-1) P sent
    all-reduce       every rank: P handed to the collective (a ring moves 2 (N-1)/N P per link)

so the server's link carries N-1 times a DDP rank's traffic and the workers idle while it updates: the
reason all-reduce replaced parameter servers for dense models. The workers hold no optimizer state at all
(their optimizer object only carries the learning-rate schedule and is never stepped), which is the
design's one memory advantage.

Written with torch.distributed send/recv (no library implements a parameter server over torch.distributed).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from workbench.parallel.common import Layout, clip_, loss_of

SERVER = 0


class ParameterServerLayout(Layout):
    strategy = "ps"
    checkpoint_format = "torch.save by the server (rank 0): parameters and optimizer state"

    def __init__(self, cfg: Any, acc: Any, model: nn.Module, make_optimizer: Any, **kw: Any) -> None:
        super().__init__(cfg, acc, **kw)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # a tied tensor appears once
        self.numel = sum(p.numel() for p in self.params)
        self.is_server = self.rank == SERVER
        self.optimizer = make_optimizer(self.model)
        if not self.is_server:
            # Workers never step it: it only carries the lr schedule, so its state stays empty.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        dtype = self.params[0].dtype
        # The server's receive buffers: one gradient per worker (the price of receiving them all at once).
        self.inbox = [torch.empty(self.numel, dtype=dtype, device=self.device) for _ in range(self.world - 1)]
        # What a worker pulls: the new parameters, and the step's grad norm in the last slot.
        self.pulled = torch.empty(self.numel + 1, dtype=dtype, device=self.device)

    def _micro_step(self, x, y, last):
        with self.fwd_ctx:
            loss = loss_of(self.model(x, y))
        (loss / self.accum).backward()  # local accumulation: nothing moves until the step
        return loss.detach().float(), self._one

    @torch.no_grad()
    def _step(self, max_norm):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        if self.is_server:
            # push: every worker's gradient arrives; the server sums them with its own and averages
            recvs = [dist.irecv(buf, src=w) for w, buf in enumerate(self.inbox, start=1)]
            for r in recvs:
                r.wait()
            for buf in self.inbox:
                flat += buf
            flat /= self.world
            torch._foreach_copy_(grads, _split(flat, self.params))
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            norm = torch.linalg.vector_norm(flat.float())
            clip_(self.params, max_norm, norm)
            self.optimizer.step()
            # pull: the workers receive the updated parameters (and the norm, for their logs)
            self.pulled[:-1] = torch.cat([p.detach().reshape(-1) for p in self.params])
            self.pulled[-1] = norm
            sends = [dist.isend(self.pulled, dst=w) for w in range(1, self.world)]
            for s in sends:
                s.wait()
            return norm.float()
        dist.send(flat, dst=SERVER)
        dist.recv(self.pulled, src=SERVER)
        torch._foreach_copy_(self.params, _split(self.pulled[:-1], self.params))
        return self.pulled[-1].float()

    def wrapper_name(self) -> str:
        return "ParameterServer(server)" if self.is_server else "ParameterServer(worker)"

    def extra_facts(self) -> dict[str, Any]:
        return {
            "role": "server" if self.is_server else "worker",
            "inbox_bytes": sum(b.numel() * b.element_size() for b in self.inbox),
            "optimizer_state_entries": len(self.optimizer.state),  # 0 on workers: they never step
        }

    def save(self, path: str) -> None:
        if self.is_server:
            state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, os.path.join(path, "ps_server.pt"))

    def load(self, path: str) -> None:
        state = torch.load(os.path.join(path, "ps_server.pt"), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        if self.is_server:
            self.optimizer.load_state_dict(state["optimizer"])


def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in like:
        out.append(flat[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out
