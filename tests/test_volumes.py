"""volumes.py: reading, the training preprocessing (against a float64 oracle), the network layout and
its inverse, post-processing, and atomic writing that keeps the input geometry."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.atomic import remove_partial_files
from cwdm.cases import volumes
from cwdm.cases.preprocessing import (
    BRATS_SHAPE,
    NetworkLayout,
    brain_mask_postprocess,
    normalise,
    threshold_postprocess,
)
from cwdm.cases.volumes import VolumeError, read_volume, same_grid, write_volume_atomic

from .conftest import AFFINE, EXAMPLES_DIR, smooth_blobs, write_volume

REAL_CASE = EXAMPLES_DIR / "pseudo_validation" / "BraTS-GLI-99901-000"
REAL_FILE = REAL_CASE / "BraTS-GLI-99901-000-t1c.nii.gz"


def _quantile_oracle(values: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile from a sorted copy (the definition np.quantile uses by default)."""
    ordered = np.sort(values.astype(np.float64).ravel())
    position = q * (ordered.size - 1)
    low = int(np.floor(position))
    high = min(low + 1, ordered.size - 1)
    return float(ordered[low] + (position - low) * (ordered[high] - ordered[low]))


def _normalise_oracle(values: np.ndarray) -> np.ndarray:
    low, high = _quantile_oracle(values, 0.001), _quantile_oracle(values, 0.999)
    out = np.empty(values.shape, dtype=np.float64)
    for index, value in np.ndenumerate(values.astype(np.float64)):
        out[index] = min(max(value, low), high)
    return (out - out.min()) / (out.max() - out.min())


# -- reading -----------------------------------------------------------------------------------------
def test_read_volume_applies_scaling_and_returns_float64(tmp_path: Path) -> None:
    raw = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 17).astype(np.int16)
    image = nib.Nifti1Image(raw, AFFINE)
    image.header.set_slope_inter(2.5, -3.0)
    nib.save(image, tmp_path / "v.nii.gz")
    volume = read_volume(tmp_path / "v.nii.gz")
    assert volume.data.dtype == np.float64
    np.testing.assert_allclose(volume.data, raw * 2.5 - 3.0)
    np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-5)
    assert volume.shape == (4, 5, 6)


def test_read_volume_accepts_trailing_singleton_axes(tmp_path: Path) -> None:
    write_volume(tmp_path / "v.nii.gz", np.ones((4, 5, 6, 1)))
    assert read_volume(tmp_path / "v.nii.gz").shape == (4, 5, 6)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("4d", "expected a 3D volume"),
        ("nan", "NaN or infinite"),
        ("truncated", "cannot read NIfTI"),
        ("text", "cannot read NIfTI"),
        ("absent", "cannot access the file"),
    ],
)
def test_read_volume_rejects_bad_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.nii.gz"
    if content == "4d":
        write_volume(path, np.ones((4, 5, 6, 2)))
    elif content == "nan":
        data = np.ones((4, 5, 6))
        data[1, 2, 3] = np.nan
        write_volume(path, data)
    elif content == "truncated":
        write_volume(path, smooth_blobs((20, 20, 20), seed=1).numpy())
        path.write_bytes(path.read_bytes()[:600])
    elif content == "text":
        path.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    with pytest.raises(VolumeError, match=match):
        read_volume(path).data.sum()


# -- preprocessing -----------------------------------------------------------------------------------
def test_normalise_matches_float64_oracle_on_synthetic_volume() -> None:
    rng = np.random.default_rng(0)
    data = smooth_blobs((18, 16, 12), seed=3).numpy().astype(np.float64) * 900 + rng.normal(
        0, 5, (18, 16, 12)
    )
    data[0, 0, 0] = 1e5  # an outlier that the 99.9 percentile clip must remove
    before = data.copy()
    result = normalise(data)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, _normalise_oracle(data), atol=1e-6)
    assert result.min() == 0.0 and result.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(data, before)  # input not modified


def test_normalise_matches_oracle_on_a_real_case() -> None:
    data = read_volume(REAL_FILE).data
    result = normalise(data)
    low, high = _quantile_oracle(data, 0.001), _quantile_oracle(data, 0.999)
    expected = (np.clip(data, low, high) - low) / (high - low)  # min/max after the clip are the quantiles
    np.testing.assert_allclose(result, expected, atol=1e-6)
    assert low == 0.0  # BraTS background: the brain mask relies on zeros staying zeros
    assert np.array_equal(result == 0, data <= 0)


def test_normalise_constant_volume_gives_zeros() -> None:
    np.testing.assert_array_equal(normalise(np.full((4, 4, 4), 7.0)), np.zeros((4, 4, 4), np.float32))


# -- network layout ----------------------------------------------------------------------------------
def test_brats_layout_is_the_published_crop_and_pad() -> None:
    layout = NetworkLayout.for_shape(BRATS_SHAPE, 32)
    assert layout.crop == (8, 8, 0) and layout.pad == (0, 0, 5)
    assert layout.network_shape == (224, 224, 160)
    volume = np.random.default_rng(1).random(BRATS_SHAPE)
    net = layout.to_network(volume)
    np.testing.assert_array_equal(net[:, :, :155], volume[8:232, 8:232, :])
    assert not net[:, :, 155:].any()
    back = layout.to_grid(net)
    expected = np.zeros(BRATS_SHAPE)
    expected[8:232, 8:232, :] = volume[8:232, 8:232, :]
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize(
    ("shape", "multiple", "network_shape"),
    [
        ((26, 20, 14), 4, (28, 20, 16)),
        ((240, 240, 155), 4, (224, 224, 156)),
        ((240, 240, 155), 64, (256, 256, 192)),  # 224 does not divide by 64: pad, never crop
        ((17, 33, 8), 16, (32, 48, 16)),
    ],
)
def test_layout_round_trip(shape: tuple[int, int, int], multiple: int, network_shape: tuple) -> None:
    layout = NetworkLayout.for_shape(shape, multiple)
    assert layout.network_shape == network_shape
    assert all(n % multiple == 0 for n in layout.network_shape)
    volume = np.random.default_rng(2).random(shape) + 0.5  # no zeros: every kept voxel must survive
    net = layout.to_network(volume)
    assert net.shape == network_shape
    back = layout.to_grid(net)
    assert back.shape == shape
    kept = tuple(slice(c, n - c) for n, c in zip(shape, layout.crop, strict=True))
    np.testing.assert_array_equal(back[kept], volume[kept])
    assert np.count_nonzero(back) == np.prod([n - 2 * c for n, c in zip(shape, layout.crop, strict=True)])


# -- post-processing ---------------------------------------------------------------------------------
def test_brain_mask_postprocess_clamps_and_masks_without_touching_inputs() -> None:
    volume = np.array([-0.2, 0.03, 0.5, 1.4, 0.7])
    condition = np.array([0.3, 0.0, 0.2, 0.9, 0.0])
    before = volume.copy()
    np.testing.assert_array_equal(brain_mask_postprocess(volume, condition), [0.0, 0.0, 0.5, 1.0, 0.0])
    np.testing.assert_array_equal(volume, before)


def test_threshold_postprocess_zeroes_at_or_below_004() -> None:
    volume = np.array([-0.2, 0.04, 0.0400001, 0.5, 1.4])
    before = volume.copy()
    result = threshold_postprocess(volume, np.zeros(5))
    np.testing.assert_array_equal(result, [0.0, 0.0, 0.0400001, 0.5, 1.0])
    np.testing.assert_array_equal(volume, before)


# -- writing -----------------------------------------------------------------------------------------
def _assert_same_geometry(written: nib.Nifti1Image, reference: nib.Nifti1Image) -> None:
    ref, out = reference.header, written.header
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    np.testing.assert_allclose(out.get_sform(), ref.get_sform(), atol=1e-6)
    np.testing.assert_allclose(out.get_qform(), ref.get_qform(), atol=1e-5)
    assert int(out["sform_code"]) == int(ref["sform_code"])
    assert int(out["qform_code"]) == int(ref["qform_code"])
    assert out.get_zooms()[:3] == ref.get_zooms()[:3]
    assert out.get_xyzt_units() == ref.get_xyzt_units()


def test_write_keeps_geometry_of_a_non_identity_reference(tmp_path: Path) -> None:
    reference_path = write_volume(tmp_path / "ref.nii.gz", np.ones((6, 5, 4)))
    reference = nib.load(reference_path)
    assert int(reference.header["sform_code"]) == 1 and not np.allclose(reference.affine, np.eye(4))
    data = np.random.default_rng(3).random((6, 5, 4))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = write_volume_atomic(data, read_volume(reference_path).header, out_dir / "case-t1n.nii.gz")
    written = nib.load(path)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.get_fdata(), data.astype(np.float32))
    _assert_same_geometry(written, reference)
    assert sorted(p.name for p in out_dir.iterdir()) == ["case-t1n.nii.gz"]  # no temporary file left


def test_write_keeps_geometry_of_a_real_case_file(tmp_path: Path) -> None:
    reference = nib.load(REAL_FILE)
    data = np.random.default_rng(4).random(reference.shape).astype(np.float32)
    path = write_volume_atomic(data, read_volume(REAL_FILE).header, tmp_path / "out.nii.gz")
    written = nib.load(path)
    _assert_same_geometry(written, reference)
    assert written.shape == BRATS_SHAPE
    assert written.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), data)
    with gzip.open(path) as handle:  # a real gzip stream, readable by any NIfTI reader
        assert len(handle.read()) == 352 + data.nbytes


def test_write_failure_leaves_no_partial_file_and_keeps_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = read_volume(write_volume(tmp_path / "ref.nii", np.ones((4, 4, 4))))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "case-t2f.nii.gz"
    target.write_bytes(b"previous")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(volumes.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_volume_atomic(np.zeros((4, 4, 4)), reference.header, target)
    assert sorted(p.name for p in out_dir.iterdir()) == ["case-t2f.nii.gz"]
    assert target.read_bytes() == b"previous"


def test_write_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    reference = read_volume(write_volume(tmp_path / "ref.nii", np.ones((4, 4, 4))))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.nii.gz"
    os.symlink(victim, link)
    write_volume_atomic(np.zeros((4, 4, 4)), reference.header, link)
    assert not link.is_symlink() and victim.read_text() == "keep me"


def test_remove_partial_files_removes_only_ours(tmp_path: Path) -> None:
    ours = tmp_path / ".cwdm-case-t1n.nii.gz.abc123.part"
    ours.write_bytes(b"partial")
    kept = [tmp_path / "case-t1n.nii.gz", tmp_path / ".hidden.part", tmp_path / "notes.part"]
    for path in kept:
        path.write_bytes(b"x")
    assert remove_partial_files(tmp_path) == [ours]
    assert sorted(tmp_path.iterdir()) == sorted(kept)


def test_same_grid_tolerates_rounding_but_not_shifts(tmp_path: Path) -> None:
    a = read_volume(write_volume(tmp_path / "a.nii", np.ones((4, 4, 4))))
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    b = read_volume(write_volume(tmp_path / "b.nii", np.ones((4, 4, 4)), AFFINE + 1e-5))
    c = read_volume(write_volume(tmp_path / "c.nii", np.ones((4, 4, 4)), shifted))
    d = read_volume(write_volume(tmp_path / "d.nii", np.ones((4, 4, 5))))
    assert same_grid(a, b) and not same_grid(a, c) and not same_grid(a, d)


def test_real_case_sequences_share_one_grid(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(REAL_CASE, tmp_path / REAL_CASE.name))
    loaded = [read_volume(p) for p in sorted(copy.glob("*-t*.nii.gz"))]
    assert len(loaded) == 3
    assert all(same_grid(loaded[0], other) for other in loaded[1:])


@pytest.mark.parametrize(("shape", "multiple"), [((240, 240, 155), 32), ((26, 20, 14), 4), ((17, 33, 8), 16)])
def test_layout_into_a_buffer_is_the_padded_copy(shape: tuple[int, int, int], multiple: int) -> None:
    # Written into one channel of a C-order buffer holding garbage, from a Fortran-order volume (as
    # nibabel reads it): the same values as np.pad's fresh array, every padded voxel overwritten.
    layout = NetworkLayout.for_shape(shape, multiple)
    volume = np.asfortranarray(np.random.default_rng(3).random(shape).astype(np.float32))
    buffer = np.full((2, *layout.network_shape), np.nan, dtype=np.float32)
    written = layout.to_network(volume, out=buffer[1])
    assert written is buffer[1] or np.shares_memory(written, buffer)
    np.testing.assert_array_equal(
        buffer[1],
        np.pad(
            volume[tuple(slice(c, n - c) for n, c in zip(shape, layout.crop, strict=True))],
            [(0, p) for p in layout.pad],
        ),
    )
    assert np.isnan(buffer[0]).all()  # the other channel untouched
