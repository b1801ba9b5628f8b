"""The plan's result: memory per rank (RankMemory), the whole Plan, its text table, and planned-vs-measured rows.

MEMORY_FIELDS are the names the plan, the worker's measurement (``workbench/measure.py``) and the config
panel share, in the order tables show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.fileio import format_bytes as fmt_bytes  # one byte format for CLI, plan and panel

MEMORY_FIELDS = (
    "param_bytes",
    "grad_bytes",
    "optimizer_bytes",
    "master_bytes",
    "activation_bytes",
    "buffer_bytes",
)


@dataclass
class RankMemory:
    """Bytes one rank holds; the same names the worker's measured counterpart uses."""

    rank: int
    role: str = ""  # "dp 0", "stage 1 of 2", "tp 0 / dp 1", "server"
    param_bytes: int = 0
    grad_bytes: int = 0
    optimizer_bytes: int = 0
    master_bytes: int = 0
    activation_bytes: int = 0
    buffer_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.param_bytes
            + self.grad_bytes
            + self.optimizer_bytes
            + self.master_bytes
            + self.activation_bytes
            + self.buffer_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": self.rank, "role": self.role}
        d.update({f: int(getattr(self, f)) for f in MEMORY_FIELDS})
        d["total_bytes"] = int(self.total_bytes)
        return d


@dataclass
class StepTime:
    """The predicted time of one optimizer step on the slowest rank, and its parts (seconds). Built by
    ``workbench/plan/timing.py``; status.json and the first event carry it as ``planned["time"]``."""

    compute_s: float  # forward + backward of every micro-step (+ the forward recomputed under checkpointing)
    optimizer_s: float  # clipping and the optimizer update
    comm_s: float  # every collective the layout issues, as latency + bytes / bandwidth, as if nothing overlapped
    exposed_comm_s: float  # the part of comm_s not hidden behind compute
    bubble_s: float  # a pipeline stage's idle time
    overhead_s: float  # the per-step cost outside the model: data, loss bookkeeping, the layout's own work
    step_s: float  # compute + optimizer + exposed communication + bubble + overhead
    source: str  # where the device facts came from ("measured on this machine ...", "data sheet, unmeasured")
    comm_by_op_s: dict[str, float] = field(default_factory=dict)  # comm_s by collective

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def parts(self) -> dict[str, float]:
        """The parts a step is the sum of, by name (what the dashboard stacks)."""
        return {"compute": self.compute_s, "optimizer": self.optimizer_s, "exposed communication":
                self.exposed_comm_s, "bubble": self.bubble_s, "overhead": self.overhead_s}  # fmt: skip


@dataclass
class Plan:
    """What a config costs per rank, and how fast it could run on a device. Built by ``plan(cfg)``."""

    device: str
    device_label: str
    device_memory_bytes: int
    ranks: list[RankMemory]
    fits: bool
    headroom_bytes: int  # device memory left on the fullest device (negative: short by that much)
    max_micro_batch_size: int  # the largest micro_batch_size that fits (0: not even 1)
    num_params: int
    flops_per_token: int  # model FLOPs (6N + 12·L·H·Q·T): what MFU counts
    flops_per_step: int  # model FLOPs per optimizer step, all ranks together
    hardware_flops_per_step: int  # + the forward recomputed under activation checkpointing
    peak_flops_per_device: float
    peak_flops_source: str
    mfu: float  # the model FLOPs utilisation the predicted step time implies
    step_time_s: float  # the step-time model's prediction (``time`` holds its parts)
    tokens_per_s: float
    comm_bytes: list[int]  # payload handed to collectives per optimizer step, one entry per rank
    comm_by_op: dict[str, int]  # rank 0's payload by collective
    comm_time_s: float  # every collective at latency + bytes / bandwidth, as if nothing overlapped
    bubble_fraction: float
    overhead_bytes_per_rank: int
    time: StepTime | None = None  # the step-time model's prediction and its parts
    approximate: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config_summary: str = ""
    shared_memory: bool = False  # CPU: all ranks share one RAM, so the verdict sums them

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("ranks", "time")}
        d["ranks"] = [r.to_dict() for r in self.ranks]
        d["time"] = self.time.to_dict() if self.time is not None else None
        return d

    @property
    def total_bytes(self) -> list[int]:
        return [r.total_bytes for r in self.ranks]

    def table(self) -> str:
        """The plan as fixed-width text (what ``workbench plan CONFIG.yaml`` prints)."""
        lines = [f"plan: {self.config_summary}", f"device: {self.device_label} ({fmt_bytes(self.device_memory_bytes)})"]
        head = ["ranks", "role"] + [f.replace("_bytes", "") for f in MEMORY_FIELDS] + ["total"]
        rows = []
        for idx, r in group_ranks(self.ranks):
            # a row of several ranks names their kind ("replica"), not the first one's index
            role = r.role if "-" not in idx else " ".join(w for w in r.role.split() if not w.isdigit())
            rows.append(
                [idx, role]
                + [fmt_bytes(getattr(r, f)) + ("~" if f in self.approximate else "") for f in MEMORY_FIELDS]
                + [fmt_bytes(r.total_bytes)]
            )
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        for row in [head] + rows:
            lines.append(
                "  ".join(
                    str(x).rjust(w) if i > 1 else str(x).ljust(w)
                    for i, (x, w) in enumerate(zip(row, widths, strict=True))
                )
            )
        need = "sum over ranks" if self.shared_memory else "fullest rank"
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(
            f"verdict: {verdict} ({need} + {fmt_bytes(self.overhead_bytes_per_rank)} runtime per process); "
            f"headroom {fmt_bytes(self.headroom_bytes)}; largest micro_batch_size that fits: {self.max_micro_batch_size}"
        )
        lines.append(
            f"compute: {self.num_params / 1e6:.2f} M params, {self.flops_per_token / 1e6:.2f} MFLOP/token, "
            f"{self.flops_per_step:.3g} FLOP/step; peak {self.peak_flops_per_device / 1e12:.3g} TFLOP/s per device "
            f"({self.peak_flops_source})"
        )
        lines.append(
            f"time: {self.step_time_s * 1e3:.3g} ms/step, {self.tokens_per_s:,.0f} tokens/s (MFU {self.mfu:.0%})"
            + (f"; pipeline bubble {self.bubble_fraction:.0%}" if self.bubble_fraction else "")
        )
        if self.time is not None:
            parts = ", ".join(f"{k} {v * 1e3:.3g}" for k, v in self.time.parts().items() if v > 0)
            lines.append(f"  ms per step: {parts}; device facts: {self.time.source}")
        ops = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.comm_by_op.items()) or "none"
        lines.append(f"communication per step, rank 0: {ops}; ~{self.comm_time_s * 1e3:.3g} ms if not overlapped")
        if self.approximate:
            lines.append("approximate (~): " + ", ".join(self.approximate))
        for n in self.notes:
            lines.append("note: " + n)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()


def group_ranks(ranks: list[RankMemory]) -> list[tuple[str, RankMemory]]:
    """Consecutive ranks with identical memory share one row ("0-7")."""
    out: list[tuple[str, RankMemory]] = []
    start = 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or layout_key(ranks[i]) != layout_key(ranks[start]):
            out.append(
                (str(ranks[start].rank) if i - 1 == start else f"{ranks[start].rank}-{ranks[i - 1].rank}", ranks[start])
            )
            start = i
    return out


def layout_key(r: RankMemory) -> tuple:
    return (r.role.split(" ")[0],) + tuple(getattr(r, f) for f in MEMORY_FIELDS)


def accuracy(planned: Plan | dict[str, Any], measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predicted against measured, per rank and memory field: rows of {rank, field, predicted, measured,
    error, approximate}. ``planned``: a Plan or its to_dict() (status.json "planned"); ``measured``: the
    run's status.json "measured" list."""
    pd = planned.to_dict() if isinstance(planned, Plan) else planned
    approx = set(pd.get("approximate", []))
    rows = []
    for pr, mr in zip(pd.get("ranks", []), measured, strict=False):
        for f in MEMORY_FIELDS:
            if f not in mr:
                continue
            pv, mv = int(pr[f]), int(mr[f])
            err = (pv - mv) / mv if mv else (0.0 if pv == 0 else float("inf"))
            rows.append({"rank": mr.get("rank"), "field": f, "predicted": pv, "measured": mv, "error": err,
                         "approximate": f in approx})  # fmt: skip
    return rows
