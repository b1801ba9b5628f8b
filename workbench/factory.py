"""What a ``model.arch`` / ``data.source`` string names: your own code (``"pkg.module:factory"``, imported from the
launch folder) or a Hugging Face model (``"hf:..."``). The one leaf home of how such names are recognised: it
imports nothing of the workbench, so config, data and models all read it."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["is_hf", "is_import_string", "launch_folder_on_path", "load_factory"]


def is_hf(arch: Any) -> bool:
    """Whether model.arch names a Hugging Face model: "hf:<type>" or "hf:<folder>" (models/hf_config.py)."""
    return isinstance(arch, str) and arch.startswith("hf:")


def is_import_string(s: Any) -> bool:
    """Whether s reads "pkg.module:factory": your own model or data, imported from the launch folder or PYTHONPATH.
    ("hf:..." is a Hugging Face model, never a module named hf.)"""
    return isinstance(s, str) and not is_hf(s) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", s) is not None


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
