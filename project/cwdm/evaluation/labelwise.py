"""Dice and HD95 of each raw tumour label: the segmentation metrics of the BraSyn 2025 organisers.

The 2025 tutorial's ``get_segmentation_metric.py`` (github.com/hongweilibran/BraSyn_tutorial, added in
commit ab43950, July 2025) scores the labels 1, 2 and 3 one at a time (``truth == label`` against
``prediction == label``), not the regions WT/TC/ET of the BraTS ranking (:mod:`cwdm.segmentation.labels`).
Its rules, reproduced here:

- both masks empty: Dice 1, HD95 0;
- exactly one empty (a label the segmentation misses, or one it invents): Dice 0 and HD95 undefined
  (the script writes ``NaN``; here :data:`math.nan` by default, an empty CSV cell, left out of means).
  ``one_empty_hd95`` puts a number there instead: the BraTS 2023 metrics give 374 (their ``inf``
  replaced by 374, :data:`BRATS_2023_EMPTY_HD95`), the diagonal of the 240 x 240 x 155 BraTS grid is
  373.13 voxels (:func:`grid_diagonal`);
- otherwise medpy's ``dc`` and ``hd95`` at medpy's defaults: Dice ``2|A and B| / (|A| + |B|)`` (the
  same function, and the same empty rule, as the region Dice of :mod:`cwdm.segmentation.labels`); the
  surface of a mask is its voxels with a face neighbour outside it (erosion by the 6-connected cross,
  the volume's outside counting as outside); HD95 is the 95th percentile (``np.percentile``, linear)
  of the distances from every surface voxel of each mask to the nearest surface voxel of the other,
  both directions pooled. The script passes no voxel spacing, so distances are in voxels (millimetres
  on the 1 mm BraTS grid); ``spacing`` gives them in millimetres on other grids.

The numbers are computed from our own code (SciPy's Euclidean distance transform on the masks' bounding
box, which gives the same distances as on the whole volume); ``tests/test_labelwise.py`` checks them
against geometries whose answer is known, against a brute-force nearest-neighbour computation and
against MONAI's ``compute_hausdorff_distance``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from ..segmentation.labels import dice

#: The labels scored: the BraTS 2023 numbering of the BraSyn data (1 NCR or NETC, 2 SNFH/oedema, 3 ET),
#: which the package's canonical labels share.
LABELS = (1, 2, 3)
#: The CSV columns, in the order of the tutorial's CSV (Dice_label1, HD95_label1, ...).
LABEL_COLUMNS = tuple(f"{metric}_label{label}" for label in LABELS for metric in ("dice", "hd95"))
#: Titles of the columns in printed tables.
LABEL_TITLES = {
    f"{metric}_label{label}": f"{title} label {label}"
    for label in LABELS
    for metric, title in (("dice", "Dice"), ("hd95", "HD95"))
}
#: The HD95 that the BraTS 2023 lesion-wise metrics give where one side is empty (github.com/rachitsaluja/
#: BraTS-2023-Metrics, eval.py: the ``inf`` of an empty side replaced by 374).
BRATS_2023_EMPTY_HD95 = 374.0
#: The surface: voxels with a face neighbour outside the mask (medpy's default connectivity 1).
_CROSS = generate_binary_structure(3, 1)


def grid_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """The length of a grid's diagonal, ``sqrt(sum((n_i * s_i)^2))``: 373.13 for 240 x 240 x 155 at 1 mm,
    the largest distance two voxels of that grid can be apart (to within one voxel)."""
    steps = np.ones(len(shape)) if spacing is None else np.asarray(spacing, dtype=np.float64)
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * steps) ** 2)))


def _box(masks: Sequence[np.ndarray]) -> tuple[slice, ...]:
    """The bounding box of the union of ``masks``, one voxel wider on each side (within the volume)."""
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        where = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(where[0]) - 1, 0), min(int(where[-1]) + 2, union.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~binary_erosion(mask, structure=_CROSS, border_value=0)


def surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """The distance from every surface voxel of ``source`` to the nearest surface voxel of ``target``.

    Args:
        source, target: Boolean masks of one shape, neither empty.
        spacing: Voxel size per axis (millimetres); ``None``: distances in voxels.

    Returns:
        ``(n,)`` float64 distances, one per surface voxel of ``source``, in no particular order.

    Raises:
        ValueError: the shapes differ, or a mask is empty.
    """
    source, target = np.asarray(source, dtype=bool), np.asarray(target, dtype=bool)
    if source.shape != target.shape:
        raise ValueError(f"masks of shapes {source.shape} and {target.shape}: they must share one grid")
    if not source.any() or not target.any():
        raise ValueError("surface distances need two non-empty masks")
    # Both surfaces lie inside the union's box, so the distance transform there is exact, and the box's
    # one-voxel rim is outside both masks (or is the volume's edge), so the erosion is exact too.
    box = _box([source, target])
    surface_source, surface_target = _surface(source[box]), _surface(target[box])
    distance = distance_transform_edt(~surface_target, sampling=spacing)
    return distance[surface_source]


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """The 95th percentile of the surface distances of both directions pooled (medpy's ``hd95``).

    Raises:
        ValueError: the shapes differ, or a mask is empty.
    """
    both = np.concatenate(
        [surface_distances(prediction, truth, spacing), surface_distances(truth, prediction, spacing)]
    )
    return float(np.percentile(both, 95))


def label_scores(
    prediction: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    one_empty_hd95: float = math.nan,
) -> dict[str, float]:
    """Dice and HD95 of each label of :data:`LABELS`, with the 2025 rules for empty labels.

    Args:
        prediction: Integer label volume (canonical labels: 1 NCR, 2 ED, 3 ET, 4 RC; 4 is not scored).
        truth: The ground truth, same shape and numbering.
        spacing: Voxel size per axis in millimetres; ``None``: HD95 in voxels, as the organisers' script.
        one_empty_hd95: The HD95 of a label present on one side only (see the module).

    Returns:
        By column of :data:`LABEL_COLUMNS`: Dice in [0, 1], HD95 >= 0 (or ``one_empty_hd95``).

    Raises:
        ValueError: the shapes differ.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"segmentation shape {prediction.shape} differs from the truth's {truth.shape}")
    scores = {}
    for label in LABELS:
        predicted, true = prediction == label, truth == label
        present = (bool(predicted.any()), bool(true.any()))
        scores[f"dice_label{label}"] = dice(predicted, true)
        if present == (False, False):
            scores[f"hd95_label{label}"] = 0.0
        elif False in present:
            scores[f"hd95_label{label}"] = float(one_empty_hd95)
        else:
            scores[f"hd95_label{label}"] = hd95(predicted, true, spacing)
    return scores


class LabelScores:
    """:func:`label_scores` as the extra scores of a downstream scorer
    (:class:`cwdm.evaluation.downstream.DownstreamScorer`'s ``extra``).

    Args:
        spacing: As in :func:`label_scores` (``None``: voxels, as the organisers' script).
        one_empty_hd95: As in :func:`label_scores`.
    """

    def __init__(self, spacing: Sequence[float] | None = None, one_empty_hd95: float = math.nan) -> None:
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.one_empty_hd95 = float(one_empty_hd95)

    def __call__(self, prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> dict[str, float]:
        """Scores of canonical label volumes (the truth's affine is not used: the spacing is fixed)."""
        return label_scores(prediction, truth, spacing=self.spacing, one_empty_hd95=self.one_empty_hd95)
