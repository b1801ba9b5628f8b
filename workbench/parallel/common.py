"""What every layout shares: the Layout interface the worker drives, and the bookkeeping around it.

A Layout owns this rank's piece of the model and its optimizer, and knows how to do a micro-step
(forward + backward), an optimizer step (global grad norm, clipping, update), an evaluation batch, a
checkpoint, and how to describe what is really in effect on this rank (wrapper, parameter types, local
shapes) so tests can assert the layout instead of trusting the config.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F

from workbench.models.family import family_of


def loss_of(out: Any) -> torch.Tensor:
    """The model's loss: GPT returns (logits, loss); a user's model may return the loss alone."""
    return out[1] if isinstance(out, (tuple, list)) else out


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The GPT's loss (mean token cross-entropy in fp32), for layouts that compute it outside the model."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds: a DTensor's local shard, else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def nbytes(t: torch.Tensor) -> int:
    t = local(t)
    return t.numel() * t.element_size()


class Layout:
    """One rank's view of a parallelism layout. Subclasses set ``model`` and ``optimizer`` and override."""

    strategy = "ddp"
    checkpoint_format = "accelerate save_state"
    comm_group: Any = None  # the group whose ranks pool their micro-batches (tensor / pipeline parallel)
    takes_compute_loss = False  # whether its micro-step honours compute_loss (distillation: ddp)

    def __init__(
        self, cfg: Any, acc: Any, *, scaler: Any = None, fwd_ctx: Any = None, compute_loss: Any = None
    ) -> None:
        """compute_loss(model, x, y) -> loss replaces the model's own; a layout that cannot take one refuses it."""
        if compute_loss is not None and not self.takes_compute_loss:
            raise ValueError(f"parallel.strategy {cfg.parallel.strategy}: this layout computes the model's own loss")
        self.compute_loss = compute_loss
        self.cfg, self.acc = cfg, acc
        self.device = acc.device
        self.scaler = scaler
        self.fwd_ctx = fwd_ctx if fwd_ctx is not None else nullcontext()
        self.accum = cfg.grad_accum_steps
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.model: nn.Module
        self.optimizer: torch.optim.Optimizer
        self._one = torch.ones((), device=self.device)
        self._zero = torch.zeros((), device=self.device)

    # ---- the training step ----
    def micro_step(self, x: torch.Tensor, y: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward + backward of one micro-batch. Returns (loss sum, count) as device tensors (no host sync).

        The loss logged for a step is sum(loss sums) / sum(counts) over micro-steps and ranks.
        """
        return self._micro_step(x, y, last)

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def step(self, max_norm: float) -> torch.Tensor:
        """Clip to the global grad norm, update, zero the grads. Returns the global norm (same on every rank)."""
        norm = self._step(max_norm)
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _step(self, max_norm: float) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.fwd_ctx:
            return loss_of(self.model(x, y)).detach().double(), self._one.double()

    # ---- checkpoints ----
    def save(self, path: str) -> None:
        """Save what ``accelerator.save_state`` does not: this layout's model and optimizer state."""

    def load(self, path: str) -> None:
        pass

    # ---- what is in effect ----
    def facts(self) -> dict[str, Any]:
        """This rank's layout as it really is: wrapper, optimizer, parameter types, placements, local shapes."""
        from torch.distributed.tensor import DTensor

        params: dict[str, Any] = {}
        types: dict[str, int] = {}
        named = list(self.named_parameters())
        # Details for the parameters outside the blocks and for the first block this rank holds (the others
        # repeat it): enough to see the layout, small enough for status.json at any depth.
        model = unwrap(self.model)
        block_of = {id(p): i for i, b in enumerate(family_of(model).blocks(model)) for p in b.parameters()}
        for name, p in named:
            t = type(p.data if isinstance(p, nn.Parameter) and not isinstance(p, DTensor) else p).__name__
            types[t] = types.get(t, 0) + 1
            if block_of.get(id(p), 0) > 0:  # a block after the first this rank holds
                continue
            entry: dict[str, Any] = {"type": t, "shape": list(p.shape), "local_shape": list(local(p).shape)}
            if isinstance(p, DTensor):
                entry["placements"] = [str(pl) for pl in p.placements]
                entry["mesh"] = list(p.device_mesh.mesh_dim_names or ())
            params[name] = entry
        return {
            "rank": self.rank,
            "strategy": self.strategy,
            "wrapper": self.wrapper_name(),
            "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else None,
            "param_types": types,
            "params": params,
            "checkpoint_format": self.checkpoint_format,
            **self.extra_facts(),
        }

    def named_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return self.model.named_parameters()

    def wrapper_name(self) -> str:
        return type(self.model).__name__

    def extra_facts(self) -> dict[str, Any]:
        return {}

    def extra_metrics(self) -> dict[str, Any]:
        """Layout-specific figures for the log step's metric event (read back here, never in the hot path)."""
        return {}

    # ---- the end of the run ----
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's state, on every rank (sharded layouts gather it)."""
        return unwrap(self.model).state_dict()

    def digest(self) -> dict[str, Any]:
        return {"params_sha256": state_digest(self.full_state_dict()), "params_scope": "full model"}

    # ---- data for model-parallel groups ----
    def pool(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Tensor and pipeline parallel ranks work on ONE batch: the micro-batches its ranks loaded, stacked.

        Every process loads micro_batch_size sequences (Accelerate shards the data over all processes), so a
        step trains on micro_batch_size x grad_accum_steps x num_processes sequences in every layout and a
        layout changes how the work is split, never the mathematics: trajectories compare across layouts.
        """
        if self.comm_group is None:
            return tensors
        n = dist.get_world_size(self.comm_group)
        out = []
        for t in tensors:
            t = t.contiguous()
            buf = torch.empty((n * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
            dist.all_gather_into_tensor(buf, t, group=self.comm_group)
            out.append(buf)
        return tuple(out)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, fp32 bytes) in name order: the same weights give the same digest in every layout."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(local(t).detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def global_grad_norm(params: Iterable[torch.Tensor], skip: set[int] | None = None) -> torch.Tensor:
    """The L2 norm of the whole model's gradient, the same on every rank, for any mix of shards.

    A DTensor gradient contributes its local shard's sum of squares, summed over the mesh dimensions on
    which it is sharded (Replicate dimensions hold copies: counted once). Plain gradients are replicated
    (data or tensor parallel) and count as they are. One all-reduce per distinct set of sharded mesh
    dimensions (one for FSDP, two for FSDP x TP), rather than one per parameter as DTensor's own norm does.
    ``skip``: ids of parameters whose gradient is a copy counted elsewhere (the pipeline's tied head).
    """
    from torch.distributed.tensor import DTensor, Shard

    skip = skip or set()
    plain: list[torch.Tensor] = []
    sharded: dict[tuple, tuple[Any, list[torch.Tensor]]] = {}
    for p in params:
        g = p.grad
        if g is None or id(p) in skip:
            continue
        if isinstance(g, DTensor):
            mesh = g.device_mesh
            dims = tuple(i for i, pl in enumerate(g.placements) if isinstance(pl, Shard))
            if not dims:
                plain.append(g.to_local())
                continue
            key = (id(mesh), dims)
            sharded.setdefault(key, (mesh, dims, []))[2].append(g.to_local())
        else:
            plain.append(g)
    device = next(iter([*plain, *(t for v in sharded.values() for t in v[2])]), torch.zeros(())).device
    total = torch.zeros((), device=device, dtype=torch.float32)
    if plain:
        total += torch.stack([torch.linalg.vector_norm(g.float()) ** 2 for g in plain]).sum()
    for mesh, dims, grads in sharded.values():
        part = torch.stack([torch.linalg.vector_norm(g.float()) ** 2 for g in grads]).sum()
        dist.all_reduce(part, group=_group_over(mesh, dims))
        total += part
    return total.sqrt()


def _group_over(mesh: Any, dims: tuple[int, ...]) -> Any:
    """The process group spanning the given dimensions of a device mesh."""
    if len(dims) == 1:
        return mesh.get_group(dims[0])
    if len(dims) == mesh.ndim:
        ranks = mesh.mesh.flatten().tolist()
        if len(ranks) == dist.get_world_size():
            return dist.group.WORLD
    names = mesh.mesh_dim_names
    return mesh[tuple(names[d] for d in dims)]._flatten().get_group()


@torch.no_grad()
def clip_(params: Iterable[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients so their global norm is at most max_norm (no host sync: the coefficient is a tensor)."""
    if max_norm == float("inf"):
        return
    coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    grads = [local(p.grad) for p in params if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, coef.to(grads[0].device))


def dcp_save(path: str, state: dict[str, Any]) -> None:
    """Sharded checkpoint with torch.distributed.checkpoint: each rank writes its own shards, in parallel."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=os.path.join(path, "dcp"))


def dcp_load(path: str, state: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.load(state, checkpoint_id=os.path.join(path, "dcp"))


class DCPCheckpoint:
    """save/load/full_state_dict for layouts whose model is made of DTensors (FSDP2, tensor parallel, pipeline).

    torch.distributed.checkpoint writes each rank's shards and reloads them into the same layout;
    ``get_state_dict`` gives the model and optimizer state in the sharded form DCP expects.
    """

    model: nn.Module
    optimizer: Any

    def optimizer_key(self) -> str:
        """The namespace of this rank's optimizer state in the checkpoint (a pipeline stage needs its own)."""
        return "optimizer"

    def dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, self.optimizer_key(): optim_sd}

    def save(self, path: str) -> None:
        dcp_save(path, self.dcp_state())

    def load(self, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self.dcp_state()
        dcp_load(path, state)
        optim_sd = state[self.optimizer_key()]
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=optim_sd)

    def full_state_dict(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.tensor import DTensor

        # Every shard on every rank, one tensor at a time, each moved to CPU at once: the same names and values
        # DDP's state_dict() would give, without ever holding the whole model on a GPU (full_state_dict=True
        # would gather it all there first; its cpu_offload gives the values to rank 0 only).
        sharded = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=False))
        return {k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in sharded.items()}


class DTensorLayout(DCPCheckpoint, Layout):
    """A layout whose parameters are DTensors (FSDP2, tensor parallel, both): the global grad norm over every
    shard, clipping, the update; DCP checkpoints."""

    def _step(self, max_norm: float) -> torch.Tensor:
        params = list(self.model.parameters())
        norm = global_grad_norm(params)
        clip_(params, max_norm, norm)
        self.optimizer.step()
        return norm
