"""Measure this machine's device facts for the step-time model: short microbenchmarks, cached with provenance.

    python -m workbench.calibrate --processes 2 [--dtype bf16]   # or: wb.plan(cfg), which measures once when absent

`processes` processes start at once, as a run's would (on a CPU they share the cores, so each measures its share),
each with the threads a run gives it, joined by a gloo process group. Together they measure:

  matmul        the rate of a Linear's matmuls (forward + backward) from 0.5 MFLOP to 4 GFLOP a matmul (the
                median of repeats, all ranks at once, the mean of two passes)
  op_s          the fixed cost of one tensor operation: the reference GPT's block forward + backward at a size
                where the arithmetic is nil, over the aten operations it dispatches (counted with a
                TorchDispatchMode): the per-operation overhead of the very mix a training step runs
  attention     causal scaled_dot_product_attention forward + backward at three shapes (FLOP/s)
  elementwise   seconds per element of GELU, SiLU and LayerNorm, forward + backward
  bandwidth     an elementwise multiply-add over 4 MiB tensors (read + written bytes per second)
  dtensor_op_s  the extra cost of an elementwise operation on a DTensor over a plain tensor's
  optimizer     clip_grad_norm_ + AdamW per parameter tensor at a nil size, plain and as sharded DTensors
  tp_linear_s   what a Colwise/Rowwise Linear costs over a plain one (forward + backward, nil size)
  collectives   all_reduce, all_gather, reduce_scatter, broadcast and send/recv of 4 bytes (latency) and of
                4 MiB (bandwidth = bytes / (time - latency))

Never a run of the layout being predicted: these are the facts a layout's time is computed from. About 10 s on
a 2-core machine (most of it two imports of torch). The facts land in ``device_facts.json`` under the cache
folder (``workbench.plan.devices.cache_dir``), keyed by CPU model, precision, processes and threads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from workbench.plan import Plan
from workbench.plan import plan as plan_of
from workbench.plan.devices import resolve_device
from workbench.plan.facts import COLLECTIVES, DeviceFacts, cached_cpu_facts, cpu_facts_key, write_facts

if TYPE_CHECKING:
    from workbench.config import RunConfig

MATMULS = ((64, 64, 64), (256, 128, 128), (512, 128, 512), (1024, 256, 256), (1024, 512, 512), (2048, 1024, 1024))
# (tokens, in, out) of a Linear: 0.5 MFLOP to 4 GFLOP per matmul
BUDGET_S = 1.0  # the longest one size of a microbenchmark may take, all repeats together
PASSES = 2  # the compute microbenchmarks run twice; each fact is the mean of the two
SMALL, LARGE = 1, 1 << 20  # elements of a collective's tensor: latency, bandwidth (fp32: 4 B, 4 MiB)
TIMEOUT_S = 120
# how each measuring process starts (not `-m workbench.calibrate`: `import workbench` has imported this module)
RANK_ENTRY = "import sys; from workbench.calibrate import main; main(sys.argv[1:])"


def _median_s(fn: Any, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def too_slow(mine: bool) -> bool:
    """Whether any rank finds the next size too slow: they decide together, or their barriers would part."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if mine else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def matmul_rates(dtype: Any) -> list[tuple[float, float]]:
    """(FLOPs of one matmul, FLOP/s) as a Linear in training reaches it: ``F.linear`` forward and backward (the
    input's and the weight's gradients: three matmuls, transposed operands, the bias), timed together."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    out: list[tuple[float, float]] = []
    for m, k, n in MATMULS:
        x = torch.randn(m, k).to(dtype).requires_grad_()
        w, b = torch.randn(n, k).to(dtype).requires_grad_(), torch.zeros(n).to(dtype).requires_grad_()
        flops = 2.0 * m * k * n
        if out and too_slow(3 * flops / out[-1][1] > BUDGET_S / 5):  # a slow dtype (fp16 on a CPU): no larger sizes
            break
        dist.barrier()  # every rank at once: they share the machine as a run's ranks do
        t = _median_s(
            lambda x=x, w=w, b=b: F.linear(x, w, b).sum().backward(), repeats=max(5, min(40, int(2e8 / flops)))
        )
        out.append((flops, 3 * flops / t))
    return out


def op_cost(dtype: Any) -> float:
    """Seconds per aten operation of the reference GPT block's forward + backward at a nil size."""
    import torch
    import torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode

    from workbench.models.gpt import Block, GPTConfig

    block = Block(GPTConfig(seq_len=8, n_layer=1, n_head=2, d_model=8)).to(dtype)
    x = torch.randn(1, 8, 8, dtype=dtype, requires_grad=True)

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            Count.n += 1
            return func(*args, **(kwargs or {}))

    def step() -> None:
        block(x).sum().backward()

    with Count():
        step()
    dist.barrier()
    return _median_s(step, repeats=200, warmup=10) / Count.n


ATTENTION = ((8, 4, 64, 32), (4, 4, 128, 64), (2, 8, 256, 64))  # (batch, heads, T, head_dim)


def attention_rates(dtype: Any) -> list[tuple[float, float]]:
    """Causal scaled_dot_product_attention forward + backward: (FLOPs, FLOP/s) with FLOPs counted as the plan
    does (3 x 4·B·H·T²·Q: scores and weighted values, forward once and backward twice)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    out: list[tuple[float, float]] = []
    for b, h, t, q in ATTENTION:
        x = [torch.randn(b, h, t, q, dtype=dtype, requires_grad=True) for _ in range(3)]
        if out and too_slow(3 * 4.0 * b * h * t * t * q / out[-1][1] > BUDGET_S / 10):
            break
        dist.barrier()
        sec = _median_s(lambda x=x: F.scaled_dot_product_attention(*x, is_causal=True).sum().backward(), 10)
        flops = 3 * 4.0 * b * h * t * t * q
        out.append((flops, flops / sec))
    return out


def elementwise_costs(dtype: Any) -> dict[str, float]:
    """Seconds per element of a block's non-matmul kernels, forward + backward: the MLP's activation (GELU, and
    SiLU for SwiGLU models) and LayerNorm, at activation sizes of a small model."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    x = torch.randn(512, 512, dtype=dtype, requires_grad=True)
    r = torch.randn(512, 128, dtype=dtype, requires_grad=True)
    w, b = torch.ones(128, dtype=dtype, requires_grad=True), torch.zeros(128, dtype=dtype, requires_grad=True)
    dist.barrier()
    gelu = _median_s(lambda: F.gelu(x).sum().backward(), 20) / x.numel()
    silu = _median_s(lambda: F.silu(x).sum().backward(), 20) / x.numel()
    norm = _median_s(lambda: F.layer_norm(r, (128,), w, b).sum().backward(), 20) / r.numel()
    return {"gelu_s_per_element": gelu, "silu_s_per_element": silu, "norm_s_per_element": norm}


def bandwidth(dtype: Any) -> float:
    import torch
    import torch.distributed as dist

    a, b = torch.randn(LARGE).to(dtype), torch.randn(LARGE).to(dtype)
    c = torch.empty_like(a)
    dist.barrier()
    t = _median_s(lambda: torch.addcmul(a, a, b, out=c), repeats=30)
    return 3 * a.numel() * a.element_size() / t


def dtensor_cost(world: int) -> float:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    plain = torch.randn(8, 8)
    d = distribute_tensor(plain, mesh, [Replicate()])
    dist.barrier()
    return max(0.0, _median_s(lambda: d * 1.0001, 100, 5) - _median_s(lambda: plain * 1.0001, 100, 5))


def optimizer_costs(world: int) -> dict[str, float]:
    """Seconds per parameter tensor of clip_grad_norm_ + AdamW's step at a nil size (a small model's optimizer
    step is this fixed cost times its tensors): plain tensors, and DTensors sharded over the processes (FSDP2's
    and tensor parallelism's parameters)."""
    import torch
    import torch.distributed as dist

    def per_tensor(params: list[Any]) -> float:
        for p in params:
            p.grad = torch.ones_like(p)
        opt = torch.optim.AdamW(params, lr=1e-3)

        def step() -> None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        dist.barrier()
        return _median_s(step, 20, 3) / len(params)

    out = {"adamw_s_per_tensor": per_tensor([torch.nn.Parameter(torch.randn(8, 8)) for _ in range(16)])}
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        params = [torch.nn.Parameter(distribute_tensor(torch.randn(8 * world, 8), mesh, [Shard(0)])) for _ in range(16)]
        out["adamw_dtensor_s_per_tensor"] = per_tensor(params)
    return out


def tp_linear_cost(world: int, allreduce_latency: float) -> float:
    """The extra seconds one tensor-parallel Linear (Colwise or Rowwise, as parallelize_module applies them)
    costs over a plain one, forward + backward, at a nil size, its collectives' latency left out."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (world,))
    plain = torch.nn.Sequential(torch.nn.Linear(8 * world, 8 * world), torch.nn.Linear(8 * world, 8 * world))
    tp = parallelize_module(
        torch.nn.Sequential(torch.nn.Linear(8 * world, 8 * world), torch.nn.Linear(8 * world, 8 * world)),
        mesh, {"0": ColwiseParallel(), "1": RowwiseParallel()},
    )  # fmt: skip
    x = torch.randn(4, 8 * world)
    dist.barrier()
    t_tp = _median_s(lambda: tp(x).sum().backward(), 30, 3)
    t_plain = _median_s(lambda: plain(x).sum().backward(), 30, 3)
    return max(0.0, (t_tp - t_plain - 2 * allreduce_latency) / 2)


def collective_cost(world: int, rank: int) -> dict[str, tuple[float, float]]:
    """(latency s, bytes/s) of each collective, timed in lockstep on every rank."""
    import torch
    import torch.distributed as dist

    def run(op: str, n: int) -> float:
        x = torch.ones(n)
        outs = [torch.empty(n) for _ in range(world)]
        big = torch.ones(n * world)

        def once() -> None:
            if op == "all_reduce":
                dist.all_reduce(x)
            elif op == "all_gather":
                dist.all_gather(outs, x)
            elif op == "reduce_scatter":
                dist.reduce_scatter_tensor(x, big)
            elif op == "broadcast":
                dist.broadcast(x, src=0)
            elif rank in (0, 1):  # send: a pair, 0 -> 1 then back
                if rank == 0:
                    dist.send(x, 1)
                    dist.recv(x, 1)
                else:
                    dist.recv(x, 0)
                    dist.send(x, 0)

        dist.barrier()
        t = _median_s(once, repeats=20 if n == SMALL else 8)
        return t / 2 if op == "send" else t

    out = {}
    for op in COLLECTIVES:
        lat, big_t = run(op, SMALL), run(op, LARGE)
        nbytes = 4 * LARGE * (world if op == "reduce_scatter" else 1)  # the tensor handed to it (plan/comm.py)
        out[op] = (lat, nbytes / max(big_t - lat, 1e-9))
    return out


def compute_facts(dtype: Any) -> dict[str, Any]:
    return {"matmul": matmul_rates(dtype), "attention": attention_rates(dtype), "op_s": op_cost(dtype),
            "bw": bandwidth(dtype), "elementwise": elementwise_costs(dtype)}  # fmt: skip


def mean_of(mean: dict[str, Any], new: dict[str, Any], n: int) -> None:
    """Fold pass number `n` (from 1) into the running mean of the passes, fact by fact."""
    if not mean:
        mean.update(new)
        return

    def avg(a: float, b: float) -> float:
        return a + (b - a) / n

    for k in ("matmul", "attention"):
        mean[k] = [(f, avg(r0, r1)) for (f, r0), (_, r1) in zip(mean[k], new[k], strict=False)]
    mean["op_s"], mean["bw"] = avg(mean["op_s"], new["op_s"]), avg(mean["bw"], new["bw"])
    mean["elementwise"] = {k: avg(v, new["elementwise"][k]) for k, v in mean["elementwise"].items()}


def measure_rank(rank: int, world: int, port: int, threads: int, dtype_name: str, out: str) -> None:
    """One process's part of the calibration (all of them run it at once)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=TIMEOUT_S))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
    facts: dict[str, Any] = {}
    for n in range(1, PASSES + 1):
        mean_of(facts, compute_facts(dtype), n)
    facts["dtensor_op_s"] = dtensor_cost(world) if world > 1 else 0.0
    facts["collectives"] = collective_cost(world, rank) if world > 1 else {}
    facts["elementwise"].update(optimizer_costs(world))
    if world > 1:
        facts["elementwise"]["tp_linear_s"] = tp_linear_cost(world, facts["collectives"]["all_reduce"][0])
    if rank == 0:
        with open(out, "w") as f:
            json.dump(facts, f)
    # every rank past its last operation before any leaves: a peer's socket closing under a pending receive
    # aborted gloo (SIGABRT) in one run of the test suite
    dist.barrier()
    # and leave without tearing down: a DeviceMesh's or an asynchronous work's C++ thread still joinable at exit
    # ended a rank with "terminate called without an active exception" (SIGABRT) in a run of the suite
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calibrate_cpu(processes: int, threads: int | None = None, dtype: str = "fp32") -> DeviceFacts:
    """Measure this CPU's facts with `processes` processes at once (each `threads` threads; default: the cores
    shared out as a run does), cache and return them."""
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="wb-calibrate-") as tmp:
        out = os.path.join(tmp, "facts.json")
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RANK_ENTRY,
                    "--rank",
                    str(r),
                    "--processes",
                    str(processes),
                    "--port",
                    str(port),
                    "--threads",
                    str(threads),
                    "--dtype",
                    dtype,
                    "--out",
                    out,
                ]
            )  # fmt: skip
            for r in range(processes)
        ]
        try:
            codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        if any(codes) or not os.path.exists(out):
            raise RuntimeError(f"calibration failed: exit codes {codes}")
        with open(out) as f:
            raw = json.load(f)
        seconds = time.perf_counter() - t0
    return store(raw, processes, threads, dtype, seconds)


def store(raw: dict[str, Any], processes: int, threads: int, dtype: str, seconds: float) -> DeviceFacts:
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    loaded = (
        f"; under load: 1-min load average {load} on {os.cpu_count()} CPUs"
        if load and load > (os.cpu_count() or 1)
        else ""
    )
    facts = DeviceFacts(
        matmul=tuple((float(a), float(b)) for a, b in raw["matmul"]),
        op_s=float(raw["op_s"]),
        mem_bytes_per_s=float(raw["bw"]),
        collectives={k: (float(v[0]), float(v[1])) for k, v in raw["collectives"].items()},
        dtensor_op_s=float(raw["dtensor_op_s"]),
        attention=tuple((float(a), float(b)) for a, b in raw["attention"]),
        elementwise={k: float(v) for k, v in raw["elementwise"].items()},
        source=f"measured on this machine ({processes} process(es) x {threads} thread(s), {dtype}, gloo) at {when}"
        f"{loaded}",
        measured_at=when,
        processes=processes,
        threads=threads,
        dtype=dtype,
        extra={"seconds": round(seconds, 2), "load_average": load or 0.0},
    )
    write_facts(cpu_facts_key(dtype, processes, threads), facts)
    return facts


def ensure_cpu_facts(processes: int, dtype: str = "fp32") -> DeviceFacts | None:
    """This CPU's facts for `processes`, measured now if none are cached (or the cached ones were taken under
    load and the machine is quieter now); None when the measurement fails (the plan then says "default")."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    have = cached_cpu_facts(dtype, processes, threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpus = os.cpu_count() or 1
    if have is not None and not (have.extra.get("load_average", 0.0) > cpus and load < cpus):
        return have
    try:
        return calibrate_cpu(processes, threads, dtype)
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return have


def plan(cfg: RunConfig, device: str | None = None, micro_batch_size: int | None = None) -> Plan:
    """``wb.plan``: the plan of `cfg` (``workbench.plan.plan``); for this machine's CPU on its measured facts,
    measured first (about 10 s, once per CPU, processes and precision) when none are cached."""
    if resolve_device(cfg, device) == "cpu":
        dtype = cfg.precision if cfg.precision in ("fp32", "bf16", "fp16") else "fp32"
        ensure_cpu_facts(cfg.parallel.num_processes, dtype)
    return plan_of(cfg, device=device, micro_batch_size=micro_batch_size)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m workbench.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rank is not None:
        measure_rank(a.rank, a.processes, a.port, a.threads, a.dtype, a.out)
        return
    facts = calibrate_cpu(a.processes, a.threads, a.dtype)
    print(json.dumps(facts.to_dict(), indent=1))


if __name__ == "__main__":
    main()
