"""End to end on real BraTS sample cases (examples/pseudo_validation, copied): ``cwdm infer`` in a
separate process with a tiny random model, then a rerun that resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tests.conftest import EXAMPLES_DIR, tree_checksums, write_tiny_weights

from cwdm.config import ModelSpec
from cwdm.sequences import condition_order

#: One case per target (two of them with a -seg file that must be ignored).
CASES = {
    "BraTS-GLI-00001-000": "t1n",
    "BraTS-GLI-99904-000": "t1c",
    "BraTS-GLI-99905-000": "t2w",
    "BraTS-GLI-99901-000": "t2f",
}
#: The cheapest model that runs the real code path: one U-Net level, one sampling step.
FAST = ModelSpec(model_channels=8, channel_mult=(1,), num_res_blocks=1, num_groups=8, sampling_steps=1)


def _infer(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cwdm.cli", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )


@pytest.fixture(scope="module")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("real") / "data"
    for case_id in CASES:
        shutil.copytree(EXAMPLES_DIR / "pseudo_validation" / case_id, data / case_id)
    return data


def test_real_cases_end_to_end_and_resume(real_data: Path, tmp_path: Path) -> None:
    weights = write_tiny_weights(tmp_path / "weights", spec=FAST)
    out, report = tmp_path / "predictions", tmp_path / "report.json"
    before = tree_checksums(real_data)

    first = _infer(real_data, out, "--weights", weights, "--report", report)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}-{t}.nii.gz" for c, t in CASES.items())
    for case_id, target in CASES.items():
        output = nib.load(out / f"{case_id}-{target}.nii.gz")
        inputs = [real_data / case_id / f"{case_id}-{seq}.nii.gz" for seq in condition_order(target)]
        first_condition = nib.load(inputs[0])
        assert output.shape == (240, 240, 155)
        assert output.get_data_dtype() == np.float32
        values = np.asarray(output.dataobj)
        assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0
        assert values.max() > 0.0
        assert not values[np.asarray(first_condition.dataobj) == 0].any()  # brain mask (the default)
        for path in inputs:  # every present sequence shares the output's grid
            reference = nib.load(path)
            np.testing.assert_allclose(output.affine, reference.affine, atol=1e-6)
            np.testing.assert_allclose(output.header.get_sform(), reference.header.get_sform(), atol=1e-6)
            np.testing.assert_allclose(output.header.get_qform(), reference.header.get_qform(), atol=1e-5)
            assert int(output.header["sform_code"]) == int(reference.header["sform_code"])
            assert int(output.header["qform_code"]) == int(reference.header["qform_code"])
            assert output.header.get_zooms() == reference.header.get_zooms()
    record = json.loads(report.read_text())
    assert record["counts"] == {
        "written": 4,
        "skipped": 0,
        "mismatched": 0,
        "claimed": 0,
        "failed": 0,
        "ignored": 0,
        "interrupted": 0,
    }
    assert "4 written, 0 skipped, 0 failed, 0 ignored" in first.stdout
    assert tree_checksums(real_data) == before

    # Resume: one output lost and a partial file left by a killed run; the others are kept as they are.
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    lost = out / "BraTS-GLI-99905-000-t2w.nii.gz"
    lost.unlink()
    del kept[lost.name]
    (out / ".cwdm-BraTS-GLI-99905-000-t2w.nii.gz.k1ll3d.part").write_bytes(b"\x1f\x8b partial")
    second = _infer(real_data, out, "--weights", weights, "--report", report)
    assert second.returncode == 0, second.stderr
    record = json.loads(report.read_text())
    assert record["counts"] == {
        "written": 1,
        "skipped": 3,
        "mismatched": 0,
        "claimed": 0,
        "failed": 0,
        "ignored": 0,
        "interrupted": 0,
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}-{t}.nii.gz" for c, t in CASES.items())
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n in kept if (p := out / n)} == kept
    assert tree_checksums(real_data) == before
