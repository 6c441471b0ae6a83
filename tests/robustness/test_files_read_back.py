"""Other files a user controls, read back by the package: a finished output's provenance record (read on
a rerun), the run reports that ``cwdm report merge`` reads, a command segmenter's label volume, and the
label volumes ``cwdm evaluate`` keeps (named after the case). Each hostile one ends in a named error or is
handled as documented, quickly, instead of a traceback.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from cwdm.cases.discovery import read_case
from cwdm.cli import app
from cwdm.config import CommandSegmenterSpec
from cwdm.errors import CaseError
from cwdm.evaluation.downstream import DownstreamScorer
from cwdm.inference.provenance import EXTENSION_CODE, read_record
from cwdm.segmentation.case import CompleteCase, SegmentationError
from cwdm.segmentation.command import CommandSegmenter
from cwdm.sequences import CANONICAL_ORDER, MRISequence

from ..segmentation.synthetic import write_case_folder
from ..segmentation.test_command import SCRIPT
from .conftest import GOOD, good_names, gzip_bomb, restored_logging, run_infer, snapshot

# -- a finished output's provenance record, read back on a rerun ------------------------------------------

CASE = "BraTS-GLI-00101-000"
OUTPUT = f"{CASE}-{GOOD[CASE]}.nii.gz"


def _with_extension(path: Path, payload: bytes) -> None:
    """Rewrite the output ``path`` with ``payload`` as its only header extension (voxels unchanged)."""
    image = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    header = image.header.copy()
    header.extensions.clear()
    header.extensions.append(nib.nifti1.Nifti1Extension(EXTENSION_CODE, payload))
    path.write_bytes(gzip.compress(nib.Nifti1Image(np.asanyarray(image.dataobj), None, header).to_bytes()))


def _deep(record: dict) -> bytes:
    text = json.dumps(record)
    return (text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()


def _settings_a_list(record: dict) -> bytes:
    return json.dumps(record | {"settings": [1, 2]}).encode()


def _a_long_value(record: dict) -> bytes:
    return json.dumps(record | {"settings": record["settings"] | {"seed": "x" * 50_000}}).encode()


RECORDS = {
    "nested 100,000 deep": (_deep, "skipped"),
    "settings not a mapping": (_settings_a_list, "skipped"),
    "a setting of 50,000 characters": (_a_long_value, "mismatched"),
}


@pytest.mark.parametrize("name", list(RECORDS))
def test_a_damaged_provenance_record_in_a_finished_output_does_not_stop_a_rerun(
    name: str, data: Path, tmp_path: Path, weights: Path
) -> None:
    out = tmp_path / "out"
    assert run_infer(data, out, weights).code == 0
    record = read_record(out / OUTPUT)
    assert record is not None
    damage, status = RECORDS[name]
    _with_extension(out / OUTPUT, damage(record))
    outputs, before = {p.name: p.read_bytes() for p in out.iterdir()}, snapshot(data)

    run = run_infer(data, out, weights)

    assert run.case(CASE)["status"] == status, run.case(CASE)
    assert [run.case(case)["status"] for case in GOOD if case != CASE] == ["skipped", "skipped"]
    if status == "mismatched":
        assert "seed: output 'xxx" in run.case(CASE)["error"] and len(run.case(CASE)["error"]) < 1_000
    assert {p.name: p.read_bytes() for p in out.iterdir()} == outputs  # kept, nothing added
    assert run.names() == good_names() and snapshot(data) == before


# -- run reports read by cwdm report merge ---------------------------------------------------------------


def _report(cases: list) -> dict:
    return {"cases": cases, "part": {"index": 0, "count": 1, "cases_total": len(cases)}}


REPORTS = {
    "nested 50,000 deep": ('{"cases": ' + "[" * 50_000 + "]" * 50_000 + "}", "nests too deep"),
    "a status that is a list": (_report([{"case_id": "a", "status": ["written"]}]), "cases[0].status"),
    "a case that is a number": (_report([7]), "cases[0] should be a mapping, got 7"),
    "a trillion parts": (
        {"cases": [], "part": {"index": 0, "count": 10**12}},
        "part.count should be an integer from 1 to 100,000, got 1000000000000",
    ),
    "a part index out of range": ({"cases": [], "part": {"index": 5, "count": 2}}, "part.index"),
    "a case id of a megabyte": (_report([{"case_id": {"x": "y" * 2**20}, "status": "written"}]), "case_id"),
}


@pytest.mark.parametrize("name", list(REPORTS))
def test_a_hostile_report_is_refused_by_report_merge_naming_file_and_field(name: str, tmp_path: Path) -> None:
    content, words = REPORTS[name]
    report = tmp_path / "part0.json"
    report.write_text(content if isinstance(content, str) else json.dumps(content))
    start = time.perf_counter()
    with restored_logging():
        result = CliRunner().invoke(app, ["report", "merge", str(report)])
    assert time.perf_counter() - start < 5.0
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(report) in result.stderr and words in result.stderr
    assert len(result.stderr) < 1_000


def test_a_case_error_of_a_megabyte_is_clipped_in_the_merged_report(tmp_path: Path) -> None:
    report = tmp_path / "part0.json"
    report.write_text(json.dumps(_report([{"case_id": "a", "status": "failed", "error": "e" * 2**20}])))
    with restored_logging():
        result = CliRunner().invoke(app, ["report", "merge", str(report), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 1
    (case,) = json.loads((tmp_path / "m.json").read_text())["cases"]
    assert case["error"].startswith("eee") and len(case["error"]) == 2_000
    assert len(result.stdout) < 5_000


# -- a command segmenter's label volume --------------------------------------------------------------------


def _complete(folder: Path) -> CompleteCase:
    return CompleteCase(folder.name, {seq: folder / f"{folder.name}-{seq}.nii.gz" for seq in CANONICAL_ORDER})


def test_a_segmenter_output_that_inflates_past_its_header_is_refused(tmp_path: Path) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00001-000", seed=1)
    labels = nib.Nifti1Image(np.zeros((32, 32, 24), np.uint8), np.eye(4))
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip_bomb(labels.to_bytes(), extra_mib=512))  # 512 MiB behind an honest header
    spec = CommandSegmenterSpec(
        kind="command", command=["cp", str(bomb), "{output}/{case}.nii.gz"], labels="brats2023", timeout_s=20
    )
    with pytest.raises(
        SegmentationError, match=r"BraTS-GLI-00001-000: cannot read the segmentation"
    ) as caught:
        CommandSegmenter(spec).segment(_complete(folder))
    assert "inflates to more than" in str(caught.value) and "BraTS-GLI-00001-000.nii.gz" in str(caught.value)


# -- label volumes kept by cwdm evaluate --segmentations, named after the case ---------------------------


def test_a_kept_segmentation_whose_name_is_too_long_fails_its_case(tmp_path: Path) -> None:
    case_id = "BraTS-GLI-00001-000-" + "x" * 220  # files of 251 bytes; '<case>-t1c-copy-t1n.nii.gz' of 261
    folder = write_case_folder(tmp_path / "truth", case_id, seed=1)
    script = tmp_path / "segment.py"
    script.write_text(SCRIPT)
    spec = CommandSegmenterSpec(
        kind="command",
        command=[sys.executable, str(script), "{input}/{case}", "{output}/{case}.nii.gz"],
        labels="brats2021",
        timeout_s=60,
    )
    scorer = DownstreamScorer(CommandSegmenter(spec), tmp_path / "kept")
    with pytest.raises(CaseError, match="cannot keep the segmentation") as caught:
        scorer.copy(read_case(folder), MRISequence("t1c"), MRISequence("t1n"))
    assert caught.value.case_id == case_id and "File name too long" in str(caught.value)
    assert list((tmp_path / "kept").iterdir()) == []  # no temporary file left behind
