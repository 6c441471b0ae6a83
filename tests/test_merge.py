"""inference/merge.py: the reports of a split run's parts merged; the cases of a part with no report are
counted as unaccounted for, in the merged JSON and on stdout."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cwdm.cli import app
from cwdm.inference.merge import merge_reports
from cwdm.inference.split import WorkPart

CASES = [f"BraTS-GLI-{number:05d}-000" for number in range(1, 11)]
PARTS = 3


def _part_of(case_id: str) -> int:
    return next(i for i in range(PARTS) if WorkPart(i, PARTS).owns(case_id))


def _write_part(folder: Path, index: int, total: int = len(CASES)) -> Path:
    """A part's report as ``cwdm infer --num-parts 3 --part-id index`` writes it, every case written."""
    cases = [
        {"case_id": case_id, "status": "written", "writer": f"host:{100 + index}", "error": None}
        for case_id in CASES
        if _part_of(case_id) == index
    ]
    record = {
        "cwdm_version": "test",
        "interrupted_by": None,
        "part": {"index": index, "count": PARTS, "cases_total": total},
        "cases": cases,
    }
    path = folder / f"out-report-part{index}of{PARTS}.json"
    path.write_text(json.dumps(record))
    return path


def test_the_cases_of_a_missing_part_are_unaccounted_for(tmp_path: Path) -> None:
    per_part = {i: sum(_part_of(c) == i for c in CASES) for i in range(PARTS)}
    assert all(per_part.values()), per_part  # every part has cases, so a missing one loses some
    reports = [_write_part(tmp_path, i) for i in range(PARTS)]

    whole = merge_reports(reports)
    assert whole.cases_total == 10 and whole.unaccounted == 0 and whole.exit_code == 0
    assert whole.to_dict()["cases_unaccounted"] == 0

    merged = merge_reports([reports[0], reports[2]])  # part 1 never reported
    assert merged.missing_parts == (1,)
    assert merged.cases_total == 10 and merged.unaccounted == per_part[1] == 10 - len(merged.cases)
    assert merged.exit_code == 1
    record = merged.to_dict()
    assert (record["cases_total"], record["cases_unaccounted"], record["missing_parts"]) == (
        10,
        per_part[1],
        [1],
    )

    out = tmp_path / "merged.json"
    result = CliRunner().invoke(app, ["report", "merge", str(reports[0]), str(reports[2]), "--out", str(out)])
    assert result.exit_code == 1
    first, *rest = result.output.splitlines()
    reported = 10 - per_part[1]
    assert first == (
        f"{reported} of 10 cases from 3 part(s): {reported} written, 0 skipped, 0 failed, 0 ignored; "
        f"{per_part[1]} unaccounted for (no report of part 1)"
    )
    assert "missing parts (no report): 1" in rest
    assert json.loads(out.read_text())["cases_unaccounted"] == per_part[1]


def test_reports_of_runs_that_were_not_split_have_no_folder_count(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"cwdm_version": "test", "cases": [{"case_id": CASES[0], "status": "written"}]})
    )
    merged = merge_reports([path])
    assert merged.cases_total is None and merged.unaccounted is None and merged.exit_code == 0
    assert merged.headline() == "1 cases: 1 written, 0 skipped, 0 failed, 0 ignored"
