"""Shared fixtures: every test works in its own temporary folder, with the quickstart config at hand."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = a fresh temp folder, so runs/ lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def quickstart():
    import workbench as wb

    return wb.RunConfig.from_yaml(QUICKSTART)


@pytest.fixture
def small(quickstart):
    """A config that trains in a few seconds on 2 CPU processes."""
    return quickstart.override(
        {"max_steps": 20, "log_every": 5, "eval_every": 10, "grad_accum_steps": 2, "schedule.warmup_steps": 5}
    )
