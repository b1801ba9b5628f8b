"""RunConfig: every key with a valid and an invalid value, YAML round-trip, overrides, unsafe names."""

from __future__ import annotations

import math

import pytest

import workbench as wb
from workbench.config import ConfigError, DeviceInfo, RunConfig

CPU2 = DeviceInfo("cpu", 2, "cpu")
H100x8 = DeviceInfo("cuda", 8, "NVIDIA H100 80GB HBM3", (9, 0), fp8_backend="torchao")
A100x2 = DeviceInfo("cuda", 2, "NVIDIA A100-SXM4-80GB", (8, 0))

# (key, a valid value, an invalid value). Each key of the contract appears at least once.
KEYS = [
    ("name", "my-run_2", "../x"),
    ("model.arch", "gpt", "lstm"),
    ("model.n_layer", 4, 0),
    ("model.n_head", 8, 3),  # 64 % 3 != 0
    ("model.d_model", 128, -1),
    ("model.seq_len", 128, 1),
    ("model.dropout", 0.1, 1.5),
    ("data.source", "synthetic", "wikipedia"),
    ("data.vocab_size", 128, 1),
    ("data.seed", 3, -1),
    ("data.num_sequences", 1024, 0),
    ("parallel.num_processes", 1, 0),
    ("parallel.strategy", "ddp", "zero9"),
    ("parallel.tp_size", 1, 0),
    ("parallel.pp_size", 1, -2),
    ("parallel.pp_schedule", "1f1b", "interleaved"),
    ("parallel.pp_microbatches", 8, 0),
    ("precision", "bf16", "fp64"),
    ("micro_batch_size", 4, 0),
    ("grad_accum_steps", 1, 0),
    ("activation_checkpointing", True, "yes"),
    ("compile", True, "yes"),
    ("tf32", False, 1),
    ("max_steps", 100, 0),
    ("optimizer.name", "sgd", "lion"),
    ("optimizer.lr", 1e-4, float("nan")),
    ("optimizer.weight_decay", 0.0, -0.1),
    ("optimizer.betas", [0.8, 0.99], [0.9]),
    ("optimizer.grad_clip", 0.0, -1.0),
    ("schedule.warmup_steps", 0, -5),
    ("schedule.decay", "linear", "exponential"),
    ("schedule.min_lr_ratio", 0.0, 2.0),
    ("log_every", 1, 0),
    ("eval_every", 0, -1),
    ("eval_batches", 2, 0),
    ("checkpoint_every", 50, -1),
    ("profile_steps", 2, 199),  # quickstart's max_steps 200 less the 2 warm-up steps leaves 198
    ("seed", 1234, -3),
    ("device", "cpu", "tpu"),
    ("runs_dir", "elsewhere", ""),
    ("timeout_s", 30, 1),
    ("trackers", ["tensorboard"], ["neptune"]),
    # after pretraining (tests/test_finetune.py checks run folders, architecture and teacher mismatches)
    ("init_from", None, "no/such/run"),
    ("task.kind", "classify", "regression"),
    ("task.num_labels", 3, 1),
    ("peft.method", "lora", "ia3"),
    ("peft.r", 4, 0),
    ("peft.alpha", 8, 0),
    ("peft.target", ["attn"], ["ffn"]),
    ("peft.num_virtual_tokens", 4, 0),
    ("distill.teacher", None, "no/such/run"),
    ("distill.temperature", 4.0, 0.0),
    ("distill.alpha", 0.9, 1.5),
    ("data.text_field", "body", ""),
    ("data.label_field", "y", 3),
    ("data.tokenizer", "bpe:512", "bpe:12"),
]


@pytest.mark.parametrize("key,good,bad", KEYS, ids=[k for k, _, _ in KEYS])
def test_every_key_valid_and_invalid(quickstart, key, good, bad):
    assert quickstart.override({key: good}).validate(CPU2) == []
    problems = quickstart.override({key: bad}).validate(CPU2)
    assert problems, f"{key}={bad!r} accepted"
    assert any(p.key == key or p.key.startswith(key.split(".")[0]) for p in problems), problems


def test_all_contract_keys_covered():
    """Every leaf key of RunConfig is in the table above (a new key needs a line there)."""
    leaves = set()

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            else:
                leaves.add(prefix + k)

    walk(RunConfig().to_dict())
    leaves.discard("data.path")  # only meaningful with data.source text: tested below
    assert leaves <= {k for k, _, _ in KEYS}, leaves - {k for k, _, _ in KEYS}


def test_quickstart_is_valid_and_default(quickstart):
    assert quickstart.validate(CPU2) == []
    assert quickstart.parallel.num_processes == 2 and quickstart.name == "quickstart"


def test_yaml_round_trip(tmp_path, quickstart):
    cfg = quickstart.override({"precision": "bf16", "optimizer.betas": [0.8, 0.9], "model.n_layer": 3})
    path = tmp_path / "c.yaml"
    cfg.to_yaml(str(path))
    back = RunConfig.from_yaml(str(path))
    assert back == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_override_paths(quickstart):
    cfg = quickstart.override({"parallel.num_processes": 1, "precision": "bf16"})
    assert cfg.parallel.num_processes == 1 and cfg.precision == "bf16"
    assert quickstart.parallel.num_processes == 2  # frozen: the original is unchanged
    cfg = quickstart.override(model={"n_layer": 6, "d_model": 96})
    assert cfg.model.n_layer == 6 and cfg.model.d_model == 96 and cfg.model.n_head == 4
    cfg = quickstart.override_strings(["precision=bf16", "parallel.num_processes=1", "optimizer.lr=1e-3"])
    assert cfg.precision == "bf16" and cfg.parallel.num_processes == 1 and cfg.optimizer.lr == 1e-3


def test_unknown_keys_did_you_mean(quickstart):
    with pytest.raises(ConfigError, match='did you mean "grad_accum_steps"'):
        quickstart.override({"grad_acum_steps": 2})
    with pytest.raises(ConfigError, match='did you mean "num_processes"'):
        quickstart.override({"parallel.num_process": 2})
    with pytest.raises(ConfigError, match='did you mean "lr"'):
        RunConfig.from_dict({"optimizer": {"lrr": 0.1}})


@pytest.mark.parametrize("name", ["../x", "/abs", "", "a/b", "..", ".hidden", "x" * 200, "sp ace"])
def test_unsafe_names_refused(quickstart, name):
    assert [p for p in quickstart.override({"name": name}).validate(CPU2) if p.key == "name"]


def test_derived_values(quickstart):
    cfg = quickstart.override({"micro_batch_size": 8, "grad_accum_steps": 4, "parallel.num_processes": 2})
    assert cfg.global_batch_size == 64
    assert cfg.tokens_per_step == 64 * cfg.model.seq_len


def test_validate_lists_every_problem_at_once(quickstart):
    cfg = quickstart.override({"micro_batch_size": 0, "grad_accum_steps": -1, "optimizer.lr": float("inf")})
    keys = {p.key for p in cfg.validate(CPU2)}
    assert {"micro_batch_size", "grad_accum_steps", "optimizer.lr"} <= keys


def test_device_dependent_rules(quickstart):
    fp8 = quickstart.override({"precision": "fp8"})
    assert any("fp8" in p.message for p in fp8.validate(CPU2))
    assert fp8.validate(H100x8) == []
    assert any(p.key == "precision" for p in fp8.validate(A100x2))
    many = quickstart.override({"parallel.num_processes": 4})
    assert any(p.key == "parallel.num_processes" for p in many.validate(A100x2))
    assert many.validate(H100x8) == []
    assert any(p.key == "device" for p in quickstart.override({"device": "cuda"}).validate(CPU2))


def test_text_source(tmp_path, quickstart):
    missing = quickstart.override({"data.source": "text", "data.path": str(tmp_path / "nope.txt")})
    assert any(p.key == "data.path" for p in missing.validate(CPU2))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert any(
        p.key == "data.path"
        for p in quickstart.override({"data.source": "text", "data.path": str(empty)}).validate(CPU2)
    )
    good = tmp_path / "good.txt"
    # 24,000 bytes: the last 10% (2,400) holds 37 eval sequences of 64, enough for micro_batch 8 x 2 processes
    good.write_text("hello world " * 2000)
    assert quickstart.override({"data.source": "text", "data.path": str(good)}).validate(CPU2) == []
    # 2,400 bytes trains (2,160), but its 240-byte eval split holds 3 sequences: no rank gets a micro-batch, and
    # evaluation would report a loss over zero samples. Refused, naming the keys; fine with evaluation off.
    short = tmp_path / "short.txt"
    short.write_text("hello world " * 200)
    cfg = quickstart.override({"data.source": "text", "data.path": str(short)})
    (p,) = cfg.validate(CPU2)
    assert p.key == "micro_batch_size" and "eval split's 3 sequences" in p.message and "eval_every: 0" in p.message
    assert cfg.override({"eval_every": 0}).validate(CPU2) == []


def test_malformed_and_unsafe_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(str(bad))
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    with pytest.raises(ConfigError):
        RunConfig.from_yaml(str(evil))
    assert not (tmp_path / "pwned").exists()


def test_launch_refuses_invalid_before_any_process(workdir, quickstart):
    with pytest.raises(ConfigError) as e:
        wb.launch(quickstart.override({"grad_accum_steps": 0, "optimizer.lr": math.nan}))
    assert "grad_accum_steps" in str(e.value) and "optimizer.lr" in str(e.value)
    assert not (workdir / "runs").exists()
