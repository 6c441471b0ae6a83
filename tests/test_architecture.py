"""The module map of docs/ARCHITECTURE.md, checked against the code's own imports.

Every ``cwdm`` module belongs to a part (a sub-package, or a top-level module); a part may import only
the parts its row of :data:`MAY_IMPORT` names. The imports are read with ``ast`` (module level and inside
functions alike), so a new arrow that the map does not allow fails here with the file and the line.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "project" / "cwdm"

FOUNDATION = {"errors", "sequences", "atomic", "version", "choices", "voxel_error"}
#: Which parts each part may import (besides itself). The entry points (cli, the package's __init__)
#: may import anything.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "sequences": set(),
    "atomic": set(),
    "version": set(),
    "choices": set(),
    "voxel_error": set(),
    "signals": {"errors"},
    "method": {"errors", "choices"},
    "cases": FOUNDATION,
    "config": FOUNDATION | {"method", "cases"},
    "runtime": FOUNDATION | {"config"},
    "resumable": FOUNDATION,
    "weights": FOUNDATION | {"method", "config"},
    "qc": FOUNDATION | {"cases", "segmentation"},
    "inference": FOUNDATION | {"method", "cases", "config", "runtime", "weights", "qc"},
    "training": FOUNDATION | {"method", "cases", "config", "runtime", "weights", "resumable", "segmentation"},
    "segmentation": FOUNDATION | {"cases", "config", "runtime", "weights", "resumable"},
    "evaluation": FOUNDATION
    | {"method", "cases", "config", "runtime", "weights", "inference", "segmentation"},
}
ENTRY_POINTS = {"cli", "__init__"}


def _part(module: str) -> str:
    """``cwdm.inference.report`` -> ``inference``; ``cwdm.config`` -> ``config``; ``cwdm`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute names of the cwdm modules ``path`` imports, with line numbers."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # "from . import x": each name may be a module
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, module) for line, module in found if module == "cwdm" or module.startswith("cwdm.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_is_on_the_map() -> None:
    parts = {_part(_module_name(path)) for path in MODULES}
    assert parts - ENTRY_POINTS == set(MAY_IMPORT), "a new part needs a row in MAY_IMPORT and ARCHITECTURE.md"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_map(path: Path) -> None:
    own = _part(_module_name(path))
    if own in ENTRY_POINTS:
        return
    wrong = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for line, module in _imports(path)
        if (other := _part(module)) != own and other not in MAY_IMPORT[own]
    ]
    assert not wrong, f"{own} may import only {sorted(MAY_IMPORT[own])}: " + "; ".join(wrong)


def test_nothing_at_run_time_imports_the_hub_download() -> None:
    importers = [
        str(path.relative_to(PACKAGE))
        for path in MODULES
        if any(module == "cwdm.weights.hub" for _, module in _imports(path))
    ]
    assert importers == ["cli/admin.py"], importers  # the `cwdm weights fetch` command, at image build time


def test_the_map_reads_relative_imports_correctly() -> None:
    # An oracle for the reader itself: known arrows of two modules.
    report = dict((module, line) for line, module in _imports(PACKAGE / "inference" / "report.py"))
    assert {"cwdm.atomic", "cwdm.config", "cwdm.inference.outputs"} <= set(report)
    init = {module for _, module in _imports(PACKAGE / "__init__.py")}
    assert "cwdm.inference.synthesizer" in init and "cwdm.method.wavelets" in init


# -- the shape of the package ---------------------------------------------------------------------------
MAX_MODULE_LINES = 500
DOC = PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md"


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (type-only imports included), names resolved to
    modules: ``from . import provenance`` is the module ``provenance``; an imported name that is not a
    module is its module."""
    names = {_module_name(path) for path in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        targets = set()
        for _, module in _imports(path):
            while module not in names and "." in module:
                module = module.rsplit(".", 1)[0]
            if module in names:
                targets.add(module)
        graph[_module_name(path)] = targets - {_module_name(path)}
    return graph


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in MODULES
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split by owner): {long}"
    entry = PACKAGE.parent / "mlcube.py"
    assert len(entry.read_text().splitlines()) <= 200, (
        "project/mlcube.py is a thin adapter: at most 200 lines"
    )


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                found.append([*path[path.index(other) :], other])
            elif other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not found, "import circles: " + "; ".join(" -> ".join(circle) for circle in found)


def test_the_circle_check_sees_a_circle(monkeypatch: pytest.MonkeyPatch) -> None:
    """An oracle for the check above: a made-up graph with a circle through a type-only import."""
    made_up = {"cwdm.a": {"cwdm.b"}, "cwdm.b": {"cwdm.c"}, "cwdm.c": {"cwdm.a"}}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: made_up)
    with pytest.raises(AssertionError, match="cwdm.a -> cwdm.b -> cwdm.c -> cwdm.a"):
        test_no_import_circle()


def test_every_module_is_imported_by_the_package() -> None:
    """No module that only tests import: each is imported by another module, or is an entry point."""
    imported = set().union(*_graph().values())
    entry_points = {"cwdm", "cwdm.cli", "cwdm.cli.__main__", "cwdm.version"}
    packages = {_module_name(path) for path in MODULES if path.name == "__init__.py"}  # their docstrings
    lonely = sorted(module for module in _graph() if module not in imported | entry_points | packages)
    assert not lonely, f"modules nothing in the package imports: {lonely}"


def _doc_rows(heading: str) -> list[list[str]]:
    text = DOC.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # after the header and its rule


def test_the_documented_rules_are_the_checked_rules() -> None:
    documented: dict[str, set[str]] = {}
    for part_cell, allowed_cell in _doc_rows("Who may import whom"):
        parts = re.findall(r"`([\w/.]+?)`", part_cell)
        allowed = set(re.findall(r"`([\w/.]+?)`", allowed_cell))
        if "foundation" in allowed_cell:
            allowed |= FOUNDATION
        for part in parts:
            documented[part.removesuffix("/").removesuffix(".py")] = allowed
    for part, allowed in MAY_IMPORT.items():
        assert part in documented, f"{part} has no row in ARCHITECTURE.md's import table"
        assert {a.removesuffix("/").removesuffix(".py") for a in documented[part]} == allowed, part


def test_every_module_is_on_the_documented_map() -> None:
    text = DOC.read_text().split("## Module map", 1)[1].split("\n## ", 1)[0]
    missing = []
    for path in MODULES:
        if path.name == "__init__.py":
            continue
        name = str(path.relative_to(PACKAGE))
        within_part = "/".join(path.relative_to(PACKAGE).parts[1:])
        if not any(f"`{key}`" in text for key in (name, within_part, path.name) if key):
            missing.append(name)
    assert not missing, f"modules missing from ARCHITECTURE.md's module map: {missing}"
