"""The tutorials' shape: numbered, one idea each, opening and closing prose, asserted claims, small files.

The notebooks themselves run under nbval (`pytest --nbval-lax notebooks`), in the same test command.
"""

from __future__ import annotations

import glob
import os
import re

import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_tutorials():
    assert NOTEBOOKS, "no notebooks"
    numbers = [int(os.path.basename(p)[:2]) for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers), "two notebooks share a number"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_tutorial_shape(path):
    assert re.match(r"^\d\d_[a-z0-9_]+\.ipynb$", os.path.basename(path))
    assert os.path.getsize(path) < 200_000, "store notebooks without outputs or widget state"
    nb = nbformat.read(path, as_version=4)
    md = [c for c in nb.cells if c.cell_type == "markdown"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert md and "what you will learn" in md[0].source.lower()
    assert "what you saw" in md[-1].source.lower()
    assert any(re.search(r"^\s*assert ", c.source, re.M) for c in code), "a claim must be asserted in code"
    assert "widgets" not in nb.metadata or not nb.metadata["widgets"].get(
        "application/vnd.jupyter.widget-state+json", {}
    ).get("state")
