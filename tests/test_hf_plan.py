"""The plan's FLOPs per token for Hugging Face models against torch's own count of the built model.

``torch.utils.flop_counter.FlopCounterMode`` counts every matmul of a forward and backward pass. It counts the
default CPU attention kernel as 0 FLOPs, so attention runs as the MATH kernel here (plain matmuls it sees).
"""

from __future__ import annotations

import pytest

from workbench.config import RunConfig
from workbench.models.shapes import shape_of

TINY = {"model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.seq_len": 32, "data.vocab_size": 300,
        "task.num_labels": 3}  # fmt: skip
CASES = [
    ("llama", "lm", {"num_key_value_heads": 2, "intermediate_size": 172}),  # GQA, SwiGLU, untied head
    ("llama", "classify", {"num_key_value_heads": 2, "intermediate_size": 172, "pad_token_id": 1}),
    ("qwen2", "lm", {"num_key_value_heads": 2, "intermediate_size": 172}),  # q/k/v biases
    ("gpt2", "lm", {}),  # biases, LayerNorms, learned positions, tied head
    ("gpt2", "classify", {"pad_token_id": 1}),
    ("bert", "mlm", {"intermediate_size": 256}),  # the masked-LM head's dense transform and decoder
    ("bert", "classify", {"intermediate_size": 256}),  # pooler and classifier on the first token only
]


def measured_flops_per_token(cfg: RunConfig) -> float:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.models.hf import build_hf_model

    torch.manual_seed(0)
    model = build_hf_model(cfg)
    B, T = 2, cfg.model.seq_len
    x = torch.randint(4, cfg.data.vocab_size, (B, T))
    y = torch.randint(0, cfg.task.num_labels, (B,)) if cfg.task.kind == "classify" else x.clone()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, y)
        loss.backward()
    return counter.get_total_flops() / (B * T)


@pytest.mark.parametrize("model_type,task,extra", CASES, ids=[f"{m}-{t}" for m, t, _ in CASES])
def test_plan_flops_per_token_match_flop_counter(model_type, task, extra):
    cfg = RunConfig().override({**TINY, "model.arch": f"hf:{model_type}", "model.hf_config": extra, "task.kind": task})
    planned = shape_of(cfg).flops_per_token()
    measured = measured_flops_per_token(cfg)
    assert abs(planned - measured) <= 0.02 * measured, f"planned {planned:,} vs FlopCounterMode {measured:,.0f}"
