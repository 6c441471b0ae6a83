"""``cwdm evaluate --segmenter``: Dice of the completed, real and copy-completed cases, recomputable from
the kept segmentations, with a failing segmenter isolated to its case."""

from __future__ import annotations

import csv
import io
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from cwdm.cases.preprocessing import normalise
from cwdm.cli import app
from cwdm.errors import ConfigError
from cwdm.evaluation.downstream import DownstreamScorer
from cwdm.evaluation.evaluate import evaluate
from cwdm.segmentation.labels import region_dice

from .synthetic import write_case_folder
from .test_command import SCRIPT, threshold_oracle

CASES = {
    "BraTS-GLI-00001-000": "brats2021",
    "BraTS-GLI-00002-000": "brats2023",
    "BraTS-GLI-00066-000": "brats2023",
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Truth (complete cases with -seg), predictions of t1c (the truth normalised to [0, 1], as a
    synthesis is written) and the segmenter description."""
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    pred.mkdir()
    for seed, (case_id, convention) in enumerate(CASES.items()):
        folder = write_case_folder(truth, case_id, seed=seed, seg_convention=convention)
        image = nib.load(folder / f"{case_id}-t1c.nii.gz")
        synthesis = normalise(np.asanyarray(image.dataobj).astype(np.float64))
        nib.save(nib.Nifti1Image(synthesis, image.affine), pred / f"{case_id}-t1c.nii.gz")
    script = tmp_path / "segment.py"
    script.write_text(SCRIPT)
    spec = tmp_path / "segmenter.yaml"
    spec.write_text(
        f"kind: command\ncommand: ['{sys.executable}', '{script}', '{{input}}/{{case}}', "
        "'{output}/{case}.nii.gz']\nlabels: brats2021\n"
    )
    return truth, pred, spec


def canonical_truth(folder: Path) -> np.ndarray:
    seg = np.asanyarray(nib.load(folder / f"{folder.name}-seg.nii.gz").dataobj).copy()
    seg[seg == 4] = 3
    return seg


def expected_dice(truth_folder: Path, replacement: Path | None, tmp: Path) -> dict[str, float]:
    """Dice of the script's rule on the case with t1c replaced, computed without the package's flow."""
    work = tmp / "oracle" / truth_folder.name
    shutil.copytree(truth_folder, work, dirs_exist_ok=True)
    if replacement is not None:
        shutil.copy(replacement, work / f"{truth_folder.name}-t1c.nii.gz")
    return region_dice(threshold_oracle(work), canonical_truth(truth_folder)).values()


def test_dice_of_completed_real_and_copy_cases(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    truth, pred, spec_path = folders
    from cwdm.segmentation.spec import open_segmenter

    segmenter = open_segmenter(spec_path)
    kept = tmp_path / "segmentations"
    result = evaluate(pred, truth, baseline=True, downstream=DownstreamScorer(segmenter, kept))

    # The failing case: its Dice is a failure of its own, its image scores stand.
    assert [f.source for f in result.failures] == ["segmentation"] * 5  # completed, real, three copies
    assert all("exited with status 3" in f.message for f in result.failures)
    by_key = {(s.case_id, s.source): s for s in result.scores}
    assert not by_key[("BraTS-GLI-00066-000", "prediction")].downstream
    assert by_key[("BraTS-GLI-00066-000", "prediction")].full.psnr > 0

    for case_id in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        folder = truth / case_id
        completed = by_key[(case_id, "prediction")].downstream
        real = by_key[(case_id, "real")].downstream
        assert completed == pytest.approx(expected_dice(folder, pred / f"{case_id}-t1c.nii.gz", tmp_path))
        assert real == pytest.approx(expected_dice(folder, None, tmp_path))
        assert (
            real["dice_et"] == 1.0 and completed["dice_et"] < 0.5
        )  # a [0, 1] t1c loses the threshold rule's ET
        copy = by_key[(case_id, "copy-t2f")].downstream
        assert copy == pytest.approx(expected_dice(folder, folder / f"{case_id}-t2f.nii.gz", tmp_path))
        # Every label volume was kept, in the truth's own convention, and gives the same Dice again.
        truth_values = set(np.unique(nib.load(folder / f"{case_id}-seg.nii.gz").dataobj))
        for name, scores in (
            (f"{case_id}-t1c", completed),
            (f"{case_id}-real", real),
            (f"{case_id}-t1c-copy-t2f", copy),
        ):
            saved = np.asanyarray(nib.load(kept / f"{name}.nii.gz").dataobj)
            assert set(np.unique(saved)) <= truth_values | {0}
            canonical = saved.copy()
            canonical[saved == 4] = 3
            assert region_dice(canonical, canonical_truth(folder)).values() == pytest.approx(scores)
    assert not any(pred.glob("*real*"))  # nothing went into the prediction folder


def test_the_segmentations_folder_may_not_be_the_prediction_folder(folders: tuple[Path, Path, Path]) -> None:
    truth, pred, spec_path = folders
    from cwdm.segmentation.spec import open_segmenter

    with pytest.raises(ConfigError, match="overlaps the prediction folder"):
        evaluate(pred, truth, downstream=DownstreamScorer(open_segmenter(spec_path), pred / "segs"))


def test_cli_writes_the_dice_columns(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    truth, pred, spec_path = folders
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        app, ["evaluate", str(pred), str(truth), "--segmenter", str(spec_path), "--csv", str(out)]
    )
    assert result.exit_code == 1, result.output  # the failing case's Dice is reported, so not 0
    assert "Dice WT" in result.output and "real" in result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    scored = {(r["case"], r["source"]): r for r in rows if not r["error"]}
    assert float(scored[("BraTS-GLI-00001-000", "real")]["dice_wt"]) == 1.0
    assert scored[("BraTS-GLI-00001-000", "prediction")]["dice_et"] != ""
    assert any(r["source"] == "segmentation" and "BraTS-GLI-00066-000" in r["error"] for r in rows)


def test_options_that_need_a_segmenter_say_so(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    truth, pred, _ = folders
    result = CliRunner().invoke(
        app, ["evaluate", str(pred), str(truth), "--segmentations", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "need --segmenter" in result.output
