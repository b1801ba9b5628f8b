"""The `workbench` command: train, demo, runs, tensorboard (and more as the project grows)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from workbench import checkpoints
from workbench.config import ConfigError, RunConfig
from workbench.fileio import format_bytes, resolve_runs_dir
from workbench.runs import Run, list_runs

QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.yaml")


def _fail(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def _load(path: str, sets: list[str]) -> RunConfig:
    cfg = RunConfig.from_yaml(path)
    return cfg.override_strings(sets or [])


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
    ms = run.metrics()
    if ms and "test_accuracy" in ms[-1]:  # task.kind classify
        ceiling = ms[0].get("bayes_accuracy")
        print(f"  test accuracy     {ms[-1]['test_accuracy']:.4f}, F1 {ms[-1]['test_f1']:.4f} (chance "
              f"{ms[0].get('chance_accuracy', 0):.2f}" + (f", Bayes-optimal {ceiling:.4f})" if ceiling else ")"))  # fmt: skip
    if s["tokens_per_s"]:
        print(f"  tokens/s          {s['tokens_per_s']:.0f}")
    print_prediction(run)
    if s["mfu"] is not None:
        print(f"  MFU               {100 * s['mfu']:.1f}%")
    print(f"  peak memory/rank  {format_bytes(s['peak_mem_bytes'])}")
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


def print_prediction(run: Run) -> None:
    """Predicted against measured tokens/s, the verdict when more than 1.5x off, and a profiled run's parts."""
    from workbench.prediction import parts_table, planned_of, prediction_line
    from workbench.profiling import load_profile

    check = run.prediction()
    if check is None:
        return
    print(f"  prediction        {prediction_line(check)}")
    if check["verdict"]:
        print(f"  VERDICT           {check['verdict']}")
    rows = parts_table(planned_of(run.info), load_profile(run.path))
    if rows:
        print("  ms per step       part                   predicted  measured  (profiled steps, mean over ranks)")
        for r in rows:
            pred = f"{r['predicted_ms']:.3g}" if r["predicted_ms"] is not None else "-"
            print(f"                    {r['part']:22} {pred:>9}  {r['measured_ms']:>8.3g}  {r['measured_as']}")


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


def demo_sets(sets: list[str]) -> list[str]:
    """The demo fits the machine: on a GPU machine with fewer GPUs than the quickstart's 2 processes, as many
    processes as there are GPUs (a --set of the user's own wins)."""
    from workbench.config import detected_devices

    dev = detected_devices()
    if dev.kind == "cuda" and dev.count < 2 and not any(s.startswith("parallel.num_processes=") for s in sets):
        return [f"parallel.num_processes={dev.count}", *sets]
    return list(sets)


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = QUICKSTART
    args.set = demo_sets(list(args.set or []))
    args.detach = False
    args.resume = False
    args.overwrite = True
    return cmd_train(args)


def cmd_runs(args: argparse.Namespace) -> int:
    runs = list_runs(args.runs_dir)
    if not runs:
        print(f"no runs in {args.runs_dir}/")
        return 0
    print(f"{'name':24} {'status':9} {'step':>6} {'loss':>8} {'eval':>8} {'tok/s':>9} {'predicted':>9} "
          f"{'pred/meas':>9}  path")  # fmt: skip
    for r in runs:
        s = r.summary()
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "-"
        ev = f"{s['best_eval_loss']:.4f}" if s["best_eval_loss"] is not None else "-"
        tps = f"{s['tokens_per_s']:.0f}" if s["tokens_per_s"] else "-"
        pred = f"{s['predicted_tokens_per_s']:.0f}" if s["predicted_tokens_per_s"] else "-"
        ratio = f"{s['prediction_ratio']:.2f}" if s["prediction_ratio"] else "-"
        ratio += "!" if s["prediction_verdict"] else ""  # more than 1.5x off its prediction
        print(f"{s['name'][:24]:24} {s['status']:9} {s['steps']:>6} {loss:>8} {ev:>8} {tps:>9} {pred:>9} {ratio:>9}  "
              f"{s['path']}")  # fmt: skip
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


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from workbench.calibrate import plan

    try:
        cfg = _load(args.config, args.set)
        p = plan(cfg, device=args.device)
    except ConfigError as e:
        return _fail(str(e))
    except ValueError as e:  # an unknown --device
        return _fail(str(e))
    print(json.dumps(p.to_dict(), indent=1) if args.json else p.table())
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from workbench.suggest import changed_keys, check_trials, suggest, suggest_table

    try:
        cfg = _load(args.config, args.set)
        # trials on another device are refused before anything is printed
        check_trials(cfg, args.device, args.trials, args.trial_steps)
        if args.trials:
            print(f"trying the {args.trials} fastest predicted, {args.trial_steps} steps each ...", flush=True)
        cands = suggest(cfg, device=args.device, trials=args.trials, trial_steps=args.trial_steps)
    except ValueError as e:  # ConfigError (a bad config), an unknown --device, --trials on another device
        return _fail(str(e))
    if not cands:
        return _fail(f"no layout, micro-batch split, precision or checkpointing fits at global batch "
                     f"{cfg.global_batch_size}: lower micro_batch_size x grad_accum_steps, or plan a larger device")  # fmt: skip
    shown = cands[: max(args.top, args.trials)]  # every tried one, at least
    print(f"{cfg.name}: {len(cands)} configs fit on {cands[0].plan.device_label} at global batch "
          f"{cfg.global_batch_size} ({cfg.parallel.num_processes} processes); the {len(shown)} fastest predicted:")  # fmt: skip
    print(suggest_table(shown))
    for i, c in enumerate(shown, 1):
        if c.error:
            print(f"rank {i} trial failed: {c.error}", file=sys.stderr)
    changed = changed_keys(cfg, cands[0].config)
    sets = [kv for kv in args.set or [] if kv.split("=", 1)[0].strip() not in changed]
    sets += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in changed.items()]
    print(f"\nrank 1: workbench train {args.config} " + " ".join(f"--set {kv}" for kv in sets))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    run = Run.attach(os.path.join(args.runs_dir, args.name))
    run.stop()
    print(f"asked {args.name} to stop; waiting...")
    run.wait(timeout=args.timeout)
    print(run.status)
    return 0


def cmd_scale_out(args: argparse.Namespace) -> int:
    from workbench.scale_out import scale_out

    try:
        cfg = _load(args.config, args.set)
        out = scale_out(cfg, machines=args.machines, gpus_per_machine=args.gpus_per_machine, out_dir=args.out,
                        main_address=args.main_address, main_port=args.main_port, device=args.device)  # fmt: skip
    except ConfigError as e:
        return _fail(str(e))
    print(out)
    if args.to == "slurm":
        print(f"\nsubmit with: sbatch {out.slurm_path}")
    else:
        print("\nrun each machine's command on that machine (a shared file system keeps one run folder)")
    return 0


def _finished_run(arg: str, runs_dir: str) -> str:
    """A run folder given as a path, or as a name under --runs-dir; it must hold a model checkpoint."""
    path = arg if os.path.isdir(arg) else os.path.join(runs_dir, arg)
    if not os.path.isfile(os.path.join(path, "config.yaml")):
        raise FileNotFoundError(f"{arg!r} is not a run folder (no config.yaml); give a path or a name in {runs_dir}/")
    if checkpoints.latest(path, with_model_weights=True) is None:
        raise FileNotFoundError(f"{path!r} holds no checkpoint with model weights yet; let the run finish first")
    return path


def cmd_export(args: argparse.Namespace) -> int:
    if args.hf:
        return _export_hf(args)
    if args.adapter:
        return _fail("--adapter goes with --hf (a peft adapter folder)")
    from workbench.export import export_onnx

    try:
        path = _finished_run(args.run, args.runs_dir)
        # ONNX is the one format for now; --onnx names it, as later formats will have their flag
        report = export_onnx(path, path=args.out, batch_size=args.batch_size, dynamo=not args.torchscript)
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        return _fail(str(e))  # your module not found from here, or a forward that breaks the serving contract
    print(report.table())
    return 0 if report.parity else 1


def _export_hf(args: argparse.Namespace) -> int:
    from workbench.hf_export import export_hf

    if args.onnx:
        return _fail("choose one format: --onnx or --hf")
    try:
        report = export_hf(_finished_run(args.run, args.runs_dir), out=args.out, adapter=args.adapter)
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        return _fail(str(e))  # a shape GPT-2 cannot hold, an adapter that is not there, ...
    print(report.table())
    return 0 if report.parity else 1


def cmd_generate(args: argparse.Namespace) -> int:
    from workbench.textgen import Sampling, TextGenerator

    s = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    if s.problems():
        return _fail("; ".join(s.problems()))
    try:
        gen = TextGenerator.from_run(_finished_run(args.run, args.runs_dir))
        stream = gen.stream(args.prompt, s, tuple(args.stop or ()))
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        return _fail(str(e))
    print(args.prompt, end="", flush=True)
    for piece in stream:
        print(piece, end="", flush=True)
    c = stream.completion
    print(f"\n[{c.completion_tokens} tokens after a prompt of {c.prompt_tokens}; finish_reason {c.finish_reason}]",
          file=sys.stderr)  # fmt: skip
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from workbench.compress import quantize

    try:
        path = _finished_run(args.run, args.runs_dir)
        print(quantize(path, batch_size=args.batch_size).table())
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        return _fail(str(e))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from workbench.compress import prune

    try:
        path = _finished_run(args.run, args.runs_dir)
        print(prune(path, args.sparsity, batch_size=args.batch_size).table())
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        return _fail(str(e))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from workbench.serve import make_server

    if args.max_batch < 1 or args.batch_wait_ms < 0:
        return _fail("--max-batch must be at least 1 and --batch-wait-ms at least 0")
    try:
        path = _finished_run(args.run, args.runs_dir)
        server = make_server(path, args.port, batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch,
                             verbose=args.verbose)  # fmt: skip
    except (FileNotFoundError, ModuleNotFoundError, ValueError, TypeError) as e:
        return _fail(str(e))
    except OSError as e:  # the port is taken
        return _fail(f"cannot listen on 127.0.0.1:{args.port} ({e}); choose another --port")
    s = server.runner.served
    extra = {"classify": ", POST /v1/classify", "lm": f", GET /v1/models, POST /v1/completions (model {s.model_id!r})"}
    print(f"serving {path} ({s.task}) on {server.url}: GET /healthz, POST /v1/logits" + extra.get(s.task, "")
          + "; Ctrl-C stops", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_pool(args: argparse.Namespace) -> int:
    """workbench pool start | stop | status: the warm launch pool (workbench.pool)."""
    from workbench import pool_client

    if args.action == "stop":
        print("warm pool stopped" if pool_client.stop_pool() else "no warm pool running")
        return 0
    if args.action == "start":
        if not pool_client.enabled():
            return _fail(f"warm launches are off ({pool_client.ENABLE_ENV}=0)")
        if args.idle_minutes is not None:
            os.environ[pool_client.IDLE_ENV] = str(args.idle_minutes)
        pool_client.warm_up()
        if not pool_client.wait_ready(args.timeout):
            return _fail("the warm pool did not start; see its log: " + str(pool_client.pool_file("log")))
    info = pool_client.pool_info()
    if info is None:
        print("no warm pool running" + ("" if pool_client.pool_pid() is None else " yet (starting)"))
        return 0 if args.action == "status" else 1
    print(f"warm pool {info['pid']}: up {info['uptime_s']:.0f} s, {info['runs_forked']} runs forked, "
          f"RSS {format_bytes(info['rss_bytes'])} (limit {format_bytes(info['max_rss_bytes'])}), "
          f"ends after {info['idle_timeout_s'] / 60:g} idle minutes (idle {info['idle_s']:.0f} s); "
          f"watching {info['source_files']} source files")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "runs_dir", None):  # one runs folder wherever the command is typed in the project
        args.runs_dir = resolve_runs_dir(args.runs_dir)
    return args.fn(args)


def parser() -> argparse.ArgumentParser:
    """The `workbench` command: one sub-command per verb, grouped by what it acts on."""
    p = argparse.ArgumentParser(prog="workbench", description="Learn and tune how large models are trained.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _run_commands(sub)
    _plan_commands(sub)
    _model_commands(sub)
    return p


def _run_commands(sub: Any) -> None:
    """train, demo, runs, stop: start and follow runs."""
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

    po = sub.add_parser("pool", help="the warm launch pool: start, stop or show it (launches start it themselves)")
    po.add_argument("action", choices=["start", "stop", "status"])
    po.add_argument("--idle-minutes", type=float, default=None, help="start: end after this many idle minutes")
    po.add_argument("--timeout", type=float, default=120, help="start: seconds to wait for it to be ready")
    po.set_defaults(fn=cmd_pool)


def _plan_commands(sub: Any) -> None:
    """plan, tune, tensorboard, scale-out: look at a config or its runs without training (tune's trials train)."""
    pl = sub.add_parser("plan", help="memory per rank, FLOPs, time and communication of a config, without running it")
    pl.add_argument("config")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. --set precision=bf16")
    pl.add_argument("--device", default=None, help="h100, h200, a100-40, a100-80, cpu, ... (default: this machine)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(fn=cmd_plan)

    tu = sub.add_parser("tune", help="the fastest configs that fit at the config's global batch: every layout, "
                        "micro-batch split, precision and checkpointing, planned (and the top ones tried)")  # fmt: skip
    tu.add_argument("config")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. --set precision=bf16")
    tu.add_argument("--device", default=None, help="h100, h200, a100-40, cpu, ... (default: this machine)")
    tu.add_argument("--trials", type=int, default=0, metavar="K", help="try the K fastest for real here (default 0)")
    tu.add_argument("--trial-steps", type=int, default=20, metavar="S", help="optimizer steps per trial (default 20)")
    tu.add_argument("--top", type=int, default=10, metavar="N", help="rows to print (default 10)")
    tu.set_defaults(fn=cmd_tune)

    b = sub.add_parser("tensorboard", help="TensorBoard on 127.0.0.1 over the runs folder")
    b.add_argument("--runs-dir", default="runs")
    b.add_argument("--port", type=int, default=6006)
    b.set_defaults(fn=cmd_tensorboard)

    so = sub.add_parser("scale-out", help="write an Accelerate config, per-node commands and a SLURM script for a run")
    so.add_argument("config")
    so.add_argument("--set", action="append", metavar="KEY=VALUE")
    so.add_argument("--machines", type=int, default=1)
    so.add_argument("--gpus-per-machine", type=int, default=8)
    so.add_argument("--to", choices=["accelerate", "slurm"], default="accelerate")
    so.add_argument("--out", default=None, help="folder for the files (default runs/<name>-scale-out)")
    so.add_argument("--main-address", default="MAIN_NODE_ADDRESS", help="address of machine 0")
    so.add_argument("--main-port", type=int, default=29500)
    so.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    so.set_defaults(fn=cmd_scale_out)


def _model_commands(sub: Any) -> None:
    """export, quantize, prune, generate, serve: a finished run's model."""
    ex = sub.add_parser("export", help="export a finished run's model: ONNX (checked with onnxruntime) or a Hugging "
                        "Face folder (--hf, checked with from_pretrained)")  # fmt: skip
    ex.add_argument("run", help="run folder, or a run name in --runs-dir")
    ex.add_argument("--onnx", action="store_true", help="ONNX (the default)")
    ex.add_argument("--hf", action="store_true", help="a save_pretrained folder: config, safetensors, tokenizer")
    ex.add_argument("--adapter", action="store_true",
                    help="with --hf: the unmerged base, and a peft adapter folder in OUT/adapter")  # fmt: skip
    ex.add_argument("--out", default=None,
                    help="the .onnx file (default RUN/export/model.onnx), or the --hf folder (default RUN/export/hf)")  # fmt: skip
    ex.add_argument("--batch-size", type=int, default=None, help="batch timed for latency (default micro_batch_size)")
    ex.add_argument("--torchscript", action="store_true", help="the older TorchScript exporter instead of dynamo")
    ex.add_argument("--runs-dir", default="runs")
    ex.set_defaults(fn=cmd_export)

    qu = sub.add_parser("quantize", help="dynamic int8 of a finished run's Linears: size, latency, accuracy")
    qu.add_argument("run", help="run folder, or a run name in --runs-dir")
    qu.add_argument("--batch-size", type=int, default=None, help="batch timed for latency (default micro_batch_size)")
    qu.add_argument("--runs-dir", default="runs")
    qu.set_defaults(fn=cmd_quantize)

    pr = sub.add_parser("prune", help="magnitude pruning of a finished run's model: accuracy against sparsity")
    pr.add_argument("run", help="run folder, or a run name in --runs-dir")
    pr.add_argument("--sparsity", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9], metavar="S",
                    help="fractions of each block Linear's weights to zero (default 0.25 0.5 0.75 0.9)")  # fmt: skip
    pr.add_argument("--batch-size", type=int, default=None, help="batch timed for latency (default micro_batch_size)")
    pr.add_argument("--runs-dir", default="runs")
    pr.set_defaults(fn=cmd_prune)

    ge = sub.add_parser("generate", help="continue a prompt with a finished run's language model")
    ge.add_argument("run", help="run folder, or a run name in --runs-dir")
    ge.add_argument("--prompt", required=True, help="text (token ids '3 14 15' for the synthetic language)")
    ge.add_argument("--max-new-tokens", type=int, default=64)
    ge.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1)")
    ge.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1: off)")
    ge.add_argument("--seed", type=int, default=None)
    ge.add_argument("--stop", action="append", metavar="TEXT", help="end at this text (repeatable)")
    ge.add_argument("--runs-dir", default="runs")
    ge.set_defaults(fn=cmd_generate)

    sv = sub.add_parser("serve", help="serve a finished run's model over HTTP on 127.0.0.1 (logits, classify, and "
                        "OpenAI's /v1/completions)")  # fmt: skip
    sv.add_argument("run", help="run folder, or a run name in --runs-dir")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--batch-wait-ms", type=float, default=0.0,
                    help="batch the requests arriving within this many ms into one forward pass (default 0: off)")  # fmt: skip
    sv.add_argument("--max-batch", type=int, default=64, help="most sequences in one request or one batch")
    sv.add_argument("--verbose", action="store_true", help="log every request")
    sv.add_argument("--runs-dir", default="runs")
    sv.set_defaults(fn=cmd_serve)


if __name__ == "__main__":
    sys.exit(main())
