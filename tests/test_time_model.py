"""The step-time model: its parts, its device facts (measured, cached, or the data sheet), a GPU sanity figure."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.config import RunConfig, StrategySpec, register_layout, unregister_layout
from workbench.plan import DeviceFacts, plan
from workbench.plan.facts import DEFAULT_CPU_FACTS, cached_cpu_facts, interpolate

SMALL = {"model.d_model": 128, "model.n_head": 4, "model.n_layer": 4, "model.seq_len": 64, "micro_batch_size": 8,
         "grad_accum_steps": 2, "parallel.num_processes": 2, "device": "cpu"}  # fmt: skip
LAYOUTS = {"ddp": {}, "zero1": {}, "zero2": {}, "zero3": {}, "tp": {"parallel.tp_size": 2},
           "pp": {"parallel.pp_size": 2}, "ps": {}}  # fmt: skip
# torchtitan's published Llama-3.1-8B run: 8 x H100, FSDP, bf16, local batch 2, sequence 8192, selective activation
# checkpointing: 5,762 tokens/s per GPU (benchmarks/llama3_h100_202412_torchtitan.md in torchtitan).
LLAMA_8B = {"model.arch": "hf:llama", "model.n_layer": 32, "model.n_head": 32, "model.d_model": 4096,
            "model.seq_len": 8192, "data.vocab_size": 128256,
            "model.hf_config": {"num_key_value_heads": 8, "intermediate_size": 14336, "rope_theta": 500000.0}}  # fmt: skip
TORCHTITAN_TOKENS_PER_S_PER_GPU = 5762


def small(strategy: str, **over) -> RunConfig:
    return RunConfig().override({**SMALL, "parallel.strategy": strategy, **LAYOUTS.get(strategy, {}), **over})


def test_parts_add_up_and_name_their_source():
    for name in LAYOUTS:
        p = plan(small(name), device="cpu", facts=DEFAULT_CPU_FACTS)
        t = p.time
        assert t.step_s == pytest.approx(sum(t.parts().values())) and p.step_time_s == t.step_s
        assert p.tokens_per_s == pytest.approx(p.flops_per_step / p.flops_per_token / t.step_s)
        assert 0 <= t.exposed_comm_s <= t.comm_s + 1e-12 and t.compute_s > 0, name
        assert t.source == DEFAULT_CPU_FACTS.source
        assert 0 < p.mfu < 1
    assert plan(small("pp"), device="cpu", facts=DEFAULT_CPU_FACTS).time.bubble_s > 0
    assert plan(small("ddp"), device="h100").time.source.startswith("data sheet, unmeasured")


def test_the_facts_move_the_prediction_where_they_should():
    base = plan(small("tp"), device="cpu", facts=DEFAULT_CPU_FACTS)
    slow_links = dataclasses.replace(
        DEFAULT_CPU_FACTS,
        collectives={k: (lat * 10, bw / 10) for k, (lat, bw) in DEFAULT_CPU_FACTS.collectives.items()},
    )
    assert plan(small("tp"), device="cpu", facts=slow_links).time.comm_s == pytest.approx(10 * base.time.comm_s)
    assert (
        plan(small("ddp"), device="cpu", facts=slow_links).step_time_s
        < plan(small("tp"), device="cpu", facts=slow_links).step_time_s
    )
    costly_ops = dataclasses.replace(DEFAULT_CPU_FACTS, op_s=DEFAULT_CPU_FACTS.op_s * 4)
    assert plan(small("ddp"), device="cpu", facts=costly_ops).time.compute_s > base.time.compute_s / 2
    ckpt = plan(small("ddp", activation_checkpointing=True), device="cpu", facts=DEFAULT_CPU_FACTS)
    assert ckpt.time.compute_s > plan(small("ddp"), device="cpu", facts=DEFAULT_CPU_FACTS).time.compute_s


def test_rates_interpolate_between_measured_sizes():
    pts = ((1e6, 10e9), (1e8, 50e9), (1e10, 80e9))
    assert interpolate(pts, 1e6) == pytest.approx(10e9) and interpolate(pts, 1e12) == pytest.approx(80e9)
    assert 10e9 < interpolate(pts, 1e7) < 50e9 < interpolate(pts, 1e9) < 80e9
    assert interpolate(pts, 1e5) == pytest.approx(1e9)  # below the smallest: its time, a fixed cost
    d = DEFAULT_CPU_FACTS.to_dict()
    assert DeviceFacts.from_dict(d) == DEFAULT_CPU_FACTS


def test_a_layout_without_a_time_function_is_timed_as_data_parallel():
    from workbench.config import STRATEGY_SPECS

    ddp = STRATEGY_SPECS["ddp"]
    register_layout(dataclasses.replace(ddp, name="untimed", time=None, module="tests.test_time_model"))
    try:
        p = plan(small("untimed"), device="cpu", facts=DEFAULT_CPU_FACTS)
        assert p.time.step_s > 0 and p.time.exposed_comm_s == pytest.approx(p.time.comm_s)
    finally:
        unregister_layout("untimed")
    assert isinstance(ddp, StrategySpec) and ddp.time is not None


def test_llama_8b_on_8_h100_lands_near_torchtitans_published_figure():
    cfg = RunConfig().override({**LLAMA_8B, "parallel.strategy": "zero3", "parallel.num_processes": 8,
                                "precision": "bf16", "micro_batch_size": 2, "activation_checkpointing": True})  # fmt: skip
    p = plan(cfg, device="h100")
    per_gpu = p.tokens_per_s / 8
    ratio = per_gpu / TORCHTITAN_TOKENS_PER_S_PER_GPU
    assert 1 / 1.5 <= ratio <= 1.5, f"planned {per_gpu:,.0f} tokens/s per GPU vs torchtitan's 5,762 ({ratio:.2f}x)"
    assert p.fits and "data sheet, unmeasured" in p.time.source


def test_calibration_measures_caches_and_feeds_the_plan(tmp_path, monkeypatch):
    from workbench.calibrate import calibrate_cpu

    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path))
    assert cached_cpu_facts("fp32", 2, 1) is None
    facts = calibrate_cpu(2, threads=1)
    assert cached_cpu_facts("fp32", 2, 1) == facts and facts.source.startswith("measured on this machine")
    assert all(r > 0 for _, r in facts.matmul) and facts.op_s > 0 and facts.mem_bytes_per_s > 0
    assert set(facts.collectives) >= {"all_reduce", "all_gather", "reduce_scatter", "broadcast", "send"}
    assert facts.elementwise["adamw_s_per_tensor"] > 0 and facts.elementwise["tp_linear_s"] > 0
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    p = plan(small("ddp"), device="cpu")
    assert p.time.source == facts.source
