"""pp: pipeline parallelism with torch.distributed.pipelining (GPipe and 1F1B schedules).

The model is cut into ``pp_size`` stages of consecutive blocks, one per process, as its family cuts it
(models/family.py; the GPT: the embeddings on stage 0, the final LayerNorm, the head and the loss on the last). Each micro-step's batch is split into
``pp_microbatches`` micro-batches that flow through the stages, so while stage 1 works on micro-batch 0,
stage 0 already works on micro-batch 1. The schedule decides the order:

    gpipe  all forwards, then all backwards (simple; keeps every micro-batch's activations alive)
    1f1b   after a warm-up, one forward then one backward (at most pp_size micro-batches alive)

Both leave each stage idle for part of the step, the "bubble": (p - 1) / (m + p - 1) of the time for p
stages and m micro-batches. The run reports that figure and, measured, the share of the step each stage
spent not computing (waiting for its neighbour).

The same loss as every other layout: each micro-batch's mean cross-entropy is divided by m (and by
grad_accum_steps), so the gradient is that of the mean over the batch (``scale_grads=False``: the schedule
would otherwise divide every stored gradient by m after each step, including gradients accumulated by
earlier micro-steps).

Weight tying across stages (the family's ``tied_parameter``): the GPT's token embedding (stage 0) is also its
output head (last stage). The last stage holds a copy, and the two gradients are summed across the pair before
every update (Megatron's "embedding group"), so both copies receive the same update and stay equal.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from workbench.models.family import family_of
from workbench.parallel.common import DCPCheckpoint, Layout, clip_, cross_entropy, nbytes

# (p - 1) / (m + p - 1) and the blocks of each stage: one home each, shared with the plan
from workbench.plan.compute import bubble_fraction, stage_layers


class Clock:
    """Adds up intervals without a host sync: the host clock on CPU (compute is synchronous there), CUDA
    events on GPUs (kernels run after the host moves on), read back only by ``total()`` at log steps."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._s = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def stop(self, t0: Any) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self._events.append((t0, e))
        else:
            self._s += time.perf_counter() - t0

    def total(self) -> float:
        for a, b in self._events:
            b.synchronize()
            self._s += a.elapsed_time(b) / 1000.0
        self._events.clear()
        return self._s


def _timed_stage_class():
    from torch.distributed.pipelining import PipelineStage

    class TimedStage(PipelineStage):
        """A PipelineStage that adds up the time it spends computing (forward and backward chunks)."""

        busy: Clock

        def forward_one_chunk(self, *args: Any, **kwargs: Any) -> Any:
            t0 = self.busy.start()
            try:
                return super().forward_one_chunk(*args, **kwargs)
            finally:
                self.busy.stop(t0)

        def backward_one_chunk(self, *args: Any, **kwargs: Any) -> Any:
            t0 = self.busy.start()
            try:
                return super().backward_one_chunk(*args, **kwargs)
            finally:
                self.busy.stop(t0)

    return TimedStage


class PipelineLayout(DCPCheckpoint, Layout):
    strategy = "pp"
    checkpoint_format = "torch.distributed.checkpoint (each stage writes its own blocks)"

    def __init__(self, cfg: Any, acc: Any, model: nn.Module, make_optimizer: Any, **kw: Any) -> None:
        from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

        super().__init__(cfg, acc, **kw)
        p = cfg.parallel
        self.num_stages, self.m = self.world, p.pp_microbatches
        self.index = self.rank
        family = family_of(model)
        self.layers = stage_layers(len(family.blocks(model)), self.num_stages)[self.index]
        self.model = family.pipeline_stage(model, self.index, self.num_stages, self.layers).to(self.device)
        del model  # the other stages' blocks are freed with it
        self.comm_group = dist.group.WORLD  # the whole pipeline trains on one pooled batch
        self.mb = cfg.micro_batch_size * self.num_stages // self.m  # sequences per pipeline micro-batch
        T, d = cfg.model.seq_len, cfg.model.d_model
        # Example inputs: the stage knows its shapes up front and skips shape inference by communication.
        if self.model.is_first:
            example = torch.zeros((self.mb, T), dtype=torch.long, device=self.device)
        else:
            example = torch.zeros((self.mb, T, d), dtype=torch.float32, device=self.device)
        self.stage = _timed_stage_class()(self.model, self.index, self.num_stages, self.device, input_args=(example,))
        self.stage.busy = Clock(self.device)
        self.wall = Clock(self.device)  # time inside schedule.step: computing, or waiting for a neighbour
        scale = self.m * self.accum

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return cross_entropy(logits, targets) / scale

        self.schedule_name = p.pp_schedule
        schedule_cls = ScheduleGPipe if p.pp_schedule == "gpipe" else Schedule1F1B
        self.schedule = schedule_cls(self.stage, n_microbatches=self.m, loss_fn=loss_fn, scale_grads=False)
        self.optimizer = make_optimizer(self.model)
        # The tied pair (the GPT's embedding and head): stage 0 and the last stage sum their gradients before each
        # update. The last stage's is a copy: its gradient counts once in the norm.
        self.tied_group = dist.new_group([0, self.num_stages - 1])
        self.tied = family.tied_parameter(self.model)
        copy = self.tied is not None and self.model.is_last and not self.model.is_first
        self.tied_copy = {id(self.tied)} if copy else set()
        self._busy_mark = self._wall_mark = 0.0

    def _micro_step(self, x, y, last):
        x, y = self.pool(x, y)
        losses: list[torch.Tensor] = []
        t0 = self.wall.start()
        with self.fwd_ctx:
            if self.model.is_first:
                self.schedule.step(x)
            elif self.model.is_last:
                self.schedule.step(target=y, losses=losses)
            else:
                self.schedule.step()
        self.wall.stop(t0)
        if self.model.is_last:
            # each entry is one micro-batch's mean loss / (m * grad_accum_steps): undo the scaling
            return torch.stack(losses).sum().detach().float() * self.accum, self._one
        return self._zero, self._zero

    def _step(self, max_norm):
        if self.tied is not None and self.tied.grad is not None:
            dist.all_reduce(self.tied.grad, group=self.tied_group)
        params = list(self.model.parameters())
        grads = [p.grad.float() for p in params if p.grad is not None and id(p) not in self.tied_copy]
        sq = torch.zeros((), device=self.device)
        if grads:
            sq = torch.stack([torch.linalg.vector_norm(g) ** 2 for g in grads]).sum()
        dist.all_reduce(sq)  # the stages hold disjoint parts of the model: their squared norms add up
        norm = sq.sqrt()
        clip_(params, max_norm, norm)
        self.optimizer.step()
        return norm

    @torch.no_grad()
    def eval_loss(self, x, y):
        # Forward only, the whole batch at once, hand to hand: the schedules are kept for training (switching
        # a schedule between train and eval re-runs its set-up).
        x, y = self.pool(x, y)
        T, d = self.cfg.model.seq_len, self.cfg.model.d_model
        with self.fwd_ctx:
            if self.model.is_first:
                h = x
            else:
                h = torch.empty((x.shape[0], T, d), dtype=torch.float32, device=self.device)
                dist.recv(h, src=self.index - 1)
            h = self.model(h)
            if not self.model.is_last:
                dist.send(h.float().contiguous(), dst=self.index + 1)
                return self._zero.double(), self._zero.double()
            return cross_entropy(h, y).double(), self._one.double()

    # ---- reporting ----
    def wrapper_name(self) -> str:
        return f"PipelineStage({type(self.model).__name__}) + {type(self.schedule).__name__}"

    def extra_facts(self) -> dict[str, Any]:
        return {
            "stage": self.index,
            "num_stages": self.num_stages,
            "layers": list(self.layers),
            "schedule": self.schedule_name,
            "microbatches": self.m,
            "microbatch_size": self.mb,
            "bubble_fraction": bubble_fraction(self.num_stages, self.m),
            "tied_copy_bytes": nbytes(self.tied) if self.tied is not None else 0,
        }

    def extra_metrics(self) -> dict[str, Any]:
        """Bubble (computed) and each stage's measured idle share since the last log step (a collective)."""
        busy_total, wall_total = self.stage.busy.total(), self.wall.total()
        busy, wall = busy_total - self._busy_mark, wall_total - self._wall_mark
        self._busy_mark, self._wall_mark = busy_total, wall_total
        idle = [max(0.0, 1.0 - busy / wall) if wall > 0 else 0.0, max(0.0, wall - busy)]
        mine = torch.tensor(idle, dtype=torch.float64, device=self.device)
        out = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine)
        return {
            "bubble_fraction": bubble_fraction(self.num_stages, self.m),
            "idle_fraction": [round(float(t[0]), 4) for t in out],
            "idle_s": [round(float(t[1]), 4) for t in out],
        }

    # ---- checkpoints (DCPCheckpoint) ----
    def optimizer_key(self) -> str:
        # Parameter names differ between stages, so they can share the "model" namespace. The optimizer's
        # param_groups do not (group 0 exists on every stage, listing different names): DCP would keep one
        # stage's copy for all, so each stage gets its own namespace.
        return f"optimizer_stage{self.index}"

    def full_state_dict(self):
        """The whole model, assembled from every stage's part (each rank receives all of it)."""
        mine = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, mine)
        full: dict[str, torch.Tensor] = {}
        for part in parts:
            full.update(part)
        return full
