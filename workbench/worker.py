"""The training process: `accelerate launch ... -m workbench.worker RUN_DIR/config.yaml`.

Builds the Accelerator from the RunConfig, prepares model / optimizer / data, trains with
``accelerator.accumulate``, evaluates, checkpoints with ``save_state``, and reports through telemetry.

The hot path (one micro-step) does no host sync and no file I/O: the loss and grad norm are summed on the
device and read back only at log steps, where the ranks also agree on whether to stop.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record


class TrainingDiverged(RuntimeError):
    """The loss became non-finite, or fp16's loss scale collapsed."""


def lr_lambda(cfg) -> Any:
    s, total = cfg.schedule, cfg.max_steps

    def f(step: int) -> float:  # LambdaLR calls this with the number of optimizer steps taken so far
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.decay == "constant":
            return 1.0
        progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
        if s.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * shape

    return f


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    # Weight decay on matrices only (nanoGPT): decaying biases and LayerNorm gains only hurts.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0])
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def _loss_of(out: Any) -> torch.Tensor:
    return out[1] if isinstance(out, (tuple, list)) else out


def _gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a JSON-able dict), on every rank; [obj] for a single process."""
    if not torch.distributed.is_initialized():
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def _comm_event(acc: Any, probe: Any) -> dict[str, Any]:
    """comm_bytes (one entry per rank), comm_bytes_by_op (rank 0), as names.md fixes them."""
    mine = torch.tensor([float(probe.total)], dtype=torch.float64, device=acc.device)
    per_rank = acc.gather(mine)
    return {
        "comm_bytes": [int(v) for v in per_rank.tolist()],
        "comm_bytes_by_op": {k: int(v) for k, v in probe.by_op.items()},
        "comm_bytes_kind": "measured",
        "comm_bytes_scope": "optimizer step 1 (payload handed to collectives and send/recv; static shapes)",
    }


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def train(cfg, run_dir: str) -> str:
    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
        set_seed,
    )
    from torch.utils.data import DataLoader

    from workbench import finetune as ft
    from workbench import parallel
    from workbench.config import effective_device
    from workbench.data import entropy_floor
    from workbench.measure import FirstStepMeter, planned
    from workbench.models import build_model, flops_per_token
    from workbench.runs import read_status, write_status
    from workbench.telemetry import (
        MetricsWriter,
        cpu_peak_flops,
        gpu_peak_flops,
        peak_memory_bytes,
        tensorboard_scalars,
    )

    device_kind = effective_device(cfg)
    on_cpu = device_kind == "cpu"
    # Accelerate's mixed_precision="fp16" on CPU is silently fp32 (no autocast, no scaler). Make fp16 real
    # with torch's own CPU autocast and GradScaler instead of running fp32 under an fp16 label.
    native_fp16 = cfg.precision == "fp16" and on_cpu
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}[cfg.precision]
    if native_fp16:
        mixed = "no"
    resume = bool(read_status(run_dir).get("resume"))  # no status.json: started by hand or by scale-out

    acc = Accelerator(
        cpu=on_cpu,
        mixed_precision=mixed,
        # sync_with_dataloader=False: an optimizer step is always exactly grad_accum_steps micro-batches,
        # also across epoch boundaries (the default would cut a step short at the end of each epoch).
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.grad_accum_steps, sync_with_dataloader=False
        ),
        log_with="tensorboard",
        project_dir=run_dir,
        # A seedable sampler: the shuffle order depends on (seed, epoch) only, so a resumed run sees the
        # same batches as an uninterrupted one (the default sampler is exact only within the first epoch).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        # gloo's default timeout is 30 minutes: a rank that hangs would stall the others that long.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.timeout_s))],
    )
    rank, world = acc.process_index, acc.num_processes
    with open(os.path.join(run_dir, f".rank{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    main = acc.is_main_process

    set_seed(cfg.seed)  # before building the model: every rank starts from the same weights
    model = ft.build(cfg) if ft.active(cfg) else build_model(cfg)  # init_from, classify head, peft
    teacher = ft.load_teacher(cfg, acc.device)  # distill.teacher's frozen model, or None
    distill = ft.distill_step_loss(cfg, teacher) if teacher is not None else None
    classify = cfg.task.kind == "classify"
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model)
    train_ds, eval_ds = ft.dataset(cfg, "train"), ft.dataset(cfg, "eval")  # build_dataset for task.kind lm
    # A dedicated generator: otherwise each new DataLoader iterator draws from the global RNG and shifts
    # dropout after a resume.
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.micro_batch_size, shuffle=True, drop_last=True, generator=gen)
    eval_dl = DataLoader(eval_ds, batch_size=cfg.micro_batch_size, shuffle=False, drop_last=True)
    if len(train_dl) < 1:
        raise ValueError(
            f"micro_batch_size {cfg.micro_batch_size} is larger than the {len(train_ds)} training sequences"
        )
    # Only the data loaders go through prepare() here: the layout decides what happens to the model. ddp hands
    # model and optimizer to Accelerate (DDP wrapper); the sharded layouts never let Accelerate see the model,
    # so it cannot wrap an already-sharded model in DDP (workbench/parallel/).
    train_dl, eval_dl = acc.prepare(train_dl, eval_dl)
    test_dl = acc.prepare(DataLoader(ft.dataset(cfg, "test"), batch_size=cfg.micro_batch_size)) if classify else None
    if len(train_dl) < 1:
        raise ValueError("each rank gets no full micro-batch: lower micro_batch_size or parallel.num_processes")
    # The scheduler is not prepared: Accelerate would step it num_processes times per optimizer step (it
    # counts samples); ours counts optimizer steps. Its state (and the CPU GradScaler's) goes into
    # trainer_state.json rather than register_for_checkpointing, which Accelerate reloads with
    # torch.load(weights_only=False) — a pickle that could run code from a planted checkpoint.
    scaler = torch.amp.GradScaler("cpu") if native_fp16 else None
    fwd_ctx = torch.autocast("cpu", dtype=torch.float16) if native_fp16 else nullcontext()
    layout = parallel.setup(cfg, acc, model, lambda m: build_optimizer(cfg, m), scaler=scaler, fwd_ctx=fwd_ctx)
    if distill is not None:
        layout.compute_loss = distill
    model, optimizer, scaler, fwd_ctx = layout.model, layout.optimizer, layout.scaler, layout.fwd_ctx
    # LambdaLR drives the torch optimizer itself (Accelerate's wrapper delegates its param_groups to it).
    scheduler = torch.optim.lr_scheduler.LambdaLR(getattr(optimizer, "optimizer", optimizer), lr_lambda(cfg))
    meter = FirstStepMeter(model, optimizer)  # bytes held and saved for backward, at the first step only

    # What is really in effect, for status.json and the first event: the flags can lie, these cannot.
    seen_dtype: dict[str, str] = {}
    first_linear = next((m for m in acc.unwrap_model(model).modules() if isinstance(m, torch.nn.Linear)), None)
    hook = None
    if first_linear is not None:

        def record_dtype(module, inputs, output) -> None:  # returns None: a hook's return value replaces output
            seen_dtype.setdefault("dtype", str(output.dtype))

        hook = first_linear.register_forward_hook(record_dtype)
    effective = {
        "world_size": world,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "strategy": cfg.parallel.strategy,
        "wrapper": layout.wrapper_name(),  # the wrapper really in effect (tests fail on a silent DDP fallback)
        "checkpoint_format": layout.checkpoint_format,
        "activation_checkpointing": bool(cfg.activation_checkpointing),
        "mixed_precision": "fp16 (torch.autocast cpu + GradScaler)" if native_fp16 else acc.mixed_precision,
        "device": str(acc.device),
        "threads_per_process": torch.get_num_threads(),
        "num_params": n_params,
        "flops_per_token": fpt,
        "trainable_params": ft.trainable_params(model),
    }

    # Peak FLOP/s per device for MFU: a data sheet on GPUs; a measured matmul rate on CPU (rank 0 measures,
    # alone, while the others wait, so the measurement is not shared with them).
    peak_dtype = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}[cfg.precision]
    if on_cpu:
        peak = cpu_peak_flops(peak_dtype) if main else 0.0
        acc.wait_for_everyone()
        peak_t = acc.reduce(torch.tensor([peak], dtype=torch.float64, device=acc.device), reduction="sum")
        peak = float(peak_t.item())
        peak_source = "measured matmul rate of this CPU"
    else:
        peak = gpu_peak_flops(torch.cuda.get_device_name(), peak_dtype) or float("nan")
        peak_source = f"data sheet ({torch.cuda.get_device_name()})"
    effective["peak_flops_per_device"] = peak
    effective["peak_flops_source"] = peak_source

    step = 0
    ckpt_root = os.path.join(run_dir, "checkpoints")
    if resume:
        ckpts = sorted(
            (int(d.split("_")[1]), d) for d in os.listdir(ckpt_root) if d.startswith("step_") and d[5:].isdigit()
        )
        last = os.path.join(ckpt_root, ckpts[-1][1])
        acc.load_state(last)  # model, optimizer and each rank's RNG; Accelerate loads with weights_only=True
        layout.load(last)  # the sharded layouts' model and optimizer (DCP / ZeRO / parameter server files)
        with open(os.path.join(last, "trainer_state.json")) as f:
            trainer_state = json.load(f)
        step = trainer_state["step"]
        scheduler.load_state_dict(trainer_state["scheduler"])
        if scaler is not None and trainer_state.get("scaler"):
            scaler.load_state_dict(trainer_state["scaler"])

    metrics = None
    if main:
        mpath = os.path.join(run_dir, "metrics.jsonl")
        if resume and os.path.exists(mpath):  # drop events past the checkpoint: no duplicate steps
            with open(mpath) as f:
                keep = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= step]
            with open(mpath, "w") as f:
                f.writelines(keep)
        metrics = MetricsWriter(mpath)
    # purge_step: TensorBoard hides events past the checkpoint that the interrupted run wrote.
    acc.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": step + 1} if resume else {}})
    if main and not resume:
        # HParams through the run's OWN writer, so TensorBoard links this run's scalars to its config
        # (init_trackers(config=...) makes a separate sub-run and crashes on list values: FACTS.md).
        from workbench.sweep import write_hparams

        write_hparams(acc.get_tracker("tensorboard", unwrap=True), cfg)

    floor = entropy_floor(cfg) if not classify else None  # the LM's floor; a classifier has bayes_accuracy
    tokens_per_step = cfg.tokens_per_step
    samples_per_step = cfg.global_batch_size

    def micro_batches(start_micro: int):
        epoch, skip = divmod(start_micro, len(train_dl))
        while True:
            train_dl.set_epoch(epoch)
            dl = acc.skip_first_batches(train_dl, skip) if skip else train_dl
            yield from dl
            epoch, skip = epoch + 1, 0

    def evaluate() -> float:
        model.eval()
        total = torch.zeros(2, device=acc.device, dtype=torch.float64)
        with torch.no_grad(), fwd_ctx:
            for i, (x, y) in enumerate(eval_dl):
                if i >= cfg.eval_batches:
                    break
                loss_part, count = layout.eval_loss(x, y)  # (0, 0) on pipeline stages without the head
                total[0] += loss_part
                total[1] += count
        model.train()
        total = acc.reduce(total, reduction="sum")
        return float(total[0] / total[1].clamp(min=1))

    def save(tag_step: int) -> str:
        path = os.path.join(ckpt_root, f"step_{tag_step}")
        acc.save_state(path)
        layout.save(path)  # what save_state cannot see: sharded model/optimizer state (see the layout)
        if main:
            state = {"step": tag_step, "tokens": tag_step * tokens_per_step, "scheduler": scheduler.state_dict()}
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            _write_json(os.path.join(path, "trainer_state.json"), state)
        acc.wait_for_everyone()
        return path

    stop_file = os.path.join(run_dir, "STOP")
    clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else float("inf")
    loss_sum = torch.zeros((), device=acc.device, dtype=torch.float32)
    loss_n = torch.zeros((), device=acc.device, dtype=torch.float32)  # micro-steps that computed a loss
    gn_sum = torch.zeros((), device=acc.device, dtype=torch.float32)
    n_micro, n_steps, first_event = 0, 0, True
    batches = micro_batches(step * cfg.grad_accum_steps)
    model.train()
    t_interval = time.perf_counter()
    end_state = "finished"
    # Bytes moved, measured over this process's first optimizer step (the same every step: static shapes).
    comm_probe = parallel.CommProbe().__enter__()
    probing = True
    comm_event: dict[str, Any] | None = None

    while step < cfg.max_steps:
        x, y = next(batches)
        n_micro += 1
        last_micro = n_micro % cfg.grad_accum_steps == 0
        # forward + backward on this rank's part of the layout; the gradient sync happens on the last micro-step
        loss_part, count = layout.micro_step(x, y, last_micro)
        loss_sum += loss_part
        loss_n += count
        if not last_micro:
            continue
        grad_norm = layout.step(clip)  # global norm, clip, update (skipped by fp16's scaler on overflow), zero
        scheduler.step()
        if probing:
            comm_probe.__exit__(None, None, None)
            probing = False
        step += 1
        n_steps += 1
        gn_sum += grad_norm

        last = step == cfg.max_steps
        eval_due = cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last)
        if not (step % cfg.log_every == 0 or eval_due or last):
            continue

        # ---- log step: the only place the host waits for the device ----
        dt = time.perf_counter() - t_interval
        stop_asked = 1.0 if (main and os.path.exists(stop_file)) else 0.0
        stats = torch.stack([loss_sum, loss_n, gn_sum, torch.tensor(stop_asked, device=acc.device)])
        stats = acc.reduce(stats, reduction="sum")
        mem = acc.gather(torch.tensor([peak_memory_bytes(acc.device.type)], dtype=torch.float64, device=acc.device))
        loss_v = float(stats[0] / stats[1])
        gn_v = float(stats[2]) / (world * n_steps)
        stop = float(stats[3]) > 0
        tps = n_steps * tokens_per_step / dt
        event: dict[str, Any] = {
            "step": step,
            "tokens": step * tokens_per_step,
            "loss": loss_v,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": gn_v,
            "tokens_per_s": tps,
            "samples_per_s": n_steps * samples_per_step / dt,
            "step_time_s": dt / n_steps,
            "mfu": fpt * tps / (peak * world) if peak == peak and peak > 0 else None,
            "mem_bytes": [int(v) for v in mem.tolist()],
            "time": time.time(),
        }
        if comm_probe is not None:  # the first log step after the probe: every rank's bytes, once
            comm_event = _comm_event(acc, comm_probe)
            comm_probe = None
        event.update(comm_event or {})
        event.update(layout.extra_metrics())  # e.g. the pipeline's bubble and measured idle time per stage
        amp_scaler = scaler if scaler is not None else getattr(acc, "scaler", None)  # CPU's own, or CUDA fp16's
        if amp_scaler is not None:
            event["loss_scale"] = float(amp_scaler.get_scale())
        if floor is not None:
            event["entropy_floor"] = floor
        if eval_due:
            if classify:  # eval_loss, eval_accuracy, eval_f1; and test_* on the whole test split at the end
                event.update(ft.eval_event(acc, model, eval_dl, cfg, fwd_ctx, "eval", cfg.eval_batches))
                if last:
                    event.update(ft.eval_event(acc, model, test_dl, cfg, fwd_ctx, "test"))
            else:
                event["eval_loss"] = evaluate()
        if first_event:
            event.update(ft.first_event(cfg, effective))  # trainable_params; chance and Bayes accuracy
            effective["compute_dtype"] = seen_dtype.get("dtype")
            effective["layout"] = _gather_objects(layout.facts())  # per rank: param types, local shapes, ...
            event["effective"] = effective
            if hook is not None:
                hook.remove()
            event["measured"] = meter.gather(acc)  # per rank; a log step syncs the ranks anyway
            event["planned"] = planned(cfg, acc.device) if main else None
            if main:
                write_status(run_dir, effective=effective, entropy_floor=floor, global_batch_size=samples_per_step,
                             tokens_per_step=tokens_per_step, measured=event["measured"], planned=event["planned"])  # fmt: skip
            first_event = False
        if main:
            metrics.write(event)
            acc.log(tensorboard_scalars(event), step=step)
            if step % cfg.log_every == 0 or last:
                write_status(run_dir, step=step, max_steps=cfg.max_steps)
        if not math.isfinite(loss_v):
            raise TrainingDiverged(
                f"the training loss became {loss_v} at step {step} (precision {cfg.precision}, "
                f"optimizer.lr {cfg.optimizer.lr}); lower optimizer.lr, keep optimizer.grad_clip on, or use bf16/fp32"
            )
        if amp_scaler is not None and amp_scaler.get_scale() < 2.0**-10:
            raise TrainingDiverged(
                f"fp16 loss scale collapsed to {amp_scaler.get_scale():.3g} at step {step}: gradients overflow at "
                "every step; lower optimizer.lr or use bf16"
            )
        loss_sum.zero_()
        loss_n.zero_()
        gn_sum.zero_()
        n_micro, n_steps = 0, 0
        if stop and not last:
            end_state = "stopped"
            break
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not last:
            save(step)
        t_interval = time.perf_counter()  # eval and checkpoint time stay out of tokens/s

    ckpt = save(step)
    # Each rank's fingerprint of the final weights: data parallel ranks must hold identical parameters. The
    # sharded layouts gather the whole model first (params_scope says so), so every rank of every layout
    # fingerprints the same thing and digests compare across ranks.
    _write_json(os.path.join(run_dir, f"final_rank{rank}.json"), {"rank": rank, "step": step, **layout.digest()})
    if main:
        write_status(run_dir, state=end_state, step=step, checkpoint=ckpt, error=None)
        metrics.close()
    acc.wait_for_everyone()
    acc.end_training()
    return end_state


@record
def main(config_path: str) -> None:
    from workbench.config import RunConfig

    run_dir = os.path.dirname(os.path.abspath(config_path))
    cfg = RunConfig.from_yaml(config_path)
    try:
        train(cfg, run_dir)
    except BaseException:
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(run_dir, f"error_rank{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


if __name__ == "__main__":
    main(sys.argv[1])
    # Leave without running interpreter teardown: ~13% of runs that returned normally died here with
    # "terminate called without an active exception" (SIGABRT) and the launcher reported a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
