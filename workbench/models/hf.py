"""A Hugging Face transformers model behind the workbench's model contract: ``forward(x, y) -> (logits, loss)``.

    model.arch: hf:llama       AutoConfig.for_model + from_config (random init, offline)
    model.arch: hf:<folder>    from_pretrained (a save_pretrained folder: your weights)

task.kind picks the class: lm -> AutoModelForCausalLM, mlm -> AutoModelForMaskedLM, classify ->
AutoModelForSequenceClassification. The loss is transformers' own (labels passed in: the causal LM shifts them
itself, so x and y are the same block; mlm labels are -100 where nothing is masked). The fields come from
``models/hf_config.py``, which also gives the plan its exact TransformerShape of this very model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.data.files import PAD, offline
from workbench.models.family import HF_FAMILY
from workbench.models.hf_config import (
    HF_TP_MODULES,
    hf_config_dict,
    hf_source,
    hf_task_kinds,
    hf_tp_plan,
    model_type_of,
)

if TYPE_CHECKING:
    from workbench.config import RunConfig

__all__ = ["HFModel", "build_hf_model", "hf_auto_class"]


def hf_auto_class(task: str) -> Any:
    offline()
    import transformers

    return {
        "lm": transformers.AutoModelForCausalLM,
        "mlm": transformers.AutoModelForMaskedLM,
        "classify": transformers.AutoModelForSequenceClassification,
    }[task]


class HFModel(nn.Module):
    """The transformers model as ``self.hf``; ``forward(x, y=None)`` returns (logits, loss or None)."""

    family = HF_FAMILY  # what it offers the layouts and fine-tuning (models/family.py)

    def __init__(self, hf: nn.Module, task: str, pad_id: int, flops: int) -> None:
        super().__init__()
        self.hf, self.task, self.pad_id, self._flops = hf, task, pad_id, flops
        # Set by the tensor-parallel layout, which stacks its ranks' micro-batches into one: mlm's loss is then
        # the mean of each micro-batch's own mean, as under ddp (the masked tokens differ in number per
        # micro-batch, so one mean over the stack would weigh them differently). lm and classify count the
        # same number of targets per row: their mean over the stack is already the same.
        self.loss_groups = 1
        model_type = getattr(hf.config, "model_type", None)
        # One block's module path -> "colwise" | "rowwise" for parallel/tensor.py; None: tp refused (config/hf.py)
        self.tp_plan_names = hf_tp_plan(model_type) if model_type in HF_TP_MODULES else None
        self.call: Any = None  # (hf, input_ids, labels, **kw) -> output, replacing self.hf(...) (Prefix-Tuning)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        kw: dict[str, Any] = {}
        if self.task == "classify":
            kw["attention_mask"] = (x != self.pad_id).long()
        if self.task == "lm":
            kw["use_cache"] = False
        if self.task == "mlm" and self.loss_groups > 1 and y is not None:
            logits = self.hf(input_ids=x, **kw).logits
            flat = [F.cross_entropy(lg.float().flatten(0, 1), t.flatten(), ignore_index=-100)
                    for lg, t in zip(logits.chunk(self.loss_groups), y.chunk(self.loss_groups), strict=True)]  # fmt: skip
            return logits, torch.stack(flat).mean()
        out = self.hf(input_ids=x, labels=y, **kw) if self.call is None else self.call(self.hf, x, y, **kw)
        return out.logits, out.loss

    def flops_per_token(self) -> int:
        return self._flops


def build_hf_model(cfg: RunConfig) -> HFModel:
    """The model of ``model.arch: hf:...`` for task.kind, in train mode (from_pretrained returns eval mode)."""
    from workbench.models.shapes import shape_of

    offline()
    import transformers

    kind, name = hf_source(cfg.model.arch)
    task = cfg.task.kind
    if task not in hf_task_kinds(model_type_of(cfg.model.arch)):
        raise ValueError(f"model.arch {cfg.model.arch!r} does not train task.kind {task!r}")
    fields = hf_config_dict(cfg)
    if cfg.data.source == "files":  # our tokenizer's special ids (GPT-2's config would keep 50256 otherwise)
        fields.update(pad_token_id=PAD, bos_token_id=0, eos_token_id=0)
    auto = hf_auto_class(task)
    if kind == "type":
        config = transformers.AutoConfig.for_model(name, **fields)
        model = auto.from_config(config, attn_implementation="sdpa")
    else:  # a local folder; a Hub id is refused before launch (config/validate.py)
        model = auto.from_pretrained(name, **fields)
    model.train()
    return HFModel(model, task, PAD, shape_of(cfg).flops_per_token())
