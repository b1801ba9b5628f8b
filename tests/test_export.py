"""Export serves the model's whole output, for every forward contract, from the folder training ran in.

The serving contract (workbench/export.py): the ONNX graph returns what ``logits_of(model(x))`` gives in
PyTorch for the whole batch: a model's plain logits, or the first element of its ``(logits, loss)`` tuple.
Taking ``model(x)[0]`` blindly served the first sequence of a plain-logits model (and compared that same slice
on both sides, so parity looked fine); and `workbench export` could not import your module from the folder you
trained in (training puts the launch folder on the workers' path; the `workbench` script's sys.path holds
its own bin folder, not the working one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

import workbench as wb
from workbench import finetune as ft
from workbench.export import LogitsOnly, serving_logits, whole_batch_diff
from workbench.models import build_model

from .conftest import QUICKSTART, ROOT

# An LSTM language model of the user's own: forward(x) returns plain logits (B, T, V), forward(x, y) the
# (logits, loss) tuple the worker trains on. The same model as the acceptance check's.
BYO = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import Dataset


    class LSTMLM(nn.Module):
        def __init__(self, vocab, width=32):
            super().__init__()
            self.emb = nn.Embedding(vocab, width)
            self.rnn = nn.LSTM(width, width, batch_first=True)
            self.head = nn.Linear(width, vocab)

        def forward(self, x, y=None):
            logits = self.head(self.rnn(self.emb(x))[0])
            if y is None:
                return logits  # serving: plain logits, (batch, length, vocab)
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
        return LSTMLM(cfg.data.vocab_size)


    def data(cfg, split):
        n = 512 if split == "train" else 64
        return Tokens(n, cfg.model.seq_len, cfg.data.vocab_size, 0 if split == "train" else 1)
    """
)
BYO_MODULE = "byo_lstm_export_test"  # a name no other test imports


def workbench_cli(*args: str, cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as the `workbench` script runs it: -P keeps the working folder off sys.path (python -m would
    put it there, hiding the bug), PYTHONPATH names only this checkout."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-P", "-m", "workbench.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class PlainLogits(nn.Module):
    """forward(x) -> (B, T, V) logits, no tuple."""

    def __init__(self, vocab: int = 11, width: int = 4):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.head(self.emb(x))
        return logits if y is None else nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


# ---------------------------------------------------------------------------------------------------------
# the serving contract, without training


def test_logits_of_every_forward_contract():
    x = torch.randint(0, 11, (3, 5))
    plain = PlainLogits()
    want = plain(x)
    assert want.shape == (3, 5, 11)
    assert ft.logits_of(want) is want  # plain logits: the whole tensor, not its first sequence
    assert ft.logits_of((want, None)) is want  # our GPT's (logits, loss) with loss None
    assert ft.logits_of([want, torch.tensor(1.0)]) is want

    class Output(dict):  # Hugging Face's ModelOutput: a dict with attributes
        logits = want

    assert ft.logits_of(Output()) is want
    with pytest.raises(TypeError, match="forward"):
        ft.logits_of({"loss": torch.tensor(1.0)})


def test_logits_only_serves_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randint(0, 11, (3, 5))
    plain = PlainLogits().eval()
    got = LogitsOnly(plain)(x)
    assert got.shape == (3, 5, 11) and torch.equal(got, plain(x))
    gpt = wb.RunConfig.from_yaml(QUICKSTART)
    model = build_model(gpt).eval()
    tokens = torch.randint(0, gpt.data.vocab_size, (3, gpt.model.seq_len))
    with torch.no_grad():
        assert torch.equal(LogitsOnly(model)(tokens), model(tokens)[0])  # the tuple contract: its logits


def test_a_slice_never_passes_for_the_whole_batch():
    want = np.zeros((3, 5, 11), dtype=np.float32)
    assert whole_batch_diff(want[0], want) == float("inf")  # numpy would broadcast (5, 11) and report 0
    assert whole_batch_diff(want + 1e-3, want) == pytest.approx(1e-3)


def test_a_forward_that_drops_the_batch_is_refused_before_export():
    cfg = wb.RunConfig.from_yaml(QUICKSTART).override({"model.arch": "mine:build"})

    class LossOnly(nn.Module):
        def forward(self, x):
            return x.float().mean()

    with pytest.raises(ValueError, match=r"model.arch 'mine:build'.*first axis is the batch"):
        serving_logits(LossOnly(), torch.zeros(4, 3, dtype=torch.long), cfg)


# ---------------------------------------------------------------------------------------------------------
# your own model, trained and exported from the same folder


@pytest.mark.slow
def test_export_your_own_plain_logits_model_from_the_folder_you_trained_in(tmp_path, monkeypatch):
    work = tmp_path / "project"
    work.mkdir()
    (work / f"{BYO_MODULE}.py").write_text(BYO)
    sets = {"name": "byo", "runs_dir": str(work / "runs"), "model.arch": f"{BYO_MODULE}:model",
            "data.source": f"{BYO_MODULE}:data", "parallel.num_processes": 1, "max_steps": 10, "eval_every": 0}  # fmt: skip
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    r = workbench_cli("train", QUICKSTART, *args, cwd=str(work))
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    run_dir = str(work / "runs" / "byo")
    r = workbench_cli("export", run_dir, "--onnx", cwd=str(work))
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]  # was: ModuleNotFoundError
    assert "over the whole batch" in r.stdout and "(ok)" in r.stdout, r.stdout
    onnx_path = os.path.join(run_dir, "export", "model.onnx")

    # an independent check: a batch of 3 through onnxruntime against the model's own forward in PyTorch
    import onnxruntime as ort

    monkeypatch.setattr(sys, "path", [str(work), *sys.path])  # restored after the test
    monkeypatch.delitem(sys.modules, BYO_MODULE, raising=False)
    cfg = wb.RunConfig.from_yaml(os.path.join(run_dir, "config.yaml"))
    T, V = cfg.model.seq_len, cfg.data.vocab_size
    x = torch.randint(0, V, (3, T), generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    model = ft.load_model(run_dir)
    with torch.no_grad():
        want = model(x).numpy()  # plain logits: (3, T, V)
    assert got.shape == want.shape == (3, T, V)
    assert np.abs(got - want).max() < 1e-4
    assert type(model).__module__ == BYO_MODULE and set(model.state_dict()) >= {"emb.weight", "head.weight"}


def test_export_from_elsewhere_names_the_launch_folder(tmp_path, monkeypatch):
    """Loading your own model from another folder fails with a message naming model.arch and the folder
    tried (the launch folder is not recorded in status.json, so the working one is used)."""
    run_dir = tmp_path / "runs" / "byo"
    run_dir.mkdir(parents=True)
    cfg = wb.RunConfig.from_yaml(QUICKSTART).override({"model.arch": "not_importable_here:model"})
    cfg.to_yaml(str(run_dir / "config.yaml"))
    (run_dir / "checkpoints" / "step_1").mkdir(parents=True)
    torch.save({}, run_dir / "checkpoints" / "step_1" / "pytorch_model.bin")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ModuleNotFoundError, match=r"model.arch 'not_importable_here:model'.*elsewhere"):
        ft.load_model(str(run_dir))


@pytest.mark.slow
def test_export_the_notebook_model_serves_every_point(tmp_path, monkeypatch):
    """notebooks/my_model.py (notebook 12): float points in, (batch, 2) logits out; forward(x, y) a scalar loss."""
    notebooks = os.path.join(ROOT, "notebooks")
    sets = {"name": "spirals", "runs_dir": str(tmp_path / "runs"), "model.arch": "my_model:build",
            "data.source": "my_model:build_data", "parallel.num_processes": 1, "max_steps": 5, "eval_every": 0}  # fmt: skip
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    r = workbench_cli("train", QUICKSTART, *args, cwd=notebooks)
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    run_dir = str(tmp_path / "runs" / "spirals")
    r = workbench_cli("export", run_dir, "--onnx", "--torchscript", cwd=notebooks)  # the other exporter, too
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    assert f"logits ({wb.RunConfig.from_yaml(QUICKSTART).micro_batch_size}, 2)" in r.stdout, r.stdout
    import onnxruntime as ort

    sess = ort.InferenceSession(os.path.join(run_dir, "export", "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "inputs"  # points, not tokens
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    got = sess.run(None, {"inputs": x.numpy()})[0]
    monkeypatch.chdir(notebooks)  # load_model imports my_model from the launch folder, as export did
    monkeypatch.setattr(sys, "path", list(sys.path))
    with torch.no_grad():
        want = ft.load_model(run_dir)(x).numpy()
    assert got.shape == want.shape == (3, 2) and np.abs(got - want).max() < 1e-4
