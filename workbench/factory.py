"""Your own code by name: ``"pkg.module:factory"`` (``model.arch``, ``data.source``), the one leaf home of how such a
name is recognised and imported. It imports nothing of the workbench, so config, data and models all read it."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["is_import_string", "launch_folder_on_path", "load_factory"]


def is_import_string(s: Any) -> bool:
    """Whether s reads "pkg.module:factory": your own model or data, imported from the launch folder or PYTHONPATH.
    ("hf:..." is a Hugging Face model, never a module named hf.)"""
    return (
        isinstance(s, str) and not s.startswith("hf:") and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", s) is not None
    )


def load_factory(spec: str) -> Callable[..., Any]:
    """Import "pkg.module:name" and return the attribute."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@contextlib.contextmanager
def launch_folder_on_path() -> Iterator[None]:
    """The current folder on sys.path while the body runs: launch() puts it on the workers' PYTHONPATH too."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
