"""BraTS label conventions, regions and Dice, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import dice as scipy_dice_dissimilarity

from cwdm.errors import ConfigError
from cwdm.segmentation.labels import (
    CONVENTIONS,
    LabelError,
    Structure,
    convention_mapping,
    detect_convention,
    dice,
    from_canonical,
    labels_from_regions,
    mapping_from_structures,
    region_dice,
    region_mask,
    to_canonical,
)

# The regions as the BraTS evaluation defines them, written out per convention (label values).
REGION_LABELS = {
    "brats2021": {"wt": {1, 2, 4}, "tc": {1, 4}, "et": {4}},
    "brats2023": {"wt": {1, 2, 3}, "tc": {1, 3}, "et": {3}},
    "brats2024": {"wt": {1, 2, 3}, "tc": {1, 3}, "et": {3}},  # 4 (resection cavity) in no region
}


def random_labels(convention: str, seed: int, shape=(12, 10, 8)) -> np.ndarray:
    values = [0, *sorted(CONVENTIONS[convention].values())]
    rng = np.random.default_rng(seed)
    return rng.choice(values, size=shape, p=[0.6] + [0.4 / (len(values) - 1)] * (len(values) - 1))


def oracle_dice(a: np.ndarray, b: np.ndarray) -> float:
    """SciPy's Dice dissimilarity (1 - Dice) of two non-empty boolean vectors."""
    return 1.0 - scipy_dice_dissimilarity(a.ravel(), b.ravel())


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({0, 1, 2, 4}, "brats2021"),
        ({0, 4}, "brats2021"),
        ({0, 1, 2, 3}, "brats2023"),
        ({0, 1, 2}, "brats2023"),
        ({0}, "brats2023"),
        ({0, 1, 2, 3, 4}, "brats2024"),
    ],
)
def test_convention_is_recognised_by_its_values(values: set[int], expected: str) -> None:
    labels = np.array(sorted(values) * 3, dtype=np.uint8)
    assert detect_convention(labels) == expected


def test_values_outside_every_convention_are_refused() -> None:
    with pytest.raises(LabelError, match=r"\[0, 1, 5\]"):
        detect_convention(np.array([0, 1, 5]))


@pytest.mark.parametrize("convention", ["brats2021", "brats2023", "brats2024"])
@pytest.mark.parametrize("region", ["wt", "tc", "et"])
def test_regions_match_the_brats_definition_in_every_convention(convention: str, region: str) -> None:
    labels = random_labels(convention, seed=1)
    canonical = to_canonical(labels, convention_mapping(convention), "test")
    expected = np.isin(labels, sorted(REGION_LABELS[convention][region]))
    np.testing.assert_array_equal(region_mask(canonical, region), expected)


@pytest.mark.parametrize("convention", ["brats2021", "brats2023", "brats2024"])
def test_writing_back_in_the_truths_convention_restores_its_labels(convention: str) -> None:
    labels = random_labels(convention, seed=2)
    canonical = to_canonical(labels, convention_mapping(convention), "test")
    np.testing.assert_array_equal(from_canonical(canonical, convention), labels)


def test_a_cavity_has_no_label_in_the_older_conventions() -> None:
    canonical = np.array([0, 1, 2, 3, 4], dtype=np.uint8)
    np.testing.assert_array_equal(from_canonical(canonical, "brats2021"), [0, 1, 2, 4, 0])
    np.testing.assert_array_equal(from_canonical(canonical, "brats2023"), [0, 1, 2, 3, 0])


def test_unknown_labels_are_refused_naming_the_volume() -> None:
    with pytest.raises(LabelError, match="my segmenter holds labels"):
        to_canonical(np.array([0, 1, 7]), convention_mapping("brats2023"), "my segmenter")
    with pytest.raises(LabelError):
        to_canonical(np.array([0.0, 1.5]), convention_mapping("brats2023"), "fractional")


def test_a_declared_mapping_relabels_as_declared() -> None:
    # nnU-Net's BraTS 2021 conversion: 1 oedema, 2 necrosis, 3 enhancing.
    mapping = mapping_from_structures({1: "ED", 2: "NCR", 3: "ET"})
    labels = to_canonical(np.array([0, 1, 2, 3]), mapping, "nnU-Net")
    np.testing.assert_array_equal(labels, [0, 2, 1, 3])
    with pytest.raises(ConfigError, match="ET is named by two labels"):
        mapping_from_structures({1: "ET", 2: "ET"})
    with pytest.raises(ConfigError, match="unknown structure"):
        mapping_from_structures({1: "tumour"})


@pytest.mark.parametrize("seed", range(5))
def test_dice_equals_scipys(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.random((10, 9, 8)) < 0.3, rng.random((10, 9, 8)) < 0.4
    assert dice(a, b) == pytest.approx(oracle_dice(a, b), abs=1e-12)


def test_empty_regions_follow_the_brats_rule() -> None:
    empty, some = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    some[1, 1, 1] = True
    assert dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice(some, empty) == 0.0  # false positive where the truth has no such region
    assert dice(empty, some) == 0.0  # missed it


@pytest.mark.parametrize("convention", ["brats2021", "brats2023"])
def test_region_dice_of_two_segmentations(convention: str) -> None:
    truth, prediction = random_labels(convention, 3), random_labels(convention, 4)
    mapping = convention_mapping(convention)
    scores = region_dice(to_canonical(prediction, mapping, "p"), to_canonical(truth, mapping, "t"))
    for region, value in (("wt", scores.wt), ("tc", scores.tc), ("et", scores.et)):
        wanted = sorted(REGION_LABELS[convention][region])
        assert value == pytest.approx(oracle_dice(np.isin(prediction, wanted), np.isin(truth, wanted)))


def test_regions_painted_outside_in_nest() -> None:
    rng = np.random.default_rng(5)
    wt, tc, et = (rng.random((6, 6, 6)) < p for p in (0.5, 0.3, 0.1))
    labels = labels_from_regions(wt, tc, et)
    np.testing.assert_array_equal(region_mask(labels, "et"), et)
    np.testing.assert_array_equal(region_mask(labels, "tc"), tc | et)
    np.testing.assert_array_equal(region_mask(labels, "wt"), wt | tc | et)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert Structure.ED.value == "ED"


def test_official_metrics_global_dice_agrees_with_ours(tmp_path) -> None:
    """The official BraTS metrics (optional, AGPL) as the oracle of our Dice, where installed."""
    pytest.importorskip("panoptica")
    from cwdm.evaluation.lesionwise import OfficialMetrics

    metrics = OfficialMetrics()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for seed in range(3):
        rng = np.random.default_rng(seed)
        truth = np.zeros((30, 30, 30), np.uint8)
        prediction = np.zeros_like(truth)
        for labels, shift in ((truth, 0), (prediction, int(rng.integers(1, 3)))):
            labels[8 + shift : 20, 8:20, 8:20] = 2
            labels[10:16, 10 + shift : 16, 10:16] = 1
            labels[16:19, 16:19, 16 - shift : 19] = 3
        results = metrics.group_results(prediction, truth, affine)
        ours = region_dice(prediction, truth)
        for region in ("wt", "tc", "et"):
            assert float(results[region]["global_bin_dsc"]) == pytest.approx(getattr(ours, region), abs=1e-9)
