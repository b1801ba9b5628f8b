"""PEFT methods on Hugging Face models: counts (peft = formula = plan), refusals, base weights frozen, AdaLoRA's
step hook, and real runs (a pretrained tiny BERT fine-tuned with LoRA and AdaLoRA, merged and exported)."""

from __future__ import annotations

import os

import pytest
import torch

import workbench as wb
from workbench import finetune as ft
from workbench.config import RunConfig
from workbench.models.hf_config import model_type_of
from workbench.models.hf_peft import hf_peft_trainable
from workbench.models.shapes import shape_of

TINY = {"model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.seq_len": 32, "data.vocab_size": 300,
        "task.num_labels": 3, "max_steps": 20}  # fmt: skip
BERT = RunConfig().override({**TINY, "model.arch": "hf:bert", "task.kind": "classify"})
METHODS = ("frozen", "lora", "adalora", "prefix", "adapter")


def built(cfg: RunConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return ft.build(cfg)


@pytest.mark.parametrize(
    "arch,task,extra",
    [
        ("hf:bert", "classify", {}),
        ("hf:llama", "lm", {"num_key_value_heads": 2, "intermediate_size": 96}),
        ("hf:gpt2", "lm", {}),
    ],  # fmt: skip
)
def test_trainable_counts_peft_formula_and_plan_agree(arch, task, extra):
    for method in METHODS:
        if method == "frozen" and task != "classify":
            continue
        cfg = BERT.override({"model.arch": arch, "task.kind": task, "model.hf_config": extra, "peft.method": method})
        assert cfg.validate() == []
        model = built(cfg)
        n = ft.trainable_params(model)
        assert n == hf_peft_trainable(cfg, shape_of(cfg), model_type_of(arch)), (arch, method)
        if method != "frozen":
            assert ft.peft_trainable(model) == n  # peft's own count
        rank = wb.plan(cfg.override({"parallel.num_processes": 1}), device="cpu").ranks[0]
        assert rank.grad_bytes == 4 * n, (arch, method)  # fp32 gradients of exactly the trainable parameters


def test_target_defaults_and_names():
    from workbench.models.hf_peft import hf_target_names

    assert hf_target_names(BERT.override({"peft.method": "lora"}), "bert") == ["query", "value"]
    assert hf_target_names(BERT.override({"peft.method": "lora"}), "llama") == ["q_proj", "v_proj"]
    mlp = BERT.override({"peft.method": "lora", "peft.target": ["mlp"]})
    assert hf_target_names(mlp, "bert") == ["intermediate.dense", "output.dense"]
    model = built(mlp)  # BERT's feed-forward output.dense, never attention.output.dense
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert len(wrapped) == 4 and not any("attention" in n for n in wrapped)


def test_refusals_name_the_key():
    gpt = RunConfig().override({"peft.method": "prefix", "task.kind": "classify"}).validate()
    assert [p.key for p in gpt] == ["peft.method"] and "Hugging Face" in gpt[0].message
    mlm = BERT.override({"task.kind": "mlm", "peft.method": "prefix"}).validate()
    assert [p.key for p in mlm] == ["peft.method"] and "mlm" in mlm[0].message
    zero3 = BERT.override({"peft.method": "lora", "parallel.strategy": "zero3"}).validate()
    assert [p.key for p in zero3] == ["peft.method"] and "ddp" in zero3[0].message
    bad = BERT.override({"peft.method": "lora", "peft.target": ["q_proj"]}).validate()
    assert [p.key for p in bad] == ["peft.target"] and "query" in bad[0].message
    short = BERT.override({"peft.method": "adalora", "max_steps": 2}).validate()
    assert [p.key for p in short] == ["peft.method"]
    assert [p.key for p in BERT.override({"peft.num_virtual_tokens": 0}).validate()] == ["peft.num_virtual_tokens"]


def test_each_method_learns_with_the_base_frozen():
    """A few Adam steps on one batch in this process: the loss falls, no base weight moves (AdaLoRA through
    its step hook, which reallocates the rank budget)."""
    x = torch.randint(4, 300, (8, 32))
    y = torch.arange(8) % 3
    for method in METHODS:
        cfg = BERT.override({"peft.method": method, "max_steps": 6})
        model = built(cfg)
        base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        calls: list[int] = []
        step = [0]

        def step_of(calls=calls, step=step) -> int:
            calls.append(step[0])
            return step[0]

        ft.adalora_hook(cfg, model, opt, step_of)
        losses = []
        for step[0] in range(6):
            loss = model(x, y)[1]
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        assert losses[-1] < losses[0], (method, losses)
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base), method
        assert calls == (list(range(6)) if method == "adalora" else [])


def test_int8_quantizes_gpt2_conv1d_blocks():
    """GPT-2's projections are transformers' Conv1D, not nn.Linear: quantization swaps each for the Linear it
    equals first, so the block weights become int8 too, and the model computes what it did within int8 error."""
    from workbench.compress import conv1d_as_linear, is_conv1d, prunable_linears, quantize_dynamic_int8

    cfg = BERT.override({"model.arch": "hf:gpt2", "task.kind": "lm"})
    model = built(cfg).eval()
    conv = [n for n, _ in prunable_linears(model)]
    assert len(conv) == 4 * cfg.model.n_layer  # c_attn, c_proj, c_fc, mlp.c_proj per block
    x = torch.randint(0, cfg.data.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ft.logits_of(model(x))
        swapped = ft.build(cfg)
        swapped.load_state_dict(model.state_dict())
        assert conv1d_as_linear(swapped.eval()) == len(conv)
        assert torch.allclose(ft.logits_of(swapped(x)), want, atol=1e-5)  # the same function, W transposed
        q = quantize_dynamic_int8(model)
        got = ft.logits_of(q(x))
    quantized = {n for n, m in q.named_modules() if type(m).__name__ == "Linear" and "quantized" in type(m).__module__}
    assert set(conv) <= quantized, set(conv) - quantized  # every block weight in int8
    assert [n for n, m in model.named_modules() if is_conv1d(m)] == conv  # the original untouched
    assert (got - want).abs().max() < 0.1 * want.abs().max()  # int8 rounding, not another model


# ---- real runs: a tiny BERT pretrained once, fine-tuned with peft methods on 2 processes ----


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from benchmarks.peft_table import package_lines
    from workbench.data.files import stdlib_corpus

    folder = tmp_path_factory.mktemp("hfpeft")
    corpus = stdlib_corpus(str(folder / "corpus.txt"), ("json",))
    cfg = RunConfig().override({**TINY, "name": "bert-mlm", "model.arch": "hf:bert", "task.kind": "mlm",
                                "data.source": "files", "data.path": corpus, "data.tokenizer": "bpe:320",
                                "max_steps": 2, "log_every": 2, "eval_every": 0, "micro_batch_size": 4,
                                "grad_accum_steps": 1, "parallel.num_processes": 1,
                                "runs_dir": str(folder / "runs")})  # fmt: skip
    labelled = package_lines(str(folder / "labelled.jsonl"), per_package=60)
    return finished(cfg), labelled


def finished(cfg):
    assert cfg.validate() == []
    r = wb.launch(cfg)
    r.wait(timeout=600)
    assert r.status == "finished", r.error
    return r


def test_lora_and_adalora_runs_merge_and_export(pretrained):
    from workbench.export import export_onnx

    pre, labelled = pretrained
    tune = pre.config.override({"init_from": pre.path, "task.kind": "classify", "task.num_labels": 3,
                                "data.path": labelled, "max_steps": 4, "eval_every": 4, "parallel.num_processes": 2,
                                "optimizer.lr": 1e-2})  # fmt: skip
    cfgs = {m: tune.override({"name": f"bert-{m}", "peft.method": m}) for m in ("lora", "adalora")}
    assert all(c.validate() == [] for c in cfgs.values())
    launched = {m: wb.launch(c) for m, c in cfgs.items()}  # side by side: the start-up times overlap
    for r in launched.values():
        r.wait(timeout=600)
        assert r.status == "finished", r.error
    runs = launched
    for r in runs.values():
        first = r.metrics()[0]
        cfg = ft.run_config(r.path)
        assert first["trainable_params"] == hf_peft_trainable(cfg, shape_of(cfg), "bert")
        assert (
            first["measured"][0]["grad_bytes"]
            == first["planned"]["ranks"][0]["grad_bytes"]
            == 4 * (first["trainable_params"])
        )
        assert "test_accuracy" in r.metrics()[-1]
    # LoRA merged on loading: a plain transformers model, the pretrained encoder's other weights untouched
    merged = ft.load_model(runs["lora"].path)
    names = [n for n, _ in merged.named_parameters()]
    assert not any("lora_" in n for n in names) and "hf.bert.encoder.layer.0.attention.self.query.weight" in names
    before = ft.load_model(pre.path).state_dict()
    key = "hf.bert.encoder.layer.0.attention.self.key.weight"  # not a LoRA target: exactly as pretrained
    assert torch.equal(merged.state_dict()[key], before[key])
    report = export_onnx(runs["lora"].path)
    assert report.parity and report.output_shape[1] == 3
    assert os.path.isfile(report.path)
    # int8 and pruning take the same run: the block Linears shrink or lose their smallest weights, measured
    quant = wb.quantize(runs["lora"])
    fp32, int8 = quant.row("fp32"), quant.row("int8 dynamic")
    assert int8.size_bytes < 0.7 * fp32.size_bytes and set(int8.metrics) == set(fp32.metrics) >= {"accuracy", "f1"}
    pruned = wb.prune(runs["lora"], [0.5]).row("pruned 50%")
    h, i = merged.hf.config.hidden_size, merged.hf.config.intermediate_size  # q k v o, intermediate and output
    assert pruned.zeros == round(0.5 * pruned.prunable) and pruned.prunable == 2 * (4 * h * h + 2 * h * i)
