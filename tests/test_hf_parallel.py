"""Hugging Face models across layouts: tensor parallelism on the decoders (loss parity with ddp, planned ==
measured bytes), its refusals before launch, and the plan's per-rank bytes against the models transformers
builds, sharded the way FSDP2 and DTensor shard them."""

from __future__ import annotations

import re

import pytest

import workbench as wb
from workbench.config import RunConfig
from workbench.data.files import stdlib_corpus
from workbench.models.shapes import shape_of
from workbench.plan.memory import chunk

TINY = {"model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.seq_len": 32, "model.dropout": 0.0,
        "data.vocab_size": 301, "parallel.num_processes": 2}  # fmt: skip
LLAMA = {**TINY, "model.arch": "hf:llama", "model.hf_config": {"num_key_value_heads": 2, "intermediate_size": 172}}
ODD = {**TINY, "model.n_head": 5, "model.d_model": 45}  # odd sizes: dim-0 chunks of unequal length


def build(cfg: RunConfig):
    import torch

    from workbench.models.hf import build_hf_model

    torch.manual_seed(0)
    return build_hf_model(cfg)


def plan_bytes(cfg: RunConfig) -> list[tuple[int, int, int]]:
    return [(r.param_bytes, r.grad_bytes, r.optimizer_bytes) for r in wb.plan(cfg, device="cpu").ranks]


def buffers(model) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def adamw(elements: int, tensors: int) -> int:
    return 8 * elements + 4 * tensors  # exp_avg + exp_avg_sq, and a 0-dim 'step' per parameter tensor


# ---- before launch ----


def test_tp_refusals_name_the_field_and_the_fix():
    assert RunConfig().override({**LLAMA, "parallel.strategy": "tp", "parallel.tp_size": 2}).validate() == []
    assert RunConfig().override({**LLAMA, "parallel.strategy": "dp_tp", "parallel.tp_size": 2}).validate() == []
    odd = RunConfig().override({**LLAMA, "model.hf_config": {"num_key_value_heads": 1, "intermediate_size": 171},
                                "parallel.strategy": "tp", "parallel.tp_size": 2}).validate()  # fmt: skip
    assert [p.key for p in odd] == ["parallel.tp_size", "parallel.tp_size"]
    assert "model.hf_config.num_key_value_heads" in odd[0].message
    assert "model.hf_config.intermediate_size" in odd[1].message
    gpt2 = RunConfig().override({**TINY, "model.arch": "hf:gpt2", "parallel.strategy": "tp",
                                 "parallel.tp_size": 2}).validate()  # fmt: skip
    assert [p.key for p in gpt2] == ["parallel.strategy"] and "Conv1D" in gpt2[0].message and "zero3" in gpt2[0].message
    bert = RunConfig().override({**TINY, "model.arch": "hf:bert", "task.kind": "mlm", "model.hf_config":
                                 {"intermediate_size": 77}, "parallel.strategy": "tp", "parallel.tp_size": 2})  # fmt: skip
    assert [p.message.split(" of ")[0] for p in bert.validate()] == ["intermediate_size 77"]
    pp = RunConfig().override({**LLAMA, "parallel.strategy": "pp", "parallel.pp_size": 2}).validate()
    assert [p.key for p in pp] == ["parallel.strategy"] and "stage boundaries" in pp[0].message


# ---- the plan against the built model, sharded analytically ----


@pytest.mark.parametrize(
    "arch,task,extra",
    [
        ("hf:gpt2", "lm", {}),  # Conv1D (in, out) weights, fused qkv, tied head, biases
        ("hf:gpt2", "classify", {"pad_token_id": 1}),
        ("hf:bert", "mlm", {"intermediate_size": 77}),
        ("hf:bert", "classify", {"type_vocab_size": 3}),
    ],
)
def test_zero3_plan_is_fsdp2s_dim0_chunks(arch, task, extra):
    """FSDP2's rule: every parameter (a tied one once) chunked along dim 0 as torch.chunk cuts it, rank r
    holding chunk r (empty past the end). Checked against real fully_shard on 2 processes once:
    benchmarks/hf_shards.py prints measured == planned for these four models."""
    cfg = RunConfig().override({**ODD, "model.arch": arch, "task.kind": task, "task.num_labels": 3,
                                "model.hf_config": extra, "parallel.strategy": "zero3"})  # fmt: skip
    model = build(cfg)
    params = list(dict.fromkeys(model.parameters()))
    assert shape_of(cfg).buffer_bytes == buffers(model)  # BERT's position and token-type ids; GPT-2 none
    for rank, (p, g, o) in enumerate(plan_bytes(cfg)):
        local = sum(chunk(t.shape[0], 2, rank) * t[0].numel() for t in params)
        assert (p, g, o) == (4 * local, 4 * local, adamw(local, len(params)))


@pytest.mark.parametrize("arch,task,extra", [("hf:llama", "lm", {"num_key_value_heads": 2, "intermediate_size": 172}),
                                             ("hf:qwen2", "lm", {"num_key_value_heads": 2, "intermediate_size": 96}),
                                             ("hf:mistral", "classify", {"num_key_value_heads": 4, "intermediate_size": 96}),
                                             ("hf:bert", "mlm", {"intermediate_size": 96}),
                                             ("hf:bert", "classify", {})])  # fmt: skip
def test_tp_plan_is_the_colwise_rowwise_split(arch, task, extra):
    """Colwise shards a Linear's weight and bias along dim 0, Rowwise its weight along dim 1 (its bias and
    everything outside the plan replicated): the model's own module names, biases (Qwen2's q/k/v, BERT's)
    included."""
    cfg = RunConfig().override({**TINY, "model.arch": arch, "model.hf_config": extra, "task.kind": task,
                                "task.num_labels": 3, "parallel.strategy": "tp", "parallel.tp_size": 2})  # fmt: skip
    model = build(cfg)
    assert shape_of(cfg).buffer_bytes == buffers(model)  # the rotary tables; BERT's ids
    styles = model.tp_plan_names
    names = dict(model.named_parameters())
    for rank, (p, g, o) in enumerate(plan_bytes(cfg)):
        local = 0
        for name, t in names.items():
            inside = re.match(r".*\.layers?\.\d+\.(.*)\.(weight|bias)$", name)  # the path inside a block
            style = styles.get(inside.group(1)) if inside else None
            dim = 0 if style == "colwise" else 1 if style == "rowwise" and name.endswith("weight") else None
            local += t.numel() if dim is None else t.numel() // t.shape[dim] * chunk(t.shape[dim], 2, rank)
        assert (p, g, o) == (4 * local, 4 * local, adamw(local, len(names)))


# ---- real runs: a tiny Llama under ddp and tp, 20 steps ----


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hftp")
    path = stdlib_corpus(str(folder / "corpus.txt"), ("json",))
    base = RunConfig().override({**LLAMA, "data.source": "files", "data.path": path, "data.tokenizer": "bpe:320",
                                 "max_steps": 20, "log_every": 1, "eval_every": 0, "micro_batch_size": 4,
                                 "grad_accum_steps": 1, "runs_dir": str(folder / "runs")})  # fmt: skip
    runs = {}
    for strategy, tp in (("ddp", 1), ("tp", 2)):
        cfg = base.override({"name": f"llama-{strategy}", "parallel.strategy": strategy, "parallel.tp_size": tp,
                             "checkpoint_every": 10})  # fmt: skip
        assert cfg.validate() == []
        runs[strategy] = finished(wb.launch(cfg))
    return runs


def finished(run: wb.Run) -> wb.Run:
    run.wait(timeout=600)
    assert run.status == "finished", run.error
    return run


def test_llama_tp_matches_ddp_and_the_plan(tp_runs):
    losses = {s: [e["loss"] for e in r.metrics()] for s, r in tp_runs.items()}
    assert len(losses["tp"]) == 20
    assert max(abs(a - b) for a, b in zip(losses["ddp"], losses["tp"], strict=True)) < 1e-4
    for r in tp_runs.values():  # the rotary tables' buffers included (and DDP's buckets)
        first = r.metrics()[0]
        for measured, planned in zip(first["measured"], first["planned"]["ranks"], strict=True):
            for key in ("param_bytes", "grad_bytes", "optimizer_bytes", "buffer_bytes"):
                assert measured[key] == planned[key], key
        assert first["planned"]["approximate"] == ["activation_bytes"]
        # bytes moved: DDP's all-reduce and its broadcast of the buffers; tp's all-reduces (SwiGLU: 5 Colwise)
        assert r.metrics()[-1]["comm_bytes"] == first["planned"]["comm_bytes"]
    ddp_params, tp_params = (r.metrics()[0]["measured"][0]["param_bytes"] for r in tp_runs.values())
    assert tp_params < ddp_params  # the blocks' matrices really are split


def test_mlm_loss_over_a_pooled_batch_is_ddps_mean_of_means():
    """tp stacks its ranks' micro-batches; mlm's masked tokens differ in number per micro-batch, so the loss is
    the mean of each one's own loss, as ddp averages its ranks' (benchmarks/hf_tp.py on 2 processes: BERT mlm
    tp vs ddp, 20 steps, max |diff| 4.8e-07; one mean over the stack differed by 9e-3)."""
    import torch

    cfg = RunConfig().override({**TINY, "model.arch": "hf:bert", "task.kind": "mlm", "model.hf_config": {}})
    model = build(cfg).eval()
    x = torch.randint(4, 300, (4, 32))
    y = torch.full_like(x, -100)
    y[:2, :3], y[2:, :20] = x[:2, :3], x[2:, :20]  # 6 targets in the first micro-batch, 40 in the second
    each = [model(x[i : i + 2], y[i : i + 2])[1] for i in (0, 2)]
    pooled = model(x, y)[1]
    model.loss_groups = 2
    grouped = model(x, y)[1]
    assert torch.allclose(grouped, (each[0] + each[1]) / 2, atol=1e-6)
    assert not torch.allclose(pooled, grouped, atol=1e-3)


def test_llama_tp_resumes_from_its_sharded_checkpoint(tp_runs):
    """A copy of the tp run without its last checkpoint resumes from step 10 (each rank's DTensor shards read
    back) and trains steps 11-20 to the same losses."""
    import os
    import shutil

    full = tp_runs["tp"]
    again = full.config.override({"name": "llama-tp-resumed"})
    shutil.copytree(full.path, again.run_dir)
    shutil.rmtree(os.path.join(again.run_dir, "checkpoints", "step_20"))
    resumed = finished(wb.launch(again, resume=True))
    a = {m["step"]: m["loss"] for m in full.metrics()}
    b = {m["step"]: m["loss"] for m in resumed.metrics()}
    assert sorted(b) == list(range(1, 21))
    assert max(abs(a[s] - b[s]) for s in range(11, 21)) < 1e-6
