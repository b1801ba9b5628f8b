"""The PEFT methods side by side on one pretrained encoder: the rows of README's fine-tuning table.

    rows = peft_methods_table("runs-peft")       # pretrain a tiny BERT once, fine-tune it six ways
    print(markdown(rows))

1. A tiny BERT (``model.arch: hf:bert``) pretrains with masked-language modelling on the Python standard
   library's own sources (``stdlib_corpus``: real text on every machine, nothing downloaded).
2. It fine-tunes on a labelled task that needs no download either (``package_lines``): which standard-library
   package a line of code comes from (logging / http / unittest, balanced: chance is 1/3), once per
   peft.method: none (full), frozen, lora, adalora, prefix, adapter, each run through ``wb.launch`` on the same
   processes, steps and data.

Each row: trainable parameters (peft's count, as the run reported it), bytes per rank held for training
(parameters + gradients + optimizer state, measured by the worker at its first step on rank 0), training
tokens/s (mean over the log intervals after the first), test accuracy and macro-F1, and chance (1/3).
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

PEFT_TABLE_METHODS = ("none", "frozen", "lora", "adalora", "prefix", "adapter")
PACKAGES = ("logging", "http", "unittest")


def package_lines(path: str, packages: tuple[str, ...] = PACKAGES, per_package: int = 1500) -> str:
    """Write a labelled JSON-lines file: lines (over 30 characters) of the standard library's sources of each
    package, label = the package's index, ``per_package`` each (balanced), in a fixed interleaved order."""
    import glob
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    rows = []
    for label, pkg in enumerate(packages):
        lines = [ln.strip() for p in sorted(glob.glob(os.path.join(stdlib, pkg, "*.py")))
                 for ln in open(p, errors="replace") if len(ln.strip()) > 30]  # fmt: skip
        if len(lines) < per_package:
            raise ValueError(f"package {pkg!r} has {len(lines)} lines over 30 characters, fewer than {per_package}")
        rows += [{"text": t, "label": label} for t in lines[:: max(1, len(lines) // per_package)][:per_package]]
    rows.sort(key=lambda r: zlib.crc32(r["text"].encode()))  # interleave the classes, the same order every run
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def encoder_config(work_dir: str, pretrain_steps: int, num_processes: int) -> Any:
    """The masked-language pretraining run of the tiny BERT on standard-library text."""
    import workbench as wb
    from workbench.data.files import stdlib_corpus

    corpus = stdlib_corpus(os.path.join(work_dir, "corpus.txt"), ("json", "email", "logging", "http"))
    return wb.RunConfig().override({
        "name": "bert-mlm", "model.arch": "hf:bert", "model.n_layer": 2, "model.n_head": 4, "model.d_model": 64,
        "model.seq_len": 64, "model.hf_config": {"intermediate_size": 256}, "task.kind": "mlm",
        "data.source": "files", "data.path": corpus, "data.tokenizer": "bpe:512", "parallel.num_processes":
        num_processes, "max_steps": pretrain_steps, "log_every": 10, "eval_every": 0, "micro_batch_size": 16,
        "grad_accum_steps": 1, "runs_dir": os.path.join(work_dir, "runs")})  # fmt: skip


def finished(cfg: Any) -> Any:
    import workbench as wb

    run = wb.launch(cfg, overwrite=True)
    run.wait()
    if run.status != "finished":
        raise RuntimeError(f"{cfg.name}: {run.status}: {run.error}")
    return run


def row_of(method: str, run: Any) -> dict[str, Any]:
    """One table row from a finished fine-tuning run's metric events and status.json."""
    ev = run.metrics()
    steady = [e["tokens_per_s"] for e in ev[1:] if e.get("tokens_per_s")] or [ev[-1]["tokens_per_s"]]
    m = (run.info.get("measured") or [{}])[0]
    last = ev[-1]
    return {
        "method": method,
        "trainable_params": ev[0]["trainable_params"],
        "bytes_per_rank": m.get("param_bytes", 0) + m.get("grad_bytes", 0) + m.get("optimizer_bytes", 0),
        "tokens_per_s": sum(steady) / len(steady),
        "accuracy": last["test_accuracy"],
        "macro_f1": last["test_f1"],
        "chance": ev[0].get("chance_accuracy"),
    }


def peft_methods_table(
    work_dir: str,
    methods: tuple[str, ...] = PEFT_TABLE_METHODS,
    pretrain_steps: int = 200,
    steps: int = 150,
    num_processes: int = 2,
    per_package: int = 1500,
    lr: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Pretrain the tiny BERT once, fine-tune it with each peft.method; one row per method (see the module).

    lr: optimizer.lr per method (default: 1e-3 for full fine-tuning, 1e-2 for the others, whose few
    parameters take larger steps)."""
    os.makedirs(work_dir, exist_ok=True)
    rates = {"none": 1e-3, **{m: 1e-2 for m in PEFT_TABLE_METHODS if m != "none"}, **(lr or {})}
    pre = finished(encoder_config(work_dir, pretrain_steps, num_processes))
    labelled = package_lines(os.path.join(work_dir, "labelled.jsonl"), PACKAGES, per_package)
    tune = pre.config.override({"init_from": pre.path, "task.kind": "classify", "task.num_labels": len(PACKAGES),
                                "data.path": labelled, "max_steps": steps, "eval_every": steps,
                                "schedule.warmup_steps": max(1, steps // 10)})  # fmt: skip
    rows = []
    for method in methods:
        cfg = tune.override({"name": f"bert-{method}", "peft.method": method, "optimizer.lr": rates[method],
                             "peft.r": 8})  # fmt: skip
        rows.append(row_of(method, finished(cfg)))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as README's markdown table."""
    head = "| peft.method | trainable params | bytes/rank (params+grads+optimizer) | tokens/s | accuracy | macro-F1 |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_params']:,} | {r['bytes_per_rank'] / 2**20:.2f} MiB | "
                     f"{r['tokens_per_s']:,.0f} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} |")  # fmt: skip
    return "\n".join(lines)
