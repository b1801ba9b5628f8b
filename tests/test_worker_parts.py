"""The engine's small pieces, without launching training: checkpoints, status.json's schema, JSONL tailing,
byte formatting, torchelastic error files, MFU without a peak, TensorBoard's scalars (issues 11 and 12)."""

from __future__ import annotations

import json
import os
import types

import pytest

from workbench import checkpoints
from workbench.fileio import JsonlTail, format_bytes, read_jsonl, write_json_atomic
from workbench.launch import explain_failure, rank_errors
from workbench.status import STATUS_KEYS, read_status, write_status
from workbench.telemetry import mfu, tensorboard_scalars


def test_checkpoints_listed_and_latest_by_step(tmp_path):
    root = tmp_path / "checkpoints"
    for d in ("step_9", "step_10", "step_x", "other", "step_"):
        (root / d).mkdir(parents=True)
    (root / "step_9" / "model.safetensors").write_bytes(b"")
    assert [os.path.basename(p) for p in checkpoints.list_checkpoints(str(tmp_path))] == ["step_9", "step_10"]
    assert checkpoints.latest(str(tmp_path)).endswith("step_10")  # numeric order, not text order
    assert checkpoints.latest(str(tmp_path), with_model_weights=True).endswith("step_9")
    assert checkpoints.latest(str(tmp_path / "nothing")) is None
    assert checkpoints.step_of("step_12") == 12 and checkpoints.step_of("step_1a") is None


def test_status_keys_are_defined_in_one_place(tmp_path):
    write_status(str(tmp_path), state="running", step=3)
    assert read_status(str(tmp_path))["step"] == 3 and "updated" in read_status(str(tmp_path))
    with pytest.raises(KeyError, match="worker_pids"):
        write_status(str(tmp_path), worker_pids=[1, 2])  # an undocumented key is refused
    with pytest.raises(ValueError, match="state"):
        write_status(str(tmp_path), state="exploded")
    assert {"state", "error", "effective", "eval_skipped", "resume"} <= set(STATUS_KEYS)


def test_jsonl_tail_returns_each_event_once(tmp_path):
    path = tmp_path / "m.jsonl"
    tail = JsonlTail(str(path))
    assert tail.read() == []
    with open(path, "w") as f:
        f.write(json.dumps({"step": 1}) + "\n" + '{"step": 2')  # the second line is half-written
    assert tail.read() == [{"step": 1}]
    with open(path, "a") as f:
        f.write("}\n")
    assert tail.read() == [{"step": 2}]
    assert tail.read() == []
    assert read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]


def test_format_bytes_and_atomic_json(tmp_path):
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1.5 * 1024**3) == "1.5 GiB"
    assert format_bytes(-3 * 1024**2) == "-3.0 MiB"
    write_json_atomic(str(tmp_path / "a.json"), {"x": 1})
    assert json.load(open(tmp_path / "a.json")) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # no temp file left behind


def _error_file(run_dir, rank, message, stamp):
    d = run_dir / "elastic" / "none_abc" / "attempt_0" / str(rank)
    d.mkdir(parents=True)
    tb = f'Traceback (most recent call last):\n  File "x.py"\n{message}\n'
    data = {"message": {"message": message, "extraInfo": {"py_callstack": tb, "timestamp": str(stamp)}}}
    (d / "error.json").write_text(json.dumps(data))


def test_failure_named_from_torchelastic_error_files(tmp_path):
    # rank 1 raised first; rank 0 raised a consequence a second later. No stderr summary at all.
    _error_file(tmp_path, 1, "ValueError: the real cause", 1000)
    _error_file(tmp_path, 0, "RuntimeError: Connection closed by peer", 1001)
    errors = rank_errors(str(tmp_path))
    assert sorted(errors) == [0, 1] and errors[1].message == "ValueError: the real cause"
    text = explain_failure(str(tmp_path), 1)
    assert text.startswith("rank 1 raised ValueError: the real cause") and "Traceback" in text


def test_killed_rank_named_from_torchelastic_summary(tmp_path):
    (tmp_path / "stderr.log").write_text(
        "Root Cause (first observed failure):\n[0]:\n  time : x\n  host : h\n  rank : 1 (local_rank: 1)\n"
        "  exitcode : -9 (pid: 123)\n"
    )
    assert "rank 1 died (SIGKILL)" in explain_failure(str(tmp_path), 1)


def test_killed_rank_wins_over_a_survivor_that_lost_its_peer(tmp_path):
    # Seen under load: rank 1 was SIGKILLed, rank 0 raised gloo's "Read error" before the agent stopped it, and
    # torchelastic named rank 0 (the first error file it saw) as the root cause. The killed rank is the cause.
    _error_file(tmp_path, 0, "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:123", 1000)
    (tmp_path / "stderr.log").write_text(
        "Failures:\n[1]:\n  time : x\n  host : h\n  rank : 1 (local_rank: 1)\n  exitcode : -9 (pid: 124)\n"
        "  error_file: <N/A>\n-----\nRoot Cause (first observed failure):\n[0]:\n  time : x\n  host : h\n"
        "  rank : 0 (local_rank: 0)\n  exitcode : 1 (pid: 123)\n"
    )
    assert explain_failure(str(tmp_path), 1).startswith("rank 1 died (SIGKILL)")
    # gloo's other wording for the same thing (seen in CI, pair.cc:553)
    gloo = "RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed ... typically caused by a remote worker crashing."
    (tmp_path / "elastic" / "none_abc" / "attempt_0" / "0" / "error.json").unlink()
    (tmp_path / "elastic" / "none_abc" / "attempt_0" / "0").rmdir()
    _error_file(tmp_path, 0, gloo, 1000)
    assert explain_failure(str(tmp_path), 1).startswith("rank 1 died (SIGKILL)")
    # the agent's own log line names local_rank 0 with its exit code before the summary (seen in CI): not an entry
    (tmp_path / "stderr.log").write_text(
        "E1130 api.py:1002] failed (exitcode: -15) local_rank: 0 (pid: 123) of binary: python\n"
        + (tmp_path / "stderr.log").read_text().replace("exitcode : 1 (pid: 123)", "exitcode : -15 (pid: 123)")
    )
    assert explain_failure(str(tmp_path), 1).startswith("rank 1 died (SIGKILL)")
    # a real exception on a rank is never overruled by a killed rank
    _error_file(tmp_path, 2, "ValueError: the real cause", 999)
    assert explain_failure(str(tmp_path), 1).startswith("rank 2 raised ValueError")


def test_mfu_absent_without_an_honest_peak(monkeypatch):
    from workbench.worker import resolve_peak

    assert mfu(1e9, 1000.0, None, 2) is None
    assert mfu(1e9, 1000.0, float("nan"), 2) is None
    assert mfu(1e9, 1000.0, 1e12, 2) == pytest.approx(0.5)
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Mystery Accelerator 9000")
    acc = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda"), is_main_process=True)
    cfg = types.SimpleNamespace(precision="bf16")
    peak, facts = resolve_peak(cfg, acc)
    assert peak is None and facts["peak_flops_per_device"] is None
    assert "Mystery Accelerator 9000" in facts["peak_flops_source"]


def test_tensorboard_gets_no_float32_wall_clock():
    # float32 keeps 24 bits: time.time() ~1.7e9 s would be off by up to 128 s in TensorBoard
    scalars = tensorboard_scalars({"step": 5, "time": 1.7e9 + 0.123, "elapsed_s": 12.5, "loss": 2.0})
    assert "time" not in scalars and scalars["elapsed_s"] == 12.5 and scalars["loss"] == 2.0


def test_mfu_is_never_above_one():
    # a model cannot outrun its devices: above 1 the peak is wrong, and the figure is left out (the worker
    # then measures the peak again), never reported as 130%
    assert mfu(1e9, 1000.0, 1e12, 1) == pytest.approx(1.0)
    assert mfu(1e9, 1300.0, 1e12, 1) is None


def test_readme_documents_every_status_key():
    from workbench.status import STATUS_KEYS

    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    missing = [k for k in STATUS_KEYS if f"`{k}`" not in readme]
    assert not missing, f"README's status.json keys lack {missing}"


def test_a_model_faster_than_the_peak_makes_the_worker_measure_it_again(monkeypatch, tmp_path):
    """Trainer.check_peak: the peak is measured anew (refresh=True), the new figure used, and the event recorded in
    status.json, so a figure taken while other jobs held the cores does not last the whole run."""
    from workbench import worker

    calls = []

    def fake_resolve(cfg, acc, refresh=False):
        calls.append(refresh)
        return 2e11, {
            "peak_flops_per_device": 2e11,
            "peak_flops_source": "measured again",
            "peak_flops_measured_at": "t",
        }

    monkeypatch.setattr(worker, "resolve_peak", fake_resolve)
    trainer = types.SimpleNamespace(
        peak=1e9, step=7, cfg=None, main=True, run_dir=str(tmp_path), effective={}, peak_remeasured=[],
        acc=types.SimpleNamespace(device=types.SimpleNamespace(type="cpu")),
    )  # fmt: skip
    worker.Trainer.check_peak(trainer)
    assert calls == [True] and trainer.peak == 2e11
    assert read_status(str(tmp_path))["peak_remeasured"] == [{"step": 7, "old": 1e9, "new": 2e11}]
    assert read_status(str(tmp_path))["effective"]["peak_flops_source"] == "measured again"
