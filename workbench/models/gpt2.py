"""The reference GPT as Hugging Face's GPT2LMHeadModel: the same architecture, its weights under GPT-2's names.

The GPT is GPT-2's architecture: pre-LayerNorm blocks (eps 1e-5), learned positions, biases, the exact GELU
(GPT2Config activation_function "gelu"), attention scaled by 1/sqrt(head_dim), the head tied to the token embedding.
Two differences of layout, none of arithmetic:

- q, k and v are three Linears here (tensor parallelism shards each by heads); GPT-2 has one ``c_attn`` holding
  them side by side, [q | k | v] along its output;
- GPT-2's projections are ``Conv1D``, which store their weight as (in, out), the transpose of a Linear's.

What GPT-2 cannot hold is refused with the reason (``gpt2_refusal``): GPTClassifier's mean-pooled score head
(GPT2ForSequenceClassification scores the last token, so its logits would differ) and your own model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["gpt2_config", "gpt2_refusal", "gpt2_state_dict"]


def gpt2_refusal(model: nn.Module) -> str | None:
    """Why this built model cannot become a GPT2LMHeadModel with the same logits, or None when it can."""
    from workbench.models.gpt import GPT, GPTClassifier

    if isinstance(model, GPTClassifier):
        return ("the GPT classifier scores the mean of every position's final state; GPT-2's "
                "GPT2ForSequenceClassification scores the last token, so its logits would differ")  # fmt: skip
    if not isinstance(model, GPT):
        return (f"{type(model).__name__} is not the workbench GPT: a model of your own has no Hugging Face "
                "architecture the workbench knows (export it to ONNX: workbench export RUN --onnx)")  # fmt: skip
    if model.cfg.d_model % model.cfg.n_head:
        return f"d_model {model.cfg.d_model} does not divide by n_head {model.cfg.n_head}"
    return None


def gpt2_config(model: nn.Module, eos_id: int | None, pad_id: int | None = None) -> Any:
    """The GPT2Config of this GPT (its end-of-text id as GPT-2's bos/eos, or none: GPT-2's 50256 would lie
    outside a small vocabulary)."""
    from transformers import GPT2Config

    c = model.cfg
    return GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.seq_len,
        n_embd=c.d_model,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=4 * c.d_model,
        activation_function="gelu",  # exact GELU, as F.gelu
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5,  # nn.LayerNorm's default
        scale_attn_weights=True,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        architectures=["GPT2LMHeadModel"],
    )


def _bias(module: nn.Module, n: int) -> torch.Tensor:
    b = getattr(module, "bias", None)
    return b.detach() if b is not None else torch.zeros(n)


def gpt2_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The GPT's weights under GPT2LMHeadModel's names (c_attn = [q | k | v], Conv1D weights transposed); a
    model built with bias=False gets zero biases, which compute the same."""
    d = model.cfg.d_model
    sd: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.tok_emb.weight.detach(),
        "transformer.wpe.weight": model.pos_emb.weight.detach(),
        "transformer.ln_f.weight": model.ln_f.weight.detach(),
        "transformer.ln_f.bias": _bias(model.ln_f, d),
        "lm_head.weight": model.tok_emb.weight.detach(),
    }
    for i, b in enumerate(model.blocks):
        p, a = f"transformer.h.{i}.", b.attn
        sd |= {
            p + "ln_1.weight": b.ln1.weight.detach(),
            p + "ln_1.bias": _bias(b.ln1, d),
            p + "attn.c_attn.weight": torch.cat([a.q.weight, a.k.weight, a.v.weight]).detach().t(),
            p + "attn.c_attn.bias": torch.cat([_bias(a.q, d), _bias(a.k, d), _bias(a.v, d)]),
            p + "attn.c_proj.weight": a.o.weight.detach().t(),
            p + "attn.c_proj.bias": _bias(a.o, d),
            p + "ln_2.weight": b.ln2.weight.detach(),
            p + "ln_2.bias": _bias(b.ln2, d),
            p + "mlp.c_fc.weight": b.mlp.fc1.weight.detach().t(),
            p + "mlp.c_fc.bias": _bias(b.mlp.fc1, 4 * d),
            p + "mlp.c_proj.weight": b.mlp.fc2.weight.detach().t(),
            p + "mlp.c_proj.bias": _bias(b.mlp.fc2, d),
        }
    return {k: v.contiguous().clone() for k, v in sd.items()}


def to_gpt2(model: nn.Module, eos_id: int | None, pad_id: int | None = None) -> Any:
    """A GPT2LMHeadModel computing what this GPT computes (eval mode)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt2_config(model, eos_id, pad_id))
    missing, unexpected = hf.load_state_dict(gpt2_state_dict(model), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied: loaded as wte
    if missing or unexpected:
        raise RuntimeError(f"GPT -> GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


# GPT-2's module (under transformer.h.i) -> the GPT's Linears it holds; c_attn holds three side by side
GPT2_LORA_MODULES = {"attn.c_attn": ("attn.q", "attn.k", "attn.v"), "attn.c_proj": ("attn.o",),
                     "mlp.c_fc": ("mlp.fc1",), "mlp.c_proj": ("mlp.fc2",)}  # fmt: skip


def gpt2_lora_adapter(peft_gpt: nn.Module, gpt2: nn.Module, out: str) -> None:
    """The GPT's LoRA (peft on q, k, v, o, fc1, fc2) as a peft adapter of GPT2LMHeadModel, saved in out.

    c_attn = [q | k | v] gets one LoRA of rank 3r: A = [A_q; A_k; A_v] stacked, B = diag(B_q, B_k, B_v), scaled
    by 3·alpha / 3r = alpha / r, so B A = [B_q A_q; B_k A_k; B_v A_v]: each part's own update (a part without an
    adapter gets zero blocks). ``gpt2`` (the base, from to_gpt2) is wrapped in place."""
    from peft import LoraConfig, get_peft_model

    lc = peft_gpt.peft_config["default"]
    r, alpha, targets = lc.r, lc.lora_alpha, set(lc.target_modules)
    used = [m for m, parts in GPT2_LORA_MODULES.items() if any(p.split(".")[1] in targets for p in parts)]
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=used, fan_in_fan_out=True, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM", rank_pattern={"c_attn": 3 * r},
                        alpha_pattern={"c_attn": 3 * alpha})  # fmt: skip
    pm = get_peft_model(gpt2, config)
    gpt = peft_gpt.get_base_model()
    for i, block in enumerate(gpt.blocks):
        h = pm.base_model.model.transformer.h[i]
        for name in used:
            A, B = [], []
            for part in GPT2_LORA_MODULES[name]:
                src = block.get_submodule(part)
                if hasattr(src, "lora_A") and "default" in src.lora_A:
                    A.append(src.lora_A["default"].weight.detach())
                    B.append(src.lora_B["default"].weight.detach())
                else:  # this Linear had no adapter: zero blocks
                    A.append(torch.zeros(r, src.in_features))
                    B.append(torch.zeros(src.out_features, r))
            dst = h.get_submodule(name)
            with torch.no_grad():
                dst.lora_A["default"].weight.copy_(torch.cat(A))
                dst.lora_B["default"].weight.copy_(torch.block_diag(*B))
    pm.save_pretrained(out)
