"""After pretraining, every method on one table: trainable params, memory, tokens/s, accuracy, F1, size, latency.

    python benchmarks/finetune.py [--pretrain-steps 200] [--steps 100] [--out runs-bench-ft]

1. Pretrain the quickstart GPT (2 layers, d_model 64) as a language model on the synthetic language.
2. Fine-tune it on the synthetic sentiment task (workbench/finetune/task.py) through ``wb.launch`` on 2 processes
   (DDP), the same budget each: full, frozen backbone + head, LoRA (r 8 on q k v o fc1 fc2), and the same
   classifier from scratch (no pretraining) for reference.
3. Distillation: a 1-layer, 32-wide student with and without the full fine-tune as teacher (alpha 0.9,
   T 2), on the full training set and on 128 sequences (the data-limited regime), same steps and
   processes each.
4. Compression and deployment of the full fine-tune: dynamic int8, magnitude pruning at 50% and 90%, and
   the ONNX export run by onnxruntime.

Columns: trainable parameters; memory per rank: the parameter + gradient + optimizer bytes the worker
measured at the first step (status.json "measured") and the peak resident set size (mem_bytes); training
tokens/s (mean of the log intervals after the first); test accuracy and F1 (1024 sequences; chance 0.5;
the Bayes-optimal classifier's accuracy is printed above the table); size on disk of the model a server
would load (the merged fp32 state dict; int8's packed file; the .onnx file); CPU latency of a forward pass
on 8 sequences, best of many interleaved calls (one thread count for all, this machine's default).
Prints a markdown table and writes it, with the raw numbers, to OUT/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import workbench as wb  # noqa: E402
from workbench import compress  # noqa: E402
from workbench import finetune as ft  # noqa: E402
from workbench.export import export_onnx  # noqa: E402


def train(cfg: wb.RunConfig) -> wb.Run:
    run = wb.launch(cfg, overwrite=True)
    run.wait()
    if run.status != "finished":
        raise RuntimeError(f"{cfg.name} {run.status}: {run.error}")
    return run


def training_figures(run: wb.Run) -> dict:
    ev = run.metrics()
    steady = [e["tokens_per_s"] for e in ev[1:] if e.get("tokens_per_s")] or [ev[-1]["tokens_per_s"]]
    measured = run.info.get("measured") or []
    held = [m.get("param_bytes", 0) + m.get("grad_bytes", 0) + m.get("optimizer_bytes", 0) for m in measured]
    return {
        "trainable_params": ev[0]["trainable_params"],
        "held_bytes": max(held) if held else None,
        "peak_rss_bytes": max(max(e["mem_bytes"]) for e in ev if e.get("mem_bytes")),
        "tokens_per_s": sum(steady) / len(steady),
        "accuracy": ev[-1]["test_accuracy"],
        "f1": ev[-1]["test_f1"],
    }


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")


class OnnxModel:
    """An onnxruntime session called like a plain-logits model (tokens -> logits of the whole batch, the
    serving contract), for compress.quality, which reads either forward contract."""

    def __init__(self, path: str):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sess.run(["logits"], {"tokens": x.numpy()})[0])


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps of every fine-tune and student")
    ap.add_argument("--out", default="runs-bench-ft")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    qs = wb.RunConfig.from_yaml(os.path.join(ROOT, "configs", "quickstart.yaml"))
    base = qs.override({"runs_dir": out, "log_every": 10, "eval_every": args.steps, "schedule.warmup_steps": 10})

    pre = train(base.override({"name": "pretrained", "max_steps": args.pretrain_steps, "eval_every": 50}))
    task = base.override({"max_steps": args.steps, "task.kind": "classify", "task.num_labels": 2})
    tuned = task.override({"init_from": pre.path})
    methods = [
        ("full fine-tune", tuned.override({"name": "ft-full"})),
        ("frozen backbone + head", tuned.override({"name": "ft-frozen", "peft.method": "frozen", "optimizer.lr": 3e-2})),
        ("LoRA r 8 (attn + mlp)", tuned.override({"name": "ft-lora", "peft.method": "lora", "peft.r": 8, "optimizer.lr": 1e-2})),
        ("from scratch (no pretraining)", task.override({"name": "ft-scratch"})),
    ]  # fmt: skip
    rows: list[tuple[str, dict]] = []
    runs: dict[str, wb.Run] = {}
    for label, cfg in methods:
        runs[label] = run = train(cfg)
        rows.append((label, training_figures(run)))
    teacher = runs["full fine-tune"]

    small = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2}
    kd = {"distill.teacher": teacher.path, "distill.alpha": 0.9, "distill.temperature": 2.0}
    for data_label, data in (("", {}), (", 128 sequences", {"data.num_sequences": 128})):
        for label, extra in (("student alone", {}), ("distilled student", kd)):
            name = "st-" + ("kd" if extra else "alone") + ("-128" if data else "")
            run = train(task.override({"name": name, **small, **data, **extra}))
            runs[label + data_label] = run
            rows.append((label + data_label, training_figures(run)))

    # sizes and latencies of the trained models, all timed together (interleaved), batch 8
    x = compress.latency_batch(ft.run_config(teacher.path), 8)
    models = {label: ft.load_model(run.path) for label, run in runs.items()}
    int8 = compress.quantize_dynamic_int8(models["full fine-tune"])
    pruned = {}
    for s in (0.5, 0.9):
        m = ft.load_model(teacher.path)
        compress.magnitude_prune(m, s)
        pruned[f"full, pruned {100 * s:g}%"] = m
    every = {**models, "full, int8 dynamic": int8, **pruned}
    with torch.inference_mode():
        latency = compress.cpu_latencies_ms({k: (lambda m=m: m(x)) for k, m in every.items()})
    cfg = ft.run_config(teacher.path)
    data = compress.eval_tensors(cfg)
    for label, figures in rows:
        figures["size_bytes"] = compress.file_size(models[label], os.path.join(out, "sizes", slug(label) + ".pt"))
        figures["latency_ms"] = latency[label]
    for label in ["full, int8 dynamic", *pruned]:
        q = compress.quality(every[label], cfg, data)
        size = compress.file_size(every[label], os.path.join(out, "sizes", slug(label) + ".pt"))
        rows.append(
            (label, {"accuracy": q["accuracy"], "f1": q["f1"], "size_bytes": size, "latency_ms": latency[label]})
        )
    onnx = export_onnx(teacher, batch_size=8)
    rows.append(
        (
            "full, ONNX Runtime",
            {"size_bytes": onnx.size_bytes, "latency_ms": onnx.onnxruntime_latency_ms, "max_abs_diff": onnx.max_abs_diff,
             "torch_latency_ms_same_session": onnx.torch_latency_ms, **compress.quality(OnnxModel(onnx.path), cfg, data)},
        )
    )  # fmt: skip

    bayes = ft.bayes_accuracy(cfg)
    print(f"\npretrained {args.pretrain_steps} steps; fine-tunes {args.steps} steps of {task.global_batch_size} sequences, "
          f"2 processes; test split 1024 sequences, chance 0.5, Bayes-optimal {bayes:.4f}; "
          f"latency: batch 8, {torch.get_num_threads()} thread(s)\n")  # fmt: skip
    print("| method | trainable params | params+grads+optimizer / rank | peak RSS / rank | tokens/s | accuracy | F1 | size on disk | latency |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, f in rows:
        tp = f"{f['trainable_params']:,}" if "trainable_params" in f else "-"
        tps = f"{f['tokens_per_s']:,.0f}" if "tokens_per_s" in f else "-"
        print(f"| {label} | {tp} | {mib(f.get('held_bytes'))} | {mib(f.get('peak_rss_bytes'))} | {tps} | "
              f"{f['accuracy']:.4f} | {f['f1']:.4f} | {f['size_bytes'] / 1024:.1f} KiB | {f['latency_ms']:.3f} ms |")  # fmt: skip
    print(f"\nONNX: max |logit difference| {onnx.max_abs_diff:.2e}; in the same timing session PyTorch "
          f"{onnx.torch_latency_ms:.3f} ms, onnxruntime {onnx.onnxruntime_latency_ms:.3f} ms")  # fmt: skip
    lora = dict(rows)["LoRA r 8 (attn + mlp)"]
    print(f"LoRA adapter alone (what a second task needs to store): {4 * lora['trainable_params'] / 1024:.1f} KiB fp32")
    with open(os.path.join(out, "finetune.json"), "w") as fh:
        json.dump({"bayes_accuracy": bayes, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
