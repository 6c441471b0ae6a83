"""Bad inputs among the real BraTS sample cases (examples/pseudo_validation, copied): a truncated
volume and a sequence on another grid (240 x 240 x 154, one slice short) fail their cases with
errors naming case and file; the good real case is written byte for byte as in a clean run of it
alone; the copied inputs are unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.config import ModelSpec

from ..conftest import EXAMPLES_DIR, write_tiny_weights
from .conftest import assert_reported, run_infer, snapshot

#: The cheapest model that runs the real code path at full size: one U-Net level, one sampling step.
FAST = ModelSpec(model_channels=8, channel_mult=(1,), num_res_blocks=1, num_groups=8, sampling_steps=1)

GOOD_REAL = "BraTS-GLI-99901-000"  # t2f missing
TRUNCATED = "BraTS-GLI-99904-000"  # t1c missing; its t2w is cut short
OTHER_GRID = "BraTS-GLI-99905-000"  # t2w missing; its t2f loses its last slice


@pytest.fixture(scope="module")
def real_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("real-weights") / "weights", spec=FAST)


def _copy(cases: list[str], root: Path) -> Path:
    for case_id in cases:
        shutil.copytree(EXAMPLES_DIR / "pseudo_validation" / case_id, root / case_id)
    return root


def test_bad_real_cases_fail_alone_and_the_good_one_is_as_in_a_clean_run(
    tmp_path: Path, real_weights: Path
) -> None:
    clean = run_infer(_copy([GOOD_REAL], tmp_path / "clean-data"), tmp_path / "clean", real_weights)
    assert clean.code == 0, clean.stderr

    data = _copy([GOOD_REAL, TRUNCATED, OTHER_GRID], tmp_path / "data")
    truncated = data / TRUNCATED / f"{TRUNCATED}-t2w.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:200_000])
    cropped = data / OTHER_GRID / f"{OTHER_GRID}-t2f.nii.gz"
    image = nib.load(cropped)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :154], image.affine, image.header), cropped)
    before = snapshot(data)

    run = run_infer(data, tmp_path / "out", real_weights)
    assert run.code == 1
    assert_reported(
        run,
        TRUNCATED,
        "failed",
        f"cannot use the t2w volume {TRUNCATED}-t2w.nii.gz",
        error_type="VolumeReadError",
    )
    assert_reported(
        run,
        OTHER_GRID,
        "failed",
        "t2f grid differs from t1n",
        f"{OTHER_GRID}-t2f.nii.gz: shape 240x240x154",
        f"{OTHER_GRID}-t1n.nii.gz: shape 240x240x155",
        error_type="GeometryError",
    )
    assert run.names() == [f"{GOOD_REAL}-t2f.nii.gz"]
    assert run.outputs() == clean.outputs()
    assert snapshot(data) == before
