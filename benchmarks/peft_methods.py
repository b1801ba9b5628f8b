"""PEFT methods on one pretrained encoder: full, frozen, LoRA, AdaLoRA, prefix and adapter fine-tuning.

    python benchmarks/peft_methods.py [--pretrain-steps 300] [--steps 300] [--out runs-bench-peft]

A tiny BERT (2 layers, d_model 64, BPE 512) pretrains with masked-language modelling on the Python standard
library's sources, then fine-tunes on which package (logging / http / unittest) a line of code comes from,
once per peft.method, on 2 CPU processes (DDP), the same steps and data each (benchmarks/peft_table.py).
Prints README's markdown table and writes the rows to benchmarks/results/peft_methods.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.peft_table import markdown, peft_methods_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every fine-tune")
    ap.add_argument("--per-package", type=int, default=1500, help="labelled lines per package")
    ap.add_argument("--out", default="runs-bench-peft")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = peft_methods_table(os.path.abspath(args.out), pretrain_steps=args.pretrain_steps, steps=args.steps,
                              per_package=args.per_package)  # fmt: skip
    table = markdown(rows)
    print(table)
    print(f"chance {rows[0]['chance']:.3f}; {time.perf_counter() - t0:.0f} s in all")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "peft_methods.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
