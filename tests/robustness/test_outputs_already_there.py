"""What is already in the output folder, made hostile: an output whose header cannot be read, an output
copied or renamed from another case (its own provenance names that case), and the output folder given as
``.``. Each concerns one case (or none), the others are written, the inputs stay untouched and the
output folder holds outputs only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import (
    GOOD,
    assert_good_cases_identical,
    assert_reported,
    good_names,
    restored_logging,
    run_infer,
    single_thread,
    snapshot,
)

FIRST, SECOND = list(GOOD)[:2]


def test_an_unreadable_output_is_that_case_s_problem_only(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    damaged = out / f"{FIRST}-{GOOD[FIRST]}.nii.gz"
    damaged.write_bytes(b"\x1f\x8b" + os.urandom(300))  # a gzip header, then garbage: no NIfTI header
    before = snapshot(data)
    run = run_infer(data, out, weights)
    assert run.code == 0, run.stderr  # replaced: an output that cannot be read is not a finished one
    assert_good_cases_identical(run, clean_outputs)
    assert "exists but is incomplete" in run.stderr and damaged.name in run.stderr
    assert run.names() == good_names() and snapshot(data) == before


def test_an_output_copied_from_another_case_is_mismatched_not_skipped(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    out = tmp_path / "out"
    first = run_infer(data, out, weights)
    assert first.code == 0, first.stderr
    # Another case's finished output, renamed into this case's place (same grid in this suite's data).
    theirs = out / f"{SECOND}-{GOOD[SECOND]}.nii.gz"
    mine = out / f"{FIRST}-{GOOD[FIRST]}.nii.gz"
    shutil.copy(theirs, mine)
    planted = mine.read_bytes()
    before = snapshot(data)
    run = run_infer(data, out, weights)
    assert run.code == 1, run.stderr
    assert_reported(run, FIRST, "mismatched", "case: output", SECOND)
    assert mine.read_bytes() == planted  # kept, not replaced
    assert run.case(SECOND)["status"] == "skipped"
    redo = run_infer(data, out, weights, "--overwrite")
    assert redo.code == 0, redo.stderr
    assert_good_cases_identical(redo, clean_outputs, [FIRST])
    assert snapshot(data) == before and run.names() == good_names()


@pytest.mark.parametrize("given", [".", "./", "../out"])
def test_the_output_folder_given_relative_to_where_the_run_starts(
    given: str,
    data: Path,
    tmp_path: Path,
    weights: Path,
    clean_outputs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from cwdm.cli import app

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    args = ["infer", str(data), given, "--weights", str(weights), "--device", "cpu"]
    with restored_logging(), single_thread():  # as the clean run: one thread, the same numbers
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == good_names()  # the report went beside, not inside
    assert (tmp_path / "out-report.json").is_file()
    for name, content in clean_outputs.items():
        assert (out / name).read_bytes() == content
