"""Tensor parallelism on Hugging Face models against ddp: loss parity and planned == measured bytes.

    python benchmarks/hf_tp.py [--steps 20] [--out /tmp/hf-tp]

Trains a tiny Llama (lm), Qwen2 (lm: q/k/v biases) and BERT (mlm) from random weights on the Python standard
library's json package (``stdlib_corpus``, a bpe:320 tokenizer) under ddp and under tp (tp_size 2), 2 CPU
processes each, the same global batch, dropout 0. Prints per model: the largest |loss(tp) - loss(ddp)| over
the steps, and whether tp's measured parameter, gradient, optimizer and buffer bytes and comm bytes per rank
equal the plan's. tests/test_hf_parallel.py runs the Llama row in the suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import workbench as wb  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.data.files import stdlib_corpus  # noqa: E402

TINY = {"model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.seq_len": 32, "model.dropout": 0.0}
MODELS = {
    "llama lm": {"model.arch": "hf:llama", "model.hf_config": {"num_key_value_heads": 2, "intermediate_size": 172}},
    "qwen2 lm": {"model.arch": "hf:qwen2", "model.hf_config": {"num_key_value_heads": 2, "intermediate_size": 96}},
    "bert mlm": {"model.arch": "hf:bert", "task.kind": "mlm", "model.hf_config": {"intermediate_size": 128}},
}
KEYS = ("param_bytes", "grad_bytes", "optimizer_bytes", "buffer_bytes")


def run(cfg: RunConfig) -> wb.Run:
    problems = cfg.validate()
    assert problems == [], problems
    r = wb.launch(cfg)
    r.wait(timeout=900)
    assert r.status == "finished", r.error
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="/tmp/hf-tp")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    path = stdlib_corpus(os.path.join(a.out, "corpus.txt"), ("json",))
    data = {"data.source": "files", "data.path": path, "data.tokenizer": "bpe:320", "max_steps": a.steps,
            "log_every": 1, "eval_every": 0, "micro_batch_size": 4, "grad_accum_steps": 1,
            "runs_dir": os.path.join(a.out, "runs")}  # fmt: skip
    print("| model | steps | max abs loss(tp) - loss(ddp) | tp bytes per rank = plan | tp comm bytes = plan |")
    print("|---|---|---|---|---|")
    ok = True
    for name, fields in MODELS.items():
        losses, tp = {}, None
        for strategy, size in (("ddp", 1), ("tp", 2)):
            cfg = RunConfig().override({**TINY, **fields, **data, "name": f"{name.replace(' ', '-')}-{strategy}",
                                        "parallel.strategy": strategy, "parallel.tp_size": size})  # fmt: skip
            r = run(cfg)
            losses[strategy] = [e["loss"] for e in r.metrics()]
            tp = r
        m = tp.metrics()
        first, planned = m[0], m[0]["planned"]
        held = all(x[k] == p[k] for x, p in zip(first["measured"], planned["ranks"], strict=True) for k in KEYS)
        moved = m[-1]["comm_bytes"] == planned["comm_bytes"]
        diff = max(abs(x - y) for x, y in zip(losses["ddp"], losses["tp"], strict=True))
        ok &= held and moved and diff < 1e-4
        print(f"| {name} | {len(losses['tp'])} | {diff:.1e} | {held} | {moved} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
