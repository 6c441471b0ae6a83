"""tests/integration/output_diff.py, the judge of the Slurm test's output comparison: each kind of
difference named and classed (material or not), on small gzipped NIfTI files written here."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from tests.integration.output_diff import differences

from cwdm.inference import provenance

SHAPE = (6, 5, 4)


def _write(path: Path, data: np.ndarray, case_id: str = "BraTS-GLI-00001-000", level: int = 6) -> None:
    """A float32 NIfTI-1 with a provenance record in its header, gzipped at ``level`` without time stamp."""
    header = nib.Nifti1Header()
    record = {
        "kind": provenance.RECORD_KIND,
        "synthetic": True,
        "generator": "cwdm test",
        "method": provenance.METHOD,
        "case_id": case_id,
        "target": "t1n",
        "sources": [],
        "model": None,
        "settings": {
            "sampler": "ddim",
            "sampling_steps": 1,
            "timestep_spacing": "linspace",
            "samples": 1,
            "seed": 42,
        },
    }
    image = nib.Nifti1Image(data.astype(np.float32), np.eye(4), provenance.stamp(header, record))
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=level, mtime=0))


def test_each_kind_of_difference_is_named_and_only_real_ones_are_material(tmp_path: Path) -> None:
    reference, other = tmp_path / "reference", tmp_path / "other"
    reference.mkdir()
    other.mkdir()
    data = np.random.default_rng(0).random(SHAPE)
    names = ["same.nii.gz", "deflate.nii.gz", "rounding.nii.gz", "voxels.nii.gz", "case.nii.gz"]
    for name in names:
        _write(reference / name, data)
    _write(other / "same.nii.gz", data)
    _write(other / "deflate.nii.gz", data, level=1)
    nudged = data.copy()
    nudged[1, 2, 3] += 1e-6
    _write(other / "rounding.nii.gz", nudged)
    moved = data.copy()
    moved[0, 0, 0] += 0.1
    moved[5, 4, 3] -= 0.05
    _write(other / "voxels.nii.gz", moved)
    _write(other / "case.nii.gz", data, case_id="BraTS-GLI-00002-000")

    found = {d.name: d for d in differences(reference, other, names, tolerance=1e-4)}

    assert sorted(found) == sorted(set(names) - {"same.nii.gz"})
    assert not found["deflate.nii.gz"].material
    assert found["deflate.nii.gz"].detail.startswith("the same NIfTI deflated differently")
    assert not found["rounding.nii.gz"].material
    assert re.match(
        rf"1 of {data.size} voxels differ, by at most 1(\.\d+)?e-06 ", found["rounding.nii.gz"].detail
    )
    assert found["voxels.nii.gz"].material
    assert re.match(rf"2 of {data.size} voxels differ, by at most 0\.1 ", found["voxels.nii.gz"].detail)
    assert found["case.nii.gz"].material
    assert (
        "header differs (case_id: 'BraTS-GLI-00001-000' vs 'BraTS-GLI-00002-000')"
        in found["case.nii.gz"].detail
    )
    assert "0 of 120 voxels differ" in found["case.nii.gz"].detail
