"""Inside a step: ``profile_steps: N`` profiles N optimizer steps with torch.profiler, on every rank.

The worker hands each optimizer step to ``StepProfiler.step()``. After ``PROFILE_WARMUP`` unprofiled steps (the
first carries the bytes probe; the allocator and the collectives' buffers settle), torch.profiler records N
steps (CPU activities, plus CUDA where the run is on GPUs) with labels of our own for the phases
(``wb:forward``, ``wb:backward``, ``wb:optimizer``, ``wb:data``, one ``wb:step`` per optimizer step). Then each rank
writes ``profile/rank<r>.json`` (a Chrome trace: Perfetto, chrome://tracing, TensorBoard's trace viewer) and rank
0 writes ``profile/summary.json``, the per-rank figures of ``summarize`` below (README, "Inside a step").

The labels are record_function ranges opened only while the profiler is on (``StepProfiler.optimizer()`` around
the layout's step: a nullcontext otherwise), so profiling adds nothing that syncs or writes to the hot path of an
unprofiled run and changes no arithmetic: the losses of a profiled run equal an unprofiled one's. The profiled steps stay out of tokens/s (``timed``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from workbench.config import PROFILE_WARMUP

PHASES = ("forward", "backward", "optimizer", "data")
LABEL = "wb:"  # our record_function names: wb:step, wb:forward, wb:backward, wb:optimizer, wb:data
KINDS = PHASES + ("idle", "other")  # the timeline's compute-lane kinds, and the two kinds of not doing work
COMM_PREFIXES = ("gloo:", "nccl:")  # the backends' own spans: one per communication op, from start to completion
COMM_CALLS = ("c10d::", "_c10d_functional::", "c10d_functional::")  # the calls on the training thread
MERGE_GAP_US = 20.0  # timeline spans of one kind closer than this are drawn as one

Interval = tuple[float, float]


# ---- interval arithmetic over sorted lists of disjoint [start, end) intervals (microseconds) ----
def merge(intervals: list[Interval] | list[list[float]], gap: float = 0.0) -> list[Interval]:
    """The union of any intervals, as sorted disjoint intervals (neighbours closer than ``gap`` joined)."""
    out: list[list[float]] = []
    for s, e in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and s <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Where both sets of intervals are (both already merged)."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    """Where ``a`` is and ``b`` is not (both already merged)."""
    out, j = [], 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k, cur = j, s
        while k < len(b) and b[k][0] < e:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def measure(a: list[Interval]) -> float:
    """Total length of merged intervals."""
    return sum(e - s for s, e in a)


# ---- one rank's trace -> the facts the summary needs ----
def comm_kind(name: str) -> str:
    """``gloo:all_reduce`` / ``c10d::allreduce_`` / ``_c10d_functional::wait_tensor`` -> all_reduce / wait."""
    from workbench.parallel.comm import OP_NAMES

    op = name.split(":")[-1]
    if op in ("wait", "wait_tensor", "barrier", "monitored_barrier_"):
        return "wait" if op.startswith("wait") else "barrier"
    return OP_NAMES.get(op, op)


def is_comm_call(name: str) -> bool:
    return name.startswith(COMM_CALLS)


def rank_facts(events: list[dict[str, Any]], rank: int, world: int) -> dict[str, Any]:
    """What the summary needs from one rank's Chrome trace events, as merged intervals (microseconds).

    The training thread is the one that ran the ``wb:step`` ranges. compute: its operators (torch.profiler's
    cpu_op events), less those inside communication calls and data loading; backward: autograd's per-node ranges;
    comm: the backend's span of each communication op (any thread), with the peer of a send/recv.
    """
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    steps = [e for e in spans if e["name"] == LABEL + "step"]
    main = steps[0]["tid"] if steps else None
    on_main = [e for e in spans if e.get("tid") == main]

    def iv(sel) -> list[Interval]:
        return merge([(e["ts"], e["ts"] + e["dur"]) for e in sel])

    calls = [e for e in on_main if is_comm_call(e["name"])]
    comm_main = iv(calls)
    data = iv(e for e in on_main if e["name"].startswith("enumerate(DataLoader)"))
    ops = iv(e for e in on_main if e.get("cat") in ("cpu_op", "kernel") and not is_comm_call(e["name"]))
    comm = []
    peers = {"send": [], "recv": []}  # the peer of each send/recv call, in order (record_shapes gives it)
    for e in sorted(calls, key=lambda e: e["ts"]):
        kind = comm_kind(e["name"])
        if kind in peers:
            args = (e.get("args") or {}).get("Concrete Inputs") or []
            peers[kind].append(int(args[2]) if len(args) > 2 and str(args[2]).lstrip("-").isdigit() else None)
    seen = {"send": 0, "recv": 0}
    for e in sorted((e for e in spans if e["name"].startswith(COMM_PREFIXES)), key=lambda e: e["ts"]):
        kind = comm_kind(e["name"])
        peer = None
        if kind in seen:
            i, seen[kind] = seen[kind], seen[kind] + 1
            peer = peers[kind][i] if i < len(peers[kind]) else None
            peer = (1 - rank) if peer is None and world == 2 else peer
        comm.append({"op": kind, "start": e["ts"], "end": e["ts"] + e["dur"], "peer": peer})
    return {
        "rank": rank,
        "steps": iv(steps),
        "compute": subtract(subtract(ops, comm_main), data),
        "backward": iv(e for e in on_main if e["name"].startswith("autograd::engine::evaluate_function")),
        "optimizer": iv(e for e in on_main if e["name"] == LABEL + "optimizer"),
        "data": data,
        "comm_main": comm_main,
        "comm": comm,
    }


def waits(ranks: list[dict[str, Any]]) -> tuple[dict[int, list[Interval]], dict[int, list[Interval]]]:
    """(wait, late) per rank: the parts of its communication ops that moved no bytes.

    wait: inside an op before its last partner arrived (the partner was still busy: idle time). late: inside an
    op after a partner had already finished it (an asynchronous send whose completion this rank noticed only
    when it next looked). A collective is matched with the same-numbered op of its kind on every rank (when
    every rank ran as many of that kind; otherwise its time all counts as communication); a send from a to b
    with b's same-numbered receive from a.
    """
    out: dict[int, list[Interval]] = {f["rank"]: [] for f in ranks}
    late: dict[int, list[Interval]] = {f["rank"]: [] for f in ranks}

    def match(group: list[tuple[int, dict[str, Any]]]) -> None:
        arrive, done = max(c["start"] for _, c in group), min(c["end"] for _, c in group)
        if done < arrive:  # one ended before another began: not one op after all (order differed); no split
            return
        for r, c in group:
            if arrive > c["start"]:
                out[r].append((c["start"], min(arrive, c["end"])))
            if c["end"] > max(done, arrive):
                late[r].append((max(done, arrive), c["end"]))

    for kind in sorted({c["op"] for f in ranks for c in f["comm"]} - {"send", "recv"}):
        lists = [[(f["rank"], c) for c in f["comm"] if c["op"] == kind] for f in ranks]
        if len({len(x) for x in lists}) == 1:
            for group in zip(*lists, strict=True):
                match(list(group))
    for a in ranks:
        for b in ranks:
            sends = [(a["rank"], c) for c in a["comm"] if c["op"] == "send" and c["peer"] == b["rank"]]
            recvs = [(b["rank"], c) for c in b["comm"] if c["op"] == "recv" and c["peer"] == a["rank"]]
            if a is not b and len(sends) == len(recvs):
                for pair in zip(sends, recvs, strict=True):
                    match(list(pair))
    return {r: merge(v) for r, v in out.items()}, {r: merge(v) for r, v in late.items()}


def rank_summary(
    f: dict[str, Any], wait: list[Interval], late: list[Interval] | None = None
) -> tuple[dict[str, Any], dict[str, list[Interval]]]:
    """One rank's figures (ms per optimizer step, README "Inside a step") and its timeline's intervals by kind."""
    steps, n = f["steps"], max(1, len(f["steps"]))
    compute = intersect(merge(f["compute"]), steps)
    data = intersect(merge(f["data"]), steps)
    spans = [(c["start"], c["end"]) for c in f["comm"]]
    moved = merge(wait + (late or []))  # inside a communication op, but no bytes moving
    comm = intersect(subtract(merge(spans + [tuple(x) for x in f["comm_main"]]), moved), steps)
    busy = merge(compute + data)
    exposed = subtract(comm, busy)
    idle = subtract(intersect(wait, steps), merge(busy + comm))
    backward = intersect(compute, merge(f["backward"]))
    optimizer = subtract(intersect(compute, merge(f["optimizer"])), backward)
    kinds = {"forward": subtract(subtract(compute, backward), optimizer), "backward": backward}
    kinds.update(optimizer=optimizer, data=data, idle=idle)
    by_op = {}
    for op in sorted({c["op"] for c in f["comm"]}):
        kinds[op] = intersect(
            subtract(merge([(c["start"], c["end"]) for c in f["comm"] if c["op"] == op]), moved), steps
        )
        by_op[op] = measure(kinds[op]) / n / 1e3
    step_ms, comm_ms, exposed_ms = measure(steps) / n / 1e3, measure(comm) / n / 1e3, measure(exposed) / n / 1e3
    parts = {k: measure(kinds[k]) / n / 1e3 for k in PHASES}
    out = {
        "rank": f["rank"],
        "steps": len(f["steps"]),
        "step_ms": step_ms,
        "compute_ms": measure(compute) / n / 1e3,
        **{f"{k}_ms": v for k, v in parts.items()},
        "comm_ms": comm_ms,
        "comm_by_op_ms": by_op,
        "comm_exposed_ms": exposed_ms,
        "comm_hidden_fraction": (1.0 - exposed_ms / comm_ms) if comm_ms > 0 else None,
        "idle_ms": measure(idle) / n / 1e3,
    }
    out["other_ms"] = max(0.0, step_ms - out["compute_ms"] - parts["data"] - exposed_ms - out["idle_ms"])
    return out, kinds


def summarize(ranks: list[dict[str, Any]], device: str = "cpu") -> dict[str, Any]:
    """summary.json from every rank's facts: per-rank figures and a light timeline (merged spans, in ms from
    the first profiled step's start on any rank; the ranks of one machine share its clock)."""
    ranks = sorted(ranks, key=lambda f: f["rank"])
    w, late = waits(ranks)
    t0 = min((f["steps"][0][0] for f in ranks if f["steps"]), default=0.0)
    out, timeline = [], []
    for f in ranks:
        figures, kinds = rank_summary(f, w[f["rank"]], late[f["rank"]])
        out.append(figures)
        spans = [
            [round((s - t0) / 1e3, 3), round((e - t0) / 1e3, 3), kind]
            for kind, iv in kinds.items()
            for s, e in merge(iv, gap=MERGE_GAP_US)
        ]
        steps = [[round((s - t0) / 1e3, 3), round((e - t0) / 1e3, 3)] for s, e in f["steps"]]
        timeline.append({"rank": f["rank"], "steps": steps, "spans": sorted(spans)})
    return {"device": device, "unit": "ms per optimizer step", "ranks": out, "timeline": timeline}


# ---- the worker's side ----
class StepProfiler:
    """``profile_steps`` optimizer steps under torch.profiler, after PROFILE_WARMUP steps of this process.

    ``with profiler.step(): <one optimizer step>`` for every step; ``profiler.timed(n, dt)`` takes the profiled
    steps out of a log interval's step count and seconds, so tokens/s is that of unprofiled steps only.
    """

    def __init__(self, cfg: Any, run_dir: str, layout: Any, rank: int, world: int, device: Any) -> None:
        self.n, self.layout, self.rank, self.world = int(cfg.profile_steps), layout, rank, world
        self.dir = os.path.join(run_dir, "profile")
        self.device = getattr(device, "type", str(device))  # cpu | cuda
        self.count = 0  # optimizer steps this process has run
        self.prof: Any = None
        self.out_steps, self.out_s = 0, 0.0  # profiled steps and their seconds not yet taken out of an interval

    def step(self) -> Any:
        """The context for the next optimizer step: profiled, or nothing at all."""
        self.count += 1
        if self.n <= 0 or not PROFILE_WARMUP < self.count <= PROFILE_WARMUP + self.n:
            return nullcontext()
        return self.profiled(first=self.count == PROFILE_WARMUP + 1, last=self.count == PROFILE_WARMUP + self.n)

    @contextmanager
    def profiled(self, first: bool, last: bool) -> Iterator[None]:
        from torch.autograd.profiler import record_function

        t0 = time.perf_counter()
        if first:
            self.start()
        with record_function(LABEL + "step"):
            yield
        if last:
            self.finish()
        self.out_steps += 1
        self.out_s += time.perf_counter() - t0

    def timed(self, n: int, dt: float) -> tuple[int, float]:
        """(steps, seconds) of a log interval less its profiled steps."""
        n, dt = n - self.out_steps, dt - self.out_s
        self.out_steps, self.out_s = 0, 0.0
        return n, dt

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device == "cuda" else [])
        # record_shapes: the peer rank of each send/recv is one of the recorded inputs
        self.prof = profile(activities=activities, record_shapes=True)
        self.prof.__enter__()

    def optimizer(self) -> Any:
        """The context for the layout's step (clip and update): labelled while the profiler records."""
        if self.prof is None:
            return nullcontext()
        from torch.autograd.profiler import record_function

        return record_function(LABEL + "optimizer")

    def finish(self) -> None:
        from workbench.device_setup import gather_objects
        from workbench.fileio import write_json_atomic

        self.prof.__exit__(None, None, None)
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, f"rank{self.rank}.json")
        self.prof.export_chrome_trace(path)
        self.prof = None
        with open(path) as f:
            trace = json.load(f)
        facts = rank_facts(trace["traceEvents"], self.rank, self.world)
        everyone = gather_objects(facts)
        if self.rank == 0:
            summary = summarize(everyone, self.device)
            summary.update(
                profile_steps=self.n, warmup_steps=PROFILE_WARMUP, traces=[f"rank{r}.json" for r in range(self.world)]
            )
            write_json_atomic(os.path.join(self.dir, "summary.json"), summary)


def load_profile(run_dir: str) -> dict[str, Any] | None:
    """A run's profile/summary.json, or None when it was not profiled (or has not got there yet)."""
    from workbench.fileio import read_json

    return read_json(os.path.join(run_dir, "profile", "summary.json"))
