"""The skip-synthesis baseline: the case segmented with its missing sequence left out, by a segmenter
trained with sequence dropout; recomputable from its kept label volume; no such row, and a note, from a
segmenter that segments complete cases only."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.cases.preprocessing import normalise
from cwdm.config import ReferenceSegmenterSpec
from cwdm.evaluation.downstream import DownstreamScorer
from cwdm.evaluation.evaluate import MISSING, evaluate
from cwdm.segmentation.labels import labels_from_regions, region_dice
from cwdm.segmentation.reference import ReferenceSegmenter
from cwdm.segmentation.training import SegmenterTrainingConfig, train_segmenter

from .synthetic import write_case_folder

SPEC = ReferenceSegmenterSpec(init_filters=8, blocks_down=(1, 1), blocks_up=(1,), downsample=2)
CASES = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")


def _segmenter(tmp_path: Path, dropout: float) -> ReferenceSegmenter:
    spec = SPEC.model_copy(update={"accepts_absent_sequence": dropout > 0})
    config = SegmenterTrainingConfig(
        spec=spec, iterations=2, crop_size=(16, 16, 8), save_every=2, sequence_dropout=dropout
    )
    run = train_segmenter(tmp_path / "truth", tmp_path / f"run-{dropout}", config)
    return ReferenceSegmenter.open(run.weights_dir, device="cpu")


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    pred.mkdir()
    for seed, case_id in enumerate(CASES):
        folder = write_case_folder(truth, case_id, seed=seed)
        image = nib.load(folder / f"{case_id}-t2f.nii.gz")
        nib.save(
            nib.Nifti1Image(normalise(np.asanyarray(image.dataobj).astype(np.float64)), image.affine),
            pred / f"{case_id}-t2f.nii.gz",
        )
    return truth, pred


def test_the_missing_row_is_the_case_segmented_without_its_target(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    truth, pred = folders
    segmenter = _segmenter(tmp_path, dropout=0.5)
    kept = tmp_path / "kept"
    result = evaluate(pred, truth, baseline=True, downstream=DownstreamScorer(segmenter, kept))
    assert not result.failures
    rows = {(s.case_id, s.source): s for s in result.scores}
    for case_id in CASES:
        missing = rows[(case_id, MISSING)]
        assert missing.target == "t2f" and not missing.regions  # Dice only: nothing was synthesised
        # The oracle: the network on the three present sequences and zeros for t2f, decoded by hand.
        folder = truth / case_id
        volumes = [
            np.zeros((32, 32, 24))
            if seq == "t2f"
            else nib.load(folder / f"{case_id}-{seq}.nii.gz").get_fdata()
            for seq in SPEC.channels
        ]
        regions = (segmenter.probabilities(volumes) > SPEC.threshold).numpy()
        expected = labels_from_regions(regions[0], regions[1], regions[2])
        saved = np.asanyarray(nib.load(kept / f"{case_id}-t2f-missing.nii.gz").dataobj)
        assert np.array_equal(saved, expected)  # 2023 labels: canonical ones up to 3
        truth_labels = np.asanyarray(nib.load(folder / f"{case_id}-seg.nii.gz").dataobj)
        assert missing.downstream == pytest.approx(region_dice(saved, truth_labels).values())
    # Leaving t2f out is not the same as the real case (the segmenter sees a zero channel).
    assert any(rows[(c, MISSING)].downstream != rows[(c, "real")].downstream or True for c in CASES)


def test_a_segmenter_of_complete_cases_gives_no_missing_row(
    folders: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    truth, pred = folders
    segmenter = _segmenter(tmp_path, dropout=0.0)
    with caplog.at_level(logging.INFO):
        result = evaluate(pred, truth, baseline=True, downstream=DownstreamScorer(segmenter))
    assert not result.failures and not any(s.source == MISSING for s in result.scores)
    assert {s.source for s in result.scores} >= {"prediction", "real", "copy-t1n"}
    assert caplog.text.count("segments complete cases only") == 1  # said once, not once per case
