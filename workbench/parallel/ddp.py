"""ddp: data parallel through Accelerate (also the single-process path).

``accelerator.prepare`` wraps the model in DistributedDataParallel (gloo on CPU, NCCL on GPUs) and the
optimizer in an AcceleratedOptimizer; ``accelerator.accumulate`` skips the gradient all-reduce on all but the
last micro-step of an optimizer step; ``accelerator.backward`` divides the loss by grad_accum_steps and
applies GPU fp16 loss scaling; ``save_state`` checkpoints model, optimizer and RNGs. Accelerate does all of
it, so this file is short: it is the reference the other layouts are measured against.
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.parallel.common import Layout, loss_of


class DDPLayout(Layout):
    strategy = "ddp"
    checkpoint_format = "accelerate save_state (model, optimizer, RNGs)"
    takes_compute_loss = True

    def __init__(self, cfg: Any, acc: Any, model: torch.nn.Module, make_optimizer: Any, **kw: Any) -> None:
        super().__init__(cfg, acc, **kw)
        self.model, self.optimizer = acc.prepare(model, make_optimizer(model))

    def _micro_step(self, x, y, last):
        acc = self.acc
        with acc.accumulate(self.model):
            with self.fwd_ctx:
                loss = loss_of(self.model(x, y)) if self.compute_loss is None else self.compute_loss(self.model, x, y)
            acc.backward(self.scaler.scale(loss) if self.scaler is not None else loss)
        if acc.sync_gradients != last:  # our step boundaries and Accelerate's must agree (a plain bool)
            raise RuntimeError("gradient accumulation out of step with Accelerate's counter")
        return loss.detach().float(), self._one

    def _step(self, max_norm):
        acc, scaler = self.acc, self.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer.optimizer)
        norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        if scaler is not None:
            scaler.step(self.optimizer.optimizer)  # skips the update when a gradient overflowed
            scaler.update()
        else:
            self.optimizer.step()
        return norm.detach().float()

    def named_parameters(self):
        return self.acc.unwrap_model(self.model).named_parameters()

    def full_state_dict(self):
        return self.acc.unwrap_model(self.model).state_dict()
