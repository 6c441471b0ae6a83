"""inference/provenance.py: every output says it is synthetic, from what and how; a rerun with other
settings says so instead of claiming them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cwdm.cli import app
from cwdm.evaluation.brasyn import brasyn_scores
from cwdm.inference.provenance import DESCRIP_BYTES, read_record
from cwdm.version import __version__
from tests.conftest import write_case

CASES = {"BraTS-GLI-00001-000": "t2f", "BraTS-PED-00003-000": "t1c"}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for seed, (case_id, missing) in enumerate(CASES.items(), start=1):
        write_case(tmp_path / "data", case_id, missing=missing, seed=seed)
    return tmp_path / "data"


def _infer(data: Path, out: Path, weights: Path, *extra: str) -> tuple[int, dict, str]:
    report = out.with_name(f"{out.name}-report.json")
    args = ["infer", str(data), str(out), "--weights", str(weights), "--device", "cpu", *extra]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "3000"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(report.read_text()), result.output


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_header_says_synthetic_from_what_and_how(data: Path, tmp_path: Path, tiny_weights: Path) -> None:
    code, report, _ = _infer(data, tmp_path / "out", tiny_weights, "--steps", "1", "--seed", "7")
    assert code == 0
    output = tmp_path / "out" / "BraTS-GLI-00001-000-t2f.nii.gz"
    header = nib.load(output).header
    descrip = header["descrip"].item().decode()
    assert descrip == f"SYNTHETIC cwdm {__version__} t2f<-t1n,t1c,t2w ddpm 1 linspace x1 seed7"
    assert len(descrip.encode()) <= DESCRIP_BYTES
    assert header.get_intent() == ("none", (), "SYNTHETIC cwdm")
    record = read_record(output)
    assert record is not None and record["synthetic"] is True and record["target"] == "t2f"
    case = data / "BraTS-GLI-00001-000"
    assert [(s["sequence"], s["file"], s["sha256"]) for s in record["sources"]] == [
        (seq, f"BraTS-GLI-00001-000-{seq}.nii.gz", _sha(case / f"BraTS-GLI-00001-000-{seq}.nii.gz"))
        for seq in ("t1n", "t1c", "t2w")
    ]
    assert record["model"] == {"file": "t2f.safetensors", "sha256": _sha(tiny_weights / "t2f.safetensors")}
    assert record["settings"]["sampling_steps"] == 1 and record["settings"]["seed"] == 7
    assert "path" not in json.dumps(record)  # the file carries names, not the sender's folders
    # The report keeps the full record, with absolute paths.
    (entry,) = [c for c in report["cases"] if c["case_id"] == "BraTS-GLI-00001-000"]
    full = entry["provenance"]
    assert full["sources"][0]["path"] == str((case / "BraTS-GLI-00001-000-t1n.nii.gz").resolve())
    assert full["model"]["path"] == str((tiny_weights / "t2f.safetensors").resolve())
    assert entry["writer"] == report["process"] and ":" in entry["writer"]


def test_readers_of_the_evaluator_contract_see_the_same_volume(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    """nibabel (the organisers' script, cwdm evaluate) and ITK read it as before: the extension is skipped."""
    assert _infer(data, tmp_path / "out", tiny_weights)[0] == 0
    output = tmp_path / "out" / "BraTS-GLI-00001-000-t2f.nii.gz"
    values = np.asanyarray(nib.load(output).dataobj)
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(output))).transpose(2, 1, 0)
    np.testing.assert_array_equal(values, itk)
    plain = nib.load(output)
    plain.header.extensions.clear()
    stripped = tmp_path / "stripped.nii.gz"
    nib.save(nib.Nifti1Image(values, plain.affine, plain.header), stripped)
    truth = np.asanyarray(nib.load(data / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz").dataobj)
    seg = (truth > np.percentile(truth, 90)).astype(np.uint8)
    with_record = brasyn_scores(values, truth, seg)
    without = brasyn_scores(np.asanyarray(nib.load(stripped).dataobj), truth, seg)
    assert with_record == without


def test_a_rerun_with_other_settings_reports_the_mismatch_and_keeps_the_outputs(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    assert _infer(data, out, tiny_weights, "--steps", "1")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    code, report, output = _infer(data, out, tiny_weights, "--steps", "2")
    assert code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # kept, not replaced
    assert report["counts"]["mismatched"] == 2 and report["counts"]["skipped"] == 0
    for case in report["cases"]:
        assert case["status"] == "mismatched"
        assert case["settings_mismatch"] == ["sampling_steps: output 1, run 2"]
        assert case["provenance"]["settings"]["sampling_steps"] == 1  # what the file was made with
        assert "--overwrite" in case["error"]
    assert "2 mismatched" in output

    # The same settings again: skipped, with the record read back from the file.
    code, report, _ = _infer(data, out, tiny_weights, "--steps", "1")
    assert code == 0 and report["counts"]["skipped"] == 2
    assert all(c["provenance"]["settings"]["sampling_steps"] == 1 for c in report["cases"])

    code, report, _ = _infer(data, out, tiny_weights, "--steps", "2", "--overwrite")
    assert code == 0 and report["counts"]["written"] == 2
    for name in before:
        assert read_record(out / name)["settings"]["sampling_steps"] == 2
        assert (out / name).read_bytes() != before[name]


def test_an_output_without_a_record_is_skipped_as_before(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    assert _infer(data, out, tiny_weights)[0] == 0
    for path in out.iterdir():  # an output of an earlier version, or of another tool: no record
        image = nib.load(path)
        image.header.extensions.clear()
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header), path)
    code, report, _ = _infer(data, out, tiny_weights, "--steps", "1")
    assert code == 0 and report["counts"]["skipped"] == 2
    assert all(c["provenance"] is None for c in report["cases"])


def test_reruns_keep_the_earlier_runs_in_the_report_newest_first(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    """The report file of a rerun is the new run with the earlier ones under ``previous_runs``: the
    first run's per-case stage times survive a rerun that skipped everything, and a rerun with other
    settings (mismatched) keeps both earlier records, each as it was written."""
    out = tmp_path / "out"
    code, first, _ = _infer(data, out, tiny_weights, "--steps", "1")
    assert code == 0 and first["counts"]["written"] == 2 and first["previous_runs"] == []
    first_stages = {case["case_id"]: case["stages_s"] for case in first["cases"]}
    assert all(stages and stages["network"] > 0 for stages in first_stages.values())

    code, second, _ = _infer(data, out, tiny_weights, "--steps", "1")
    assert code == 0 and second["counts"]["skipped"] == 2
    assert all(case["stages_s"] is None for case in second["cases"])  # nothing was sampled this time
    (earlier,) = second["previous_runs"]
    assert earlier == {key: value for key, value in first.items() if key != "previous_runs"}
    assert {case["case_id"]: case["stages_s"] for case in earlier["cases"]} == first_stages

    code, third, _ = _infer(data, out, tiny_weights, "--steps", "2")
    assert code == 1 and third["counts"]["mismatched"] == 2
    without_history = [
        {key: value for key, value in run.items() if key != "previous_runs"} for run in (second, first)
    ]
    assert third["previous_runs"] == without_history  # newest first
    assert [run["started_at"] for run in third["previous_runs"]] == [
        second["started_at"],
        first["started_at"],
    ]
