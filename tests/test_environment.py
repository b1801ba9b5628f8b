"""environment.yml and pyproject.toml name the same dependencies (conda is not on CI, so a test keeps them in step)."""

from __future__ import annotations

import re

import tomllib
import yaml

from tests.conftest import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    with open(f"{ROOT}/pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    declared = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    declared |= {_name(r): r.replace(" ", "") for r in project["optional-dependencies"]["dev"]}
    env = yaml.safe_load(open(f"{ROOT}/environment.yml"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert listed.keys() == declared.keys(), listed.keys() ^ declared.keys()
    assert listed == declared  # same version bounds too


def test_workbench_imports_no_ui_library_and_no_torch():
    import subprocess
    import sys

    code = "import sys, workbench; bad = [m for m in ('ipywidgets', 'plotly', 'IPython', 'torch') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
