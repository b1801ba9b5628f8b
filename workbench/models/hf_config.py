"""Hugging Face models by name, without torch: ``model.arch: hf:<model_type>`` or ``hf:<local folder>``.

What the plan, validation and the panel need from a transformers model (its config fields, the model class a
task takes, its TransformerShape) comes from here, and nothing here imports torch or transformers: importing
transformers' configuration classes pulls torch in (3 s), and the plan must answer in milliseconds. So the
defaults of the supported model types are restated below, as transformers 5.24 defines them; a test builds
each type with transformers on the meta device and checks the counts against these.

    model.arch: hf:llama                 AutoConfig.for_model("llama", ...) + from_config: random init, offline
    model.arch: hf:/path/to/folder       from_pretrained: a save_pretrained folder (its config.json is read here)
    model.hf_config: {num_key_value_heads: 2, intermediate_size: 172}    any further field of that config

model.n_layer / n_head / d_model / seq_len are mapped onto the type's own names (GPT-2: n_layer, n_head,
n_embd, n_positions; the others: num_hidden_layers, num_attention_heads, hidden_size,
max_position_embeddings). A Hub id (``hf:<org>/<name>``) is refused before launch: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

from workbench.factory import is_hf
from workbench.models.shapes import TENSOR_PARALLEL_PLAN, TransformerShape, numel

if TYPE_CHECKING:
    from workbench.config import RunConfig

__all__ = [
    "DECODER_TYPES",
    "ENCODER_TYPES",
    "HF_TYPES",
    "HF_TP_REFUSED",
    "hf_config_dict",
    "hf_shape",
    "hf_source",
    "hf_task_kinds",
    "hf_tp_fields",
    "hf_tp_plan",
    "is_hf",
]

# model.* -> the type's config field names (n_layer, n_head, d_model, seq_len)
_STANDARD = ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings")
_GPT2 = ("n_layer", "n_head", "n_embd", "n_positions")

# The defaults of transformers 5.24's config classes that change the parameter count.
HF_TYPES: dict[str, dict[str, Any]] = {
    "llama": {
        "names": _STANDARD,
        "vocab_size": 32000,
        "intermediate_size": 11008,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
    },  # fmt: skip
    "mistral": {
        "names": _STANDARD,
        "vocab_size": 32000,
        "intermediate_size": 14336,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
    },  # fmt: skip
    "qwen2": {
        "names": _STANDARD,
        "vocab_size": 151936,
        "intermediate_size": 22016,
        "num_key_value_heads": 32,
        "tie_word_embeddings": False,
    },
    "gpt2": {"names": _GPT2, "vocab_size": 50257, "n_inner": None, "tie_word_embeddings": True},
    "bert": {
        "names": _STANDARD,
        "vocab_size": 30522,
        "intermediate_size": 3072,
        "type_vocab_size": 2,
        "tie_word_embeddings": True,
    },  # fmt: skip
}
DECODER_TYPES = ("llama", "mistral", "qwen2", "gpt2")
ENCODER_TYPES = ("bert",)

# Tensor parallelism (parallel.strategy tp / dp_tp) on a Hugging Face model: the split is the reference GPT's
# (models/shapes.py TENSOR_PARALLEL_PLAN, what the plan counts), and this maps its module paths onto the
# type's own. Llama, Mistral and Qwen2 name their block modules alike (transformers' own base_model_tp_plan
# of these types is this same split).
_SWIGLU_MODULES = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}
# BERT (post-norm, a GELU MLP): the GPT's own split, its Linears named per sub-module of a BertLayer.
_BERT_MODULES = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.o": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
HF_TP_MODULES: dict[str, dict[str, str]] = {"llama": _SWIGLU_MODULES, "mistral": _SWIGLU_MODULES,
                                            "qwen2": _SWIGLU_MODULES, "bert": _BERT_MODULES}  # fmt: skip
# The types tensor parallelism refuses, and why.
HF_TP_REFUSED = {
    "gpt2": "GPT-2's blocks are Conv1D layers (weights stored (in, out), which DTensor's Colwise/Rowwise styles "
    "do not take) and q, k, v fused into one c_attn matrix (a column split would hand a rank queries and keys "
    "of different heads); use zero3 to split its memory",
}


def hf_source(arch: str) -> tuple[str, str]:
    """("type", model_type) | ("folder", path) | ("hub", id) | ("unknown", text) for ``hf:<...>``."""
    name = arch[3:]
    if name in HF_TYPES:
        return "type", name
    if os.path.isdir(name):
        return "folder", name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/")):
        return "hub", name
    return "unknown", name


def _folder_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def model_type_of(arch: str) -> str | None:
    kind, name = hf_source(arch)
    if kind == "type":
        return name
    if kind == "folder" and os.path.isfile(os.path.join(name, "config.json")):
        return _folder_config(name).get("model_type")
    return None


def hf_task_kinds(model_type: str | None) -> tuple[str, ...]:
    """The task.kind values a model type trains: decoders lm and classify, encoders mlm and classify."""
    if model_type in ENCODER_TYPES:
        return ("mlm", "classify")
    return ("lm", "classify")


def hf_vocab(cfg: RunConfig) -> int:
    """The vocabulary the model is built with: the tokenizer's for local files (workbench.data.files), else
    hf_config.vocab_size, else data.vocab_size."""
    from workbench.data.files import tokenizer_vocab

    if cfg.data.source == "files":
        v = tokenizer_vocab(cfg)
        if v is not None:
            return v
    extra = cfg.model.hf_config or {}
    return int(extra.get("vocab_size", cfg.data.vocab_size))


def hf_config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The fields handed to ``AutoConfig.for_model(model_type, **fields)`` (a folder: the overrides of its
    config.json): model.* under the type's own names, the vocabulary, then model.hf_config."""
    m = cfg.model
    kind, name = hf_source(m.arch)
    model_type = model_type_of(m.arch)
    names = HF_TYPES.get(model_type or "", {}).get("names", _STANDARD)
    out: dict[str, Any] = {}
    if kind == "type":
        out = dict(zip(names, (m.n_layer, m.n_head, m.d_model, m.seq_len), strict=True))
        out["vocab_size"] = hf_vocab(cfg)
        dropout = "resid_pdrop" if model_type == "gpt2" else "hidden_dropout_prob"
        if model_type in ("gpt2", "bert"):
            out[dropout] = m.dropout
            out["attn_pdrop" if model_type == "gpt2" else "attention_probs_dropout_prob"] = m.dropout
            out["embd_pdrop" if model_type == "gpt2" else "hidden_dropout_prob"] = m.dropout
        else:
            out["attention_dropout"] = m.dropout
    out.update(m.hf_config or {})
    if cfg.task.kind == "classify":
        out["num_labels"] = cfg.task.num_labels
    return out


def _fields(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """(model_type, every field that matters to the count): the type's defaults, a folder's config.json,
    then the workbench's fields."""
    kind, name = hf_source(cfg.model.arch)
    model_type = model_type_of(cfg.model.arch) or "llama"
    f = {k: v for k, v in HF_TYPES.get(model_type, HF_TYPES["llama"]).items() if k != "names"}
    if kind == "folder":
        f.update(_folder_config(name))
    f.update(hf_config_dict(cfg))
    names = HF_TYPES.get(model_type, HF_TYPES["llama"])["names"]
    for std, own in zip(_STANDARD, names, strict=True):  # one spelling below: the standard names
        if own in f:
            f[std] = f[own]
    return model_type, f


def hf_tp_plan(model_type: str) -> dict[str, str]:
    """The type's module path inside one block -> "colwise" | "rowwise" (what ``parallelize_module`` takes)."""
    names = HF_TP_MODULES[model_type]
    ffn = "gelu_mlp" if model_type in ENCODER_TYPES else "swiglu"
    return {names[k]: style for k, style in TENSOR_PARALLEL_PLAN[ffn].items()}


def hf_tp_fields(cfg: RunConfig) -> dict[str, int]:
    """The config fields tensor parallelism divides, under the type's own names, as the model is built:
    query heads, key/value heads and the MLP's hidden units (a folder's config.json included)."""
    model_type, f = _fields(cfg)
    heads = f["num_attention_heads"]
    out = {"num_attention_heads": heads}
    if model_type not in ENCODER_TYPES:  # grouped-query attention
        out["num_key_value_heads"] = f.get("num_key_value_heads") or heads
    return out | {"intermediate_size": f.get("intermediate_size") or 0}


def hf_shape(cfg: RunConfig) -> TransformerShape:
    """The TransformerShape of the model ``workbench.models.hf`` builds (``_shape``), with the parameters one
    token multiplies through, which the FLOPs per token count."""
    model_type = model_type_of(cfg.model.arch) or "llama"
    s = _shape(cfg)
    return dataclasses.replace(s, flops_params=matmul_params(s, model_type, cfg.task.kind))


def matmul_params(s: TransformerShape, model_type: str, task: str) -> int:
    """The weights one token goes through in a matmul (what ``FlopCounterMode`` counts, 2 FLOPs each forward):
    every block's Linear weights (not biases, norms or embedding tables: no matmul) and the task head's.
    The LM heads (the causal one, BERT's masked-LM decoder with its dense transform) and a decoder's classifier
    (transformers scores every position, then picks the last) run on every token; BERT's pooler and classifier
    on the first token of each sequence only, so per token they count 1/seq_len."""
    d, V = s.d_model, s.vocab_size
    block = sum(numel(shape) for _, shape in s.block_tensors() if len(shape) == 2)
    head = {"lm": V * d, "mlm": d * d + V * d}.get(task, 0)
    if task == "classify":
        nl = next(shape[0] for n, shape in s.extra if n == "score.weight")
        head = round((d * d + nl * d) / s.seq_len) if model_type == "bert" else nl * d
    return s.n_layer * block + head


def _shape(cfg: RunConfig) -> TransformerShape:
    """The TransformerShape of the model ``workbench.models.hf`` builds for this config, task head included
    (causal LM head, BERT's masked-LM head, or a classifier and BERT's pooler): num_params is what
    transformers' ``num_parameters()`` reports."""
    model_type, f = _fields(cfg)
    L, H, d, P = (f[k] for k in _STANDARD)
    V, task = int(f["vocab_size"]), cfg.task.kind
    tied = bool(f.get("tie_word_embeddings", True))
    nl = cfg.task.num_labels
    common: dict[str, Any] = {"n_layer": L, "d_model": d, "n_head": H, "vocab_size": V, "seq_len": cfg.model.seq_len}
    if model_type in ("gpt2", "bert"):
        ff = f.get("n_inner") if model_type == "gpt2" else f.get("intermediate_size")
        extra: list[tuple[str, tuple[int, ...]]] = []
        if model_type == "bert":
            extra = [("token_type_emb.weight", (int(f.get("type_vocab_size", 2)), d)), ("emb_ln.weight", (d,)),
                     ("emb_ln.bias", (d,))]  # fmt: skip
            if task == "classify":
                extra += [("pooler.weight", (d, d)), ("pooler.bias", (d,)), ("score.weight", (nl, d)),
                          ("score.bias", (nl,))]  # fmt: skip
            else:  # BertForMaskedLM: transform (dense, LayerNorm), the decoder tied to the embedding, its bias
                extra += [("mlm.dense.weight", (d, d)), ("mlm.dense.bias", (d,)), ("mlm.ln.weight", (d,)),
                          ("mlm.ln.bias", (d,)), ("mlm.decoder.bias", (V,))]  # fmt: skip
        elif task == "classify":
            extra = [("score.weight", (nl, d))]
        gpt2 = model_type == "gpt2"
        return TransformerShape(**common, d_ff=ff, max_positions=P, kind="decoder" if gpt2 else "encoder",
                                final_norm=gpt2, tied_head=True if task == "classify" else tied, conv1d=gpt2,
                                fused_qkv=gpt2, extra=tuple(extra), buffer_bytes=0 if gpt2 else _BERT_IDS * P,
                                task_head_params=_head(extra) if task == "classify" else None)  # fmt: skip
    # llama, mistral, qwen2: RMSNorm, SwiGLU, rotary positions, grouped-query attention
    bias = bool(f.get("attention_bias", False))
    extra = [("score.weight", (nl, d))] if task == "classify" else []
    return TransformerShape(
        **common,
        n_kv_head=f.get("num_key_value_heads") or H,
        head_dim=f.get("head_dim") or d // H,
        d_ff=f["intermediate_size"],
        ffn="swiglu",
        norm="rmsnorm",
        bias=bool(f.get("mlp_bias", False)),
        qkv_bias=True if model_type == "qwen2" else bias,
        o_bias=bias,
        tied_head=True if task == "classify" else tied,
        positional="rope",
        buffer_bytes=_rope_buffer_bytes(f.get("head_dim") or d // H),
        extra=tuple(extra),
        task_head_params=_head(extra) if task == "classify" else None,
    )


# BERT's embeddings keep position_ids and token_type_ids buffers: int64, one per position.
_BERT_IDS = 2 * 8


def _rope_buffer_bytes(head_dim: int) -> int:
    """The rotary embedding's inv_freq and original_inv_freq: fp32, one frequency per pair of dimensions."""
    return 2 * 4 * -(-head_dim // 2)


def _head(extra: list[tuple[str, tuple[int, ...]]]) -> int:
    return sum(numel(s) for n, s in extra if n.startswith(("score.", "pooler.")))
