"""Execute the tutorial notebooks with a fresh kernel: ``python tutorials/run_notebooks.py``.

Full mode (default) writes the outputs back into each notebook (for committing); with
``DWGF_TUTORIAL_SMALL=1`` the cut-down mode runs and nothing is written. Needs ``nbclient`` and
``ipykernel`` (``pip install nbclient ipykernel``). Arguments: notebook paths (default: all).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(paths: list[str]) -> int:
    here = Path(__file__).resolve().parent
    books = [Path(p) for p in paths] or sorted(here.glob("*.ipynb"))
    small = os.environ.get("DWGF_TUTORIAL_SMALL") == "1"
    failed = 0
    for path in books:
        book = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        client = NotebookClient(
            book, timeout=3600, kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )  # fmt: skip
        try:
            client.execute()
        except Exception as err:  # noqa: BLE001 - report and go on with the next notebook
            failed += 1
            print(f"{path.name}: FAILED\n{str(err)[-2000:]}")
            continue
        print(f"{path.name}: ok in {time.perf_counter() - start:.0f} s")
        if not small:
            nbformat.write(book, path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
