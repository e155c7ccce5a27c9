"""The README is a short user's guide; the rest of the documentation lives in docs/.

The README opens with the two set-up commands (CI runs the second verbatim), stays under
8 KB, carries no dated benchmark narrative (that belongs in ``benchmarks/results/``), and every
relative link in it and in ``docs/`` points at a file that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def test_readme_is_short() -> None:
    assert README.stat().st_size <= 8192


def test_readme_opens_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    first = lines.index("```bash")
    assert lines[first + 1].startswith("pip install -e . && dwgf-sci demo")
    assert lines[first + 2].startswith('pip install -e ".[test]" && python -m pytest -q')
    # nothing but the title comes before them
    assert [line for line in lines[:first] if line.strip()] == ["# dwgf-sci"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = lines[first + 2].split("#")[0].strip()
    assert command in ci.splitlines()


def test_readme_has_no_dated_narrative() -> None:
    text = README.read_text(encoding="utf-8")
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)


def test_docs_exist() -> None:
    names = {path.name for path in DOCS}
    assert {"method.md", "presets.md", "performance.md", "gpu.md"} <= names


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    missing = [
        target
        for target in LINK.findall(page.read_text(encoding="utf-8"))
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.name}: broken links {missing}"
