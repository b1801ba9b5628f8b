"""PEFT methods on a Hugging Face model (``model.arch: hf:...``), through the peft library.

peft wraps the transformers model inside HFModel (``model.hf``), with the task type of task.kind, so peft's
own machinery applies: its classifier head handling (modules_to_save), Prefix-Tuning's past key values and
attention mask, AdaLoRA's orthogonality penalty added to the loss.

    frozen   every backbone weight frozen; the classifier (and BERT's pooler) train          (no peft)
    lora     LoraConfig on peft.target (module names; per-type default as peft's own)
    adalora  AdaLoraConfig: init_r = peft.r, target_r = peft.r // 2; its budget is reallocated every
             ADALORA_DELTA_T optimizer steps by ``update_and_allocate`` (adalora_hook, after each step)
    prefix   PrefixTuningConfig: peft.num_virtual_tokens keys and values prepended in every layer
    adapter  the bottleneck adapter. AdapterHub's ``adapters`` package (1.3.0, the newest) pins
             transformers~=4.57.6 and fails to import here at all (it imports huggingface_hub's HfFolder, gone
             in huggingface_hub 1.x, which transformers 5 needs); peft 0.21 has no bottleneck adapter. Its
             nearest equivalent is used: a rank-r LoRA beside the feed-forward block's output projection
             (BERT output.dense, Llama down_proj, GPT-2 mlp.c_proj), i.e. He et al. (2022)'s "parallel adapter"
             at the FFN without the bottleneck's nonlinearity, which is what lets it merge before export.

BERT's pooler trains along with the classifier (peft's SEQ_CLS saves only the classifier): masked-language
pretraining never trained the pooler, so a frozen random one would cap every method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from workbench.config import RunConfig
from workbench.models.family import family_of
from workbench.models.hf_config import model_type_of
from workbench.models.hf_peft import hf_target_regex

ADALORA_DELTA_T = 10  # optimizer steps between AdaLoRA's budget reallocations (each one syncs with the host)
TASK_TYPES = {"classify": "SEQ_CLS", "lm": "CAUSAL_LM", "mlm": None}


def peft_config(cfg: RunConfig, model: nn.Module) -> Any:
    """The peft config of cfg.peft.method for this transformers model."""
    import peft

    pe, model_type = cfg.peft, model_type_of(cfg.model.arch)
    task_type = TASK_TYPES[cfg.task.kind]
    save = ["pooler"] if cfg.task.kind == "classify" and model_type == "bert" else None
    if pe.method == "prefix":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=pe.num_virtual_tokens,
                                       modules_to_save=save)  # fmt: skip
    common = dict(task_type=task_type, target_modules=hf_target_regex(cfg, model_type), lora_alpha=pe.alpha,
                  lora_dropout=0.0, modules_to_save=save)  # fmt: skip
    if pe.method == "adalora":
        total = cfg.max_steps
        return peft.AdaLoraConfig(init_r=pe.r, target_r=max(1, pe.r // 2), total_step=total, tinit=total // 5,
                                  tfinal=total // 5, deltaT=ADALORA_DELTA_T, **common)  # fmt: skip
    return peft.LoraConfig(r=pe.r, bias="none", **common)  # lora, adapter (targets differ: hf_target_names)


def wrap_hf_peft(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """HFModel with peft.method applied to its transformers model (in place; returned for chaining)."""
    if cfg.peft.method == "none":
        return model
    if cfg.peft.method == "frozen":
        family = family_of(model)
        for name, p in model.named_parameters():
            p.requires_grad_(family.is_task_head(model, name))
        return model
    from peft import get_peft_model

    model.hf = get_peft_model(model.hf, peft_config(cfg, model.hf))
    if cfg.peft.method == "prefix":
        model.call = prefix_forward
    return model


def prefix_forward(pm: Any, input_ids: torch.Tensor, labels: torch.Tensor | None, **kw: Any) -> Any:
    """peft's Prefix-Tuning forward, with transformers 5's name for the cache.

    peft 0.21 decides whether a model takes prefixes by looking for ``past_key_values`` in its forward's
    signature; transformers 5.24 renamed it ``cache`` (the old name still works through a deprecation shim), so
    peft refuses every model ("does not support past key values"). The same steps here, with ``cache=``:
    peft's trained prefix keys and values per layer (``get_prompt``), the attention mask widened by the
    virtual tokens, and the sequence's positions from 0 (as without prefixes: BERT's position table has
    model.seq_len rows, so positions shifted past the prefix would run off it)."""
    B, T = input_ids.shape
    n = pm.peft_config[pm.active_adapter].num_virtual_tokens
    mask = kw.pop("attention_mask", None)
    mask = torch.ones(B, T, dtype=torch.long, device=input_ids.device) if mask is None else mask
    mask = torch.cat([torch.ones(B, n, dtype=mask.dtype, device=mask.device), mask], dim=1)
    pos = torch.arange(T, device=input_ids.device).expand(B, T)
    kw.pop("use_cache", None)
    return pm.base_model(input_ids=input_ids, labels=labels, attention_mask=mask, position_ids=pos,
                         cache=pm.get_prompt(batch_size=B), **kw)  # fmt: skip


def merge_hf_peft(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """The plain transformers model back inside HFModel: LoRA / AdaLoRA / adapter merged into the weights.
    Prefix-Tuning cannot merge (its prefixes are inputs, not weights): that model stays wrapped."""
    if cfg.peft.method in ("lora", "adalora", "adapter"):
        model.hf = model.hf.merge_and_unload()
    return model


def peft_trainable(model: nn.Module) -> int | None:
    """peft's own count of trainable parameters (get_nb_trainable_parameters), or None without peft."""
    hf = getattr(getattr(model, "module", model), "hf", None)
    counter = getattr(hf, "get_nb_trainable_parameters", None)
    return int(counter()[0]) if counter is not None else None


def adalora_hook(cfg: RunConfig, model: nn.Module, optimizer: Any, step_of: Callable[[], int]) -> None:
    """AdaLoRA only: call peft's ``update_and_allocate(global_step)`` after every optimizer step, before the
    gradients are zeroed (it scores each singular value by |p * grad|), as a post-step hook of the torch
    optimizer. The gradients are already averaged over ranks there, so every rank masks the same values."""
    if cfg.peft.method != "adalora":
        return
    tuner = getattr(model, "module", model).hf.base_model  # DDP's module, HFModel, PeftModel -> AdaLoraModel

    def after_step(opt: Any, args: Any, kwargs: Any) -> None:
        tuner.update_and_allocate(step_of() + 1)  # step_of(): the steps done before this one (a resume included)

    getattr(optimizer, "optimizer", optimizer).register_step_post_hook(after_step)
