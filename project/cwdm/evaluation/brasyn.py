"""The BraSyn organisers' image score: SSIM inside and outside the tumour.

Reproduces ``compute_metrics`` of the organisers' ``ssim.py`` (github.com/hongweilibran/BraSyn, last
changed in commit ecdaf00, July 2024), with the SSIM of torchmetrics' ``StructuralSimilarityIndexMeasure``
at its defaults (as of torchmetrics 1.4.2 and later, including 1.9.0):

1. The prediction and the ground truth are each normalised on their own: clipped to their own 0.5 and
   99.5 percentiles (``np.percentile``, linear, over the whole volume, background included), a negative
   lower bound raised to 0, then scaled to [0, 1] (float32).
2. Tumour = ``seg > 0`` (labels {1, 2, 4} before 2023, {1, 2, 3} since: any label counts).
3. SSIM of ``prediction * tumour`` against ``truth * tumour``, and of ``prediction * (1 - tumour)`` against
   ``truth * (1 - tumour)``: an 11-voxel Gaussian window (sigma 1.5) applied after reflecting 5 voxels at
   every border, population moments, K1 = 0.01, K2 = 0.03, the data range ``max(range(a), range(b))`` of
   the two masked volumes, the mean over every voxel of the volume. Voxels outside the region are zero in
   both volumes and score exactly 1, so the tumour SSIM of a good synthesis is close to 1.

Why not call torchmetrics: it convolves with the full 11 x 11 x 11 kernel, about 70 GFLOP per call on a
BraTS volume (about a minute in float32 on two CPU cores; in float64, the dtype the published script
gets from float64 files, its unfolded convolution asks for hundreds of GB). The Gaussian is separable, so
here it is three 11-tap passes, in float32 as the organisers' script computes: a few seconds a volume.
``tests/test_brasyn.py`` checks the numbers against torchmetrics itself and against a float64
computation. torchmetrics up to 1.4.1 averaged only the voxels 5 or more from every border (``crop=True``
here reproduces it: about 0.01 higher on a BraTS volume); which version the organisers ran is not
published, so the current one is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ShapeError

#: torchmetrics' defaults: sigma 1.5, a window of ``int(3.5 * sigma + 0.5) * 2 + 1`` = 11 voxels.
SIGMA = 1.5
RADIUS = int(3.5 * SIGMA + 0.5)
K1, K2 = 0.01, 0.03
#: The organisers' normalisation percentiles.
PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class BraSynScores:
    """The organisers' two SSIM numbers of one prediction.

    Attributes:
        tumor: SSIM of the tumour region (everything else zeroed in both volumes).
        non_tumor: SSIM of the rest (the tumour zeroed in both volumes).
    """

    tumor: float
    non_tumor: float


def percentile_normalise(volume: np.ndarray) -> torch.Tensor:
    """Clip to the volume's own 0.5/99.5 percentiles (lower bound at least 0), scale to [0, 1], float32.

    As the organisers' script: the bounds come from ``np.percentile`` of the values as stored; the
    clip and the scaling run in float32. A volume whose two percentiles coincide gives NaN there too,
    so it is refused here instead.

    Raises:
        ShapeError: the 0.5 and 99.5 percentiles are equal (an all-constant volume, say).
    """
    low, high = (float(v) for v in np.percentile(volume, PERCENTILES))
    low = max(low, 0.0)
    if not high > low:
        raise ShapeError(
            f"the 0.5 and 99.5 percentiles of the volume are both {low:g}: nothing to normalise "
            "(the organisers' formula divides by their difference)"
        )
    values = torch.from_numpy(np.asarray(volume, dtype=np.float32))
    return (values.clamp(low, high) - low) / (high - low)


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    offsets = torch.arange(-RADIUS, RADIUS + 1, dtype=dtype)
    weights = torch.exp(-((offsets / SIGMA) ** 2) / 2)
    return weights / weights.sum()


def ssim_gaussian(a: torch.Tensor, b: torch.Tensor, *, crop: bool = False) -> float:
    """SSIM of two 3D volumes as torchmetrics computes it at its defaults (see the module docstring).

    Args:
        a: ``(X, Y, Z)`` prediction (torchmetrics' ``preds``).
        b: ``(X, Y, Z)`` ground truth (``target``), same shape and dtype.
        crop: Average only voxels at least 5 from every border (torchmetrics 1.4.1 and earlier).

    Raises:
        ShapeError: the shapes differ, or an axis is not longer than the 5-voxel reflection.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ShapeError(f"SSIM needs two 3D volumes of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape) <= RADIUS:
        raise ShapeError(f"SSIM needs every axis longer than {RADIUS} voxels, got {tuple(a.shape)}")
    data_range = max(float(a.max() - a.min()), float(b.max() - b.min()))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    stack = torch.stack([a, b, a * a, b * b, a * b])[None]  # (1, 5, X, Y, Z)
    stack = F.pad(stack, (RADIUS,) * 6, mode="reflect")
    window = _gaussian_window(a.dtype)
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = window.numel()
        kernel = window.reshape(1, 1, *shape).expand(5, 1, *shape).contiguous()
        stack = F.conv3d(stack, kernel, groups=5)
    mu_a, mu_b, e_aa, e_bb, e_ab = stack[0]
    var_a = torch.clamp(e_aa - mu_a * mu_a, min=0.0)
    var_b = torch.clamp(e_bb - mu_b * mu_b, min=0.0)
    cov = e_ab - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    if crop:
        index = index[RADIUS:-RADIUS, RADIUS:-RADIUS, RADIUS:-RADIUS]
    return float(index.mean())


def brasyn_scores(
    prediction: np.ndarray, truth: np.ndarray, seg: np.ndarray, *, crop: bool = False
) -> BraSynScores:
    """The organisers' SSIM inside and outside the tumour.

    Args:
        prediction: ``(X, Y, Z)`` the synthesised volume as written (any scale: it is normalised here).
        truth: ``(X, Y, Z)`` the real sequence, raw values.
        seg: ``(X, Y, Z)`` the segmentation labels; tumour = any label above 0.
        crop: See :func:`ssim_gaussian`.

    Raises:
        ShapeError: the shapes differ, or a volume cannot be normalised.
    """
    if not prediction.shape == truth.shape == seg.shape:
        raise ShapeError(
            f"prediction {prediction.shape}, ground truth {truth.shape} and segmentation {seg.shape} "
            "must share one shape"
        )
    pred, real = percentile_normalise(prediction), percentile_normalise(truth)
    tumour = torch.from_numpy(np.asarray(seg) > 0).to(torch.float32)
    rest = 1.0 - tumour
    return BraSynScores(
        tumor=ssim_gaussian(pred * tumour, real * tumour, crop=crop),
        non_tumor=ssim_gaussian(pred * rest, real * rest, crop=crop),
    )
