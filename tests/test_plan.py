"""The plan (workbench/plan/) against the code it predicts: speed, formulas, layouts, and accuracy.

Accuracy targets (issue 5): parameters, gradients and optimizer state within 1% of what a rank measures;
saved activations within 10%; the FLOPs formula within 5% of torch.utils.flop_counter's count. Where a case
cannot meet its target, the test below names it and the plan must label that figure approximate.

Two sources of measurements: in process (one rank, the same code the worker runs: workbench.measure), for a
grid of precisions x checkpointing x dropout x sizes x fine-tuning; and real 2-process runs through
``wb.launch`` (status.json "measured" next to "planned"), over every layout the config offers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext

import pytest

from workbench.config import RunConfig
from workbench.plan import (
    DEVICES,
    MEMORY_FIELDS,
    PRECISION,
    accuracy,
    bubble_fraction_of,
    outer_activation_bytes,
    plan,
    shape_of,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")
TARGET = {"param_bytes": 0.01, "grad_bytes": 0.01, "optimizer_bytes": 0.01, "activation_bytes": 0.10}

GPT2 = {"model.n_layer": 12, "model.d_model": 768, "model.n_head": 12, "model.seq_len": 1024, "data.vocab_size": 50304}
LLAMA70B_SHAPE = {  # a 70B-class decoder in the reference GPT's shape (MLP 4d, LayerNorm with biases)
    "model.n_layer": 80,
    "model.d_model": 8192,
    "model.n_head": 64,
    "model.seq_len": 4096,
    "data.vocab_size": 128256,
}


def base() -> RunConfig:
    return RunConfig.from_yaml(QUICKSTART)


# ---------------------------------------------------------------------------------------------------------
# speed and purity


def test_plan_is_fast_for_every_layout_and_scale():
    """The config panel redraws the plan while a slider moves: every layout and scale plans, and quickly.
    The 50 ms target is measured by benchmarks/plan_speed.py (about 10 ms at most on the 2-core machine);
    here a bound 10x looser, which holds on a loaded shared CI machine."""
    cfgs = []
    for s in ("ddp", "zero1", "zero2", "zero3", "ps"):
        cfgs.append(base().override({**GPT2, "parallel.strategy": s, "parallel.num_processes": 8}))
    cfgs.append(
        base().override({**GPT2, "parallel.strategy": "tp", "parallel.num_processes": 4, "parallel.tp_size": 4})
    )
    cfgs.append(
        base().override({**GPT2, "parallel.strategy": "pp", "parallel.num_processes": 4, "parallel.pp_size": 4})
    )
    big = base().override({**LLAMA70B_SHAPE, "micro_batch_size": 1, "precision": "bf16"})
    for s, extra in [("zero3", {}), ("dp_tp", {"parallel.tp_size": 8}), ("zero1", {})]:
        cfgs.append(big.override({"parallel.strategy": s, "parallel.num_processes": 1024, **extra}))
    cfgs.append(big.override({"parallel.strategy": "pp", "parallel.num_processes": 16, "parallel.pp_size": 16}))
    worst = 0.0
    for cfg in cfgs:
        for device in ("h100", "cpu"):
            plan(cfg, device=device)  # warm (the CPU calibration cache file is read once)
            times = []
            for _ in range(5):  # the median of 5: other processes share these 2 cores
                t0 = time.perf_counter()
                plan(cfg, device=device)
                times.append(time.perf_counter() - t0)
            worst = max(worst, sorted(times)[2])
    assert worst < 0.500, f"slowest plan took {worst * 1e3:.1f} ms"


def test_import_and_plan_never_import_torch():
    code = (
        "import sys, workbench as wb\n"
        f"cfg = wb.RunConfig.from_yaml({QUICKSTART!r})\n"
        "for s in ('ddp', 'zero3', 'pp'):\n"
        "    wb.plan(cfg.override({'parallel.strategy': s, 'parallel.pp_size': 2 if s == 'pp' else 1}), device='cpu')\n"
        "assert 'torch' not in sys.modules, 'plan imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------
# formulas


SIZES = [
    {},
    {"model.n_layer": 4, "model.d_model": 128, "model.n_head": 8, "model.seq_len": 128, "data.vocab_size": 256},
    {"model.n_layer": 3, "model.d_model": 96, "model.n_head": 3, "model.seq_len": 32, "data.vocab_size": 1000},
]


@pytest.mark.parametrize("size", SIZES + [GPT2], ids=["quickstart", "l4d128", "l3d96", "gpt2"])
def test_params_and_flops_are_the_models_own(size):
    """The planner's closed forms equal the model's count (built on the meta device: no memory)."""
    import torch

    from workbench.models import build_model, gpt_flops_per_token, gpt_num_params

    cfg = base().override(size)
    with torch.device("meta"):
        model = build_model(cfg)
    p = plan(cfg, device="cpu")
    assert p.num_params == model.num_params() == sum(t.numel() for t in model.parameters())
    m = cfg.model
    assert p.num_params == gpt_num_params(cfg.data.vocab_size, m.seq_len, m.n_layer, m.d_model)
    assert p.flops_per_token == model.flops_per_token()
    assert p.flops_per_token == gpt_flops_per_token(
        model.num_params(non_embedding=True), m.n_layer, m.n_head, m.d_model, m.seq_len
    )
    assert p.flops_per_step == p.flops_per_token * cfg.tokens_per_step


def _counted_flops(cfg: RunConfig) -> float:
    """Matmul FLOPs of one training step of the reference GPT, per token, by torch's FlopCounterMode.

    The counter has formulas for the CUDA attention kernels but none for the CPU flash kernel; we register
    torch's own sdpa formulas for it (forward, and backward, which recomputes the scores). A real CPU run,
    not the meta device: on meta, attention dispatches to other kernels than the ones training runs."""
    import torch
    import torch.utils.flop_counter as fc

    from workbench.models import build_model

    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(
            q, k, v
        ),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, out_shape=None, **kw: (
            fc.sdpa_backward_flop_count(g, q, k, v)
        ),
    }
    torch.manual_seed(0)
    model = build_model(cfg)
    B, T = 1, cfg.model.seq_len
    x = torch.randint(0, cfg.data.vocab_size, (B, T))
    counter = fc.FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        model(x, x)[1].backward()
    return counter.get_total_flops() / (B * T)


FLOP_CASES = {
    "quickstart": {},
    "l4d128": SIZES[1],
    "gpt2-width-2-layers-T256": {**GPT2, "model.n_layer": 2, "model.seq_len": 256},
    # attention-dominated (T = 16 d): flash attention's backward recomputes the scores, which the 6N + 12LHQT
    # model-FLOPs convention leaves out: the formula is 10% under the count, so the plan labels it approximate
    "long-context-T1024-d64": {"model.seq_len": 1024},
}


@pytest.mark.parametrize("name", list(FLOP_CASES))
def test_flops_formula_against_flop_counter(name):
    cfg = base().override(FLOP_CASES[name])
    p = plan(cfg, device="cpu")
    counted = _counted_flops(cfg)
    err = (p.flops_per_token - counted) / counted
    if name.startswith("long-context"):
        assert abs(err) > 0.05 and "flops_per_token" in p.approximate, (err, p.approximate)
    else:
        assert abs(err) < 0.05, f"{name}: formula {p.flops_per_token} vs counted {counted:.0f} ({err:+.2%})"
        assert "flops_per_token" not in p.approximate
    # the hardware count (model FLOPs + flash's recomputation) is what the kernels run: within 2% always
    hw = p.hardware_flops_per_step / cfg.tokens_per_step
    assert abs(hw - counted) / counted < 0.02, (hw, counted)


# ---------------------------------------------------------------------------------------------------------
# layouts: the arithmetic the figures must obey


def _cfg(strategy: str, n: int = 4, **over) -> RunConfig:
    extra = {"parallel.tp_size": n} if strategy == "tp" else {"parallel.pp_size": n} if strategy == "pp" else {}
    return base().override({**GPT2, "parallel.strategy": strategy, "parallel.num_processes": n, **extra, **over})


def test_layouts_divide_what_they_shard():
    n, N = 4, plan(_cfg("ddp"), device="h100").num_params
    ddp = plan(_cfg("ddp", n), device="h100").ranks
    for r in ddp:
        assert r.param_bytes == r.grad_bytes == 4 * N
        assert r.optimizer_bytes == 8 * N + 4 * (4 + 16 * 12)  # AdamW: two moments + a step per tensor
        assert r.master_bytes == 0  # autocast keeps fp32 params: they are the master weights
        assert r.buffer_bytes == 4 * N  # DDP's gradient buckets
    z1 = plan(_cfg("zero1", n), device="h100").ranks
    assert sum(r.optimizer_bytes for r in z1) == ddp[0].optimizer_bytes  # each state on exactly one rank
    # a greedy split of whole tensors: about a quarter each (the 50304 x 768 embedding alone is 31%)
    assert max(r.optimizer_bytes for r in z1) < 0.4 * ddp[0].optimizer_bytes
    z2, z3 = plan(_cfg("zero2", n), device="h100").ranks, plan(_cfg("zero3", n), device="h100").ranks
    for zs in (z2, z3):
        assert sum(r.param_bytes for r in zs) == 4 * N and sum(r.grad_bytes for r in zs) == 4 * N
        assert all(abs(r.param_bytes - N) < 0.01 * N for r in zs)
    assert z3[0].buffer_bytes < z2[0].buffer_bytes  # ZeRO-3 gathers a block at a time, ZeRO-2 keeps them all
    tp = plan(_cfg("tp", n), device="h100").ranks
    assert N / n * 4 < tp[0].param_bytes < 4 * N  # blocks split, embeddings replicated
    pp = plan(_cfg("pp", n), device="h100").ranks
    V, d = GPT2["data.vocab_size"], GPT2["model.d_model"]
    assert sum(r.param_bytes for r in pp) == 4 * (N + V * d)  # the last stage's untied copy of the embedding
    ps = plan(_cfg("ps", n), device="h100").ranks
    assert ps[0].optimizer_bytes == ddp[0].optimizer_bytes and all(r.optimizer_bytes == 0 for r in ps[1:])
    assert ps[0].buffer_bytes > 3 * ps[1].buffer_bytes  # the server receives every worker's gradient


def test_activation_checkpointing_and_tp_shrink_activations():
    full = plan(_cfg("ddp"), device="h100").ranks[0].activation_bytes
    ckpt = plan(_cfg("ddp", activation_checkpointing=True), device="h100").ranks[0].activation_bytes
    T, d, L, B, V = 1024, 768, 12, 8, 50304
    assert ckpt < full / 3
    # what is left: each block's fp32 input, and outside the blocks mostly the fp32 log-softmax over the
    # 50304-word vocabulary, which at this size outweighs all twelve checkpointed blocks
    outer = outer_activation_bytes(shape_of(_cfg("ddp")), B, PRECISION["fp32"])
    assert ckpt == 4 * L * B * T * d + outer
    assert 4 * V * B * T > 4 * L * B * T * d
    tp = plan(_cfg("tp", 4), device="h100").ranks[0].activation_bytes
    assert tp < 4 * full  # a tp row computes on 4 micro-batches at once, with its Linears' outputs split


def test_pipeline_schedules_in_flight_and_bubble():
    g = plan(_cfg("pp", 4, **{"parallel.pp_microbatches": 8}), device="h100")
    f = plan(_cfg("pp", 4, **{"parallel.pp_microbatches": 8, "parallel.pp_schedule": "1f1b"}), device="h100")
    # GPipe keeps all 8 micro-batches alive on every stage; 1F1B keeps p - stage of them
    assert f.ranks[0].activation_bytes < g.ranks[0].activation_bytes
    assert f.ranks[0].activation_bytes > f.ranks[2].activation_bytes  # 4 micro-batches in flight against 2
    assert f.ranks[1].activation_bytes < g.ranks[1].activation_bytes
    for p_, m in [(4, 8), (2, 4), (8, 8)]:
        cfg = _cfg("pp", p_, **{"parallel.pp_microbatches": m})
        assert bubble_fraction_of(cfg) == pytest.approx((p_ - 1) / (m + p_ - 1))
        assert plan(cfg, device="h100").bubble_fraction == pytest.approx((p_ - 1) / (m + p_ - 1))
    assert plan(_cfg("ddp"), device="h100").bubble_fraction == 0


def test_verdict_headroom_and_largest_micro_batch():
    for device in ("h100", "a100-40", "h200", "cpu"):
        p = plan(_cfg("zero3", 8, **{"precision": "bf16"}), device=device)
        assert p.device_memory_bytes > 0
        assert p.fits == (p.headroom_bytes >= 0)
        mb = p.max_micro_batch_size
        if mb:
            assert plan(_cfg("zero3", 8, **{"precision": "bf16", "micro_batch_size": mb}), device=device).fits
        assert not plan(_cfg("zero3", 8, **{"precision": "bf16", "micro_batch_size": mb + 1}), device=device).fits
    assert DEVICES["h200"]["memory"] == 141 * 10**9
    # 70B parameters with AdamW: 16 bytes each before a single activation; ddp cannot fit, ZeRO-3 over 512
    # H100s with checkpointing can.
    big = base().override({**LLAMA70B_SHAPE, "micro_batch_size": 1, "precision": "bf16"})
    assert not plan(big.override({"parallel.num_processes": 8}), device="h100").fits
    z3 = plan(
        big.override({"parallel.strategy": "zero3", "parallel.num_processes": 512, "activation_checkpointing": True}),
        device="h100",
    )
    assert z3.fits and z3.max_micro_batch_size >= 1, z3.table()
    with pytest.raises(ValueError, match="h100"):
        plan(big, device="tpu-v9")


def test_step_time_and_comm_follow_the_device_and_layout():
    h, a = (
        plan(_cfg("ddp", **{"precision": "bf16"}), device="h100"),
        plan(_cfg("ddp", **{"precision": "bf16"}), device="a100-80"),
    )
    assert h.step_time_s < a.step_time_s and h.tokens_per_s == pytest.approx(
        h.flops_per_step / h.flops_per_token / h.step_time_s
    )
    assert h.peak_flops_per_device == 989e12 and a.peak_flops_per_device == 312e12 and 0 < h.mfu < 1
    assert h.time.source.startswith("data sheet, unmeasured") and h.step_time_s == pytest.approx(
        sum(h.time.parts().values())
    )
    N = h.num_params
    assert h.comm_by_op == {"all_reduce": 4 * N} and h.comm_bytes == [4 * N] * 4
    z3 = plan(_cfg("zero3", **{"grad_accum_steps": 2}), device="h100")
    assert z3.comm_by_op["reduce_scatter"] == 2 * 4 * N and z3.comm_by_op["all_gather"] == 2 * 2 * 4 * N
    pp = plan(_cfg("pp", 4), device="h100")
    more = plan(_cfg("pp", 4, **{"parallel.pp_microbatches": 32, "micro_batch_size": 8}), device="h100")
    assert pp.time.bubble_s > more.time.bubble_s and pp.bubble_fraction > more.bubble_fraction


def test_table_json_and_cli():
    p = plan(_cfg("pp", 4), device="h100")
    text = p.table()
    for word in ("param", "grad", "optimizer", "activation", "verdict", "bubble", "tokens/s", "stage"):
        assert word in text
    d = json.loads(json.dumps(p.to_dict()))
    assert [r["total_bytes"] for r in d["ranks"]] == p.total_bytes
    out = subprocess.run(
        ["workbench", "plan", QUICKSTART, "--set", "model.n_layer=6", "--device", "h100"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "L6" in out.stdout and "fits" in out.stdout
    out = subprocess.run(["workbench", "plan", QUICKSTART, "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout)["ranks"][0]["param_bytes"] > 0
    bad = subprocess.run(["workbench", "plan", QUICKSTART, "--device", "abacus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "known" in bad.stderr


# ---------------------------------------------------------------------------------------------------------
# accuracy, in process: one rank, the worker's own measurement code


def _measure_in_process(cfg: RunConfig) -> dict[str, int]:
    """One training step of cfg's model on one rank, measured as the worker measures (FirstStepMeter)."""
    import torch

    from workbench import finetune as ft
    from workbench.measure import FirstStepMeter
    from workbench.models import build_model
    from workbench.optim import build_optimizer
    from workbench.parallel.checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    model = ft.build(cfg) if ft.active(cfg) else build_model(cfg)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    opt = build_optimizer(cfg, model)
    meter = FirstStepMeter(model, opt)
    B, T = cfg.micro_batch_size, cfg.model.seq_len
    x = torch.randint(0, cfg.data.vocab_size, (B, T))
    y = torch.randint(0, cfg.task.num_labels, (B,)) if cfg.task.kind == "classify" else x.roll(1, 1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler("cpu") if cfg.precision == "fp16" else None
    for _ in range(cfg.grad_accum_steps):
        with ctx:
            loss = model(x, y)[1]
        (scaler.scale(loss) if scaler else loss).backward()
    (scaler.step(opt), scaler.update()) if scaler else opt.step()
    opt.zero_grad(set_to_none=True)
    assert meter.result is not None
    return meter.local()


# A covering grid (every precision with and without checkpointing; dropout, a second size and fine-tuning
# crossed with the precisions that change what they save), kept small: each case is one real training step.
IN_PROCESS = [("quickstart", prec, ckpt, 0.0, "lm") for prec in ("fp32", "bf16", "fp16") for ckpt in (False, True)]
IN_PROCESS += [
    ("quickstart", prec, ckpt, 0.1, "lm") for prec, ckpt in (("fp32", False), ("bf16", False), ("bf16", True))
]
IN_PROCESS += [("l3d96", prec, ckpt, 0.0, "lm") for prec, ckpt in (("fp32", False), ("bf16", True), ("fp16", False))]
IN_PROCESS += [
    ("quickstart", "bf16", False, 0.0, ft) for ft in ("classify", "frozen", "lora", "lora-attn", "lora-classify")
]
IN_PROCESS += [("quickstart", "fp32", False, 0.0, ft) for ft in ("frozen", "lora-attn")]

FINETUNE = {
    "lm": {},
    "classify": {"task.kind": "classify"},
    "frozen": {"task.kind": "classify", "peft.method": "frozen"},
    "lora": {"peft.method": "lora"},
    "lora-attn": {"peft.method": "lora", "peft.target": ["attn"], "peft.r": 4},
    "lora-classify": {"task.kind": "classify", "peft.method": "lora"},
}


@pytest.mark.parametrize(
    "size,precision,ckpt,dropout,finetune", IN_PROCESS, ids=["-".join(map(str, c)) for c in IN_PROCESS]
)
def test_accuracy_in_process(size, precision, ckpt, dropout, finetune):
    sizes = {"quickstart": SIZES[0], "l3d96": SIZES[2]}
    over = {**sizes[size], **FINETUNE[finetune], "precision": precision, "activation_checkpointing": ckpt}
    over.update({"model.dropout": dropout, "parallel.num_processes": 1, "micro_batch_size": 4, "grad_accum_steps": 2})
    cfg = base().override(over)
    measured = _measure_in_process(cfg)
    p = plan(cfg, device="cpu")
    for row in accuracy(p, [{"rank": 0, **measured}]):
        f = row["field"]
        if f in TARGET and f not in p.approximate:
            assert abs(row["error"]) <= TARGET[f], row
    # the sum the verdict uses is the sum of the parts
    assert p.ranks[0].total_bytes == sum(getattr(p.ranks[0], f) for f in MEMORY_FIELDS)
