"""Every parallelism layout, for real: 2 CPU processes (gloo), fp32, dropout off, 20 optimizer steps.

Each layout must follow the loss trajectory of ONE process training on the same global batch (within 1e-4
at every step), and must really be the layout it claims: the wrapper, parameter types, placements and local
shapes the worker recorded, and the bytes each rank holds (workbench.measure) and moves (comm_bytes). A
silent fallback to plain DDP fails here. Resume from a sharded checkpoint continues the same trajectory.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

import workbench as wb
from workbench.config import DeviceInfo
from workbench.metrics_schema import unknown_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 20
TOL = 1e-4
CPU2 = DeviceInfo("cpu", 2, "cpu")

LAYOUTS = {
    "ddp": {},
    "zero1": {"parallel.strategy": "zero1"},
    "zero2": {"parallel.strategy": "zero2"},
    "zero3": {"parallel.strategy": "zero3"},
    "tp": {"parallel.strategy": "tp", "parallel.tp_size": 2},
    "pp_gpipe": {"parallel.strategy": "pp", "parallel.pp_size": 2, "parallel.pp_microbatches": 4},
    "pp_1f1b": {"parallel.strategy": "pp", "parallel.pp_size": 2, "parallel.pp_schedule": "1f1b"},
    "ps": {"parallel.strategy": "ps"},
    "dp_tp": {"parallel.strategy": "dp_tp", "parallel.tp_size": 2},  # a (1, 2) mesh: all 2 processes allow
}
RESUMED = ("zero1", "zero3", "pp_gpipe", "ps")  # one per checkpoint format


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """Launches each configuration once per module; tests share the finished runs."""
    runs_dir = str(tmp_path_factory.mktemp("parallel-runs"))
    base = wb.RunConfig.from_yaml(os.path.join(ROOT, "configs", "quickstart.yaml")).override(
        {
            "max_steps": STEPS,
            "log_every": 1,  # a loss per step: the whole trajectory is compared
            "eval_every": 10,
            "grad_accum_steps": 2,
            "checkpoint_every": 10,
            "precision": "fp32",
            "model.dropout": 0.0,
            "schedule.warmup_steps": 5,
            "runs_dir": runs_dir,
        }
    )
    cache: dict[str, wb.Run] = {}

    def run(name: str, overrides: dict | None = None, resume_from: str | None = None) -> wb.Run:
        if name not in cache:
            cfg = base.override({"name": name, **(overrides or {})})
            assert cfg.validate(CPU2) == [], cfg.validate(CPU2)
            if resume_from is not None:
                shutil.copytree(cache[resume_from].path, cfg.run_dir)
                shutil.rmtree(os.path.join(cfg.run_dir, "checkpoints", f"step_{STEPS}"))
            r = wb.launch(cfg, resume=resume_from is not None)
            r.wait(timeout=600)
            assert r.status == "finished", (name, r.status, r.error)
            cache[name] = r
        return cache[name]

    run.base = base
    return run


def losses(run, key="loss"):
    return [m[key] for m in run.metrics() if m.get(key) is not None]


def layout_facts(run):
    eff = run.info["effective"]
    return eff, {f["rank"]: f for f in eff["layout"]}


@pytest.fixture(scope="module")
def reference(runner):
    """One process, the same global batch: micro_batch_size x 2 (two processes' micro-batches)."""
    mbs = runner.base.micro_batch_size
    return runner("single", {"parallel.num_processes": 1, "micro_batch_size": 2 * mbs})


# ---------------------------------------------------------------------------------------------------------
# trajectories


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_follows_single_process_trajectory(runner, reference, layout):
    run = runner(layout, LAYOUTS[layout])
    ref, got = losses(reference), losses(run)
    assert len(ref) == len(got) == STEPS
    worst = max(abs(a - b) for a, b in zip(ref, got, strict=True))
    assert worst < TOL, f"{layout}: max |loss - single process| = {worst:.2e}"
    ev_ref, ev_got = losses(reference, "eval_loss"), losses(run, "eval_loss")
    assert len(ev_got) == 2 and max(abs(a - b) for a, b in zip(ev_ref, ev_got, strict=True)) < TOL
    assert ref[-1] < ref[0] - 0.3  # it learned: the comparison is not between two flat lines
    eff, facts = layout_facts(run)
    assert eff["world_size"] == 2 and eff["backend"] == "gloo" and eff["strategy"] == run.config.parallel.strategy
    assert sorted(facts) == [0, 1]
    # bytes moved: measured, one entry per rank, and the same tokens per step as the reference
    last = run.metrics()[-1]
    assert last["comm_bytes_kind"] == "measured" and len(last["comm_bytes"]) == 2
    assert all(b > 0 for b in last["comm_bytes"]) and sum(last["comm_bytes_by_op"].values()) == last["comm_bytes"][0]
    assert last["tokens"] == reference.metrics()[-1]["tokens"]
    # every rank ends with the same whole model (sharded layouts gather it before fingerprinting)
    finals = [json.load(open(os.path.join(run.path, f"final_rank{r}.json"))) for r in (0, 1)]
    assert finals[0]["params_sha256"] == finals[1]["params_sha256"]
    assert finals[0]["params_scope"] == "full model"


# ---------------------------------------------------------------------------------------------------------
# the layout really in effect (a silent fallback to DDP fails these)


def _param(facts, rank, name):
    return facts[rank]["params"][name]


@pytest.mark.slow
def test_ddp_and_zero1_layouts(runner):
    eff, facts = layout_facts(runner("ddp", LAYOUTS["ddp"]))
    assert eff["wrapper"] == "DistributedDataParallel" and facts[0]["param_types"] == {"Tensor": 36}
    eff, facts = layout_facts(runner("zero1", LAYOUTS["zero1"]))
    assert eff["wrapper"] == "DistributedDataParallel"
    assert all(f["optimizer"] == "ZeroRedundancyOptimizer" for f in facts.values())
    owned = [facts[r]["optimizer_params_owned"] for r in (0, 1)]
    assert sum(owned) == eff["num_params"] and max(owned) < 0.6 * eff["num_params"]
    ops = runner("zero1", LAYOUTS["zero1"]).metrics()[-1]["comm_bytes_by_op"]
    assert set(ops) == {"all_reduce", "broadcast"}  # DDP's gradient all-reduce + ZeRO's parameter broadcast


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_fsdp_layouts_shard_every_parameter(runner, stage):
    eff, facts = layout_facts(runner(stage, LAYOUTS[stage]))
    assert eff["wrapper"] == "FSDPGPT"  # FSDP2's class, not DistributedDataParallel
    for r in (0, 1):
        assert facts[r]["param_types"] == {"DTensor": 36}
        assert facts[r]["reshard_after_forward"] is (stage == "zero3")
        q = _param(facts, r, "blocks.0.attn.q.weight")
        assert q["placements"] == ["S(0)"] and q["local_shape"] == [32, 64] and q["shape"] == [64, 64]
    ops = runner(stage, LAYOUTS[stage]).metrics()[-1]["comm_bytes_by_op"]
    assert ops["all_gather"] > 0 and ops["reduce_scatter"] > 0 and "broadcast" not in ops


@pytest.mark.slow
def test_tensor_parallel_layouts(runner):
    eff, facts = layout_facts(runner("tp", LAYOUTS["tp"]))
    assert "DTensor tensor parallel" in eff["wrapper"]
    for r in (0, 1):
        assert facts[r]["mesh"] == {"tp": 2}
        q, o = _param(facts, r, "blocks.0.attn.q.weight"), _param(facts, r, "blocks.0.attn.o.weight")
        assert q["placements"] == ["S(0)"] and q["local_shape"] == [32, 64]  # colwise: half the heads
        assert o["placements"] == ["S(1)"] and o["local_shape"] == [64, 32]  # rowwise
        assert _param(facts, r, "blocks.0.mlp.fc1.weight")["local_shape"] == [128, 64]
        assert _param(facts, r, "tok_emb.weight")["type"] == "Tensor"  # replicated
    assert "all_reduce" in runner("tp", LAYOUTS["tp"]).metrics()[-1]["comm_bytes_by_op"]
    eff, facts = layout_facts(runner("dp_tp", LAYOUTS["dp_tp"]))
    assert facts[0]["mesh"] == {"dp": 1, "tp": 2} and facts[0]["param_types"] == {"DTensor": 36}
    assert _param(facts, 0, "blocks.0.attn.q.weight")["mesh"] == ["dp", "tp"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["pp_gpipe", "pp_1f1b"])
def test_pipeline_stages_and_bubble(runner, layout):
    run = runner(layout, LAYOUTS[layout])
    eff, facts = layout_facts(run)
    assert facts[0]["layers"] == [0] and facts[1]["layers"] == [1]
    assert "tok_emb.weight" in facts[0]["params"] and "tok_emb.weight" not in facts[1]["params"]
    assert "head.weight" in facts[1]["params"] and "ln_f.weight" not in facts[0]["params"]
    assert ("ScheduleGPipe" if layout == "pp_gpipe" else "Schedule1F1B") in eff["wrapper"]
    m = run.metrics()[-1]
    assert m["bubble_fraction"] == pytest.approx(1 / 5)  # (p - 1) / (m + p - 1), p = 2, m = 4
    assert len(m["idle_fraction"]) == 2 and all(0.0 <= f < 1.0 for f in m["idle_fraction"])
    assert m["comm_bytes_by_op"]["send"] > 0 and m["comm_bytes_by_op"]["recv"] > 0
    assert unknown_keys(run.metrics()) == []  # bubble_fraction, idle_*: in workbench/metrics_schema.py


# ---------------------------------------------------------------------------------------------------------
# memory held per rank, measured from the tensors (workbench.measure, status.json "measured")


def measured(run):
    rows = run.info["measured"]
    assert [r["rank"] for r in rows] == [0, 1]
    return rows


@pytest.mark.slow
def test_zero_stages_halve_what_they_shard(runner):
    ddp = measured(runner("ddp", LAYOUTS["ddp"]))[0]
    total_params, total_opt = ddp["param_bytes"], ddp["optimizer_bytes"]
    assert total_params == 4 * runner("ddp", LAYOUTS["ddp"]).info["effective"]["num_params"]

    def half(x, total):  # "total / 2 within rounding": ZeRO-1 assigns whole tensors to ranks
        return abs(x - total / 2) <= 0.05 * total

    z1 = measured(runner("zero1", LAYOUTS["zero1"]))
    assert sum(r["optimizer_bytes"] for r in z1) == pytest.approx(total_opt, rel=1e-3)
    assert all(half(r["optimizer_bytes"], total_opt) and r["param_bytes"] == total_params for r in z1)
    for stage in ("zero2", "zero3"):
        rows = measured(runner(stage, LAYOUTS[stage]))
        for r in rows:
            assert half(r["grad_bytes"], total_params) and half(r["optimizer_bytes"], total_opt), (stage, r)
    for r in measured(runner("zero3", LAYOUTS["zero3"])):
        assert abs(r["param_bytes"] - total_params / 2) <= 4 * 64  # dim-0 shards: at most a row of padding


@pytest.mark.slow
def test_parameter_server_costs_versus_ddp(runner):
    ddp, ps = runner("ddp", LAYOUTS["ddp"]), runner("ps", LAYOUTS["ps"])
    P = 4 * ddp.info["effective"]["num_params"]  # fp32 bytes of the model
    assert ddp.metrics()[-1]["comm_bytes"] == [P, P]  # one all-reduce of the gradient per step
    server, worker = ps.metrics()[-1]["comm_bytes"]
    # worker: pushes its gradient, pulls the parameters (+ the grad norm, 4 bytes); server: the mirror image
    assert worker == 2 * P + 4 and server == 2 * P + 4
    assert ps.metrics()[-1]["comm_bytes_by_op"] == {"recv": P, "send": P + 4}
    _, facts = layout_facts(ps)
    assert facts[0]["role"] == "server" and facts[1]["role"] == "worker"
    assert facts[0]["optimizer_state_entries"] > 0 and facts[1]["optimizer_state_entries"] == 0
    rows = measured(ps)
    assert rows[1]["optimizer_bytes"] == 0 and rows[0]["optimizer_bytes"] == measured(ddp)[0]["optimizer_bytes"]


# ---------------------------------------------------------------------------------------------------------
# activation checkpointing, resume, four processes


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["ddp", "zero3"])
def test_activation_checkpointing_same_trajectory_less_saved(runner, reference, layout):
    run = runner(f"ac_{layout}", {**LAYOUTS[layout], "activation_checkpointing": True})
    worst = max(abs(a - b) for a, b in zip(losses(reference), losses(run), strict=True))
    assert worst < TOL
    assert run.info["effective"]["activation_checkpointing"] is True
    plain = measured(runner(layout, LAYOUTS[layout]))[0]["activation_bytes"]
    saved = measured(run)[0]["activation_bytes"]
    assert 0 < saved < 0.5 * plain, (saved, plain)


# Short runs (6 steps, all inside the warm-up, so the lr matches the 20-step reference's). zero3 also checkpoints
# activations: recomputing changes no number, and the plan's check below needs bf16 with checkpointing.
MIXED = {
    "zero1_fp16": {**LAYOUTS["zero1"], "precision": "fp16", "max_steps": 6},
    "zero3_bf16_ac": {**LAYOUTS["zero3"], "precision": "bf16", "activation_checkpointing": True, "max_steps": 6},
    "tp_bf16": {**LAYOUTS["tp"], "precision": "bf16", "max_steps": 6},
    "pp_1f1b_bf16": {**LAYOUTS["pp_1f1b"], "precision": "bf16", "max_steps": 6},
    "ps_bf16": {**LAYOUTS["ps"], "precision": "bf16", "max_steps": 6},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MIXED))
def test_mixed_precision_per_layout(runner, reference, name):
    run = runner(name, MIXED[name])
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}[MIXED[name]["precision"]]
    assert run.info["effective"]["compute_dtype"] == dtype  # the Linears really computed in it
    got, ref = losses(run), losses(reference)[:6]
    assert max(abs(a - b) for a, b in zip(ref, got, strict=True)) < 2e-2  # rounding, not a different model
    assert got[-1] < got[0]


@pytest.mark.slow
@pytest.mark.parametrize("layout", RESUMED)
def test_resume_from_layout_checkpoint(runner, layout):
    full = runner(layout, LAYOUTS[layout])
    assert os.path.isdir(os.path.join(full.path, "checkpoints", "step_10"))
    resumed = runner(f"{layout}_resumed", LAYOUTS[layout], resume_from=layout)
    a = {m["step"]: m["loss"] for m in full.metrics()}
    b = {m["step"]: m["loss"] for m in resumed.metrics()}
    assert sorted(b) == list(range(1, STEPS + 1))
    assert max(abs(a[s] - b[s]) for s in range(11, STEPS + 1)) < 1e-6


@pytest.mark.slow
def test_dp_tp_on_four_processes(runner, reference):
    """A real 2-D mesh (dp 2 x tp 2): 4 processes on 2 cores (slow, so one short run)."""
    run = runner("dp_tp4", {**LAYOUTS["dp_tp"], "parallel.num_processes": 4, "micro_batch_size": 4})
    assert run.info["effective"]["world_size"] == 4
    worst = max(abs(a - b) for a, b in zip(losses(reference), losses(run), strict=True))
    assert worst < TOL
    _, facts = layout_facts(run)
    q = _param(facts, 0, "blocks.0.attn.q.weight")
    assert facts[0]["mesh"] == {"dp": 2, "tp": 2} and q["local_shape"] == [16, 64]  # 64 rows / (tp 2 x dp 2)
    ops = run.metrics()[-1]["comm_bytes_by_op"]
    assert ops["all_gather"] > 0 and ops["reduce_scatter"] > 0 and ops["all_reduce"] > 0  # FSDP + TP


# ---------------------------------------------------------------------------------------------------------
# refused before launch, with the keys named


def _problems(cfg, overrides):
    return cfg.override(overrides).validate(CPU2)


@pytest.mark.parametrize(
    "overrides,key,words",
    [
        ({"parallel.strategy": "tp", "parallel.tp_size": 2, "model.n_head": 1, "model.d_model": 64}, "parallel.tp_size", "n_head"),
        ({"parallel.strategy": "tp", "parallel.tp_size": 1}, "parallel.tp_size", "tp_size >= 2"),
        ({"parallel.strategy": "tp", "parallel.tp_size": 4}, "parallel.tp_size", "num_processes"),
        ({"parallel.strategy": "dp_tp", "parallel.tp_size": 3, "parallel.num_processes": 4}, "parallel.tp_size", "divide"),
        ({"parallel.strategy": "pp", "parallel.pp_size": 2, "model.n_layer": 1}, "parallel.pp_size", "n_layer"),
        ({"parallel.strategy": "pp", "parallel.pp_size": 4}, "parallel.pp_size", "num_processes"),
        ({"parallel.strategy": "pp", "parallel.pp_size": 2, "parallel.pp_microbatches": 3}, "parallel.pp_microbatches", "equal"),
        ({"parallel.strategy": "pp", "parallel.pp_size": 2, "parallel.pp_schedule": "1f1b", "parallel.pp_microbatches": 1},
         "parallel.pp_microbatches", "1f1b"),
        ({"parallel.strategy": "zero3", "parallel.num_processes": 1}, "parallel.strategy", "num_processes"),
        ({"parallel.strategy": "zero1", "parallel.num_processes": 1}, "parallel.strategy", "num_processes"),
        ({"parallel.strategy": "ps", "parallel.num_processes": 1}, "parallel.strategy", "worker"),
        ({"parallel.strategy": "ddp", "parallel.tp_size": 2}, "parallel.tp_size", "tp_size: 1"),
        ({"parallel.strategy": "zero2", "parallel.pp_size": 2}, "parallel.pp_size", "pp_size: 1"),
        ({"parallel.strategy": "zero3", "precision": "fp16"}, "precision", "bf16"),
        ({"parallel.strategy": "tp", "parallel.tp_size": 2, "model.arch": "tests.test_parallel:no_such"}, "parallel.strategy", "GPT"),
        ({"activation_checkpointing": "yes"}, "activation_checkpointing", "true or false"),
    ],
)  # fmt: skip
def test_invalid_combinations_refused_before_launch(quickstart, workdir, overrides, key, words):
    problems = _problems(quickstart, overrides)
    hits = [p for p in problems if p.key == key and words in p.message]
    assert hits, problems
    with pytest.raises(wb.ConfigError):
        wb.launch(quickstart.override(overrides))
    assert not (workdir / "runs").exists()  # refused before any process or folder


def test_every_layout_valid_on_two_processes(quickstart):
    for name, overrides in LAYOUTS.items():
        assert _problems(quickstart, overrides) == [], name


# ---------------------------------------------------------------------------------------------------------
# the plan against real runs: status.json "measured" vs "planned", per rank, for every layout. The runs are
# the ones the tests above already made (the runner shares them), plus one that combines bf16 with activation
# checkpointing on DDP, so no layout is launched twice for the plan.

PLAN_TARGET = {"param_bytes": 0.01, "grad_bytes": 0.01, "optimizer_bytes": 0.01, "activation_bytes": 0.10}
PLAN_GRID = {  # run name (the runner's) -> its overrides; every layout the config offers, each at least once
    "ddp_bf16_ac": {**LAYOUTS["ddp"], "precision": "bf16", "activation_checkpointing": True, "max_steps": 1},
    "zero1_fp16": MIXED["zero1_fp16"],
    "zero2": LAYOUTS["zero2"],
    "zero3_bf16_ac": MIXED["zero3_bf16_ac"],
    "tp_bf16": MIXED["tp_bf16"],
    "dp_tp": LAYOUTS["dp_tp"],
    "pp_gpipe": LAYOUTS["pp_gpipe"],
    "pp_1f1b_bf16": MIXED["pp_1f1b_bf16"],
    "ps": LAYOUTS["ps"],
}


def test_plan_grid_covers_every_strategy():
    """A new strategy must join the grid of real runs that the plan is checked against."""
    from workbench.config import STRATEGIES

    assert {o.get("parallel.strategy", "ddp") for o in PLAN_GRID.values()} == set(STRATEGIES)


def _plan_errors(name, run):
    from workbench.plan import accuracy

    assert run.status == "finished", (name, run.error)
    cfg, info = run.config, run.info
    measured, planned = info["measured"], info["planned"]
    assert len(measured) == cfg.parallel.num_processes == len(planned["ranks"])
    first = next(e for e in run.metrics() if "measured" in e)  # the first metric event carries both too
    assert first["measured"] == measured and first["planned"]["ranks"] == planned["ranks"]
    failures = []
    for row in accuracy(planned, measured):
        f = row["field"]
        if f not in PLAN_TARGET:
            continue
        if f in planned["approximate"]:
            continue  # the plan labels it approximate: no target to meet
        if abs(row["error"]) > PLAN_TARGET[f]:
            failures.append(row | {"case": name})
    comm = first.get("comm_bytes")  # the communication payload the run measured, against the plan's
    if comm and "comm_bytes" not in planned["approximate"]:
        for m, p in zip(comm, planned["comm_bytes"], strict=True):
            assert abs(p - m) <= 0.01 * m, (name, comm, planned["comm_bytes"])
    return failures


@pytest.mark.slow
def test_plan_matches_what_real_runs_hold(runner):
    failures = []
    for name, overrides in PLAN_GRID.items():
        failures += _plan_errors(name, runner(name, overrides))
    assert not failures, failures
