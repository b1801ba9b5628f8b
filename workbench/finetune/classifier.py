"""The classifier head: the reference GPT scoring a whole sequence, and the model a config describes."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from workbench.config import RunConfig
from workbench.models.gpt import GPT, GPTConfig, gpt_flops_per_token


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


def bare_model(cfg: RunConfig) -> nn.Module:
    """The model a config describes, freshly initialised (no init_from, no peft)."""
    from workbench.models import build_model, gpt_config

    if cfg.task.kind == "classify" and not cfg.model.arch.startswith("hf:"):  # hf: its own classifier class
        return GPTClassifier(gpt_config(cfg), cfg.task.num_labels)
    return build_model(cfg)
