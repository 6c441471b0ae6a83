"""Per-label Dice and HD95 (cwdm.evaluation.labelwise) against answers known in closed form, a brute-force
nearest-neighbour computation written from the definition, and MONAI's Hausdorff distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from cwdm.evaluation.labelwise import (
    BRATS_2023_EMPTY_HD95,
    LABEL_COLUMNS,
    LabelScores,
    grid_diagonal,
    hd95,
    label_scores,
    surface_distances,
)

#: MONAI 1.5+ warns about an argument its own Hausdorff distance passes internally.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")

SHAPE = (24, 22, 20)
GRID = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij"))


def ellipsoid(centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    offsets = (GRID - np.array(centre)[:, None, None, None]) / np.array(radii)[:, None, None, None]
    return (offsets**2).sum(0) <= 1


def random_masks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unlike masks: an ellipsoid with a satellite (which may touch the volume's edge), and another."""
    rng = np.random.default_rng(seed)
    a = ellipsoid(tuple(rng.uniform(6, 16, 3)), tuple(rng.uniform(2, 7, 3)))
    a |= ellipsoid(tuple(rng.uniform(0, 20, 3)), tuple(rng.uniform(1, 3, 3)))
    b = ellipsoid(tuple(rng.uniform(6, 16, 3)), tuple(rng.uniform(2, 7, 3)))
    return a, b


# -- an implementation written from the definition, sharing nothing with the module ------------------
def brute_surface(mask: np.ndarray) -> np.ndarray:
    """Coordinates of the voxels with a face neighbour outside the mask (outside the volume counts)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(3):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner).astype(np.float64)


def brute_directed(source: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    a, b = brute_surface(source) * spacing, brute_surface(target) * spacing
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(axis=1)


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    pooled = np.concatenate([brute_directed(a, b, spacing), brute_directed(b, a, spacing)])
    return float(np.percentile(pooled, 95))


# -- closed forms -------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [1, 4])
def test_two_parallel_planes_are_their_distance_apart(axis: int, shift: int) -> None:
    """Every voxel of a one-voxel plane is on its surface, and its nearest partner is straight across."""
    spacing = (2.0, 1.0, 0.5)
    a, b = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    index = [slice(None)] * 3
    index[axis] = 5
    a[tuple(index)] = True
    index[axis] = 5 + shift
    b[tuple(index)] = True
    assert hd95(a, b, spacing) == pytest.approx(shift * spacing[axis], abs=1e-12)
    assert hd95(a, b) == pytest.approx(shift, abs=1e-12)  # no spacing: voxels


def test_two_voxels_are_their_euclidean_distance_apart() -> None:
    a, b = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    a[2, 3, 1] = True
    b[5, 7, 13] = True  # offsets 3, 4, 12: distance 13
    assert hd95(a, b) == 13.0
    assert hd95(a, b, (2.0, 2.0, 2.0)) == 26.0


def test_a_mask_against_itself_is_zero_apart() -> None:
    a, _ = random_masks(3)
    assert hd95(a, a) == 0.0
    assert label_scores(a.astype(np.uint8), a.astype(np.uint8))["hd95_label1"] == 0.0


def test_the_grid_diagonal_of_brats() -> None:
    assert grid_diagonal((240, 240, 155)) == pytest.approx(373.13, abs=0.005)
    assert grid_diagonal((2, 3, 6), (1.0, 2.0, 0.5)) == pytest.approx(math.sqrt(4 + 36 + 9))


# -- the brute force and MONAI --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_hd95_equals_the_brute_force_computation(seed: int) -> None:
    a, b = random_masks(seed)
    spacing = (1.0, 1.5, 0.75)
    assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing), abs=1e-9)
    assert sorted(surface_distances(a, b, spacing)) == pytest.approx(
        sorted(brute_directed(a, b, spacing)), abs=1e-9
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("percentile", [50, 95, 100])
def test_directed_distances_agree_with_monai(seed: int, percentile: int) -> None:
    """MONAI's directed Hausdorff distance is a percentile of the same directed distances."""
    a, b = random_masks(seed)
    spacing = (1.0, 1.5, 0.75)
    theirs = compute_hausdorff_distance(
        torch.from_numpy(a)[None, None].float(),
        torch.from_numpy(b)[None, None].float(),
        percentile=percentile,
        directed=True,
        spacing=spacing,
    )
    ours = np.percentile(surface_distances(a, b, spacing), percentile)
    assert ours == pytest.approx(float(theirs), rel=1e-5)


def test_pooled_percentile_is_not_the_larger_directed_one() -> None:
    """The organisers' HD95 pools both directions (medpy); MONAI's symmetric HD95 takes the larger of the
    two directed ones. On unlike masks the two differ, and ours is the pooled one."""
    a, b = random_masks(1)
    monai_symmetric = float(
        compute_hausdorff_distance(
            torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float(), percentile=95
        )
    )
    assert hd95(a, b) == pytest.approx(brute_hd95(a, b, (1.0, 1.0, 1.0)))
    assert hd95(a, b) != pytest.approx(monai_symmetric)


# -- labels and the empty rules -------------------------------------------------------------------------
def test_each_label_is_scored_on_its_own() -> None:
    truth = np.zeros(SHAPE, np.uint8)
    truth[ellipsoid((12, 11, 10), (7, 6, 6))] = 2
    truth[ellipsoid((12, 11, 10), (4, 3, 3))] = 1
    truth[ellipsoid((12, 11, 10), (2, 2, 2))] = 3
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[ellipsoid((13, 11, 10), (7, 6, 5))] = 2
    prediction[ellipsoid((12, 12, 10), (4, 3, 3))] = 1  # label 3 missed: its voxels became label 1
    scores = label_scores(prediction, truth, spacing=(1.0, 1.0, 2.0))
    assert list(scores) == list(LABEL_COLUMNS)
    for label in (1, 2):
        p, t = prediction == label, truth == label
        assert scores[f"dice_label{label}"] == 2 * np.sum(p & t) / (np.sum(p) + np.sum(t))
        assert scores[f"hd95_label{label}"] == pytest.approx(brute_hd95(p, t, (1.0, 1.0, 2.0)))
    assert scores["dice_label3"] == 0.0 and math.isnan(scores["hd95_label3"])


@pytest.mark.parametrize(
    ("predicted", "true", "expected"),
    [
        (False, False, (1.0, 0.0)),  # both empty: perfect
        (False, True, (0.0, math.nan)),  # a label missed
        (True, False, (0.0, math.nan)),  # a label invented
    ],
)
def test_the_rules_for_empty_labels(predicted: bool, true: bool, expected: tuple[float, float]) -> None:
    blob = ellipsoid((10, 10, 10), (3, 3, 3))
    prediction = np.where(blob & predicted, 3, 0).astype(np.uint8)
    truth = np.where(blob & true, 3, 0).astype(np.uint8)
    scores = label_scores(prediction, truth)
    assert scores["dice_label3"] == expected[0]
    assert scores["hd95_label3"] == pytest.approx(expected[1], nan_ok=True)
    penalised = label_scores(prediction, truth, one_empty_hd95=BRATS_2023_EMPTY_HD95)["hd95_label3"]
    assert penalised == (374.0 if predicted != true else 0.0)
    # labels absent on both sides everywhere: 1 and 0
    assert (scores["dice_label1"], scores["hd95_label1"]) == (1.0, 0.0)


def test_the_extra_scorer_uses_its_spacing_not_the_affine() -> None:
    a, b = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    a[:, :, 4], b[:, :, 7] = 2, 2  # planes three voxels apart along the last axis
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    assert LabelScores()(a, b, affine)["hd95_label2"] == 3.0  # voxels, as the organisers' script
    assert LabelScores(spacing=(1.0, 1.0, 2.0))(a, b, affine)["hd95_label2"] == 6.0


def test_masks_off_one_grid_are_refused() -> None:
    with pytest.raises(ValueError, match="differs from the truth"):
        label_scores(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        hd95(np.zeros(SHAPE, bool), ellipsoid((5, 5, 5), (2, 2, 2)))
