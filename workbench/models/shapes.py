"""A transformer described by its shapes alone: every tensor, the parameter count, FLOPs per token and what
tensor parallelism splits, without torch and without building a model.

One home for these facts: the reference GPT (``models/gpt.py``), the planner (``workbench/plan/``), the
tensor-parallel layout (``parallel/tensor.py``) and the config panel all read them from here.

    from workbench.models.shapes import TransformerShape, shape_of
    s = shape_of(cfg)                      # the reference GPT of a RunConfig
    s.num_params, s.flops_per_token()      # 6N + 12·L·H·Q·T
    s.block_tensors()                      # [(name, shape), ...] of one block, in parameters() order

The fields cover decoder and encoder transformers as their configs describe them (GPT-2, BERT, Llama,
Mistral, Qwen2): grouped-query attention (``n_kv_head``), a SwiGLU MLP, RMSNorm, biases on some Linears only,
an untied output head, rotary or learned positions. The defaults are the reference GPT's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.data import TEXT_VOCAB, vocab_size_for  # the data's facts, re-exported: their home is workbench.data
from workbench.factory import is_hf

if TYPE_CHECKING:
    from workbench.config import RunConfig

__all__ = [
    "TEXT_VOCAB",
    "TENSOR_PARALLEL_PLAN",
    "TransformerShape",
    "flops_per_token",
    "numel",
    "shape_of",
    "vocab_size_for",
]


FFN_KINDS = ("gelu_mlp", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
POSITIONAL_KINDS = ("learned", "rope")
MODEL_KINDS = ("decoder", "encoder")

# Megatron's split of a block, per MLP kind, as module path -> DTensor style: Colwise shards the output
# features (weight and bias Shard(0)): q/k/v by heads, the MLP's first Linear(s) by hidden units; Rowwise
# shards the input features (weight Shard(1), bias replicated, one all-reduce of the partial outputs).
TENSOR_PARALLEL_PLAN: dict[str, dict[str, str]] = {
    "gelu_mlp": {
        "attn.q": "colwise",
        "attn.k": "colwise",
        "attn.v": "colwise",
        "attn.o": "rowwise",
        "mlp.fc1": "colwise",
        "mlp.fc2": "rowwise",
    },
    "swiglu": {
        "attn.q": "colwise",
        "attn.k": "colwise",
        "attn.v": "colwise",
        "attn.o": "rowwise",
        "mlp.gate": "colwise",
        "mlp.up": "colwise",
        "mlp.down": "rowwise",
    },
}


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def flops_per_token(non_embedding_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token, nanoGPT/PaLM: 6N for the matmuls with the weights (2 forward, 4 backward)
    + 12·L·H·Q·T for attention's scores and weighted values (H query heads of size Q, context T). N leaves
    out the position table, which takes part in no matmul (the token table counts: it is also the head)."""
    return 6 * non_embedding_params + 12 * n_layer * n_head * head_dim * seq_len


@dataclass(frozen=True)
class TransformerShape:
    """A decoder or encoder transformer's shapes. Tensor names follow the reference GPT (``models/gpt.py``):
    ``ln1``, ``attn.q/k/v/o``, ``ln2``, ``mlp.fc1/fc2`` (SwiGLU: ``mlp.gate/up/down``), ``tok_emb``,
    ``pos_emb``, ``ln_f``, ``head``."""

    n_layer: int
    d_model: int
    n_head: int
    vocab_size: int
    seq_len: int  # the context length the model trains at (T in the FLOPs and activation formulas)
    n_kv_head: int | None = None  # None: n_head (multi-head attention); fewer: grouped-query attention
    head_dim: int | None = None  # None: d_model // n_head
    d_ff: int | None = None  # the MLP's hidden width; None: 4 * d_model
    ffn: str = "gelu_mlp"  # "gelu_mlp": fc2(gelu(fc1 x)); "swiglu": down(silu(gate x) * up x)
    norm: str = "layernorm"  # "layernorm" (weight + bias when norm_bias) or "rmsnorm" (weight only)
    bias: bool = True  # biases on the Linears of the blocks (GPT-2, BERT: yes; Llama, Mistral: no)
    qkv_bias: bool | None = None  # None: as `bias` (Qwen2: biases on q, k, v only)
    norm_bias: bool | None = None  # None: as `bias`; RMSNorm never has one
    tied_head: bool = True  # the output head shares the token embedding's matrix
    positional: str = "learned"  # "learned": a (max_positions, d_model) table; "rope": no parameters
    max_positions: int | None = None  # rows of the learned table; None: seq_len
    kind: str = "decoder"  # "decoder" (causal attention) or "encoder" (bidirectional)
    final_norm: bool = True  # a norm after the last block (ln_f)
    o_bias: bool | None = None  # None: as `bias` (Llama's attention_bias sets q, k, v and o together)
    # Tensors outside the blocks beyond the ones above (BERT's token-type table and embedding LayerNorm, a task
    # head: a classifier, BERT's pooler and masked-LM head), as (name, shape).
    extra: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # The parameters of a classification head already counted in `extra` (Hugging Face models); None: the
    # planner adds the reference classifier's own head on top (workbench/plan/finetuning.py).
    task_head_params: int | None = None
    # The parameters one token multiplies through (Hugging Face models: every block's Linear weights and the
    # task head's, biases, norms and embedding tables left out, a head applied to one token per sequence
    # divided by seq_len): what torch.utils.flop_counter counts. None: nanoGPT's convention, num_params
    # without the position table (the reference GPT's MFU).
    flops_params: int | None = None
    # GPT-2's storage: its blocks' Linears are transformers' Conv1D, weights stored (in, out) rather than
    # nn.Linear's (out, in), and q, k, v are one fused (d, 3d) matrix and one bias. The same parameters, but
    # what a dim-0 shard (FSDP2) cuts and how many tensors the optimizer keeps a step for differ.
    conv1d: bool = False
    fused_qkv: bool = False
    # Module buffers every rank holds whatever the layout (never sharded): a Hugging Face model's rotary
    # frequency tables, BERT's position and token-type ids. The reference GPT has none.
    buffer_bytes: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("ffn", self.ffn, FFN_KINDS),
            ("norm", self.norm, NORM_KINDS),
            ("positional", self.positional, POSITIONAL_KINDS),
            ("kind", self.kind, MODEL_KINDS),
        ):
            if value not in allowed:
                raise ValueError(f"TransformerShape.{name} must be one of {', '.join(allowed)}, got {value!r}")

    @classmethod
    def from_config(cls, cfg: RunConfig) -> TransformerShape:
        return shape_of(cfg)

    # ---- derived sizes ----

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def q_dim(self) -> int:  # head size (Q in the formulas)
        return self.head_dim or self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def has_norm_bias(self) -> bool:
        return self.norm == "layernorm" and (self.bias if self.norm_bias is None else self.norm_bias)

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    # ---- tensors ----

    def _norm(self, name: str) -> list[tuple[str, tuple[int, ...]]]:
        t = [(f"{name}.weight", (self.d_model,))]
        if self.has_norm_bias:
            t.append((f"{name}.bias", (self.d_model,)))
        return t

    def _linear(self, name: str, d_in: int, d_out: int, bias: bool) -> list[tuple[str, tuple[int, ...]]]:
        # nn.Linear stores (out_features, in_features); Conv1D (in, out)
        t = [(f"{name}.weight", (d_in, d_out) if self.conv1d else (d_out, d_in))]
        if bias:
            t.append((f"{name}.bias", (d_out,)))
        return t

    def block_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """One block's parameters in ``model.parameters()`` order (pre-norm: norm, attention, norm, MLP), as
        stored (``conv1d``, ``fused_qkv``: GPT-2's layout)."""
        d, q_out, kv_out, ff = self.d_model, self.n_head * self.q_dim, self.kv_heads * self.q_dim, self.ff_dim
        t = self._norm("ln1")
        if self.fused_qkv:
            t += self._linear("attn.qkv", d, q_out + 2 * kv_out, self.has_qkv_bias)
        else:
            t += self._linear("attn.q", d, q_out, self.has_qkv_bias)
            t += self._linear("attn.k", d, kv_out, self.has_qkv_bias)
            t += self._linear("attn.v", d, kv_out, self.has_qkv_bias)
        t += self._linear("attn.o", q_out, d, self.bias if self.o_bias is None else self.o_bias)
        t += self._norm("ln2")
        if self.ffn == "swiglu":
            t += self._linear("mlp.gate", d, ff, self.bias)
            t += self._linear("mlp.up", d, ff, self.bias)
            t += self._linear("mlp.down", ff, d, self.bias)
        else:
            t += self._linear("mlp.fc1", d, ff, self.bias)
            t += self._linear("mlp.fc2", ff, d, self.bias)
        return t

    def outer_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """The parameters outside the blocks: embeddings, the final norm, and an untied head."""
        t: list[tuple[str, tuple[int, ...]]] = [("tok_emb.weight", (self.vocab_size, self.d_model))]
        if self.positional == "learned":
            t.append(("pos_emb.weight", (self.max_positions or self.seq_len, self.d_model)))
        if self.final_norm:
            t += self._norm("ln_f")
        if not self.tied_head:
            t.append(("head.weight", (self.vocab_size, self.d_model)))
        return t + list(self.extra)

    @property
    def block_params(self) -> int:
        return sum(numel(s) for _, s in self.block_tensors())

    @property
    def outer_params(self) -> int:
        return sum(numel(s) for _, s in self.outer_tensors())

    @property
    def num_params(self) -> int:
        """All parameters, a tied embedding/head matrix counted once (as ``model.parameters()`` yields it)."""
        return self.outer_params + self.n_layer * self.block_params

    @property
    def position_params(self) -> int:
        return (self.max_positions or self.seq_len) * self.d_model if self.positional == "learned" else 0

    @property
    def non_embedding_params(self) -> int:
        """num_params without the position table (nanoGPT's convention for the FLOPs count)."""
        return self.num_params - self.position_params

    def flops_per_token(self) -> int:
        """Model FLOPs per trained token (6N + 12·L·H·Q·T): what MFU counts."""
        n = self.non_embedding_params if self.flops_params is None else self.flops_params
        return flops_per_token(n, self.n_layer, self.n_head, self.q_dim, self.seq_len)

    # ---- tensor parallelism ----

    def tp_plan(self) -> dict[str, str]:
        """Module path -> "colwise" | "rowwise" for one block (what ``parallelize_module`` receives)."""
        return dict(TENSOR_PARALLEL_PLAN[self.ffn])

    def tp_split_dim(self, tensor_name: str) -> int | None:
        """The dimension tensor parallelism shards a block tensor along: 0 for a Colwise Linear's weight and
        bias, 1 for a Rowwise Linear's weight; None for what stays replicated (norms, a Rowwise bias)."""
        module, _, kind = tensor_name.rpartition(".")
        style = TENSOR_PARALLEL_PLAN[self.ffn].get(module)
        if style == "colwise":
            return 0
        if style == "rowwise" and kind == "weight":
            return 1
        return None

    def summary(self) -> str:
        return f"L{self.n_layer} d{self.d_model} H{self.n_head} T{self.seq_len} V{self.vocab_size}"


def shape_of(cfg: RunConfig | Any) -> TransformerShape:
    """The model a RunConfig builds: a Hugging Face model's (``model.arch: hf:...``, models/hf_config.py), else
    the reference GPT (``models/gpt.py``: LayerNorm and Linear biases, a 4·d GELU MLP, learned positions, the
    head tied to the token embedding)."""
    m = cfg.model
    if is_hf(m.arch):
        from workbench.models.hf_config import hf_shape

        return hf_shape(cfg)
    return TransformerShape(
        n_layer=m.n_layer,
        d_model=m.d_model,
        n_head=m.n_head,
        vocab_size=vocab_size_for(cfg.data.source, cfg.data.vocab_size),
        seq_len=m.seq_len,
    )
