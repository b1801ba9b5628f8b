"""The training process: `accelerate launch ... -m workbench.worker RUN_DIR/config.yaml [--resume]`.

Read it top to bottom as a training loop (the shape of torchtitan's Trainer):

    Trainer.__init__     setup: the Accelerator from the config, the model, the data loaders, the layout
                         (parallel/), the scheduler, what is really in effect, the peak FLOP/s, a resume
    Trainer.train_step   one optimizer step: forward_backward over grad_accum_steps micro-batches, then the
                         layout's step (global grad norm, clip, update) and the scheduler
    Trainer.log_step     at log steps only: read the device-side sums back, build the metric event, evaluate
    Trainer.evaluate     mean eval loss over the eval split (None when it saw no sample)
    checkpoints          workbench.checkpoints saves / loads step_N folders (save_state + the layout's files)

The hot path (train_step) does no host sync and no file I/O: the loss and grad norm are summed on the device and
read back only at log steps, where the ranks also agree on whether to stop.

The loss trajectory depends on the order of random draws, so that order is part of the contract: set_seed, then
the model, the data sets, the DataLoaders (a dedicated generator), prepare, the layout; rank 0's CPU peak
calibration after that; then the loop.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from workbench import checkpoints
from workbench.device_setup import fp8_modules, gather_objects, resolve_peak, setup_tf32
from workbench.fileio import write_json_atomic
from workbench.optim import build_optimizer, lr_lambda
from workbench.status import write_status
from workbench.telemetry import (
    MetricsWriter,
    drop_events_after,
    mfu,
    peak_memory_bytes,
    start_trackers,
    tensorboard_scalars,
)


class TrainingDiverged(RuntimeError):
    """The loss became non-finite, or fp16's loss scale collapsed."""


def precision_setup(cfg, on_cpu: bool) -> tuple[str, bool]:
    """(Accelerate's mixed_precision, native_fp16).

    Measured with accelerate 1.15: mixed_precision="fp16" on CPU is silently fp32 (no autocast, no scaler).
    fp16 on CPU is made real with torch's own CPU autocast and GradScaler instead of running fp32 under an fp16
    label (native_fp16), and Accelerate is told "no".
    """
    native_fp16 = cfg.precision == "fp16" and on_cpu
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8"}[cfg.precision]
    return ("no" if native_fp16 else mixed), native_fp16


def build_accelerator(cfg, run_dir: str, mixed_precision: str, on_cpu: bool) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, InitProcessGroupKwargs

    return Accelerator(
        cpu=on_cpu,
        mixed_precision=mixed_precision,
        # sync_with_dataloader=False: an optimizer step is always exactly grad_accum_steps micro-batches,
        # also across epoch boundaries (the default would cut a step short at the end of each epoch).
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.grad_accum_steps, sync_with_dataloader=False
        ),
        log_with=list(cfg.trackers),  # tensorboard, and mlflow where asked (telemetry.start_trackers)
        project_dir=run_dir,
        # A seedable sampler: the shuffle order depends on (seed, epoch) only, so a resumed run sees the
        # same batches as an uninterrupted one (the default sampler is exact only within the first epoch).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        # gloo's default timeout is 30 minutes: a rank that hangs would stall the others that long.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.timeout_s))],
    )


def comm_event(acc: Any, probe: Any, step: int = 1) -> dict[str, Any]:
    """comm_bytes (one entry per rank), comm_bytes_by_op (rank 0), as workbench/metrics_schema.py fixes them."""
    mine = torch.tensor([float(probe.total)], dtype=torch.float64, device=acc.device)
    per_rank = acc.gather(mine)
    return {
        "comm_bytes": [int(v) for v in per_rank.tolist()],
        "comm_bytes_by_op": {k: int(v) for k, v in probe.by_op.items()},
        "comm_bytes_kind": "measured",
        "comm_bytes_scope": f"optimizer step {step} (payload handed to collectives and send/recv; static shapes)",
    }


class DtypeProbe:
    """Records the output dtype of the model's first Linear at the first forward: the compute dtype really in
    effect (the precision flag can lie; this cannot)."""

    def __init__(self, model: torch.nn.Module):
        self.dtype: str | None = None
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
        self.hook = first.register_forward_hook(self.record) if first is not None else None

    def record(self, module, inputs, output) -> None:  # returns None: a hook's return value replaces output
        if self.dtype is None:
            self.dtype = str(output.dtype)

    def remove(self) -> None:
        if self.hook is not None:
            self.hook.remove()


class Trainer:
    """One rank's run: ``Trainer(cfg, run_dir, resume).run()``. Setup happens in __init__, in RNG order."""

    def __init__(self, cfg, run_dir: str, resume: bool = False):
        from workbench.config import effective_device

        self.cfg, self.run_dir, self.resume = cfg, run_dir, resume
        self.t_start = time.time()
        on_cpu = effective_device(cfg) == "cpu"
        mixed, self.native_fp16 = precision_setup(cfg, on_cpu)
        self.acc = build_accelerator(cfg, run_dir, mixed, on_cpu)
        self.tf32 = setup_tf32(cfg, self.acc.device)
        self.rank, self.world, self.main = self.acc.process_index, self.acc.num_processes, self.acc.is_main_process
        with open(os.path.join(run_dir, f".rank{self.rank}.pid"), "w") as f:  # Run.kill and the supervisor read it
            f.write(str(os.getpid()))
        self.build_model()
        self.build_data()
        self.build_layout()
        if self.acc.device.type == "cuda":  # the sharded layouts held the whole model before sharding it
            torch.cuda.reset_peak_memory_stats(self.acc.device)
        self.effective = self.describe()
        self.peak, peak_facts = resolve_peak(cfg, self.acc, tf32=self.tf32)
        self.peak_remeasured: list[dict[str, Any]] = []  # Trainer.check_peak
        self.effective.update(peak_facts)
        self.step = self.restore() if resume else 0
        self.open_outputs()

    # ---- setup ----
    def build_model(self) -> None:
        from accelerate.utils import set_seed

        from workbench import finetune as ft
        from workbench.models import build_model, flops_per_token

        cfg = self.cfg
        set_seed(cfg.seed)  # before building the model: every rank starts from the same weights
        self.model = ft.build(cfg) if ft.active(cfg) else build_model(cfg)  # init_from, classify head, peft
        teacher = ft.load_teacher(cfg, self.acc.device)  # distill.teacher's frozen model, or None
        self.distill = ft.distill_step_loss(cfg, teacher) if teacher is not None else None
        self.classify = cfg.task.kind == "classify"
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.flops_per_token = flops_per_token(self.model)

    def build_data(self) -> None:
        from torch.utils.data import DataLoader

        from workbench import finetune as ft

        cfg, mb = self.cfg, self.cfg.micro_batch_size
        if cfg.data.source == "files":
            self.prepare_files()
        train_ds, eval_ds = ft.dataset(cfg, "train"), ft.dataset(cfg, "eval")  # build_dataset for task.kind lm
        self.n_eval = len(eval_ds)
        # A dedicated generator: otherwise each new DataLoader iterator draws from the global RNG and shifts
        # dropout after a resume.
        gen = torch.Generator()
        gen.manual_seed(cfg.seed)
        train_dl = DataLoader(train_ds, batch_size=mb, shuffle=True, drop_last=True, generator=gen)
        eval_dl = DataLoader(eval_ds, batch_size=mb, shuffle=False, drop_last=True)
        if len(train_dl) < 1:
            raise ValueError(f"micro_batch_size {mb} is larger than the {len(train_ds)} training sequences")
        # Only the data loaders go through prepare() here: the layout decides what happens to the model. ddp
        # hands model and optimizer to Accelerate (DDP wrapper); the sharded layouts never let Accelerate see
        # the model, so it cannot wrap an already-sharded model in DDP (workbench/parallel/).
        self.train_dl, self.eval_dl = self.acc.prepare(train_dl, eval_dl)
        self.test_dl = self.acc.prepare(DataLoader(ft.dataset(cfg, "test"), batch_size=mb)) if self.classify else None
        if len(self.train_dl) < 1:
            raise ValueError("each rank gets no full micro-batch: lower micro_batch_size or parallel.num_processes")

    def prepare_files(self) -> None:
        """data.source files: rank 0 reads, tokenizes and packs data.path into the run folder (tokenizer.json,
        data/*.npz) while the others wait, then reads it like them (workbench/data/files.py)."""
        from workbench.data import files, set_files_dir

        with self.acc.main_process_first():
            info = files.prepare(self.cfg, self.run_dir)
        set_files_dir(self.run_dir)
        if self.main:
            write_status(self.run_dir, data_split=info)

    def build_layout(self) -> None:
        from workbench import finetune as ft
        from workbench import parallel
        from workbench.measure import FirstStepMeter

        cfg = self.cfg
        # The scheduler is not prepared: Accelerate would step it num_processes times per optimizer step (it
        # counts samples); ours counts optimizer steps. Its state (and the CPU GradScaler's) goes into
        # trainer_state.json (workbench.checkpoints).
        scaler = torch.amp.GradScaler("cpu") if self.native_fp16 else None
        fwd_ctx = torch.autocast("cpu", dtype=torch.float16) if self.native_fp16 else nullcontext()
        layout = parallel.setup(
            cfg, self.acc, self.model, lambda m: build_optimizer(cfg, m), scaler=scaler, fwd_ctx=fwd_ctx,
            compute_loss=self.distill,
        )  # fmt: skip
        ft.adalora_hook(cfg, layout.model, layout.optimizer, lambda: self.step)  # AdaLoRA's budget, each step
        self.layout = layout
        self.model, self.optimizer, self.scaler, self.fwd_ctx = (
            layout.model,
            layout.optimizer,
            layout.scaler,
            layout.fwd_ctx,
        )
        self.amp_scaler = (
            self.scaler if self.scaler is not None else getattr(self.acc, "scaler", None)
        )  # CPU's or CUDA's
        # LambdaLR drives the torch optimizer itself (Accelerate's wrapper delegates its param_groups to it).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            getattr(self.optimizer, "optimizer", self.optimizer), lr_lambda(cfg)
        )
        self.meter = FirstStepMeter(self.model, self.optimizer)  # bytes held and saved for backward, first step only
        self.dtype_probe = DtypeProbe(self.acc.unwrap_model(self.model))

    def describe(self) -> dict[str, Any]:
        """What is really in effect, for status.json and the first event: the flags can lie, these cannot."""
        from workbench import finetune as ft

        acc, cfg = self.acc, self.cfg
        return {
            "world_size": self.world,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "distributed_type": str(acc.distributed_type).split(".")[-1],
            "strategy": cfg.parallel.strategy,
            "wrapper": self.layout.wrapper_name(),  # the wrapper really in effect (tests fail on a silent DDP fallback)
            "checkpoint_format": self.layout.checkpoint_format,
            "activation_checkpointing": bool(cfg.activation_checkpointing),
            "mixed_precision": "fp16 (torch.autocast cpu + GradScaler)" if self.native_fp16 else acc.mixed_precision,
            "fp8_backend": str(acc.fp8_backend).split(".")[-1] if cfg.precision == "fp8" else None,
            "tf32": self.tf32,
            "compile": bool(cfg.compile),  # compile_s joins it after the first step
            "device": str(acc.device),
            "threads_per_process": torch.get_num_threads(),
            "num_params": self.n_params,
            "flops_per_token": self.flops_per_token,
            "trainable_params": ft.trainable_params(self.model),
            **(fp8_modules(acc.unwrap_model(self.model)) if cfg.precision == "fp8" else {}),
        }

    def restore(self) -> int:
        """Load the run's last checkpoint (asked for by --resume); returns its optimizer step."""
        last = checkpoints.latest(self.run_dir)
        if last is None:
            raise FileNotFoundError(f"--resume: {self.run_dir!r} holds no checkpoints/step_N folder")
        state = checkpoints.load(self.acc, self.layout, last)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        return state["step"]

    def open_outputs(self) -> None:
        from workbench.data import entropy_floor

        self.metrics = None
        if self.main:
            path = os.path.join(self.run_dir, "metrics.jsonl")
            if self.resume:
                drop_events_after(path, self.step)  # no duplicate steps in one metrics file
            self.metrics = MetricsWriter(path)
        # purge_step: TensorBoard hides events past the checkpoint that the interrupted run wrote.
        start_trackers(self.acc, self.cfg, self.run_dir, self.step, self.resume)  # tensorboard, mlflow
        self.floor = entropy_floor(self.cfg) if not self.classify else None  # a classifier has bayes_accuracy

    # ---- the loop ----
    def run(self) -> str:
        """Train to max_steps (or until asked to stop); save the last checkpoint; returns finished | stopped."""
        from workbench import parallel
        from workbench.profiling import StepProfiler

        cfg, dev = self.cfg, self.acc.device
        self.profiler = StepProfiler(cfg, self.run_dir, self.layout, self.rank, self.world, dev)  # profile_steps
        self.clip = cfg.optimizer.grad_clip if cfg.optimizer.grad_clip > 0 else float("inf")
        self.loss_sum = torch.zeros((), device=dev, dtype=torch.float32)
        self.loss_n = torch.zeros((), device=dev, dtype=torch.float32)  # micro-steps that computed a loss
        self.gn_sum = torch.zeros((), device=dev, dtype=torch.float32)
        self.n_steps, self.first_event = 0, True
        batches = self.micro_batches(self.step * cfg.grad_accum_steps)
        self.model.train()
        self.t_interval = time.perf_counter()
        end_state = "finished"
        # Bytes moved, measured over this process's first optimizer step (the same every step: static shapes).
        # compile: true probes the second step (torch.compile skips a frame while a dispatch mode is active).
        self.comm_probe, self.probing, self.probed, self.comm = parallel.CommProbe(), False, False, None
        self.probe_step = self.step + 1 + bool(cfg.compile)
        self.untimed, compiling = 0, bool(cfg.compile)
        if not compiling:
            self.start_probe()
        while self.step < cfg.max_steps:
            with self.profiler.step():  # nothing at all, except for the profile_steps steps
                self.train_step(batches)
            if compiling:
                self.end_compile_step()
                compiling = False
            if not self.is_log_step():
                continue
            stop = self.log_step()
            last = self.step == cfg.max_steps
            if stop and not last:
                end_state = "stopped"
                break
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not last:
                self.save()
            self.t_interval = time.perf_counter()  # eval and checkpoint time stay out of tokens/s
        return self.finish(end_state)

    def end_compile_step(self) -> None:
        """After the first step of a compiled run: its time (compilation included) is compile_s, and it is kept
        out of tokens/s. One host sync, once per run (the hot path stays without them)."""
        if self.acc.device.type == "cuda":
            torch.cuda.synchronize(self.acc.device)
        now = time.perf_counter()
        self.effective["compile_s"] = now - self.t_interval
        self.effective["compile_cache"] = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        from torch._dynamo.utils import counters  # graphs dynamo captured: 0 would mean nothing was compiled

        self.effective["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
        self.t_interval, self.untimed = now, 1
        self.start_probe()

    def start_probe(self) -> None:
        self.comm_probe.__enter__()
        self.probing, self.probed = True, False

    def micro_batches(self, start_micro: int):
        """Micro-batches from the start_micro-th on, epoch after epoch (the seedable sampler's order)."""
        epoch, skip = divmod(start_micro, len(self.train_dl))
        while True:
            self.train_dl.set_epoch(epoch)
            yield from self.acc.skip_first_batches(self.train_dl, skip) if skip else self.train_dl
            epoch, skip = epoch + 1, 0

    def forward_backward(self, batches) -> None:
        """grad_accum_steps micro-batches forward and backward; the gradient sync happens on the last one."""
        accum = self.cfg.grad_accum_steps
        for i in range(accum):
            x, y = next(batches)
            loss_part, count = self.layout.micro_step(x, y, i == accum - 1)  # this rank's part of the layout
            self.loss_sum += loss_part
            self.loss_n += count

    def train_step(self, batches) -> None:
        """One optimizer step. The hot path: no host sync, no file I/O."""
        self.forward_backward(batches)
        with self.profiler.optimizer():  # a label while profile_steps records, else nothing
            grad_norm = self.layout.step(self.clip)  # global norm, clip, update (fp16's scaler skips an overflow)
        self.scheduler.step()
        if self.probing:
            self.comm_probe.__exit__(None, None, None)
            self.probing, self.probed = False, True
        self.step += 1
        self.n_steps += 1
        self.gn_sum += grad_norm

    def eval_due(self) -> bool:
        every, last = self.cfg.eval_every, self.step == self.cfg.max_steps
        return every > 0 and (self.step % every == 0 or last)

    def is_log_step(self) -> bool:
        return self.step % self.cfg.log_every == 0 or self.eval_due() or self.step == self.cfg.max_steps

    # ---- the log step: the only place the host waits for the device ----
    def log_step(self) -> bool:
        """Build, write and check this interval's metric event; returns whether the ranks agreed to stop."""
        event, stop = self.interval_event(time.perf_counter() - self.t_interval)
        last = self.step == self.cfg.max_steps
        if self.eval_due():
            event.update(self.eval_metrics(last))
        if self.first_event:
            self.add_first_event(event)
        self.publish(event, last)
        self.check_health(event["loss"])
        self.loss_sum.zero_()
        self.loss_n.zero_()
        self.gn_sum.zero_()
        self.n_steps, self.untimed = 0, 0
        return stop

    def interval_event(self, dt: float) -> tuple[dict[str, Any], bool]:
        """The metric event of the steps since the last log step, and whether any rank was asked to stop."""
        acc, cfg, n = self.acc, self.cfg, self.n_steps
        stop_asked = 1.0 if (self.main and os.path.exists(os.path.join(self.run_dir, "STOP"))) else 0.0
        # profiled steps, and a compiled run's first step (compile_s), stay out of tokens/s
        timed, dt = self.profiler.timed(n - self.untimed, dt)
        tps = timed * cfg.tokens_per_step / dt if timed > 0 else 0.0
        # only a measured (CPU) peak can be wrong by measurement; a data sheet's is what it is (MFU then absent)
        measured_peak = self.peak is not None and acc.device.type == "cpu"
        above = float(measured_peak and self.flops_per_token * tps / self.world > self.peak)
        flags = torch.tensor([stop_asked, above], device=acc.device)
        stats = acc.reduce(torch.cat([torch.stack([self.loss_sum, self.loss_n, self.gn_sum]), flags]), reduction="sum")
        if float(stats[4]) > 0:  # every rank sees the same sum, so every rank joins the re-measurement
            self.check_peak()
        mem = acc.gather(torch.tensor([peak_memory_bytes(acc.device.type)], dtype=torch.float64, device=acc.device))
        event: dict[str, Any] = {
            "step": self.step,
            "tokens": self.step * cfg.tokens_per_step,
            "loss": float(stats[0] / stats[1]),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(stats[2]) / (self.world * n),
            "tokens_per_s": tps,
            "samples_per_s": timed * cfg.global_batch_size / dt if timed > 0 else 0.0,
            "step_time_s": dt / timed if timed > 0 else 0.0,
            "mfu": mfu(self.flops_per_token, tps, self.peak, self.world),
            "mem_bytes": [int(v) for v in mem.tolist()],
            "time": time.time(),
            "elapsed_s": time.time() - self.t_start,
        }
        if timed <= 0:  # only profiled or compiling steps in this interval: no throughput (absent, not 0)
            for k in ("tokens_per_s", "samples_per_s", "step_time_s", "mfu"):
                event.pop(k)
        if self.comm is None and self.probed:  # the first log step after the probe: every rank's bytes, once
            self.comm = comm_event(acc, self.comm_probe, self.probe_step)
        event.update(self.comm or {})
        event.update(self.layout.extra_metrics())  # e.g. the pipeline's bubble and measured idle time per stage
        if self.amp_scaler is not None:
            event["loss_scale"] = float(self.amp_scaler.get_scale())
        if self.floor is not None:
            event["entropy_floor"] = self.floor
        return event, float(stats[3]) > 0

    def check_peak(self) -> None:
        """The model ran faster than the peak says a device can: the peak is wrong (measured while other jobs
        held the cores, say). Measure it again now, record that it happened, and trust only the new figure; a
        model FLOP/s above even that leaves MFU out (telemetry.mfu) rather than report more than 100%."""
        old = self.peak
        self.peak, facts = resolve_peak(self.cfg, self.acc, refresh=True)
        self.effective.update(facts)
        self.peak_remeasured.append({"step": self.step, "old": old, "new": self.peak})
        if self.main:
            write_status(self.run_dir, peak_remeasured=self.peak_remeasured, effective=self.effective)

    def eval_metrics(self, last: bool) -> dict[str, Any]:
        from workbench import finetune as ft

        cfg, acc = self.cfg, self.acc
        if self.classify:  # eval_loss, eval_accuracy, eval_f1; and test_* on the whole test split at the end
            out = ft.eval_event(acc, self.model, self.eval_dl, cfg, self.fwd_ctx, "eval", cfg.eval_batches)
            if last:
                out.update(ft.eval_event(acc, self.model, self.test_dl, cfg, self.fwd_ctx, "test"))
            return out
        loss = self.evaluate()
        if loss is None:
            if self.main:
                write_status(self.run_dir, eval_skipped=(
                    f"no evaluation sample: the eval split's {self.n_eval} sequences hold no full micro-batch of "
                    f"micro_batch_size {cfg.micro_batch_size} per rank; eval_loss is left out of the events"))  # fmt: skip
            return {}
        return {"eval_loss": loss}

    def evaluate(self) -> float | None:
        """Mean loss over up to eval_batches eval micro-batches per rank; None when no sample was evaluated
        (a mean over nothing is not a loss: never report 0 for it)."""
        self.model.eval()
        total = torch.zeros(2, device=self.acc.device, dtype=torch.float64)
        # No fwd_ctx here: the layout's eval_loss enters it. Entering the same torch.autocast object twice nests
        # it, and the inner __enter__ overwrites the state the outer __exit__ restores: autocast stayed on for the
        # rest of the run after the first evaluation.
        with torch.no_grad():
            for i, (x, y) in enumerate(self.eval_dl):
                if i >= self.cfg.eval_batches:
                    break
                loss_part, count = self.layout.eval_loss(x, y)  # (0, 0) on pipeline stages without the head
                total[0] += loss_part
                total[1] += count
        self.model.train()
        total = self.acc.reduce(total, reduction="sum")
        if float(total[1]) == 0:
            return None
        return float(total[0] / total[1])

    def add_first_event(self, event: dict[str, Any]) -> None:
        """What is in effect, and memory measured vs planned: in the first event and in status.json."""
        from workbench import finetune as ft
        from workbench.measure import planned

        eff = self.effective
        event.update(ft.first_event(self.cfg, eff))  # trainable_params; chance and Bayes accuracy
        eff["compute_dtype"] = self.dtype_probe.dtype
        eff["layout"] = gather_objects(self.layout.facts())  # per rank: param types, local shapes, ...
        event["effective"] = eff
        self.dtype_probe.remove()
        event["measured"] = self.meter.gather(self.acc)  # per rank; a log step syncs the ranks anyway
        event["planned"] = planned(self.cfg, self.acc.device) if self.main else None
        if self.main:
            write_status(self.run_dir, effective=eff, entropy_floor=self.floor,
                         global_batch_size=self.cfg.global_batch_size, tokens_per_step=self.cfg.tokens_per_step,
                         measured=event["measured"], planned=event["planned"])  # fmt: skip
        self.first_event = False

    def publish(self, event: dict[str, Any], last: bool) -> None:
        if not self.main:
            return
        self.metrics.write(event)
        self.acc.log(tensorboard_scalars(event), step=self.step)
        if self.step % self.cfg.log_every == 0 or last:
            write_status(self.run_dir, step=self.step, max_steps=self.cfg.max_steps)

    def check_health(self, loss: float) -> None:
        cfg = self.cfg
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at step {self.step} (precision {cfg.precision}, "
                f"optimizer.lr {cfg.optimizer.lr}); lower optimizer.lr, keep optimizer.grad_clip on, or use bf16/fp32"
            )
        if self.amp_scaler is not None and self.amp_scaler.get_scale() < 2.0**-10:
            raise TrainingDiverged(
                f"fp16 loss scale collapsed to {self.amp_scaler.get_scale():.3g} at step {self.step}: gradients "
                "overflow at every step; lower optimizer.lr or use bf16"
            )

    # ---- checkpoints and the end ----
    def save(self) -> str:
        state = {
            "step": self.step,
            "tokens": self.step * self.cfg.tokens_per_step,
            "scheduler": self.scheduler.state_dict(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return checkpoints.save(self.acc, self.layout, self.run_dir, state)

    def finish(self, end_state: str) -> str:
        ckpt = self.save()
        # Each rank's fingerprint of the final weights: data parallel ranks must hold identical parameters. The
        # sharded layouts gather the whole model first (params_scope says so), so every rank of every layout
        # fingerprints the same thing and digests compare across ranks.
        digest = {"rank": self.rank, "step": self.step, **self.layout.digest()}
        write_json_atomic(os.path.join(self.run_dir, f"final_rank{self.rank}.json"), digest)
        if self.main:
            write_status(self.run_dir, state=end_state, step=self.step, checkpoint=ckpt, error=None)
            self.metrics.close()
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return end_state


def train(cfg, run_dir: str, resume: bool = False) -> str:
    """Train ``cfg`` in ``run_dir`` (continuing from its last checkpoint if resume); returns the end state."""
    return Trainer(cfg, run_dir, resume=resume).run()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workbench.worker", description="one rank of a workbench run")
    p.add_argument("config", help="RUN_DIR/config.yaml; the run folder is its directory")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    return p.parse_args(argv)


@record  # an exception is written to TORCHELASTIC_ERROR_FILE as JSON: the supervisor names the failing rank
def main(argv: list[str] | None = None) -> None:
    from workbench.config import RunConfig
    from workbench.config.strategies import import_layout_modules

    import_layout_modules()  # layouts your own modules registered in the launching process
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = os.path.dirname(os.path.abspath(args.config))
    train(RunConfig.from_yaml(args.config), run_dir, resume=args.resume)


if __name__ == "__main__":
    main()
    # Leave without running interpreter teardown: ~13% of runs that returned normally died here with
    # "terminate called without an active exception" (SIGABRT) and the launcher reported a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
