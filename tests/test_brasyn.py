"""evaluation/brasyn.py: the organisers' tumour / non-tumour SSIM, against two independent oracles:
torchmetrics' own StructuralSimilarityIndexMeasure (what the organisers' script calls) in float64, and a
float64 computation from the definition with scipy's Gaussian filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cwdm.errors import ShapeError
from cwdm.evaluation.brasyn import brasyn_scores, percentile_normalise, ssim_gaussian

from .conftest import smooth_blobs

SHAPE = (34, 30, 26)


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw int16 truth with a few outliers, a float32 prediction of another scale, labels {0,1,2,4}."""
    rng = np.random.default_rng(seed)
    truth = smooth_blobs(SHAPE, seed).numpy() * 800.0
    truth.flat[rng.choice(truth.size, 5, replace=False)] = 4000.0
    truth = np.rint(truth).astype(np.int16)
    prediction = (
        0.8 * smooth_blobs(SHAPE, seed).numpy() + 0.2 * smooth_blobs(SHAPE, seed + 7).numpy()
    ).astype(np.float32)
    prediction += 0.02 * rng.standard_normal(SHAPE).astype(np.float32)
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[10:20, 8:18, 6:16] = 2
    seg[12:17, 10:15, 8:13] = 1
    seg[14:16, 12:14, 10:12] = 4
    return prediction, truth, seg


def _organisers(
    prediction: np.ndarray, truth: np.ndarray, seg: np.ndarray, dtype: torch.dtype
) -> tuple[float, ...]:
    """The organisers' compute_metrics, written from its description, calling torchmetrics itself."""
    tm = pytest.importorskip("torchmetrics")

    def normalise(volume: np.ndarray) -> torch.Tensor:
        low, high = np.percentile(volume, [0.5, 99.5])
        low = max(low, 0)
        clipped = torch.from_numpy(volume.astype(np.float64)).clip(low, high)
        return ((clipped - low) / (high - low)).to(dtype)[None, None]

    pred, real = normalise(prediction), normalise(truth)
    mask = torch.from_numpy((seg > 0).astype(np.int64))[None, None]
    ssim = tm.image.StructuralSimilarityIndexMeasure()
    return float(ssim(pred * mask, real * mask)), float(ssim(pred * (1 - mask), real * (1 - mask)))


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_torchmetrics_in_float64(seed: int) -> None:
    prediction, truth, seg = _case(seed)
    ours = brasyn_scores(prediction, truth, seg)
    tumour, rest = _organisers(prediction, truth, seg, torch.float64)
    assert ours.tumor == pytest.approx(tumour, abs=1e-4)
    assert ours.non_tumor == pytest.approx(rest, abs=1e-4)
    assert 0.2 < ours.non_tumor < 0.999 and ours.tumor > ours.non_tumor  # a real, imperfect score


def _oracle_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM from its definition in float64: Gaussian (sigma 1.5, radius 5) local moments after mirroring."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    blur = lambda v: gaussian_filter(v, 1.5, truncate=3.5, mode="mirror")  # noqa: E731
    data_range = max(np.ptp(a), np.ptp(b))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(blur(a * a) - mu_a**2, 0)
    var_b = np.maximum(blur(b * b) - mu_b**2, 0)
    cov = blur(a * b) - mu_a * mu_b
    return float(
        np.mean(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    )


def test_ssim_matches_a_float64_computation_from_the_definition() -> None:
    a = smooth_blobs(SHAPE, 3).numpy()
    b = np.clip(a + 0.05 * np.random.default_rng(0).standard_normal(SHAPE), 0, 1).astype(np.float32)
    ours = ssim_gaussian(torch.from_numpy(b), torch.from_numpy(a))
    assert ours == pytest.approx(_oracle_ssim(b, a), abs=1e-5)
    assert ssim_gaussian(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(1.0, abs=1e-6)


def test_the_crop_variant_is_torchmetrics_up_to_1_4_1() -> None:
    tm = pytest.importorskip("torchmetrics")
    a = torch.from_numpy(smooth_blobs(SHAPE, 4).numpy()).double()
    b = (a + 0.05 * torch.from_numpy(np.random.default_rng(1).standard_normal(SHAPE))).clamp(0, 1)
    _, full = tm.functional.image.structural_similarity_index_measure(
        b[None, None], a[None, None], return_full_image=True
    )
    cropped = float(full[..., 5:-5, 5:-5, 5:-5].mean())
    assert ssim_gaussian(b.float(), a.float(), crop=True) == pytest.approx(cropped, abs=1e-5)


@pytest.mark.parametrize("labels", [(1, 2, 4), (1, 2, 3)], ids=["BraTS-2018-2021", "BraTS-2023+"])
def test_every_label_above_zero_is_tumour_in_both_conventions(labels: tuple[int, int, int]) -> None:
    prediction, truth, seg = _case(5)
    relabelled = seg.copy()
    for old, new in zip((1, 2, 4), labels, strict=True):
        relabelled[seg == old] = new
    binary = (seg > 0).astype(np.uint8)
    assert brasyn_scores(prediction, truth, relabelled) == brasyn_scores(prediction, truth, binary)


def test_normalisation_raises_a_negative_lower_bound_to_zero() -> None:
    volume = np.linspace(-100.0, 900.0, 1000).reshape(10, 10, 10)
    values = percentile_normalise(volume)
    high = np.percentile(volume, 99.5)
    assert float(values.min()) == 0.0 and float(values.max()) == pytest.approx(1.0)
    assert float(values[5, 0, 0]) == pytest.approx(float(np.float32(volume[5, 0, 0])) / high, rel=1e-6)


def test_unusable_inputs_raise() -> None:
    prediction, truth, seg = _case(1)
    with pytest.raises(ShapeError, match="share one shape"):
        brasyn_scores(prediction[:-1], truth, seg)
    with pytest.raises(ShapeError, match="nothing to normalise"):
        brasyn_scores(np.zeros(SHAPE, dtype=np.float32), truth, seg)
