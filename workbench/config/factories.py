"""Your own model.arch / data.source by name: the module must be findable from the launch folder. Trying the
factories on a micro-batch (which builds a model and a data set) is a pre-launch step above the config:
``workbench/prelaunch.py``."""

from __future__ import annotations

import importlib.util

from workbench.config.schema import Problem
from workbench.factory import launch_folder_on_path


def check_importable(key: str, spec: str, P: list[Problem]) -> None:
    """The module of "pkg.module:factory" must be findable from here (the workers get the same path)."""
    module = spec.split(":", 1)[0]
    with launch_folder_on_path():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
    if not found:
        P.append(Problem(key, f"cannot find module {module!r} of {spec!r}; is it on PYTHONPATH or in this folder?"))
