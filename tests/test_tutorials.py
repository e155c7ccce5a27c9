"""Every tutorial notebook runs top to bottom in small mode (``DWGF_TUTORIAL_SMALL=1``).

Measured on the idle 2-core machine: 4.7 min for the seven notebooks together.

The notebooks are copied to a temporary folder and executed there with a fresh Jupyter kernel, so
the files they write stay out of the repository; a cell that raises fails the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbclient
import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_every_tutorial_is_collected():
    assert len(NOTEBOOKS) >= 7, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, tmp_path, monkeypatch):
    from dwgf_sci.priors import available_priors

    missing = [n for n, text in available_priors().items() if "not installed" in text]
    assert not missing, f"shipped priors missing from the install: {missing}"
    work = tmp_path / path.name
    shutil.copy(path, work)
    monkeypatch.setenv("DWGF_TUTORIAL_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = nbformat.read(work, as_version=4)
    client = nbclient.NotebookClient(
        book,
        timeout=1200,  # per cell; generous so a busy machine is slow, not failing
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        env={**os.environ},
    )
    client.execute()
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
