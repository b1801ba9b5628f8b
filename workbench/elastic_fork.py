"""torchelastic on the fork path (the warm pool's launcher): every rank that ended badly is reported.

With a function entry point, torchelastic's MultiprocessContext polls its ranks every monitor interval and
reports only the first failed process ``ProcessContext.join`` meets. When one rank is killed (a SIGKILL, the
out-of-memory killer) and its peer raises "connection closed" in its wake within the same interval, whichever
comes first in join's order is the only failure listed, and the supervisor could name the peer's error as the
cause. The subprocess path (a cold launch) lists them all. ``report_every_failure()`` makes the fork path do the
same: the processes already ended when a poll began are added to the failures it returns. It patches this
process's copy of torchelastic only (the pool's forked launcher calls it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["report_every_failure"]


def report_every_failure() -> None:
    from torch.distributed.elastic.multiprocessing import api
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    poll = api.MultiprocessContext._poll

    def poll_all(self: Any) -> Any:
        pc = self._pc
        ended = {} if pc is None else {i: p.exitcode for i, p in enumerate(pc.processes) if p.exitcode not in (0, None)}
        result = poll(self)
        if result is not None and result.failures:
            for i, code in ended.items():
                if i not in result.failures:
                    result.failures[i] = ProcessFailure(i, pc.processes[i].pid, code, self.error_files[i])
        return result

    api.MultiprocessContext._poll = poll_all
