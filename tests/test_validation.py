"""Bad input refused before any process starts, beyond single keys: your own model and data tried before launch,
splits too small for one micro-batch per rank, and each strategy's requirements stated once (STRATEGY_SPECS)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import QUICKSTART
from workbench import prelaunch
from workbench.config import (
    NAME_RE,
    PRECISIONS,
    STRATEGIES,
    STRATEGY_SPECS,
    DeviceInfo,
    cached_devices,
    detected_devices,
    strategies_using,
)

CPU2 = DeviceInfo("cpu", 2, "cpu")
H100x8 = DeviceInfo("cuda", 8, "NVIDIA H100 80GB HBM3", (9, 0), fp8_backend="torchao")

# The factories of tests/../check_trust's part 3: an LSTM language model, and three ways to break the contract.
BYO = """
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

CALLS = {"model": 0}


class LSTMLM(nn.Module):
    def __init__(self, vocab, width=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.rnn = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x, y=None):
        logits = self.head(self.rnn(self.emb(x))[0])
        if y is None:
            return logits
        return logits, nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


class Tokens(Dataset):
    def __init__(self, n, T, vocab, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (n, T + 1), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i, :-1], self.x[i, 1:]


def model(cfg):
    CALLS["model"] += 1
    return LSTMLM(cfg.data.vocab_size)


def data(cfg, split):
    return Tokens(512 if split == "train" else 64, cfg.model.seq_len, cfg.data.vocab_size, 0 if split == "train" else 1)


def model_and_optimizer(cfg):  # wrong: a tuple
    m = LSTMLM(cfg.data.vocab_size)
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


def raw_tensor(cfg, split):  # wrong: a tensor, not a dataset of (x, y)
    return torch.randint(0, cfg.data.vocab_size, (64, cfg.model.seq_len))


def logits_only(cfg):  # wrong: forward(x, y) returns the logits, no loss
    class M(LSTMLM):
        def forward(self, x, y=None):
            return super().forward(x)
    return M(cfg.data.vocab_size)


def raises(cfg):
    raise RuntimeError("no weights file here")


def few(cfg, split):  # 6 items: fewer than micro_batch_size 8 x 2 processes
    x = torch.randint(0, cfg.data.vocab_size, (6, cfg.model.seq_len + 1))
    return TensorDataset(x[:, :-1], x[:, 1:])


NOT_A_FUNCTION = 3
"""

GOOD = {"model.arch": "byo:model", "data.source": "byo:data"}
BROKEN = [  # (the override, the key the message must name, words it must hold)
    ({"model.arch": "byo:modle"}, "model.arch", ["has no 'modle' (did you mean \"byo:model\"?)", "nn.Module"]),
    ({"model.arch": "byo:model_and_optimizer"}, "model.arch", ["returned a tuple (LSTMLM, SGD)", "nn.Module"]),
    ({"data.source": "byo:raw_tensor"}, "data.source", ["returned a tensor of shape (64, 64)", "(x, y) pairs"]),
    ({"model.arch": "byo:logits_only"}, "model.arch", ["returned a tensor of shape (2, 64, 64)", "scalar"]),
    ({"model.arch": "byo:raises"}, "model.arch", ["raised RuntimeError: no weights file here"]),
    ({"data.source": "byo:few"}, "data.source", ["holds 6 items", "micro_batch_size 8 x parallel.num_processes 2"]),
    ({"model.arch": "byo:NOT_A_FUNCTION"}, "model.arch", ["is a builtins.int, not a function"]),
]


@pytest.fixture
def byo(workdir):
    (workdir / "byo.py").write_text(BYO)
    yield workdir
    sys.modules.pop("byo", None)


def test_your_own_factories_that_work_pass_and_leave_the_rng_alone(byo, quickstart):
    import torch

    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert prelaunch.problems(quickstart.override(GOOD), CPU2) == []
    assert torch.equal(torch.get_rng_state(), before)  # the trial draws nothing from the caller's generator


@pytest.mark.parametrize("override,key,words", BROKEN, ids=[next(iter(o.values())) for o, _, _ in BROKEN])
def test_a_broken_factory_is_refused_naming_its_key(byo, quickstart, override, key, words):
    problems = prelaunch.problems(quickstart.override({**GOOD, **override}), CPU2)
    assert [p.key for p in problems] == [key], problems
    for w in words:
        assert w in problems[0].message, problems[0].message


def test_factories_are_tried_once_per_config_and_again_after_an_edit(byo, quickstart):
    cfg = quickstart.override(GOOD)
    assert prelaunch.problems(cfg, CPU2) == []
    calls = sys.modules["byo"].CALLS["model"]
    for lr in (1e-3, 2e-3, 3e-3):  # the config panel validates on every keystroke
        assert prelaunch.problems(cfg.override({"optimizer.lr": lr}), CPU2) == []
    assert sys.modules["byo"].CALLS["model"] == calls
    # the user fixes (here: breaks) the file in their editor; the next validation sees what the workers would
    text = (byo / "byo.py").read_text().replace("def model(cfg):", "def modle(cfg):")
    (byo / "byo.py").write_text(text)
    st = os.stat(byo / "byo.py")
    os.utime(byo / "byo.py", (st.st_atime, st.st_mtime + 5))
    (p,) = prelaunch.problems(cfg, CPU2)
    assert p.key == "model.arch" and "has no 'model'" in p.message


@pytest.mark.parametrize("override,key,words", BROKEN[:3], ids=["misspelt", "tuple", "tensor"])
def test_the_cli_refuses_a_broken_factory_without_a_traceback(byo, override, key, words):
    sets = [f"{k}={v}" for k, v in {**GOOD, **override, "parallel.num_processes": 2, "max_steps": 5}.items()]
    args = ["workbench", "train", QUICKSTART] + [a for s in sets for a in ("--set", s)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert key in out.stderr and words[0] in out.stderr and "Traceback" not in out.stderr + out.stdout, out.stderr
    assert not (byo / "runs").exists()


# ---------------------------------------------------------------------------------------------------------
# no metric from zero samples: a split smaller than one micro-batch per rank is refused before launch

TINY_EVAL = {"micro_batch_size": 600, "model.seq_len": 16, "grad_accum_steps": 1, "parallel.num_processes": 1}


def test_an_eval_split_smaller_than_a_micro_batch_per_rank_is_refused(quickstart):
    (p,) = quickstart.override({**TINY_EVAL, "eval_every": 1}).validate(CPU2)
    assert p.key == "micro_batch_size"
    assert p.message.startswith(
        "600 x parallel.num_processes 1 exceeds the eval split's 512 sequences (data.num_sequences // 16)"
    )
    assert quickstart.override({**TINY_EVAL, "eval_every": 0}).validate(CPU2) == []  # no evaluation, no eval split
    # per rank: 2 processes x 300 sequences need 600 too
    (p,) = quickstart.override({**TINY_EVAL, "micro_batch_size": 300, "parallel.num_processes": 2}).validate(CPU2)
    assert p.key == "micro_batch_size" and "300 x parallel.num_processes 2" in p.message
    ok = quickstart.override({**TINY_EVAL, "micro_batch_size": 256, "parallel.num_processes": 2}).validate(CPU2)
    assert ok == []  # 512 = 2 x 256: exactly one micro-batch per rank


def test_a_train_split_smaller_than_a_micro_batch_per_rank_is_refused(quickstart):
    cfg = quickstart.override({"data.num_sequences": 16, "micro_batch_size": 16, "eval_every": 0})
    (p,) = cfg.validate(CPU2)
    assert p.key == "micro_batch_size" and "train split's 16 sequences (data.num_sequences)" in p.message


def test_the_cli_refuses_a_tiny_eval_split(workdir):
    sets = [f"{k}={v}" for k, v in {**TINY_EVAL, "eval_every": 1}.items()]
    out = subprocess.run(["workbench", "train", QUICKSTART] + [a for s in sets for a in ("--set", s)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "eval split's 512 sequences" in out.stderr and "Traceback" not in out.stderr
    assert not (workdir / "runs").exists()


def test_a_text_file_too_small_for_an_eval_split_is_refused_with_the_size_it_needs(tmp_path, quickstart):
    from workbench.data import build_dataset, num_sequences

    path = tmp_path / "t.txt"
    path.write_text("x" * 1000)  # trains (900 bytes, 14 sequences of 64), its last 100 bytes hold 1 sequence
    one = {"micro_batch_size": 1, "parallel.num_processes": 1}
    cfg = quickstart.override({"data.source": "text", "data.path": str(path), **one})
    assert cfg.validate(CPU2) == []
    path.write_text("x" * 600)  # the last 60 bytes: not one sequence of 64 + 1
    (p,) = cfg.validate(CPU2)
    assert p.key == "data.path" and "eval split" in p.message and "eval_every: 0" in p.message
    need = int(p.message.split("at least ")[1].split(" bytes")[0])
    # the size it names is exact: one byte less leaves the eval split without a sequence
    path.write_text("x" * need)
    assert num_sequences(cfg, "eval") == 1 and cfg.validate(CPU2) == []
    path.write_text("x" * (need - 1))
    assert num_sequences(cfg, "eval") == 0 and cfg.validate(CPU2) != []
    # with evaluation off it trains; its eval split is empty rather than the training text again
    path.write_text("y" * 600)
    assert cfg.override({"eval_every": 0}).validate(CPU2) == []
    assert len(build_dataset(cfg, "eval")) == 0 and len(build_dataset(cfg, "train")) == num_sequences(cfg, "train")


def test_split_sizes_come_from_one_place(quickstart):
    from workbench.data import build_dataset, num_sequences

    cfg = quickstart.override({"data.num_sequences": 64, "model.seq_len": 8})
    for split in ("train", "eval"):
        assert len(build_dataset(cfg, split)) == num_sequences(cfg, split)
    assert num_sequences(cfg, "eval") == 256  # a floor for small data sets
    assert num_sequences(cfg.override({"data.source": "pkg.mod:build"}), "train") is None  # its factory decides


# ---------------------------------------------------------------------------------------------------------
# each strategy's requirements, stated once: validate() and the panel read STRATEGY_SPECS


def _layout(strategy: str, n: int) -> dict:
    spec, cfg = STRATEGY_SPECS[strategy], {"parallel.strategy": strategy, "parallel.num_processes": n}
    if "parallel.tp_size" in spec.keys:
        cfg["parallel.tp_size"] = n
    if "parallel.pp_size" in spec.keys:
        cfg["parallel.pp_size"] = n
    return cfg


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_validate_follows_each_strategy_spec(quickstart, strategy):
    spec = STRATEGY_SPECS[strategy]
    assert quickstart.override(_layout(strategy, spec.min_processes)).validate(H100x8) == []
    if spec.min_processes > 1:
        assert quickstart.override(_layout(strategy, spec.min_processes - 1)).validate(H100x8) != []
    assert spec.processes_for_all_axes >= spec.min_processes
    for precision in PRECISIONS:
        problems = quickstart.override({**_layout(strategy, 2), "precision": precision}).validate(H100x8)
        assert (precision in spec.precisions) == (problems == []), (precision, problems)
    own = quickstart.override({**_layout(strategy, 2), "model.arch": "some_module_xyz:build"}).validate(H100x8)
    assert spec.model_parallel == any(p.key == "parallel.strategy" for p in own), own
    for key in ("parallel.tp_size", "parallel.pp_size"):
        if key not in spec.keys:
            assert any(p.key == key for p in quickstart.override({**_layout(strategy, 2), key: 2}).validate(H100x8))
    assert spec.summary


def test_strategies_using_a_key():
    assert strategies_using("parallel.tp_size") == ("tp", "dp_tp")
    assert strategies_using("parallel.pp_schedule") == ("pp",)
    assert strategies_using("parallel.num_processes") == ()


# ---------------------------------------------------------------------------------------------------------
# public names other modules use


def test_public_names_for_what_other_modules_read():
    assert NAME_RE.match("my-run_2") and not NAME_RE.match("../x")
    dev = detected_devices()
    assert cached_devices() is dev and DeviceInfo.detect() is dev and detected_devices() is dev


def test_validating_the_quickstart_does_not_import_torch():
    code = (
        "import sys, workbench as wb; cfg = wb.RunConfig.from_yaml(sys.argv[1]); assert cfg.validate() == []; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, QUICKSTART], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out
