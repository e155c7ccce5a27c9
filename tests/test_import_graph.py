"""Structure of the ``dwgf_sci`` package: no import cycles, no oversized modules.

The import graph is built from the source with :mod:`ast`, not by importing anything, so an
import hidden inside a function (or under ``if TYPE_CHECKING:``) counts like one at the top of
the file. The rules:

- every ``import a.b`` / ``from a.b import c`` node anywhere in a module of ``dwgf_sci`` is an
  edge; imports of other packages are ignored;
- relative imports are resolved against the importing module's package;
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a submodule (a ``.py`` file
  or a sub-package), otherwise to ``pkg`` itself, i.e. to ``pkg/__init__.py``;
- importing ``pkg.sub`` does *not* add an edge to ``pkg``: Python runs ``pkg/__init__.py``
  first, but counting that would turn every ``__init__`` that re-exports its own submodules
  into a cycle. An ``__init__`` importing its submodules is therefore never a cycle by itself.
  A submodule that imports names through its package's ``__init__`` (``from . import name``
  where ``name`` is not a submodule, or ``from dwgf_sci.io import read_fits`` inside
  ``dwgf_sci.io``) does get the edge ``pkg.sub -> pkg``, and that *is* a cycle as soon as the
  ``__init__`` imports the submodule back.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import dwgf_sci

PACKAGE = "dwgf_sci"
ROOT = Path(dwgf_sci.__file__).resolve().parent
MAX_LINES = 500


def _module_files(root: Path = ROOT) -> dict[str, Path]:
    """Map each module name of the package (``dwgf_sci.io.fits``) to its source file.

    :param root: the package folder.
    :return: module name -> path; a package is named after its folder (its ``__init__.py``).
    """
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name in modules and modules[name].name == "__init__.py"


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Absolute name of a relative import ``from <level dots><target> import ...``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _edges(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its source.

    :param module: the importing module's name.
    :param path: its source file.
    :param modules: every module of the package (from :func:`_module_files`).
    :return: the imported modules of the package.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = _is_package(module, modules)
    found: set[str] = set()

    def keep(name: str) -> None:
        # ``import dwgf_sci.io.fits`` names a module; keep the longest known prefix
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in modules:
                found.add(candidate)
                return
            parts.pop()

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    keep(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                source = _resolve_relative(module, is_pkg, node.level, node.module)
            else:
                source = node.module or ""
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                else:
                    keep(source)
    found.discard(module)  # a module naming itself (``from . import attr`` in an __init__)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """The package's import graph, module -> modules it imports."""
    modules = _module_files(root)
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first member of a strongly connected component."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component  # pragma: no cover - a component always holds a cycle


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-import)."""
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            cycles.append(_one_cycle(graph, component))
    return cycles


def test_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The graph builder itself: a cycle closed by an import inside a function is found."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import helper\n")
    (pkg / "sub" / "__init__.py").write_text("from .helper import f\n")
    (pkg / "sub" / "helper.py").write_text("def f():\n    from ..a import g\n    return g\n")
    graph = import_graph(pkg)
    assert graph[PACKAGE] == {f"{PACKAGE}.a"}
    assert graph[f"{PACKAGE}.a"] == {f"{PACKAGE}.sub.helper"}
    assert graph[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.helper"}
    cycles = find_cycles(graph)
    assert cycles == [[f"{PACKAGE}.a", f"{PACKAGE}.sub.helper", f"{PACKAGE}.a"]]
    # without the function-level import there is no cycle: re-exports alone do not make one
    (pkg / "sub" / "helper.py").write_text("def f():\n    return 1\n")
    assert find_cycles(import_graph(pkg)) == []
    # a submodule importing a re-exported name through its own package closes a cycle
    (pkg / "sub" / "helper.py").write_text("from dwgf_sci.sub import f as g\n")
    assert find_cycles(import_graph(pkg)) == [
        [f"{PACKAGE}.sub", f"{PACKAGE}.sub.helper", f"{PACKAGE}.sub"]
    ]


def test_no_import_cycles() -> None:
    """No module of ``dwgf_sci`` reaches itself through imports, function-level ones included."""
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in dwgf_sci:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_500_lines() -> None:
    """Every module of ``dwgf_sci`` is at most 500 lines long."""
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _module_files().items()
    }
    too_long = sorted((n, name) for name, n in sizes.items() if n > MAX_LINES)
    assert not too_long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{name} ({n})" for n, name in reversed(too_long)
    )
