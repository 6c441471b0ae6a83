"""``cwdm qc --segmenter``: the tumour outlines on the previews and the Dice on the cards."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from cwdm.qc.previews import OUTLINE_COLOURS
from cwdm.qc.run import qc_folder
from cwdm.segmentation.case import CompleteCase, SegmentationError
from cwdm.segmentation.labels import dice

from .synthetic import AFFINE, write_case_folder


class ThresholdSegmenter:
    """Thresholds the t1c (ET) and the t2f (WT) of the case it is given: a real, if crude, segmenter."""

    name = "threshold"

    def __init__(self, fail_on: str = "") -> None:
        self.fail_on = fail_on
        self.seen: list[str] = []

    def segment(self, case: CompleteCase) -> np.ndarray:
        self.seen.append(case.label)
        if self.fail_on and self.fail_on in case.case_id:
            raise SegmentationError(case.case_id, "threshold segmenter failed on purpose")
        t1n, t1c, t2w, t2f = (volume.data for volume in case.volumes())
        labels = np.zeros(t2f.shape, np.uint8)
        labels[t2f > 400] = 2  # ED
        labels[(t2f > 400) & (t1c < 200)] = 1  # NCR
        labels[t1c > 600] = 3  # ET
        return labels


def _prediction_without_enhancement(folder: Path, out: Path) -> Path:
    """The case's t1c with its enhancing voxels dimmed to healthy tissue: a synthesis that loses ET."""
    t1c = np.asanyarray(nib.load(folder / f"{folder.name}-t1c.nii.gz").dataobj).astype(np.float32)
    t1c[t1c > 600] = 320.0
    out.mkdir(exist_ok=True)
    path = out / f"{folder.name}-t1c.nii.gz"
    nib.save(nib.Nifti1Image(t1c, AFFINE), path)
    return path


def _outline_pixels(png: Path, colour: str) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    want = np.array([int(colour[i] * 2, 16) for i in (1, 2, 3)])
    return int((np.abs(rgb - want).sum(axis=-1) < 40).sum())


def test_previews_outline_both_segmentations_and_cards_give_their_dice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = write_case_folder(data, "BraTS-GLI-00011-000", seed=11)
    prediction = _prediction_without_enhancement(folder, tmp_path / "pred")
    segmenter = ThresholdSegmenter()

    entries = qc_folder(tmp_path / "pred", data, tmp_path / "qc", segmenter=segmenter)
    plain = qc_folder(tmp_path / "pred", data, tmp_path / "qc-plain")

    assert [e.status for e in entries] == ["previewed"]
    assert sorted(segmenter.seen) == ["real", "t1c"]
    scores = dict(entries[0].scores)
    # The oracle: the same thresholds here, on the real t1c and on the dimmed one.
    t1c_real = np.asanyarray(nib.load(folder / f"{folder.name}-t1c.nii.gz").dataobj)
    t1c_pred = np.asanyarray(nib.load(prediction).dataobj)
    et_real, et_pred = t1c_real > 600, t1c_pred > 600
    assert et_real.any() and not et_pred.any()
    agreement = re.search(r"ET (\S+)", scores["Dice vs real case's seg."])
    assert float(agreement[1]) == round(dice(et_pred, et_real), 3) == 0.0
    truth = np.asanyarray(nib.load(folder / f"{folder.name}-seg.nii.gz").dataobj)
    ceiling = re.search(r"ET (\S+)", scores["real case vs truth"])
    assert float(ceiling[1]) == round(dice(et_real, truth == 3), 3)
    assert not [name for name, _ in plain[0].scores if "Dice" in name or "real" in name]
    # The outlines are drawn: WT's colour is on the picture with a segmenter and not without one.
    png, png_plain = tmp_path / "qc" / entries[0].preview, tmp_path / "qc-plain" / plain[0].preview
    assert _outline_pixels(png, OUTLINE_COLOURS["wt"]) > 50
    assert _outline_pixels(png_plain, OUTLINE_COLOURS["wt"]) == 0
    sheet = (tmp_path / "qc" / "index.html").read_text()
    assert "Dice vs ground truth" in sheet


def test_a_segmenter_failure_fails_that_card_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = write_case_folder(data, "BraTS-GLI-00012-000", seed=12)
    bad = write_case_folder(data, "BraTS-GLI-00066-000", seed=13)
    for folder in (good, bad):
        _prediction_without_enhancement(folder, tmp_path / "pred")

    entries = qc_folder(tmp_path / "pred", data, tmp_path / "qc", segmenter=ThresholdSegmenter("00066"))

    status = {e.case_id: (e.status, e.error) for e in entries}
    assert status["BraTS-GLI-00012-000"] == ("previewed", None)
    assert status["BraTS-GLI-00066-000"][0] == "failed"
    assert "failed on purpose" in status["BraTS-GLI-00066-000"][1]


class LeaveOutSegmenter(ThresholdSegmenter):
    """The threshold segmenter, also for a case with a sequence left out (its thresholds then see zeros)."""

    accepts_absent_sequence = True

    def segment_missing(self, case: CompleteCase, absent: object) -> np.ndarray:
        self.seen.append(f"{case.label} without {absent}")
        t1n, t1c, t2w, t2f = (volume.data for volume in case.volumes())
        t1c = np.zeros_like(t1c) if str(absent) == "t1c" else t1c
        labels = np.zeros(t2f.shape, np.uint8)
        labels[t2f > 400] = 2
        labels[t1c > 600] = 3
        return labels


def test_the_card_gives_the_dice_of_the_case_with_the_sequence_left_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = write_case_folder(data, "BraTS-GLI-00011-000", seed=11)
    _prediction_without_enhancement(folder, tmp_path / "pred")
    segmenter = LeaveOutSegmenter()
    (entry,) = qc_folder(tmp_path / "pred", data, tmp_path / "qc", segmenter=segmenter)
    scores = dict(entry.scores)
    assert "t1c-missing without t1c" in segmenter.seen
    truth = np.asanyarray(nib.load(folder / f"{folder.name}-seg.nii.gz").dataobj)
    t2f = np.asanyarray(nib.load(folder / f"{folder.name}-t2f.nii.gz").dataobj)
    expected_wt = dice(t2f > 400, truth > 0)  # left out: only the t2f threshold is left, ET empty
    assert float(re.search(r"WT (\S+)", scores["t1c left out vs truth"])[1]) == round(expected_wt, 3)
    assert float(re.search(r"ET (\S+)", scores["t1c left out vs truth"])[1]) == 0.0
    plain = qc_folder(tmp_path / "pred", data, tmp_path / "qc2", segmenter=ThresholdSegmenter())
    assert "t1c left out vs truth" not in dict(plain[0].scores)  # a segmenter of complete cases: no row
