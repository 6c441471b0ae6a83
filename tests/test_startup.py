"""Start-up: a command imports what it needs (no torch for ``cwdm --help``, no matplotlib without QC)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_package_and_the_cli_load_without_torch_or_matplotlib() -> None:
    loaded = _loaded_after("import cwdm, cwdm.cli")
    assert "torch" not in loaded and "matplotlib" not in loaded


ENTRY_POINT = Path(__file__).resolve().parents[1] / "project" / "mlcube.py"


@pytest.mark.parametrize(
    "statement",
    ["import cwdm.inference.run", f"import runpy; runpy.run_path({str(ENTRY_POINT)!r}, run_name='entry')"],
    ids=["cwdm infer", "mlcube entry point"],
)
def test_inference_loads_no_matplotlib(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert "torch" in loaded  # the oracle that the import did happen
    assert "matplotlib" not in loaded


def test_lazy_names_resolve_to_their_modules() -> None:
    import cwdm
    from cwdm.inference.synthesizer import Synthesizer

    assert cwdm.Synthesizer is Synthesizer
    assert set(cwdm.__all__) <= set(dir(cwdm))
    with pytest.raises(AttributeError, match="no_such_name"):
        cwdm.no_such_name  # noqa: B018
