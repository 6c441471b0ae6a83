"""Metrics against an independent float64 computation; evaluation of folders, baseline, errors, CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from typer.testing import CliRunner

from cwdm.cli import app
from cwdm.errors import CaseError, CwdmError, ShapeError
from cwdm.evaluation.evaluate import baseline_scores, evaluate
from cwdm.evaluation.metrics import centre_crop, mse, psnr, score_volumes, ssim
from cwdm.sequences import MRISequence, condition_order

from .conftest import smooth_blobs

SHAPE = (26, 24, 12)  # the crop keeps 10 x 8 x 12: still larger than the 7-voxel SSIM window
AFFINE = np.array([[0.0, -1.2, 0, 30], [1.1, 0, 0, -20], [0, 0, 1.5, 5], [0, 0, 0, 1]])


# -- oracles: written from the definitions, not from the code under test ----------------------------
def oracle_ssim(x: np.ndarray, y: np.ndarray, win: int = 7, k1: float = 0.01, k2: float = 0.03) -> float:
    """Wang et al. (2004) SSIM with a uniform 7^3 window, sample (co)variances, data range 1, averaged
    over every window that lies completely inside the volume (explicit per-window statistics)."""
    wx = sliding_window_view(x.astype(np.float64), (win,) * 3).reshape(-1, win**3)
    wy = sliding_window_view(y.astype(np.float64), (win,) * 3).reshape(-1, win**3)
    mx, my = wx.mean(axis=1), wy.mean(axis=1)
    vx, vy = wx.var(axis=1, ddof=1), wy.var(axis=1, ddof=1)
    cxy = ((wx - mx[:, None]) * (wy - my[:, None])).sum(axis=1) / (win**3 - 1)
    c1, c2 = k1**2, k2**2
    local = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(local.mean())


def oracle_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    pred, truth = pred.astype(np.float64), truth.astype(np.float64)
    err = float(np.sum((pred - truth) ** 2) / truth.size)
    return err, -10.0 * math.log10(err), oracle_ssim(pred, truth)


def oracle_normalise(raw: np.ndarray) -> np.ndarray:
    low, high = np.percentile(raw, [0.1, 99.9])
    clipped = np.minimum(np.maximum(raw, low), high)
    return (clipped - low) / (high - low)


def blob(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return smooth_blobs(shape, seed).numpy().astype(np.float64)


def raw_volume(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Scanner-like intensities: blobs scaled to ~1000 with a few bright outliers the clip removes."""
    volume = blob(seed, shape) * 900.0 + 100.0 * (blob(seed + 50, shape) > 0)
    volume.flat[np.random.default_rng(seed).choice(volume.size, 3, replace=False)] = 5000.0
    return volume


def save(data: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    return path


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- the metrics ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_pred",
    [
        lambda truth: blob(7),  # another image
        lambda truth: np.clip(truth + 0.05 * np.random.default_rng(1).standard_normal(SHAPE), 0, 1),
        lambda truth: 0.5 * truth,  # contrast change
        lambda truth: np.full(SHAPE, 0.3),  # constant
    ],
    ids=["other", "noisy", "half", "constant"],
)
def test_metrics_match_the_float64_oracle(make_pred):
    truth = blob(3)
    pred = make_pred(truth)
    expected_mse, expected_psnr, expected_ssim = oracle_scores(pred, truth)
    assert mse(pred, truth) == pytest.approx(expected_mse, rel=1e-12)
    assert psnr(pred, truth) == pytest.approx(expected_psnr, rel=1e-12)
    assert ssim(pred, truth) == pytest.approx(expected_ssim, abs=1e-9)


def test_identical_volumes_score_perfectly():
    truth = blob(3)
    assert mse(truth, truth) == 0.0
    assert psnr(truth, truth) == math.inf
    assert ssim(truth, truth) == pytest.approx(1.0, abs=1e-12)


def test_score_volumes_crops_eight_voxels_off_the_first_two_axes():
    truth, pred = blob(3), blob(4)
    regions = score_volumes(pred, truth)
    full = oracle_scores(pred, truth)
    crop = oracle_scores(pred[8:18, 8:16, :], truth[8:18, 8:16, :])
    for region, expected in (("full", full), ("crop", crop)):
        scores = regions[region]
        assert (scores.mse, scores.psnr) == pytest.approx(expected[:2], rel=1e-12)
        assert scores.ssim == pytest.approx(expected[2], abs=1e-9)
    assert full[0] != pytest.approx(crop[0])  # the two regions really differ on this pair


def test_brats_grid_crop_is_224_224_155():
    assert centre_crop(np.zeros((240, 240, 155))).shape == (224, 224, 155)


@pytest.mark.parametrize(
    ("shape_a", "shape_b", "match"),
    [((26, 24, 12), (26, 24, 10), "differs"), ((16, 24, 12), (16, 24, 12), "too small")],
)
def test_unusable_shapes_raise(shape_a, shape_b, match):
    with pytest.raises(ShapeError, match=match):
        score_volumes(np.zeros(shape_a), np.zeros(shape_b))


def test_ssim_rejects_axes_shorter_than_the_window():
    with pytest.raises(ShapeError, match="at least 7"):
        ssim(np.zeros((10, 10, 5)), np.zeros((10, 10, 5)))


# -- folders ----------------------------------------------------------------------------------------
CASES = ("BraTS-GLI-00010-000", "BraTS-GLI-00020-000")


@pytest.fixture
def truth_dir(tmp_path: Path) -> Path:
    root = tmp_path / "truth"
    for c, case in enumerate(CASES):
        for s, seq in enumerate(MRISequence):
            save(raw_volume(10 * c + s), root / case / f"{case}-{seq}.nii.gz")
    return root


def test_evaluate_scores_each_prediction_against_the_normalised_truth(tmp_path, truth_dir):
    pred_dir = tmp_path / "pred"
    predictions = {(CASES[0], "t2f"): blob(30), (CASES[1], "t1c"): blob(31)}
    for (case, seq), data in predictions.items():
        save(data, pred_dir / f"{case}-{seq}.nii.gz")
    before = checksums(tmp_path)

    result = evaluate(pred_dir, truth_dir)

    assert checksums(tmp_path) == before  # inputs untouched
    assert result.failures == ()
    assert [(s.case_id, str(s.target), s.source) for s in result.scores] == [
        (CASES[0], "t2f", "prediction"),
        (CASES[1], "t1c", "prediction"),
    ]
    for scores in result.scores:
        raw = nib.load(truth_dir / scores.case_id / f"{scores.case_id}-{scores.target}.nii.gz").get_fdata()
        truth = oracle_normalise(raw)
        pred = predictions[(scores.case_id, str(scores.target))].astype(np.float32)  # as written
        expected = oracle_scores(pred, truth)
        assert (scores.full.mse, scores.full.psnr) == pytest.approx(expected[:2], rel=1e-5)
        assert scores.full.ssim == pytest.approx(expected[2], abs=1e-6)
        expected_crop = oracle_scores(pred[8:-8, 8:-8], truth[8:-8, 8:-8])
        assert scores.crop.ssim == pytest.approx(expected_crop[2], abs=1e-6)


def test_evaluate_isolates_bad_predictions(tmp_path, truth_dir):
    pred_dir = tmp_path / "pred"
    save(blob(30), pred_dir / f"{CASES[0]}-t2f.nii.gz")  # good
    save(blob(32, (26, 24, 10)), pred_dir / f"{CASES[1]}-t1c.nii.gz")  # wrong shape
    (pred_dir / f"{CASES[1]}-t2w.nii.gz").write_bytes(b"not a nifti file")  # unreadable
    (pred_dir / "report.json").write_text("{}")  # not a prediction
    (pred_dir / ".cwdm-123.part.nii.gz").write_bytes(b"")  # hidden partial write: ignored

    result = evaluate(pred_dir, truth_dir)

    assert [(s.case_id, str(s.target)) for s in result.scores] == [(CASES[0], "t2f")]
    messages = {(f.case_id, str(f.target) if f.target else None): f.message for f in result.failures}
    assert set(messages) == {(CASES[1], "t1c"), (CASES[1], "t2w"), ("report.json", None)}
    assert "26x24x10 differs from the ground truth's 26x24x12" in messages[(CASES[1], "t1c")]
    assert "cannot read" in messages[(CASES[1], "t2w")]
    assert "not a prediction file" in messages[("report.json", None)]
    assert result.no_truth == () and result.exit_code == 1
    assert result.counts_text() == "4 predictions: 1 scored, 0 no truth, 3 failed"  # report.json too


def test_a_prediction_without_ground_truth_is_listed_apart_not_failed(tmp_path, truth_dir):
    """A case folder absent from the truth, or a case folder without the predicted sequence: "no truth",
    neither a score nor a failure; the evaluation's status stays 0 while something was scored."""
    (truth_dir / CASES[1] / f"{CASES[1]}-t2w.nii.gz").unlink()
    pred_dir = tmp_path / "pred"
    save(blob(30), pred_dir / f"{CASES[0]}-t2f.nii.gz")  # has its truth
    save(blob(31), pred_dir / "BraTS-GLI-99999-000-t1n.nii.gz")  # no case folder
    save(blob(32), pred_dir / f"{CASES[1]}-t2w.nii.gz")  # the case folder lacks t2w
    seen = []

    result = evaluate(pred_dir, truth_dir, baseline=True, on_case=seen.append)

    assert result.failures == () and result.exit_code == 0
    assert {(s.case_id, s.source) for s in result.scores} >= {(CASES[0], "prediction")}
    assert all(s.case_id == CASES[0] for s in result.scores)  # no baseline for a case without truth
    assert [(n.case_id, str(n.target)) for n in result.no_truth] == [
        (CASES[1], "t2w"),
        ("BraTS-GLI-99999-000", "t1n"),
    ]
    assert result.no_truth[0].reason == f"no {CASES[1]}-t2w.nii.gz in {truth_dir / CASES[1]}"
    assert result.no_truth[1].reason == f"no case folder {truth_dir / 'BraTS-GLI-99999-000'}"
    assert [(o.case_id, o.status) for o in seen] == [  # one outcome per prediction, in name order
        (CASES[0], "scored"),
        (CASES[1], "no truth"),
        ("BraTS-GLI-99999-000", "no truth"),
    ]
    assert result.counts_text() == "3 predictions: 1 scored, 2 no truth, 0 failed"
    assert result.no_truth_text() == (
        f"no truth (not scored, not a failure): {CASES[1]} (t2w), BraTS-GLI-99999-000 (t1n)"
    )
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    status = {(row["case"], row["target"], row["source"]): row["status"] for row in rows}
    assert status[(CASES[0], "t2f", "prediction")] == "scored"
    assert status[("BraTS-GLI-99999-000", "t1n", "prediction")] == "no truth"
    assert status[(CASES[1], "t2w", "prediction")] == "no truth"
    assert all(row["error"] == "" for row in rows)


def test_nothing_but_predictions_without_truth_is_not_a_success(tmp_path, truth_dir):
    save(blob(31), tmp_path / "pred" / "BraTS-GLI-99999-000-t1n.nii.gz")
    result = evaluate(tmp_path / "pred", truth_dir)
    assert result.scores == () and result.failures == () and len(result.no_truth) == 1
    assert result.exit_code == 1  # nothing was scored: most likely the wrong truth folder


@pytest.mark.parametrize("which", ["pred", "truth"])
def test_missing_folders_raise(tmp_path, truth_dir, which):
    (tmp_path / "pred").mkdir()
    folders = {"pred": tmp_path / "pred", "truth": truth_dir}
    folders[which] = tmp_path / "nowhere"
    with pytest.raises(CwdmError, match="nowhere does not exist"):
        evaluate(folders["pred"], folders["truth"])


# -- baseline ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", list(MRISequence))
def test_baseline_scores_each_present_sequence_copied(truth_dir, target):
    case_dir = truth_dir / CASES[1]
    rows = baseline_scores(case_dir, target)

    def normalised(seq):
        return oracle_normalise(nib.load(case_dir / f"{CASES[1]}-{seq}.nii.gz").get_fdata())

    assert [r.source for r in rows] == [f"copy-{seq}" for seq in condition_order(target)]
    for row, seq in zip(rows, condition_order(target), strict=True):
        expected = oracle_scores(normalised(seq), normalised(target))
        assert row.target == target and row.case_id == CASES[1]
        assert row.full.psnr == pytest.approx(expected[1], rel=1e-5)
        assert row.full.ssim == pytest.approx(expected[2], abs=1e-6)


def test_baseline_without_ground_truth_raises(truth_dir):
    (truth_dir / CASES[0] / f"{CASES[0]}-t1c.nii.gz").unlink()
    with pytest.raises(CaseError, match="no ground truth for t1c"):
        baseline_scores(truth_dir / CASES[0], "t1c")


def test_evaluate_with_baseline_adds_copy_rows(tmp_path, truth_dir):
    save(blob(30), tmp_path / "pred" / f"{CASES[0]}-t2f.nii.gz")
    result = evaluate(tmp_path / "pred", truth_dir, baseline=True)
    assert [s.source for s in result.scores] == ["prediction", "copy-t1n", "copy-t1c", "copy-t2w"]


# -- summary, CSV, CLI ------------------------------------------------------------------------------
@pytest.fixture
def evaluation(tmp_path, truth_dir):
    pred_dir = tmp_path / "pred"
    for i, case in enumerate(CASES):
        for seq in ("t1n", "t2f"):
            save(blob(40 + i + (seq == "t2f")), pred_dir / f"{case}-{seq}.nii.gz")
    return evaluate(pred_dir, truth_dir)


def test_summary_is_mean_and_sample_sd(evaluation):
    rows = {(r.source, r.target): r for r in evaluation.summary()}
    assert set(rows) == {("prediction", "t1n"), ("prediction", "t2f"), ("prediction", "all")}
    for target in ("t1n", "t2f", "all"):
        values = [s.crop.ssim for s in evaluation.scores if target in ("all", str(s.target))]
        row = rows[("prediction", target)]
        assert row.n == len(values)
        assert row.mean["crop_ssim"] == pytest.approx(statistics.mean(values), rel=1e-12)
        assert row.sd["crop_ssim"] == pytest.approx(statistics.stdev(values), rel=1e-9)
    table = evaluation.summary_table()
    assert table.splitlines()[0].split()[:4] == ["source", "target", "n", "MSE"]
    assert f"{rows[('prediction', 'all')].mean['full_psnr']:.2f} ±" in table


def test_csv_holds_every_score_exactly(tmp_path, evaluation):
    path = evaluation.write_csv(tmp_path / "scores.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == len(evaluation.scores) == 4
    for row, scores in zip(rows, evaluation.scores, strict=True):
        assert (row["case"], row["target"], row["source"]) == (scores.case_id, scores.target, "prediction")
        assert float(row["full_ssim"]) == scores.full.ssim
        assert float(row["crop_mse"]) == scores.crop.mse
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_cli_evaluate(tmp_path, truth_dir):
    pred_dir = tmp_path / "pred"
    save(blob(30), pred_dir / f"{CASES[0]}-t2f.nii.gz")
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(pred_dir), str(truth_dir), "--csv", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert (
        "prediction  t2f" in result.output and "all" not in result.output and (tmp_path / "s.csv").is_file()
    )

    save(blob(31), pred_dir / "BraTS-GLI-99999-000-t1n.nii.gz")  # no truth: listed, not a failure
    result = runner.invoke(app, ["evaluate", str(pred_dir), str(truth_dir), "--baseline"])
    assert result.exit_code == 0, result.output
    assert "copy-t1n" in result.output and "not scored:" not in result.output  # no failure line
    assert "no truth (not scored, not a failure): BraTS-GLI-99999-000 (t1n)" in result.output
    assert "2 predictions: 1 scored, 1 no truth, 0 failed" in result.output

    (pred_dir / f"{CASES[1]}-t1c.nii.gz").write_bytes(b"not a volume")  # a failure
    result = runner.invoke(app, ["evaluate", str(pred_dir), str(truth_dir)])
    assert result.exit_code == 1 and "3 predictions: 1 scored, 1 no truth, 1 failed" in result.output
    assert f"not scored: {CASES[1]}" in result.output

    result = runner.invoke(app, ["evaluate", str(tmp_path / "nowhere"), str(truth_dir)])
    assert result.exit_code == 2 and "does not exist" in result.output


# -- regions and the organisers' score ------------------------------------------------------------------
def _oracle_ssim_map(x: np.ndarray, y: np.ndarray, win: int = 7) -> np.ndarray:
    """The local SSIM of every window that lies inside the volume, indexed by the window's centre."""
    wx = sliding_window_view(x.astype(np.float64), (win,) * 3)
    wy = sliding_window_view(y.astype(np.float64), (win,) * 3)
    n = win**3
    mx, my = wx.mean(axis=(-3, -2, -1)), wy.mean(axis=(-3, -2, -1))
    vx, vy = wx.var(axis=(-3, -2, -1), ddof=1), wy.var(axis=(-3, -2, -1), ddof=1)
    cxy = ((wx - mx[..., None, None, None]) * (wy - my[..., None, None, None])).sum(axis=(-3, -2, -1)) / (
        n - 1
    )
    return ((2 * mx * my + 1e-4) * (2 * cxy + 9e-4)) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))


def test_brain_and_tumour_regions_against_the_oracle():
    truth, pred = blob(3), blob(4)
    brain = truth > 0
    tumour = np.zeros(SHAPE, dtype=bool)
    tumour[9:15, 8:14, 4:9] = True
    regions = score_volumes(pred, truth, brain=brain, tumour=tumour)
    local = _oracle_ssim_map(pred, truth)  # centres 3 .. n-4 on every axis
    interior = np.zeros(SHAPE, dtype=bool)
    interior[3:-3, 3:-3, 3:-3] = True
    for name, mask in (("brain", brain), ("tumor", tumour)):
        error = float(np.mean((pred[mask] - truth[mask]) ** 2))
        assert regions[name].mse == pytest.approx(error, rel=1e-12)
        assert regions[name].psnr == pytest.approx(-10 * math.log10(error), rel=1e-12)
        inner = (mask & interior)[3:-3, 3:-3, 3:-3]
        assert regions[name].ssim == pytest.approx(float(local[inner].mean()), abs=1e-9)
    assert regions["tumor"].ssim != pytest.approx(regions["brain"].ssim)
    assert set(score_volumes(pred, truth)) == {"full", "crop"}  # no masks, no such regions


def _add_segmentation(truth_dir: Path, case: str, labels: tuple[int, ...] = (1, 2, 4)) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[9:16, 7:15, 3:9] = labels[1]
    seg[11:14, 9:13, 4:8] = labels[0]
    seg[12:13, 10:12, 5:7] = labels[2]
    nib.save(nib.Nifti1Image(seg, AFFINE), truth_dir / case / f"{case}-seg.nii.gz")
    return seg


@pytest.mark.parametrize("labels", [(1, 2, 4), (1, 2, 3)], ids=["BraTS-2018-2021", "BraTS-2023+"])
def test_a_segmentation_adds_the_tumour_region_and_the_organisers_ssim(tmp_path, truth_dir, labels):
    from cwdm.evaluation.brasyn import brasyn_scores

    seg = _add_segmentation(truth_dir, CASES[0], labels)
    pred_dir = tmp_path / "pred"
    prediction = blob(30)
    save(prediction, pred_dir / f"{CASES[0]}-t2f.nii.gz")
    save(blob(31), pred_dir / f"{CASES[1]}-t1c.nii.gz")  # no segmentation: no tumour numbers
    result = evaluate(pred_dir, truth_dir, baseline=True)
    assert result.failures == ()
    with_seg = next(s for s in result.scores if s.case_id == CASES[0] and s.source == "prediction")
    raw = nib.load(truth_dir / CASES[0] / f"{CASES[0]}-t2f.nii.gz").get_fdata()
    expected = brasyn_scores(prediction.astype(np.float32), raw, seg)
    assert with_seg.brasyn == pytest.approx(expected)
    assert 0.0 < with_seg.brasyn.non_tumor < with_seg.brasyn.tumor <= 1.0
    assert "tumor" in with_seg.regions and "brain" in with_seg.regions
    without = next(s for s in result.scores if s.case_id == CASES[1] and s.source == "prediction")
    assert without.brasyn is None and "tumor" not in without.regions
    copies = [s for s in result.scores if s.case_id == CASES[0] and s.source.startswith("copy-")]
    assert len(copies) == 3 and all(s.brasyn is not None for s in copies)

    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    row = next(r for r in rows if r["case"] == CASES[0] and r["source"] == "prediction")
    assert float(row["brasyn_ssim_tumor"]) == with_seg.brasyn.tumor
    assert float(row["tumor_psnr"]) == with_seg.regions["tumor"].psnr
    other = next(r for r in rows if r["case"] == CASES[1] and r["source"] == "prediction")
    assert other["brasyn_ssim_non_tumor"] == "" and other["tumor_ssim"] == "" and other["brain_ssim"] != ""

    table = result.summary_table()
    assert "BraSyn SSIM tumor" in table and f"{with_seg.brasyn.tumor:.4f}" in table
    assert "[1]" in table  # over the predictions, the tumour numbers come from one case of two


def test_a_segmentation_on_another_grid_fails_that_case_only(tmp_path, truth_dir):
    nib.save(
        nib.Nifti1Image(np.zeros((5, 5, 5), dtype=np.uint8), AFFINE),
        truth_dir / CASES[0] / f"{CASES[0]}-seg.nii.gz",
    )
    pred_dir = tmp_path / "pred"
    save(blob(30), pred_dir / f"{CASES[0]}-t2f.nii.gz")
    save(blob(31), pred_dir / f"{CASES[1]}-t1c.nii.gz")
    result = evaluate(pred_dir, truth_dir)
    assert [f.case_id for f in result.failures] == [CASES[0]] and "tumour mask" in result.failures[0].message
    assert [s.case_id for s in result.scores] == [CASES[1]]
