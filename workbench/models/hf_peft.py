"""PEFT methods on Hugging Face models, without torch: target names, their shapes, and trainable counts.

    peft: {method: lora, r: 8, target: [query, value]}     # module names of the model type (below)
    peft: {method: adalora, r: 8}                          # AdaLoRA: r is the initial rank, half of it the target
    peft: {method: prefix, num_virtual_tokens: 8}          # Prefix-Tuning: keys and values prepended per layer
    peft: {method: adapter, r: 16}                         # a rank-r bottleneck beside the feed-forward output

``peft.target`` left at its default ([attn, mlp], the reference GPT's groups) means peft's own default for the
model type (bert: query, value; llama, mistral, qwen2: q_proj, v_proj; gpt2: c_attn); ``attn`` and ``mlp`` name
the type's attention and feed-forward projections; or list the names themselves. Each name is a regular
expression over the module path, so BERT's feed-forward ``output.dense`` never catches ``attention.output.dense``.

The counts here are what peft's ``get_nb_trainable_parameters`` reports for the built model (a test holds them
equal), so the plan knows the gradient and optimizer bytes of a PEFT run without building it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workbench.config import RunConfig
    from workbench.models.shapes import TransformerShape

__all__ = [
    "HF_PEFT_METHODS",
    "hf_peft_refusal",
    "hf_peft_tensors",
    "hf_peft_trainable",
    "hf_target_names",
    "hf_target_regex",
    "hf_target_vocabulary",
]

HF_PEFT_METHODS = ("none", "frozen", "lora", "adalora", "prefix", "adapter")

# name -> (regex over the module path, the Linear's (in, out) from the shape); "q" etc. are shape attributes below
_LLAMA = {
    "q_proj": (r".*\.self_attn\.q_proj", ("d", "q")),
    "k_proj": (r".*\.self_attn\.k_proj", ("d", "kv")),
    "v_proj": (r".*\.self_attn\.v_proj", ("d", "kv")),
    "o_proj": (r".*\.self_attn\.o_proj", ("q", "d")),
    "gate_proj": (r".*\.mlp\.gate_proj", ("d", "ff")),
    "up_proj": (r".*\.mlp\.up_proj", ("d", "ff")),
    "down_proj": (r".*\.mlp\.down_proj", ("ff", "d")),
}
_TARGETS: dict[str, dict[str, tuple[str, tuple[str, str]]]] = {
    "bert": {
        "query": (r".*\.attention\.self\.query", ("d", "d")),
        "key": (r".*\.attention\.self\.key", ("d", "d")),
        "value": (r".*\.attention\.self\.value", ("d", "d")),
        "attention.output.dense": (r".*\.attention\.output\.dense", ("d", "d")),
        "intermediate.dense": (r".*\.intermediate\.dense", ("d", "ff")),
        "output.dense": (r".*\.layer\.\d+\.output\.dense", ("ff", "d")),
    },
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": {
        "c_attn": (r".*\.attn\.c_attn", ("d", "d3")),
        "attn.c_proj": (r".*\.attn\.c_proj", ("d", "d")),
        "mlp.c_fc": (r".*\.mlp\.c_fc", ("d", "ff")),
        "mlp.c_proj": (r".*\.mlp\.c_proj", ("ff", "d")),
    },
}
# peft's own default LoRA targets (peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
_DEFAULT = {"bert": ("query", "value"), "llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"),
            "qwen2": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}  # fmt: skip
_GROUPS = {
    "bert": {
        "attn": ("query", "key", "value", "attention.output.dense"),
        "mlp": ("intermediate.dense", "output.dense"),
    },
    "gpt2": {"attn": ("c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_proj")},
}
_GROUPS.update({t: {"attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
                for t in ("llama", "mistral", "qwen2")})  # fmt: skip
# method adapter: the bottleneck sits beside the feed-forward block's output projection
_FFN_OUT = {"bert": "output.dense", "llama": "down_proj", "mistral": "down_proj", "qwen2": "down_proj",
            "gpt2": "mlp.c_proj"}  # fmt: skip
GPT_DEFAULT_TARGET = ("attn", "mlp")  # the schema's default of peft.target


def hf_target_vocabulary(model_type: str) -> list[str]:
    """The names peft.target accepts for this model type: attn, mlp and the module names."""
    return ["attn", "mlp", *_TARGETS.get(model_type, {})]


def hf_target_names(cfg: RunConfig, model_type: str) -> list[str]:
    """The module names peft wraps for this config (adapter: the feed-forward output, whatever peft.target)."""
    if cfg.peft.method == "adapter":
        return [_FFN_OUT[model_type]]
    target = tuple(cfg.peft.target)
    if target == GPT_DEFAULT_TARGET:
        return list(_DEFAULT[model_type])
    groups = _GROUPS[model_type]
    return sorted({n for t in target for n in groups.get(t, (t,))})


def hf_target_regex(cfg: RunConfig, model_type: str) -> str:
    """peft's target_modules as one regular expression (peft full-matches a string against each module path)."""
    table = _TARGETS[model_type]
    return "(" + "|".join(table[n][0] for n in hf_target_names(cfg, model_type)) + ")"


def hf_peft_refusal(cfg: RunConfig, model_type: str) -> str | None:
    """Why this model type / task cannot take peft.method, or None."""
    m, task = cfg.peft.method, cfg.task.kind
    if m == "prefix" and task == "mlm":
        return ("Prefix-Tuning steers a pretrained model through prefixes; masked-language pretraining trains the "
                "model itself: use peft.method none for task.kind mlm")  # fmt: skip
    return None


def hf_peft_tensors(cfg: RunConfig, s: TransformerShape, model_type: str) -> int:
    """Trainable tensors (each with its optimizer state) of a PEFT run on a Hugging Face model."""
    m = cfg.peft.method
    head = sum(1 for n, _ in s.extra if n.startswith(("score.", "pooler."))) if s.task_head_params else 0
    if m == "frozen":
        return head
    if m == "prefix":
        return 1 + head
    per = 3 if m == "adalora" else 2  # A and B (and AdaLoRA's E) per wrapped module
    return s.n_layer * per * len(hf_target_names(cfg, model_type)) + head


def _dims(s: TransformerShape) -> dict[str, int]:
    hd = s.head_dim or s.d_model // s.n_head
    return {"d": s.d_model, "q": s.n_head * hd, "kv": (s.n_kv_head or s.n_head) * hd, "ff": s.d_ff or 4 * s.d_model,
            "d3": 3 * s.d_model}  # fmt: skip


def hf_peft_trainable(cfg: RunConfig, s: TransformerShape, model_type: str) -> int:
    """Trainable parameters of a PEFT run on a Hugging Face model, by formula (the classifier head included:
    peft trains a copy of it, and BERT's pooler, which masked-language pretraining never trained)."""
    m, r, L = cfg.peft.method, cfg.peft.r, s.n_layer
    head = s.task_head_params or 0
    if m == "frozen":
        return head
    if m == "prefix":
        # one (num_virtual_tokens, layers * 2 * kv width) table: a key and a value per layer and virtual token
        return cfg.peft.num_virtual_tokens * L * 2 * _dims(s)["kv"] + head
    dims, table = _dims(s), _TARGETS[model_type]
    per = 0
    for name in hf_target_names(cfg, model_type):
        i, o = (dims[k] for k in table[name][1])
        per += r * (i + o) + (r if m == "adalora" else 0)  # AdaLoRA: A, B and the singular values E (r)
    return L * per + head
