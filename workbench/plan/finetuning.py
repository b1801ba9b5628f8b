"""Fine-tuning as the planner counts it (``workbench/finetune.py``): a classifier head, frozen backbones and
LoRA change what is held, what trains, and what autograd saves."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workbench.factory import is_hf
from workbench.models.shapes import TransformerShape
from workbench.plan.activations import Activations, lora_activations
from workbench.plan.precision import Precision

if TYPE_CHECKING:
    from workbench.config import RunConfig


def finetune_counts(
    cfg: RunConfig, s: TransformerShape, p: Precision, N: int, n_tensors: int, approximate: list[str], notes: list[str]
) -> tuple[int, int, int, Callable[[int], int]] | None:
    """Parameters held, trainable, optimizer tensors, and the change in saved activations against the full
    language model as a function of micro_batch_size. None for plain language-model training."""
    task, peft = getattr(cfg, "task", None), getattr(cfg, "peft", None)
    classify = task is not None and task.kind == "classify"
    method = peft.method if peft is not None else "none"
    if not classify and method == "none":
        return None
    T, d, a, L, V = s.seq_len, s.d_model, p.act, s.n_layer, s.vocab_size
    nl = task.num_labels if classify else 0
    head = d * nl + nl  # GPTClassifier's score Linear (its LM head was the tied embedding: no params freed)
    total = N + head
    if s.task_head_params is not None:  # a Hugging Face classifier: its head is in the shape already (and in N)
        head, total = s.task_head_params, N
    tensors = n_tensors + (2 if classify else 0)
    trainable = total
    if is_hf(cfg.model.arch) and method != "none":
        return hf_peft_counts(cfg, s, N, n_tensors, approximate, notes)

    # The LM's head and loss (counted by outer_activation_bytes) against what replaces them.
    lm_tail = lambda B: B * T * (a * d + 4 * V + 8) + (a * V * d if p.autocast else 0)  # noqa: E731
    if classify:
        # mean pooling saves nothing; the score Linear saves its (B, d) input; the loss its (B, nl) log-softmax
        tail = lambda B: B * (a * d + 4 * nl + 8) + (a * d * nl if p.autocast else 0)  # noqa: E731
    else:
        tail = lm_tail
    delta: Any = lambda B: tail(B) - lm_tail(B)  # noqa: E731

    if method == "frozen":
        # linear probing: nothing before the head requires grad, so the backbone saves nothing at all, and
        # the head's weight cast is not needed (no gradient flows to its input)
        trainable, tensors = head, 2
        full = lambda B: Activations(s, p, False, 0.0, True, 0).one(L, True, True, 1, B, True)  # noqa: E731
        delta = lambda B: B * (a * d + 4 * nl + 8) + 4 - full(B)  # noqa: E731
    elif method == "lora":
        from workbench.config import LORA_TARGETS

        names = sorted({n for t in peft.target for n in LORA_TARGETS.get(t, (t,))})
        shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
        lora = L * sum(peft.r * (shapes[n][0] + shapes[n][1]) for n in names if n in shapes)
        # peft's modules_to_save keeps the original head and trains a copy of it
        total = N + lora + (2 * head if classify else 0)
        trainable = lora + (head if classify else 0)
        tensors = 2 * L * len(names) + (2 if classify else 0)
        lm = Activations(s, p, False, 0.0, True, 0)
        lm_full = lambda B: lm.one(L, True, True, 1, B, True)  # noqa: E731
        delta = lambda B: lora_activations(s, p, set(names), peft.r, B, classify, nl) - lm_full(B)  # noqa: E731
        if cfg.model.dropout > 0 or getattr(cfg, "activation_checkpointing", False):
            approximate.append("activation_bytes")
    notes.append(f"fine-tuning: {trainable:,} of {total:,} parameters train (grads and optimizer state for those)")
    return total, trainable, tensors, delta


def hf_peft_counts(
    cfg: RunConfig, s: TransformerShape, N: int, n_tensors: int, approximate: list[str], notes: list[str]
) -> tuple[int, int, int, Callable[[int], int]]:
    """A Hugging Face model under peft.method (workbench/finetune/hf_peft.py): parameters held (peft keeps the
    original head beside the trained copy), trainable, their tensors. Saved activations: the full model's,
    marked approximate (a frozen backbone saves less, a prefix more)."""
    from workbench.models.hf_config import model_type_of
    from workbench.models.hf_peft import hf_peft_tensors, hf_peft_trainable

    model_type = model_type_of(cfg.model.arch)
    head = s.task_head_params or 0
    trainable = hf_peft_trainable(cfg, s, model_type)
    total = N if cfg.peft.method == "frozen" else N + trainable  # the adapters, and a copy of the head
    approximate.append("activation_bytes")
    notes.append(f"fine-tuning ({cfg.peft.method}): {trainable:,} of {total:,} parameters train, {head:,} of them "
                 "the head (grads and optimizer state for those)")  # fmt: skip
    return total, trainable, hf_peft_tensors(cfg, s, model_type), lambda B: 0
