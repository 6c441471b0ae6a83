"""Image similarity of a synthesised sequence against the ground truth: MSE, PSNR and SSIM, by region.

The protocol follows the cWDM paper: the ground truth is normalised exactly as in training
(:func:`cwdm.cases.preprocessing.normalise`: 0.1/99.9 percentile clip, min-max scaled to [0, 1]); a
prediction is scored as written (the pipeline writes it in [0, 1]). The regions:

- ``full``: the complete volume (the paper's Table 1);
- ``crop``: the centre crop that drops :data:`CROP_MARGIN` voxels from each side of the first two axes,
  224 x 224 x 155 on the BraTS grid (the paper's Table 2, "155 x 224 x 224");
- ``brain``: the voxels where the (raw) ground truth is not 0, the skull-stripped head;
- ``tumor``: the voxels where the case's segmentation is above 0 (when the case has one).

In ``brain`` and ``tumor`` MSE and PSNR are over the region's voxels, and SSIM is the mean of the
full volume's SSIM map over the region's voxels (those whose window lies inside the volume).

PSNR uses a data range of 1. SSIM is scikit-image's ``structural_similarity`` on the 3D volume, computed
in float64 with the settings in :data:`SSIM_SETTINGS` (7 x 7 x 7 uniform window, K1 = 0.01, K2 = 0.03,
sample covariance, data range 1, mean over the voxels whose window lies inside the volume). They are
passed explicitly so that a change of the library's defaults cannot change our numbers. The organisers'
own SSIM is :mod:`cwdm.evaluation.brasyn`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

from ..errors import ShapeError
from ..voxel_error import mse, psnr, psnr_of

#: Voxels dropped from each side of the first two axes for the ``crop`` region (240 -> 224 on BraTS).
CROP_MARGIN = 8
#: The regions, in report order (``brain`` and ``tumor`` only where their masks are known).
REGIONS = ("full", "crop", "brain", "tumor")
#: The metrics, in report order.
METRICS = ("mse", "psnr", "ssim")
#: Keyword arguments of ``skimage.metrics.structural_similarity`` (besides the two volumes).
SSIM_SETTINGS = {
    "data_range": 1.0,
    "win_size": 7,
    "gaussian_weights": False,
    "use_sample_covariance": True,
    "K1": 0.01,
    "K2": 0.03,
}
#: Voxels at each border whose SSIM window reaches outside the volume (left out of every SSIM mean).
_SSIM_BORDER = (SSIM_SETTINGS["win_size"] - 1) // 2


# -- the metrics ------------------------------------------------------------------------------------
def ssim(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean structural similarity of two 3D volumes (scikit-image, :data:`SSIM_SETTINGS`, float64).

    Raises:
        ShapeError: the volumes differ in shape or an axis is shorter than the 7-voxel window.
    """
    return ssim_map(prediction, truth)[0]


def ssim_map(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`ssim` and the voxel-wise SSIM map it averages (over the voxels away from the border).

    Raises:
        ShapeError: as :func:`ssim`.
    """
    if prediction.shape != truth.shape:
        raise ShapeError(f"SSIM needs equal shapes, got {prediction.shape} and {truth.shape}")
    if min(truth.shape) < SSIM_SETTINGS["win_size"]:
        raise ShapeError(
            f"SSIM needs every axis to be at least {SSIM_SETTINGS['win_size']} voxels, got {truth.shape}"
        )
    mean, full = structural_similarity(
        np.asarray(truth, dtype=np.float64),
        np.asarray(prediction, dtype=np.float64),
        full=True,
        **SSIM_SETTINGS,
    )
    return float(mean), full


def centre_crop(volume: np.ndarray, margin: int = CROP_MARGIN) -> np.ndarray:
    """Drop ``margin`` voxels from each side of the first two axes (BraTS: 240x240x155 -> 224x224x155).

    Raises:
        ShapeError: an axis is too short to keep any voxel.
    """
    if volume.ndim != 3 or min(volume.shape[:2]) <= 2 * margin:
        raise ShapeError(
            f"the centre crop removes {margin} voxels from each side of the first two axes; "
            f"shape {volume.shape} is too small for it"
        )
    return volume[margin:-margin, margin:-margin, :]


@dataclass(frozen=True)
class Scores:
    """The three metrics on one region.

    Attributes:
        mse: Mean squared error (intensities in [0, 1]).
        psnr: Peak signal-to-noise ratio in dB, data range 1.
        ssim: Mean SSIM (:data:`SSIM_SETTINGS`).
    """

    mse: float
    psnr: float
    ssim: float


def score_volumes(
    prediction: np.ndarray,
    truth: np.ndarray,
    brain: np.ndarray | None = None,
    tumour: np.ndarray | None = None,
) -> dict[str, Scores]:
    """Score a prediction against an already normalised ground truth, region by region.

    Args:
        prediction: ``(X, Y, Z)`` predicted intensities, as written.
        truth: ``(X, Y, Z)`` ground truth in [0, 1] (:func:`cwdm.cases.preprocessing.normalise`).
        brain: ``(X, Y, Z)`` bool mask of the ``brain`` region, if known.
        tumour: ``(X, Y, Z)`` bool mask of the ``tumor`` region, if known.

    Returns:
        :class:`Scores` by region name: ``full`` and ``crop``, plus ``brain`` and ``tumor`` for the
        masks given that hold at least one voxel away from the border.

    Raises:
        ShapeError: the shapes differ or are too small for the crop or the SSIM window.
    """
    for name, other in (("ground truth", truth), ("brain mask", brain), ("tumour mask", tumour)):
        if other is not None and other.shape != prediction.shape:
            raise ShapeError(
                f"prediction shape {_shape(prediction.shape)} differs from the {name}'s {_shape(other.shape)}"
            )
    full_ssim, local = ssim_map(prediction, truth)
    scores = {"full": Scores(mse(prediction, truth), psnr(prediction, truth), full_ssim)}
    cropped = centre_crop(prediction), centre_crop(truth)
    scores["crop"] = Scores(mse(*cropped), psnr(*cropped), ssim(*cropped))
    inside = np.zeros(truth.shape, dtype=bool)
    inside[tuple(slice(_SSIM_BORDER, n - _SSIM_BORDER) for n in truth.shape)] = True
    for name, mask in (("brain", brain), ("tumor", tumour)):
        if mask is None or not (mask & inside).any():
            continue
        error = mse(prediction[mask], truth[mask])
        scores[name] = Scores(error, psnr_of(error), float(local[mask & inside].mean()))
    return scores


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)
