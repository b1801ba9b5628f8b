"""The reference model: a GPT decoder written to be read, after nanoGPT's model.py.

One file, a dataclass config, pre-LayerNorm blocks, causal self-attention through PyTorch's fused
scaled_dot_product_attention, weight tying between the token embedding and the output head. How the model
is split across devices lives in ``workbench/parallel/``, not here (torchtitan's split): what the GPT offers the
layouts is its family (``models/family.py``: blocks, the tensor-parallel plan, pipeline stages), and the two
variants of it that the family hands out live at the end of this file: GPTStage (one pipeline stage's part) and
GPTClassifier (the GPT with a score head, for task.kind classify).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from workbench.models.family import GPT_FAMILY
from workbench.models.shapes import TransformerShape, flops_per_token


@dataclass
class GPTConfig:
    vocab_size: int = 64
    seq_len: int = 64  # the context length: attention sees at most this many tokens
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must divide by n_head"
        self.head_dim = cfg.d_model // cfg.n_head
        # q, k, v as three Linears (not one fused c_attn) so tensor parallelism can shard each by heads.
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.v = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.o = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # view(B, T, -1, head_dim), not n_head: under tensor parallelism each rank holds only its local heads.
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.o(y))

    def decode(self, x: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """Inference with a KV cache: x (B, T, d) are the next T positions after the ``cache[0].shape[2]`` already
        seen; cache holds [keys, values] (B, H, L, head_dim), or is empty, and grows by these T in place. The
        same arithmetic as forward on the whole sequence (training never calls this)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if cache:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        cache[:] = [k, v]
        past = k.shape[2] - T
        # query i (at position past + i) sees keys 0 .. past + i; with nothing cached that is is_causal's mask
        mask = None if T == 1 else torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.fc2 = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def decode(self, x: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn.decode(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    family = GPT_FAMILY  # what it offers the layouts and fine-tuning (models/family.py)

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying: one matrix embeds and un-embeds tokens
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections into the residual stream, so its variance stays ~1 with depth.
        for name, p in self.named_parameters():
            if name.endswith("o.weight") or name.endswith("fc2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets: (B, T) token ids. Returns (logits (B, T, vocab), mean cross-entropy or None)."""
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def decode(self, idx: torch.Tensor, cache: list[list[torch.Tensor]]) -> torch.Tensor:
        """Incremental decoding (nanoGPT's generate, with a KV cache): idx (B, T) are the tokens after the ones the
        cache has seen (cache: one [keys, values] list per block, empty lists at first; filled in place). Returns
        the logits (B, T, vocab) of these positions, as forward(whole sequence) gives them. The sequence may not
        outgrow the position table (cfg.seq_len)."""
        past = cache[0][0].shape[2] if cache and cache[0] else 0
        T = idx.shape[1]
        if past + T > self.cfg.seq_len:
            raise ValueError(f"{past + T} tokens; the model's context (model.seq_len) is {self.cfg.seq_len}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block, kv in zip(self.blocks, cache, strict=True):
            x = block.decode(x, kv)
        return self.head(self.ln_f(x))

    def new_cache(self) -> list[list[torch.Tensor]]:
        """An empty KV cache for decode: one [keys, values] list per block."""
        return [[] for _ in self.blocks]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting the tied embedding/head matrix once. non_embedding drops the position table
        (nanoGPT's convention for the FLOPs count; the token table counts, as it is also the head)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.pos_emb.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token, nanoGPT/PaLM: 6N for the matmuls with the weights (2 forward, 4
        backward) + 12·L·H·Q·T for attention's scores and weighted values (H heads of size Q, context T)."""
        c = self.cfg
        return gpt_flops_per_token(self.num_params(non_embedding=True), c.n_layer, c.n_head, c.d_model, c.seq_len)


def gpt_flops_per_token(n_params: int, n_layer: int, n_head: int, d_model: int, seq_len: int) -> int:
    """6N + 12·L·H·Q·T for N non-embedding parameters (the formula lives in models/shapes.py)."""
    return flops_per_token(n_params, n_layer, n_head, d_model // n_head, seq_len)


def gpt_num_params(vocab_size: int, seq_len: int, n_layer: int, d_model: int, bias: bool = True) -> int:
    """The closed form of GPT.num_params() (n_head does not change the count), without building a model."""
    return TransformerShape(n_layer, d_model, 1, vocab_size, seq_len, bias=bias).num_params


class GPTStage(nn.Module):
    """The part of a GPT one pipeline stage runs. Parameter names are the GPT's own ("blocks.3.attn.q..."), so
    checkpoints and state dicts of the stages put together read like the whole model's."""

    family = GPT_FAMILY

    def __init__(self, gpt: nn.Module, index: int, num_stages: int, layers: range) -> None:
        super().__init__()
        self.is_first, self.is_last = index == 0, index == num_stages - 1
        if self.is_first:
            self.tok_emb, self.pos_emb, self.drop = gpt.tok_emb, gpt.pos_emb, gpt.drop
        self.blocks = nn.ModuleDict({str(i): gpt.blocks[i] for i in layers})
        if self.is_last:
            self.ln_f = gpt.ln_f
            self.head = nn.Linear(gpt.cfg.d_model, gpt.cfg.vocab_size, bias=False)
            self.head.weight = nn.Parameter(gpt.tok_emb.weight.detach().clone())  # the tied copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_first:
            pos = torch.arange(x.shape[1], device=x.device)
            x = self.drop(self.tok_emb(x) + self.pos_emb(pos))
        for block in self.blocks.values():
            x = block(x)
        if self.is_last:
            return self.head(self.ln_f(x))
        return x


class GPTClassifier(GPT):
    """The reference GPT with a classification head on the mean of its final hidden states.

    A subclass (not a wrapper) so a checkpoint of the language model loads into it name for name, and code
    that walks ``model.blocks`` finds them. The LM head is dropped: the score head replaces it.
    """

    def __init__(self, cfg: GPTConfig, num_labels: int):
        super().__init__(cfg)
        del self.head  # was tied to tok_emb; the embedding itself stays
        self.score = nn.Linear(cfg.d_model, num_labels)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.score.bias)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) final hidden states: GPT.forward up to the LM head."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(
        self, idx: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) tokens, labels (B,). Returns (logits (B, num_labels), mean cross-entropy or None).

        Mean pooling, not the last token: the label is a property of the whole sequence, and the mean keeps
        every position's evidence one step from the head."""
        logits = self.score(self.features(idx).mean(dim=1))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss

    def flops_per_token(self) -> int:
        """As GPT's, without the token table: here it only embeds (a lookup), it no longer un-embeds."""
        c = self.cfg
        n = self.num_params(non_embedding=True) - self.tok_emb.weight.numel()
        return gpt_flops_per_token(n, c.n_layer, c.n_head, c.d_model, c.seq_len)
