"""Inside a step, every layout: the profile summary (ms per optimizer step, rank 0 / rank 1) of each layout on the
quickstart model, 2 CPU processes, profile_steps 3. Prints the README's table.

Usage: python benchmarks/profile_layouts.py [RUNS_DIR]
"""

from __future__ import annotations

import os
import sys

import workbench as wb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {
    "ddp": {},
    "zero1": {},
    "zero2": {},
    "zero3": {},
    "tp": {"parallel.tp_size": 2},
    "pp gpipe": {"parallel.strategy": "pp", "parallel.pp_size": 2},
    "pp 1f1b": {"parallel.strategy": "pp", "parallel.pp_size": 2, "parallel.pp_schedule": "1f1b"},
    "ps": {},
}
COLS = ("step_ms", "compute_ms", "comm_ms", "comm_exposed_ms", "idle_ms", "data_ms", "other_ms")


def main() -> None:
    runs_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "runs", "bench-profile")
    base = wb.RunConfig.from_yaml(os.path.join(ROOT, "configs", "quickstart.yaml"))
    print("| layout | " + " | ".join(c.removesuffix("_ms") for c in COLS) + " | hidden |")
    print("|---" * (len(COLS) + 2) + "|")
    for label, extra in LAYOUTS.items():
        over = {"parallel.strategy": label.split()[0], **extra}
        cfg = base.override({"name": label.replace(" ", "-"), "runs_dir": runs_dir, "max_steps": 8, "log_every": 4,
                             "eval_every": 0, "profile_steps": 3, **over})  # fmt: skip
        run = wb.launch(cfg)
        run.wait(timeout=900)
        if run.status != "finished":
            print(f"| {label} | {run.status}: {run.error} |")
            continue
        ranks = wb.load_profile(run.path)["ranks"]

        hidden = " / ".join(
            "-" if r["comm_hidden_fraction"] is None else f"{r['comm_hidden_fraction']:.2f}" for r in ranks
        )
        print(
            f"| {label} | " + " | ".join(" / ".join(f"{r[c]:.1f}" for r in ranks) for c in COLS) + f" | {hidden} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
