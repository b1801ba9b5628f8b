"""status.json: the one record of a run's state, and the one place its keys are defined.

Several processes write it (the launching kernel or CLI, the supervisor, rank 0 of the worker, a sweep,
``notebook_launch``); each write merges its fields into the file atomically. ``write_status`` refuses a key
that is not in the table below, so a new key is documented here before anything can write it.

=====================  ===================  ===========================================================
key                    written by           meaning
=====================  ===================  ===========================================================
state                  launch, supervisor,  starting | running | finished | stopped | failed
                       worker, sweep,
                       notebook_launch
error                  supervisor, sweep,   why the run failed, in words (root-cause rank, traceback);
                       notebook_launch,     None while all is well
                       worker
resume                 launch               True when this job continues from the last checkpoint (a record
                                            only: the worker is told by its ``--resume`` argument)
host                   launch,              machine the supervisor runs on (a dead supervisor PID is only
                       notebook_launch      conclusive on the same host)
kind                   notebook_launch      "notebook_launch" for a loop run from a notebook cell
supervisor_pid         supervisor           PID of ``python -m workbench.launch``
launcher_pid           supervisor           PID of ``accelerate launch`` (the torchelastic agent)
command                supervisor           the launch command line
launch_path            supervisor           "warm" (forked from the warm pool, workbench.pool) or "cold"
device                 supervisor           cpu or cuda, as detected on the machine
started, ended         supervisor,          wall-clock time (time.time()) the job started / ended
                       notebook_launch
exit_code              supervisor           the launcher's exit status
effective              worker (rank 0)      what is really in effect: world size, backend, wrapper, compute
                                            dtype, peak FLOP/s and where it came from, per-rank layout, ...
entropy_floor          worker (rank 0)      the lowest loss any model can reach on the synthetic data
global_batch_size      worker (rank 0)      sequences per optimizer step over all ranks
tokens_per_step        worker (rank 0)      tokens per optimizer step over all ranks
measured, planned      worker (rank 0)      memory measured at the first step per rank, and the plan's figures
step, max_steps        worker (rank 0)      the last logged optimizer step, and the run's target
checkpoint             worker (rank 0)      the folder of the final checkpoint
launch_dir             launch               the folder the run was launched from: on the workers' path, and
                                            where export and fine-tuning import your own modules from
peak_remeasured        worker (rank 0)      [{step, old, new}]: MFU's peak measured again because the model
                                            ran faster than it (the first figure was taken under load)
data_split             worker (rank 0)      data.source files: the files, rows per split, the rule that held
                                            the evaluation rows out, the tokens packed and dropped
eval_skipped           worker (rank 0)      why eval_loss is absent from the events (e.g. an evaluation over
                                            zero samples); absent when every evaluation ran
updated                write_status         wall-clock time of the last write (set automatically)
=====================  ===================  ===========================================================

Nothing here imports torch.
"""

from __future__ import annotations

import os
import time
from typing import Any

from workbench.fileio import read_json, write_json_atomic

STATUS_FILE = "status.json"

# key -> one-line meaning (the table above, for code that wants to list or check keys)
STATUS_KEYS: dict[str, str] = {
    "state": "starting | running | finished | stopped | failed",
    "error": "why the run failed, in words; None while all is well",
    "resume": "True when this job continues from the last checkpoint (a record; the worker gets --resume)",
    "host": "machine the supervisor runs on",
    "kind": "notebook_launch for a loop run from a notebook cell",
    "supervisor_pid": "PID of python -m workbench.launch",
    "launcher_pid": "PID of accelerate launch (the torchelastic agent)",
    "command": "the launch command line",
    "launch_path": "warm (forked from the warm pool, workbench.pool) or cold (fresh processes)",
    "device": "cpu or cuda, as detected",
    "started": "wall-clock time the job started",
    "ended": "wall-clock time the job ended",
    "exit_code": "the launcher's exit status",
    "effective": "what is really in effect (world size, backend, wrapper, dtype, peak FLOP/s and its source, ...)",
    "entropy_floor": "the lowest loss any model can reach on the synthetic data",
    "global_batch_size": "sequences per optimizer step over all ranks",
    "tokens_per_step": "tokens per optimizer step over all ranks",
    "measured": "memory measured at the first step, per rank",
    "planned": "the plan's figures for this run's device",
    "step": "the last logged optimizer step",
    "max_steps": "the run's target number of optimizer steps",
    "checkpoint": "the folder of the final checkpoint",
    "launch_dir": "the folder the run was launched from (on the workers' path; export imports your module from it)",
    "peak_remeasured": "MFU's peak measured again during the run (model FLOP/s exceeded it): [{step, old, new}]",
    "data_split": "data.source files: the files, rows and sequences per split, the rule that held evaluation out",
    "eval_skipped": "why eval_loss is absent from the events (e.g. an evaluation over zero samples)",
    "updated": "wall-clock time of the last write",
}

STATES = ("starting", "running", "finished", "stopped", "failed")
TERMINAL = ("finished", "failed", "stopped")


def read_status(run_dir: str) -> dict[str, Any]:
    """The run's status.json as a dict ({} before anything has written it)."""
    status = read_json(os.path.join(run_dir, STATUS_FILE), {})
    return status if isinstance(status, dict) else {}


def write_status(run_dir: str, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json atomically and return the whole status.

    Raises KeyError for a key not in STATUS_KEYS (add it there, with its meaning, first) and ValueError for a
    state not in STATES.
    """
    unknown = sorted(set(fields) - set(STATUS_KEYS))
    if unknown:
        raise KeyError(f"status.json has no key {unknown}; define it in workbench.status.STATUS_KEYS first")
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"status.json state {fields['state']!r} is not one of {STATES}")
    status = read_status(run_dir)
    status.update(fields)
    status["updated"] = time.time()
    write_json_atomic(os.path.join(run_dir, STATUS_FILE), status)
    return status
