"""Model families: what a model offers the layouts and fine-tuning, so that parallel/ and finetune/ ask the family
and never name a model's modules themselves (torchtitan's split between a model and how it is parallelised).

A family answers, for a built model:

    blocks(model)            the repeated blocks (activation checkpointing, compile, FSDP2 and tensor parallel wrap them)
    tp_plan(model)           one block's module path -> "colwise" | "rowwise", or None: tensor parallel cannot split it
    pipeline_stage(model, i, n, layers)   stage i of n, holding those blocks (an nn.Module with is_first / is_last)
    tied_parameter(stage)    the weight a stage shares with another stage (the GPT's embedding and head), or None
    checkpoint_natively(model)   turn on the model's own activation checkpointing; False: wrap the blocks instead
    pool_loss_groups(model, n)   the model now computes on n micro-batches stacked (tensor parallel's pooled batch)
    is_task_head(model, key)     whether a state-dict key belongs to a task head that starts fresh
    task_head_modules        the modules of the task head that train in full under LoRA / frozen probing
    lora_targets             peft.target groups -> Linear names (torch-free: validation and the plan read them)
    refuses                  what a layout may need that the family never offers, and why (torch-free: validation)

A model declares its family with a ``family`` attribute (the GPT and HFModel do); your own ``nn.Module`` may set one
too, and otherwise gets ``ModelFamily``: its longest ModuleList as blocks, nothing more. What the config can see
before building anything (which layouts a family takes) is validated as before: config/strategies.py and
config/hf.py. Importing this module imports no torch.
"""

from __future__ import annotations

from typing import Any

from workbench.models.shapes import TENSOR_PARALLEL_PLAN

__all__ = ["GPT_FAMILY", "HF_FAMILY", "OWN_FAMILY", "GPTFamily", "HFFamily", "ModelFamily", "family_of"]


class ModelFamily:
    """A model the workbench knows nothing of (your own nn.Module): blocks found by looking, nothing split."""

    name = "your own model"
    refuses: dict[str, str] = {}  # what a layout may need ("stages", "tp_plan") that it never offers -> why
    lora_targets: dict[str, tuple[str, ...]] = {}
    task_head_modules: tuple[str, ...] = ()

    def blocks(self, model: Any) -> list[Any]:
        """The modules that its ``_no_split_modules`` names (transformers' blocks) and that sit in a ModuleList;
        else the longest ``nn.ModuleList`` in it."""
        import torch.nn as nn

        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        named = set().union(*(getattr(m, "_no_split_modules", None) or () for m in model.modules()))
        in_lists = [b for lst in lists for b in lst if type(b).__name__ in named]
        if in_lists:
            return in_lists
        return list(max(lists, key=len)) if lists else []

    def tp_plan(self, model: Any) -> dict[str, str] | None:
        return None

    def pipeline_stage(self, model: Any, index: int, num_stages: int, layers: range) -> Any:
        raise ValueError(f"{self.name} has no pipeline stages the workbench can cut")

    def tied_parameter(self, stage: Any) -> Any:
        return None

    def checkpoint_natively(self, model: Any) -> bool:
        return False

    def pool_loss_groups(self, model: Any, n: int) -> None:
        """Nothing to do for a model whose loss is the same mean over a stack of micro-batches."""

    def is_task_head(self, model: Any, key: str) -> bool:
        return False


class GPTFamily(ModelFamily):
    """The reference GPT (models/gpt.py) and its classifier: ``blocks`` in a ModuleList, Megatron's split of q, k, v,
    fc1 (columns) and o, fc2 (rows), pipeline stages of consecutive blocks with the tied embedding / head."""

    name = "the reference GPT"
    lora_targets = {"attn": ("q", "k", "v", "o"), "mlp": ("fc1", "fc2")}
    task_head_modules = ("score",)  # GPTClassifier's head

    def blocks(self, model: Any) -> list[Any]:
        blocks = model.blocks
        return list(blocks.values()) if hasattr(blocks, "values") else list(blocks)

    def tp_plan(self, model: Any) -> dict[str, str]:
        return TENSOR_PARALLEL_PLAN["gelu_mlp"]

    def pipeline_stage(self, model: Any, index: int, num_stages: int, layers: range) -> Any:
        from workbench.models.gpt import GPTStage

        return GPTStage(model, index, num_stages, layers)

    def tied_parameter(self, stage: Any) -> Any:
        if stage.is_first:
            return stage.tok_emb.weight
        return stage.head.weight if stage.is_last else None  # the last stage's copy of the embedding

    def is_task_head(self, model: Any, key: str) -> bool:
        return any(key.startswith(m + ".") for m in self.task_head_modules)


class HFFamily(ModelFamily):
    """A transformers model inside HFModel (models/hf.py, ``model.hf``): its blocks are the modules its
    ``_no_split_modules`` names; the tensor-parallel split by module name per type (models/hf_config.py);
    transformers' own activation checkpointing; no pipeline stages (config/hf.py refuses pp)."""

    name = "a Hugging Face model"
    refuses = {
        "stages": "a transformers model is one forward() with no stage boundaries the pipeline can cut honestly; use "
        "zero3 to split the model's memory",
    }  # tp_plan: per model type (models/hf_config.py: HF_TP_REFUSED)

    def tp_plan(self, model: Any) -> dict[str, str] | None:
        return model.tp_plan_names

    def checkpoint_natively(self, model: Any) -> bool:
        hf = model.hf
        if not getattr(hf, "supports_gradient_checkpointing", False):
            return False
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return True

    def pool_loss_groups(self, model: Any, n: int) -> None:
        model.loss_groups = n  # mlm: the loss is the mean of each micro-batch's own mean (models/hf.py)

    def is_task_head(self, model: Any, key: str) -> bool:
        """Its parts outside the backbone (a classifier, a masked-LM head), and BERT's pooler, which a masked-LM run
        never trains."""
        if not key.startswith("hf."):
            return False
        return not key.startswith(f"hf.{model.hf.base_model_prefix}.") or ".pooler." in key


OWN_FAMILY, GPT_FAMILY, HF_FAMILY = ModelFamily(), GPTFamily(), HFFamily()


def family_of(model: Any) -> ModelFamily:
    """The family a built model declares (through DistributedDataParallel's and peft's wrappers), else your own."""
    inner = getattr(model, "module", model)
    family = getattr(inner, "family", None)
    return family if isinstance(family, ModelFamily) else OWN_FAMILY
