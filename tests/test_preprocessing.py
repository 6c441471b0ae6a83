"""The fast percentile clip and scaling against the published float64 ``np.quantile`` path (the oracle)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cwdm.cases.preprocessing import CLIP_QUANTILES, clip_percentiles, normalise

from .conftest import EXAMPLES_DIR


def published_normalise(data: np.ndarray) -> np.ndarray:
    """The float64 path as it was before selection replaced the quantile: the oracle."""
    low, high = np.quantile(data, CLIP_QUANTILES)
    clipped = np.clip(data, low, high)
    span = clipped.max() - clipped.min()
    if span <= 0:
        return np.zeros(data.shape, dtype=np.float32)
    return ((clipped - clipped.min()) / span).astype(np.float32)


#: One shipped case per sequence it holds, three of them (nine real volumes, every sequence).
SHIPPED = sorted(
    path
    for case in ("BraTS-GLI-99904-000", "BraTS-GLI-00001-000", "BraTS-GLI-99901-000")
    for path in (EXAMPLES_DIR / "pseudo_validation" / case).glob("*.nii.gz")
    if not path.name.endswith("-seg.nii.gz")
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_volumes_normalise_bit_for_bit_as_published(path) -> None:
    data = nib.load(path).get_fdata(dtype=np.float64)
    low, high = clip_percentiles(data)
    oracle_low, oracle_high = np.quantile(data, CLIP_QUANTILES)
    assert (low, high) == (float(oracle_low), float(oracle_high))
    fast, oracle = normalise(data), published_normalise(data)
    assert fast.dtype == np.float32
    assert fast.tobytes() == oracle.tobytes()


@pytest.mark.parametrize("size", [1, 2, 3, 999, 1000, 1001, 1002, 4096, 12345])
@pytest.mark.parametrize("kind", ["normal", "integers", "ties", "sparse"])
def test_percentiles_equal_numpy_quantile(size: int, kind: str) -> None:
    rng = np.random.default_rng(size)
    data = {
        "normal": rng.normal(size=size) * 1e3,
        "integers": rng.integers(-50, 3000, size=size).astype(np.float64),
        "ties": rng.integers(0, 3, size=size).astype(np.float64),
        "sparse": np.where(rng.random(size) < 0.8, 0.0, rng.gamma(2.0, 300.0, size=size)),
    }[kind]
    assert clip_percentiles(data) == tuple(float(q) for q in np.quantile(data, CLIP_QUANTILES))
    assert normalise(data).tobytes() == published_normalise(data).tobytes()


def test_input_is_left_untouched_and_constant_volume_gives_zeros() -> None:
    data = np.random.default_rng(0).normal(size=(9, 8, 7))
    before = data.copy()
    normalise(data)
    assert np.array_equal(data, before)
    assert not normalise(np.full((4, 4, 4), 7.0)).any()


def test_other_precisions_keep_numpys_arithmetic() -> None:
    data = np.random.default_rng(1).normal(size=(10, 10, 10)).astype(np.float32)
    assert normalise(data).tobytes() == published_normalise(data).tobytes()
