"""The module map of docs/ARCHITECTURE.md, checked against the code's own imports.

Every ``cwdm`` module belongs to a part (a sub-package, or a top-level module); a part may import only
the parts its row of :data:`MAY_IMPORT` names. The imports are read with ``ast`` (module level and inside
functions alike), so a new arrow that the map does not allow fails here with the file and the line.
"""

from __future__ import annotations

import ast
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
    "training": FOUNDATION | {"method", "cases", "config", "runtime", "weights", "resumable"},
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
