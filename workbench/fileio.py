"""Small file helpers the engine shares: atomic JSON, JSONL reading and tailing, byte sizes (named fileio, not io,
so that a script run from inside workbench/ never shadows the standard library's io).

Nothing here imports torch, so runs, the CLI and the widgets can use it instantly.
"""

from __future__ import annotations

import json
import os
from typing import Any

# what marks a project's root folder, where a relative runs_dir starts (see resolve_runs_dir)
PROJECT_MARKERS = ("pyproject.toml", ".git")


def project_root(start: str | None = None) -> str | None:
    """The nearest folder from start (default: the current one) upward that holds a pyproject.toml or .git."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        if any(os.path.exists(os.path.join(here, m)) for m in PROJECT_MARKERS):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def resolve_runs_dir(runs_dir: str, start: str | None = None) -> str:
    """Where a runs folder is, as an absolute path: an absolute runs_dir as it is; a relative one under the
    project root (project_root(start)), else under start. So a notebook in notebooks/ and a shell at the root
    launch into, list and serve the one runs/ of the project."""
    if os.path.isabs(runs_dir):
        return os.path.normpath(runs_dir)
    start = os.path.abspath(start or os.getcwd())
    return os.path.normpath(os.path.join(project_root(start) or start, runs_dir))


def write_json_atomic(path: str, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` so a reader sees the old file or the new one, never half of one.

    The temporary name carries the PID: two processes writing the same file never share a temp file.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(tmp, path)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON in ``path``; ``default`` when it is missing or unreadable (e.g. not written yet)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (a trailing half-written line and bad lines are skipped)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
    except FileNotFoundError:
        pass
    return out


class JsonlTail:
    """Follows a JSONL file that another process appends to: ``read()`` returns the lines added since the last
    call. A half-written last line is kept back until its newline arrives, so no event is lost or doubled."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.partial = ""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return []
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()  # "" after a complete line; else a half-written line to finish later
        out = []
        for line in lines:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


def format_bytes(n: float | None) -> str:
    """A byte count in binary units ("512 B", "1.5 GiB", "-3.0 MiB" for a difference); "-" for an unknown figure."""
    if n is None:
        return "-"
    neg, n = n < 0, abs(float(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            s = f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            return "-" + s if neg else s
        n /= 1024
    return str(n)
