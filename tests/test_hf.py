"""Hugging Face models and local files: exact plan counts, refusals before launch, packing, checkpointing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workbench.config import RunConfig
from workbench.data.files import pack, split_rows
from workbench.models.shapes import shape_of

LLAMA = {"model.arch": "hf:llama", "model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.seq_len": 32,
         "model.hf_config": {"num_key_value_heads": 2, "intermediate_size": 172}}  # fmt: skip


def reference_count(model_type: str, task: str, fields: dict) -> int:
    """What transformers itself builds, on the meta device (no memory, no weights)."""
    import torch
    import transformers

    auto = {"lm": transformers.AutoModelForCausalLM, "mlm": transformers.AutoModelForMaskedLM,
            "classify": transformers.AutoModelForSequenceClassification}[task]  # fmt: skip
    with torch.device("meta"):
        return auto.from_config(transformers.AutoConfig.for_model(model_type, **fields)).num_parameters()


@pytest.mark.parametrize(
    "model_type,task,extra",
    [
        ("llama", "lm", {"num_key_value_heads": 2, "intermediate_size": 172}),
        ("llama", "classify", {"num_key_value_heads": 2, "attention_bias": True, "mlp_bias": True}),
        ("mistral", "lm", {}),
        ("qwen2", "lm", {"tie_word_embeddings": True}),
        ("qwen2", "classify", {}),
        ("gpt2", "lm", {}),
        ("gpt2", "classify", {"n_inner": 100}),
        ("bert", "mlm", {"intermediate_size": 96}),
        ("bert", "classify", {"type_vocab_size": 3}),
    ],
)
def test_plan_counts_what_transformers_builds(model_type, task, extra):
    cfg = RunConfig().override({**LLAMA, "model.arch": f"hf:{model_type}", "model.hf_config": extra,
                                "task.kind": task, "task.num_labels": 3, "data.vocab_size": 300})  # fmt: skip
    from workbench.models.hf_config import hf_config_dict

    fields = hf_config_dict(cfg)
    assert shape_of(cfg).num_params == reference_count(model_type, task, fields)


def test_published_counts_and_plan_is_torch_free():
    code = (
        "import sys, workbench as wb\n"
        "c = wb.RunConfig().override({'model.arch': 'hf:llama', 'model.n_layer': 32, 'model.n_head': 32,"
        " 'model.d_model': 4096, 'model.seq_len': 8192, 'model.hf_config': {'num_key_value_heads': 8,"
        " 'intermediate_size': 14336, 'vocab_size': 128256}, 'parallel.num_processes': 8,"
        " 'parallel.strategy': 'zero3', 'precision': 'bf16', 'micro_batch_size': 1})\n"
        "p = wb.plan(c, device='h100')\n"
        "g = wb.RunConfig().override({'model.arch': 'hf:gpt2', 'model.n_layer': 12, 'model.n_head': 12,"
        " 'model.d_model': 768, 'model.seq_len': 1024, 'data.vocab_size': 50257})\n"
        "print(p.num_params, wb.plan(g, device='h100').num_params, p.fits, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["8030261248", "124439808", "True", "False"]


def test_hub_id_and_layouts_refused_before_launch(tmp_path):
    problems = RunConfig().override({"model.arch": "hf:meta-llama/Llama-3.2-1B"}).validate()
    assert [p.key for p in problems] == ["model.arch"]
    assert "downloads nothing" in problems[0].message and "local folder" in problems[0].message
    assert "hf:llama" in problems[0].message
    for strategy in ("pp",):  # tp and dp_tp: tests/test_hf_parallel.py
        keys = [p.key for p in RunConfig().override({**LLAMA, "parallel.strategy": strategy}).validate()]
        assert "parallel.strategy" in keys
    bad = RunConfig().override({**LLAMA, "task.kind": "mlm"}).validate()
    assert [p.key for p in bad] == ["task.kind"]
    nofile = RunConfig().override({**LLAMA, "data.source": "files", "data.path": str(tmp_path / "*.txt")}).validate()
    assert [p.key for p in nofile] == ["data.path"]


def test_packing_loses_and_repeats_no_token():
    rng = np.random.default_rng(0)
    docs = [list(rng.integers(4, 300, size=n)) for n in rng.integers(0, 90, size=57)]
    blocks, dropped = pack(docs, 16, eot=0)
    joined = [t for d in docs for t in [*d, 0]]
    assert blocks.size + dropped == len(joined) and 0 <= dropped < 16
    assert blocks.reshape(-1).tolist() == joined[: blocks.size]
    assert split_rows(100, "lm") == {"train": (0, 90), "eval": (90, 100)}
    assert split_rows(100, "classify") == {"train": (0, 80), "eval": (80, 90), "test": (90, 100)}


# Real runs (a tiny Llama under ddp and zero3 on standard-library text, BERT masked-language pretraining then a
# classifier) are asserted in notebooks/14_hugging_face.ipynb, which CI runs: loss parity, planned = measured
# parameter bytes per rank, the tokenizer saved and reused, the held-out split recorded, accuracy above chance.


def test_activation_checkpointing_uses_transformers_switch_same_gradients():
    import torch

    from workbench.models import build_model
    from workbench.parallel.checkpointing import apply_activation_checkpointing

    cfg = RunConfig().override({**LLAMA, "data.vocab_size": 300})
    torch.manual_seed(0)
    plain = build_model(cfg)
    torch.manual_seed(0)
    ckpt = build_model(cfg)
    assert apply_activation_checkpointing(ckpt) == 2 and ckpt.hf.is_activation_checkpointing
    x = torch.randint(0, 300, (2, 32))
    for m in (plain, ckpt):
        m(x, x)[1].backward()
    for p, q in zip(plain.parameters(), ckpt.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
