"""The `workbench` command: train, demo, runs, tensorboard (and more as the project grows)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from workbench.config import ConfigError, RunConfig
from workbench.runs import Run, list_runs

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.yaml")


def _fail(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def _load(path: str, sets: list[str]) -> RunConfig:
    cfg = RunConfig.from_yaml(path)
    return cfg.override_strings(sets or [])


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def follow_with_progress(run: Run, total: int) -> None:
    """A progress bar over optimizer steps, fed from metrics.jsonl."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True)
    done = 0
    try:
        for ev in run.follow():
            if "step" in ev and ev["step"] > done:
                bar.update(ev["step"] - done)
                done = ev["step"]
            post = {}
            if ev.get("loss") is not None:
                post["loss"] = f"{ev['loss']:.3f}"
            if ev.get("tokens_per_s"):
                post["tok/s"] = f"{ev['tokens_per_s']:.0f}"
            bar.set_postfix(post)
    except KeyboardInterrupt:
        bar.write("stopping: the workers finish the step and save a checkpoint (Ctrl-C again to kill)")
        run.stop()
        try:
            run.wait(timeout=120)
        except KeyboardInterrupt:
            run.kill()
    bar.close()


def print_summary(run: Run) -> None:
    s = run.summary()
    print(f"\nrun {s['name']}: {s['status']} after {s['steps']} steps")
    if s["final_loss"] is not None:
        print(f"  final train loss  {s['final_loss']:.4f}")
    if s["best_eval_loss"] is not None:
        print(f"  best eval loss    {s['best_eval_loss']:.4f}")
    floor = run.info.get("entropy_floor")
    if floor is not None:
        print(f"  entropy floor     {floor:.4f} (the best any model can do on this data)")
    if s["tokens_per_s"]:
        print(f"  tokens/s          {s['tokens_per_s']:.0f}")
    if s["mfu"] is not None:
        print(f"  MFU               {100 * s['mfu']:.1f}%")
    print(f"  peak memory/rank  {_fmt_bytes(s['peak_mem_bytes'])}")
    eff = run.info.get("effective") or {}
    if eff:
        print(
            f"  in effect         {eff.get('world_size')} processes, backend {eff.get('backend')}, "
            f"{eff.get('wrapper')}, compute dtype {eff.get('compute_dtype')}"
        )
    print(f"  logs              {run.path}")
    print(f"  TensorBoard       workbench tensorboard --runs-dir {os.path.dirname(run.path)}")
    if run.status == "failed":
        print(f"\nerror:\n{run.error}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from workbench.launch import launch

    try:
        cfg = _load(args.config, args.set)
        if args.runs_dir:
            cfg = cfg.override({"runs_dir": args.runs_dir})
        run = launch(cfg, overwrite=args.overwrite, resume=args.resume)
    except ConfigError as e:
        return _fail(str(e))
    print(f"training {cfg.name}: {cfg.parallel.num_processes} processes, {cfg.precision}, global batch "
          f"{cfg.global_batch_size} sequences ({cfg.tokens_per_step} tokens) per step -> {run.path}")  # fmt: skip
    if args.detach:
        print(f"detached; follow it with: workbench runs --runs-dir {cfg.runs_dir}")
        return 0
    follow_with_progress(run, cfg.max_steps)
    run.wait()
    print_summary(run)
    return 0 if run.status in ("finished", "stopped") else 1


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = QUICKSTART
    args.set = list(args.set or [])
    args.detach = False
    args.resume = False
    args.overwrite = True
    return cmd_train(args)


def cmd_runs(args: argparse.Namespace) -> int:
    runs = list_runs(args.runs_dir)
    if not runs:
        print(f"no runs in {args.runs_dir}/")
        return 0
    print(f"{'name':24} {'status':9} {'step':>6} {'loss':>8} {'eval':>8} {'tok/s':>9}  path")
    for r in runs:
        s = r.summary()
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "-"
        ev = f"{s['best_eval_loss']:.4f}" if s["best_eval_loss"] is not None else "-"
        tps = f"{s['tokens_per_s']:.0f}" if s["tokens_per_s"] else "-"
        print(f"{s['name'][:24]:24} {s['status']:9} {s['steps']:>6} {loss:>8} {ev:>8} {tps:>9}  {s['path']}")
    return 0


def tensorboard_command(runs_dir: str, port: int) -> list[str]:
    # 127.0.0.1 only: TensorBoard has no authentication, so it must never listen on other interfaces.
    return [sys.executable, "-m", "tensorboard.main", "--logdir", runs_dir, "--host", "127.0.0.1", "--port", str(port)]


def cmd_tensorboard(args: argparse.Namespace) -> int:
    os.makedirs(args.runs_dir, exist_ok=True)
    cmd = tensorboard_command(args.runs_dir, args.port)
    print(f"TensorBoard on http://127.0.0.1:{args.port}/ over {os.path.abspath(args.runs_dir)} (Ctrl-C ends it)")
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


def cmd_stop(args: argparse.Namespace) -> int:
    run = Run.attach(os.path.join(args.runs_dir, args.name))
    run.stop()
    print(f"asked {args.name} to stop; waiting...")
    run.wait(timeout=args.timeout)
    print(run.status)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workbench", description="Learn and tune how large models are trained.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="launch a run from a YAML config and follow it")
    t.add_argument("config")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. --set precision=bf16")
    t.add_argument("--runs-dir", default=None)
    t.add_argument("--detach", action="store_true", help="return at once; the run goes on in the background")
    t.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name")
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("demo", help="train the quickstart config (2 processes) and print a summary")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--runs-dir", default=None)
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("runs", help="list the runs folder")
    r.add_argument("--runs-dir", default="runs")
    r.set_defaults(fn=cmd_runs)

    s = sub.add_parser("stop", help="ask a running run to stop (it saves a checkpoint)")
    s.add_argument("name")
    s.add_argument("--runs-dir", default="runs")
    s.add_argument("--timeout", type=float, default=120)
    s.set_defaults(fn=cmd_stop)

    b = sub.add_parser("tensorboard", help="TensorBoard on 127.0.0.1 over the runs folder")
    b.add_argument("--runs-dir", default="runs")
    b.add_argument("--port", type=int, default=6006)
    b.set_defaults(fn=cmd_tensorboard)

    args = p.parse_args(argv)
    t0 = time.time()
    rc = args.fn(args)
    del t0
    return rc


if __name__ == "__main__":
    sys.exit(main())
