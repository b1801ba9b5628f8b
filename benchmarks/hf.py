"""Hugging Face models through the workbench: its worker against a bare Accelerate loop, and the data pipeline.

    python benchmarks/hf.py [--steps 120] [--warmup 20] [--repeats 3] [--out benchmarks/results]

1. Training throughput. The same tiny Llama (2 layers, width 64, 4 query and 2 key/value heads, SwiGLU 172,
   seq_len 64) on the same data (the Python standard library's json and email sources, a byte-level BPE of 512
   tokens, packed), batch, steps and seed, fp32, 2 CPU processes: `wb.launch` against a loop written by hand with
   Accelerate (``accelerator.prepare`` over the transformers model, AdamW, a DataLoader), started by the same
   `accelerate launch` command. Runs alternate (workbench, bare, workbench, ...) so drifts in machine speed hit
   both; tokens/s is timed on both sides over the same window of optimizer steps (--warmup to --steps) from their
   own clocks at log steps; the figure is the median of the ratios. Target: workbench >= 0.98 x bare.
2. The data pipeline, in this process: reading the files with `datasets`, training the BPE tokenizer, and
   tokenizing + packing, in MB of text per second.

The load average is recorded before and after every run: the figures are only as good as the machine was idle.
Results: OUT/hf.json and the Markdown table printed at the end (README, "Hugging Face models: throughput").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from overhead import bare_tokens_per_s, workbench_tokens_per_s  # benchmarks/: the same timing as overhead.py

import workbench as wb
from workbench.data.files import load_rows, pack, split_rows, stdlib_corpus, tokenizer_for

BARE = r'''
"""The bare loop: what a person would write by hand with Accelerate and transformers for the same training."""
import json, sys, time
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from workbench.config import RunConfig
from workbench.data.files import dataset
from workbench.models.hf_config import hf_config_dict

cfg = RunConfig.from_yaml(sys.argv[1]); prepared = sys.argv[2]; warmup = int(sys.argv[3]); out = sys.argv[4]
acc = Accelerator(cpu=True)
set_seed(cfg.seed)
config = transformers.AutoConfig.for_model("llama", **hf_config_dict(cfg), pad_token_id=1, bos_token_id=0, eos_token_id=0)
model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                        weight_decay=cfg.optimizer.weight_decay)
dl = DataLoader(dataset(cfg, "train", prepared), batch_size=cfg.micro_batch_size, shuffle=True, drop_last=True)
model, opt, dl = acc.prepare(model, opt, dl)
step, loss_sum, marks = 0, torch.zeros(()), {}
while step < cfg.max_steps:
    for x, y in dl:
        loss = model(input_ids=x, labels=y, use_cache=False).loss
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        opt.step(); opt.zero_grad()
        loss_sum += loss.detach()
        step += 1
        if step % cfg.log_every == 0:
            acc.reduce(loss_sum).item(); loss_sum.zero_()
            marks[step] = time.perf_counter()
        if step >= cfg.max_steps:
            break
acc.wait_for_everyone()
if acc.is_main_process:
    json.dump({"t0": marks[warmup], "t1": marks[cfg.max_steps], "steps": cfg.max_steps - warmup}, open(out, "w"))
'''


def load() -> float:
    return round(os.getloadavg()[0], 2)


def pipeline(cfg: wb.RunConfig, cache: str) -> dict[str, float]:
    """Seconds and MB/s of each stage of data.source files, measured here on one process."""
    t0 = time.perf_counter()
    rows = load_rows(cfg, cache)
    t1 = time.perf_counter()
    texts = [str(r[cfg.data.text_field] or "") for r in rows]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    train = texts[: split_rows(len(texts), "lm")["train"][1]]
    tok, sp = tokenizer_for(cfg, train)
    t2 = time.perf_counter()
    ids = [e.ids for e in tok.encode_batch(texts)]
    blocks, _ = pack(ids, cfg.model.seq_len, sp["eot"])
    t3 = time.perf_counter()
    return {"text_mb": round(mb, 3), "rows": len(rows), "tokens": int(blocks.size), "read_s": round(t1 - t0, 3),
            "bpe_train_s": round(t2 - t1, 3), "bpe_train_mb": round(sum(len(t.encode()) for t in train) / 1e6, 3),
            "tokenize_pack_s": round(t3 - t2, 3), "tokenize_pack_mb_per_s": round(mb / (t3 - t2), 2),
            "bytes_per_token": round(mb * 1e6 / max(1, sum(len(i) for i in ids)), 2)}  # fmt: skip


def throughput(cfg: wb.RunConfig, tmp: str, warmup: int, repeats: int) -> dict[str, object]:
    from workbench.data.files import prepare

    prepared = os.path.join(tmp, "prepared")
    prepare(cfg, prepared)  # the bare loop reads the same packed blocks the workbench's worker makes
    runs = []
    for i in range(repeats):  # alternate, so drifts in machine speed hit both alike
        before = load()
        ours = workbench_tokens_per_s(cfg, warmup)
        mid = load()
        bare = bare_tokens_per_s(cfg, tmp, warmup, source=BARE, extra=(prepared,))
        runs.append({"repeat": i, "workbench": round(ours), "bare": round(bare), "ratio": round(ours / bare, 4),
                     "load_before": before, "load_between": mid, "load_after": load()})  # fmt: skip
        print(runs[-1], flush=True)
    return {
        "runs": runs,
        "median_workbench": statistics.median(r["workbench"] for r in runs),
        "median_bare": statistics.median(r["bare"] for r in runs),
        "median_ratio": statistics.median(r["ratio"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="wb-bench-hf-")
    os.chdir(tmp)
    corpus = stdlib_corpus(os.path.join(tmp, "corpus.txt"), ("json", "email"))
    cfg = wb.RunConfig().override({
        "name": "bench-hf", "runs_dir": os.path.join(tmp, "runs"), "model.arch": "hf:llama", "model.n_layer": 2,
        "model.n_head": 4, "model.d_model": 64, "model.seq_len": 64,
        "model.hf_config": {"num_key_value_heads": 2, "intermediate_size": 172}, "data.source": "files",
        "data.path": corpus, "data.tokenizer": "bpe:512", "parallel.num_processes": 2, "parallel.strategy": "ddp",
        "precision": "fp32", "micro_batch_size": 8, "grad_accum_steps": 1, "max_steps": args.steps, "log_every": 10,
        "eval_every": 0, "schedule.warmup_steps": 0, "schedule.decay": "constant",
    })  # fmt: skip
    assert cfg.validate() == [], cfg.validate()
    data = pipeline(cfg, os.path.join(tmp, "cache"))
    print(data, flush=True)
    train = throughput(cfg, tmp, args.warmup, args.repeats)
    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "platform": sys.platform,
              "command": "python benchmarks/hf.py " + " ".join(sys.argv[1:]), "steps": args.steps,
              "window": [args.warmup, args.steps], "tokens_per_step": cfg.tokens_per_step, "pipeline": data,
              "throughput": train}  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "hf.json"), "w") as f:
        json.dump(result, f, indent=1)
    loads = [r[k] for r in train["runs"] for k in ("load_before", "load_between", "load_after")]
    print(f"\ntiny Llama, 2 processes, fp32, {args.steps} steps (window {args.warmup}..{args.steps}), "
          f"{args.repeats} alternating repeats, load average {min(loads)}-{max(loads)}\n")  # fmt: skip
    print("| workbench tokens/s (median) | bare Accelerate tokens/s (median) | ratio (median of the repeats' ratios) | BPE training | tokenize + pack |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    print(f"| {train['median_workbench']:,.0f} | {train['median_bare']:,.0f} | {train['median_ratio']:.3f} | "
          f"{data['bpe_train_s']:.2f} s for {data['bpe_train_mb']:.2f} MB | {data['tokenize_pack_mb_per_s']:.2f} MB/s |")  # fmt: skip


if __name__ == "__main__":
    main()
