"""Every tutorial notebook runs top to bottom in small mode (``DWGF_TUTORIAL_SMALL=1``).

Measured on the idle 2-core machine: 4.7 min for the seven notebooks together.

The notebooks are copied to a temporary folder and executed there with a fresh Jupyter kernel, so
the files they write stay out of the repository; a cell that raises fails the test. Each cell must
then show what the committed notebook shows there, its figures and its printed report (the
committed outputs come from the full-mode run of ``tutorials/run_notebooks.py``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbclient
import nbformat
import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def output_kinds(cell) -> set[str]:
    """What a code cell shows: ``"stdout"`` for printed text, the MIME types of its rich outputs
    (``"image/png"`` for a figure). Warnings on stderr vary with the environment: left out."""
    kinds = set()
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            if out["name"] == "stdout" and out["text"].strip():
                kinds.add("stdout")
        elif out["output_type"] in ("display_data", "execute_result"):
            kinds |= set(out["data"]) - {"text/plain"}
    return kinds


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
    # the kernel's own inline backend draws the figures into the outputs (Agg would draw none)
    monkeypatch.delenv("MPLBACKEND", raising=False)
    book = nbformat.read(work, as_version=4)
    committed = [output_kinds(c) for c in book.cells if c.cell_type == "code"]
    assert any(committed), "the committed notebook has no outputs to compare with"
    client = nbclient.NotebookClient(
        book,
        timeout=1200,  # per cell; generous so a busy machine is slow, not failing
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )  # the kernel inherits this process's environment (nbclient has no env option)
    client.execute()
    code = [c for c in book.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # each ran, in order
    for i, (cell, expected) in enumerate(zip(code, committed, strict=True)):
        shown = output_kinds(cell)
        assert expected <= shown, f"code cell {i + 1} showed {shown}, committed {expected}"
