"""Bad case folders and bad volume files, next to good cases: each bad input ends in one clear error
naming its case and file (stderr, report, summary table), or is handled as documented (docs/USAGE.md, "Bad
inputs"); the good cases are written exactly as in a clean run; nothing in the data folder changes.

Unreadable files: the tests run as root, for whom chmod 000 changes nothing, so unreadability is made
real in ways that also stop root (a directory or a FIFO where a file is expected, a broken or looping
symbolic link) or injected (a PermissionError from the reader or the folder listing, by monkeypatch).
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.cases import volumes
from cwdm.cases.reader import read_case_file
from cwdm.errors import VolumeReadError
from cwdm.inference.provenance import read_record

from ..conftest import AFFINE
from .conftest import (
    BAD,
    GOOD,
    SHAPE,
    assert_good_cases_identical,
    assert_reported,
    case_file,
    good_levels,
    good_names,
    good_seed,
    gzip_bomb,
    nifti_bytes,
    patched,
    run_infer,
    snapshot,
    without_provenance,
    write_good_case,
    write_nifti,
)

Maker = Callable[[Path, pytest.MonkeyPatch], None]


def _bad_case(data: Path, missing: str | None = "t2f") -> Path:
    return write_good_case(data, BAD, missing, seed=9)


def _bad_file(data: Path, seq: str = "t1c") -> Path:
    _bad_case(data)
    return case_file(data, BAD, seq)


# -- the makers: each adds one bad input to a data folder of good cases ------------------------------------


def complete_case(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_case(data, missing=None)


def two_missing(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_case(data, missing="t2f")
    case_file(data, BAD, "t1c").unlink()


def three_missing(data: Path, mp: pytest.MonkeyPatch) -> None:
    two_missing(data, mp)
    case_file(data, BAD, "t1n").unlink()


def empty_folder(data: Path, mp: pytest.MonkeyPatch) -> None:
    (data / BAD).mkdir()


def nested_case(data: Path, mp: pytest.MonkeyPatch) -> None:
    wrapper = data / BAD
    write_good_case(wrapper, "BraTS-GLI-00901-000", "t2f", seed=9)


def foreign_file(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_case(data, missing="t2f")
    shutil.copy(case_file(data, "BraTS-GLI-00101-000", "t1n"), data / BAD / "BraTS-GLI-00101-000-t2f.nii.gz")


def prefix_mismatch(data: Path, mp: pytest.MonkeyPatch) -> None:
    write_good_case(data, "BraTS-GLI-00901-000", "t2f", seed=9)
    os.rename(data / "BraTS-GLI-00901-000", data / BAD)


def duplicate_sequence(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_case(data)
    write_nifti(case_file(data, BAD, "t1n", ".nii"), good_levels(5))


def truncated_gz(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def corrupt_gz(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    content = bytearray(path.read_bytes())
    for index in range(len(content) // 2, len(content) // 2 + 64):
        content[index] ^= 0x5A
    path.write_bytes(bytes(content))


def text_file(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_text("this is not a NIfTI volume\n" * 20)


def gzipped_text(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_bytes(gzip.compress(b"this is not a NIfTI volume\n" * 20))


def empty_file(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_bytes(b"")


def header_only(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_bytes(gzip.compress(nifti_bytes(good_levels(3))[:352]))


def other_format(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    mgz = path.with_name("volume.mgz")
    nib.save(nib.MGHImage(good_levels(3).astype(np.float32), AFFINE), mgz)
    mgz.rename(path)


def truncated_nii(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    write_nifti(path.with_suffix(""), good_levels(3))
    raw = path.with_suffix("").read_bytes()
    path.with_suffix("").write_bytes(raw[:-5000])


def four_d(data: Path, mp: pytest.MonkeyPatch) -> None:
    levels = good_levels(3)
    write_nifti(_bad_file(data), np.stack([levels, levels], axis=-1))


def two_d(data: Path, mp: pytest.MonkeyPatch) -> None:
    write_nifti(_bad_file(data), good_levels(3)[:, :, 0])


def zero_size(data: Path, mp: pytest.MonkeyPatch) -> None:
    write_nifti(_bad_file(data), np.zeros((38, 0, 42)))


def huge_header(data: Path, mp: pytest.MonkeyPatch) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((3000, 3000, 3000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    _bad_file(data).write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\1" * 4096))


def complex_data(data: Path, mp: pytest.MonkeyPatch) -> None:
    nib.save(nib.Nifti1Image(good_levels(3).astype(np.complex64), AFFINE), _bad_file(data))


def rgb_data(data: Path, mp: pytest.MonkeyPatch) -> None:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, AFFINE), _bad_file(data))


def nan_voxels(data: Path, mp: pytest.MonkeyPatch) -> None:
    levels = good_levels(3)
    levels[10:12, 10, 10] = np.nan
    write_nifti(_bad_file(data), levels)


def inf_voxels(data: Path, mp: pytest.MonkeyPatch) -> None:
    levels = good_levels(3)
    levels[5, 5, 5] = np.inf
    write_nifti(_bad_file(data), levels)


def grid_shape_differs(data: Path, mp: pytest.MonkeyPatch) -> None:
    write_nifti(_bad_file(data, "t2w"), good_levels(3, (38, 32, 41)))


def grid_affine_differs(data: Path, mp: pytest.MonkeyPatch) -> None:
    shifted = AFFINE.copy()
    shifted[:3, 3] += 0.75
    write_nifti(_bad_file(data, "t2w"), good_levels(3), affine=shifted)


def directory_as_file(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    path.mkdir()


def fifo_as_file(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    os.mkfifo(path)  # opening it for reading would block forever: it must never be opened


def broken_link(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    path.symlink_to("/nonexistent/elsewhere/BraTS-GLI-00900-000-t1c.nii.gz")


def link_loop(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    path.symlink_to(path.name)


def dangling_case_link(data: Path, mp: pytest.MonkeyPatch) -> None:
    (data / BAD).symlink_to("/home/someone/brats/BraTS-GLI-00900-000")


def unlistable_folder(data: Path, mp: pytest.MonkeyPatch) -> None:
    folder = _bad_case(data)
    original = Path.iterdir

    def iterdir(self: Path):  # type: ignore[no-untyped-def]
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    mp.setattr(Path, "iterdir", iterdir)


def unreadable_file(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    original = nib.load

    def load(filename, **kwargs):  # type: ignore[no-untyped-def]
        if Path(filename) == path:
            raise PermissionError(13, "Permission denied", str(filename))
        return original(filename, **kwargs)

    original_read_bytes = volumes.read_bytes

    def read_bytes(filename: Path, limit: int = -1) -> bytes:  # the reader opens files itself too
        if Path(filename) == path:
            raise PermissionError(13, "Permission denied", str(filename))
        return original_read_bytes(filename, limit)

    mp.setattr(nib, "load", load)
    mp.setattr(volumes, "read_bytes", read_bytes)


def infinite_intercept(data: Path, mp: pytest.MonkeyPatch) -> None:
    content = nifti_bytes(good_levels(3), dtype=np.int16)  # int16 with scl_slope 2.5: the scaling counts
    _bad_file(data).write_bytes(gzip.compress(patched(content, scl_inter=float("inf"))))


def unknown_data_type(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_bytes(gzip.compress(patched(nifti_bytes(good_levels(3)), datatype=1234)))


def negative_dimension(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    path.with_suffix("").write_bytes(patched(nifti_bytes(good_levels(3)), dim1=-5))


def absurd_voxel_offset(data: Path, mp: pytest.MonkeyPatch) -> None:
    path = _bad_file(data)
    path.unlink()
    path.with_suffix("").write_bytes(patched(nifti_bytes(good_levels(3)), vox_offset=1e30))


def infinite_affine(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_bytes(gzip.compress(patched(nifti_bytes(good_levels(3)), srow_x0=float("nan"))))


def inflates_past_its_header(data: Path, mp: pytest.MonkeyPatch) -> None:
    _bad_file(data).write_bytes(gzip_bomb(nifti_bytes(good_levels(3)), extra_mib=64))


def larger_than_its_header_allows(data: Path, mp: pytest.MonkeyPatch) -> None:
    content = gzip.compress(nifti_bytes(good_levels(3)))
    _bad_file(data).write_bytes(content + gzip.compress(os.urandom(3 * 2**20), compresslevel=1))


# (maker, status, error type, words in the error: the first is looked for on stderr, file: named file)
FAILURES: dict[str, tuple[Maker, str, str | None, tuple[str, ...]]] = {
    "all four sequences": (complete_case, "ignored", "CaseError", ("all four sequences are present",)),
    "two missing": (two_missing, "ignored", "CaseError", ("2 sequences are missing (t1c, t2f)",)),
    "three missing": (three_missing, "ignored", "CaseError", ("3 sequences are missing",)),
    "empty case folder": (empty_folder, "ignored", "CaseError", ("no sequence files found",)),
    "nested case folder": (
        nested_case,
        "ignored",
        "CaseError",
        ("no sequence files found", "sub-folder(s) (BraTS-GLI-00901-000)", "direct sub-folders"),
    ),
    "file of another case": (
        foreign_file,
        "failed",
        "CaseError",
        ("file BraTS-GLI-00101-000-t2f.nii.gz does not belong to this case",),
    ),
    "folder name differs from the files' prefix": (
        prefix_mismatch,
        "failed",
        "CaseError",
        ("BraTS-GLI-00901-000-t1n.nii.gz does not belong", "differs from the folder name"),
    ),
    "two files for one sequence": (
        duplicate_sequence,
        "failed",
        "CaseError",
        ("two files for t1n", "BraTS-GLI-00900-000-t1n.nii"),
    ),
    "truncated .nii.gz": (
        truncated_gz,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "cannot read NIfTI"),
    ),
    "corrupt .nii.gz": (
        corrupt_gz,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "cannot read NIfTI"),
    ),
    "not NIfTI (text)": (
        text_file,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "cannot read NIfTI"),
    ),
    "not NIfTI (gzipped text)": (
        gzipped_text,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "Cannot work out file type"),
    ),
    "empty file": (empty_file, "failed", "VolumeReadError", ("BraTS-GLI-00900-000-t1c.nii.gz", "Empty file")),
    "header without data": (
        header_only,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "could the file be damaged"),
    ),
    "another image format": (
        other_format,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "cannot read NIfTI"),
    ),
    "truncated .nii": (
        truncated_nii,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii:", "could the file be damaged"),
    ),
    "4D volume": (
        four_d,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "expected a 3D volume, got a 4D one of shape 38x32x42x2"),
    ),
    "2D volume": (two_d, "failed", "VolumeReadError", ("BraTS-GLI-00900-000-t1c.nii.gz", "got a 2D one")),
    "empty grid": (
        zero_size,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "has no voxels"),
    ),
    "oversized header": (
        huge_header,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "3000x3000x3000 (27,000,000,000 voxels), more than"),
    ),
    "complex data": (
        complex_data,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "complex data type complex64"),
    ),
    "RGB data": (rgb_data, "failed", "VolumeReadError", ("BraTS-GLI-00900-000-t1c.nii.gz", "RGB")),
    "NaN voxels": (
        nan_voxels,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "2 voxels are NaN or infinite"),
    ),
    "infinite voxels": (
        inf_voxels,
        "failed",
        "VolumeReadError",
        ("BraTS-GLI-00900-000-t1c.nii.gz", "1 voxels are NaN or infinite"),
    ),
    "grids differ (shape)": (
        grid_shape_differs,
        "failed",
        "GeometryError",
        ("t2w grid differs from t1n", "BraTS-GLI-00900-000-t2w.nii.gz: shape 38x32x41"),
    ),
    "grids differ (position)": (
        grid_affine_differs,
        "failed",
        "GeometryError",
        ("t2w grid differs from t1n", "BraTS-GLI-00900-000-t2w.nii.gz", "affines differ by up to 0.75 mm"),
    ),
    "directory named like a volume": (
        directory_as_file,
        "failed",
        "CaseError",
        ("BraTS-GLI-00900-000-t1c.nii.gz is a directory, not a volume file",),
    ),
    "FIFO named like a volume": (
        fifo_as_file,
        "failed",
        "CaseError",
        ("BraTS-GLI-00900-000-t1c.nii.gz is a named pipe (FIFO), not a volume file",),
    ),
    "broken symbolic link": (
        broken_link,
        "failed",
        "CaseError",
        ("BraTS-GLI-00900-000-t1c.nii.gz is a symbolic link to '/nonexistent/elsewhere/",),
    ),
    "symbolic link loop": (
        link_loop,
        "failed",
        "CaseError",
        ("BraTS-GLI-00900-000-t1c.nii.gz is a symbolic link", "cannot be followed"),
    ),
    "dangling case-folder link": (
        dangling_case_link,
        "failed",
        "CaseError",
        ("symbolic link to '/home/someone/brats/BraTS-GLI-00900-000', which does not exist here",),
    ),
    "unlistable case folder": (
        unlistable_folder,
        "failed",
        "CaseError",
        ("cannot list the folder (Permission denied)",),
    ),
    "unreadable file": (
        unreadable_file,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "Permission denied"),
    ),
    "infinite scaling intercept (scl_inter)": (
        infinite_intercept,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "scaling intercept is not finite", "scl_inter inf"),
    ),
    "unknown data type code": (
        unknown_data_type,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "data type code 1234 is not a NIfTI data type"),
    ),
    "negative dimension (.nii)": (
        negative_dimension,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii:", "negative size (-5x32x42)"),
    ),
    "absurd offset to the voxels (.nii)": (
        absurd_voxel_offset,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii:", "vox_offset 1e+30"),
    ),
    "non-finite affine": (
        infinite_affine,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "affine", "NaN or infinite"),
    ),
    "gzip stream inflating far past its header": (
        inflates_past_its_header,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "inflates to more than", "header declares 204,640"),
    ),
    "compressed file larger than its header allows": (
        larger_than_its_header_allows,
        "failed",
        "VolumeReadError",
        ("t1c volume BraTS-GLI-00900-000-t1c.nii.gz", "more than a gzip stream of the 204,640 bytes"),
    ),
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_bad_input_fails_alone_with_a_clear_error(
    name: str,
    data: Path,
    tmp_path: Path,
    weights: Path,
    clean_outputs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    maker, status, error_type, words = FAILURES[name]
    maker(data, monkeypatch)
    before = snapshot(data)

    run = run_infer(data, tmp_path / "out", weights)

    assert run.code == (1 if status == "failed" else 0), run.stderr
    assert_reported(run, BAD, status, *words, error_type=error_type)
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == good_names()  # nothing for the bad case, nothing else
    assert run.report is not None and run.report["exit_code"] == run.code
    assert snapshot(data) == before


# -- inputs that are fine: the same case stored differently gives the same output --------------------------


def _rewrite_case(data: Path, case_id: str, suffix: str = ".nii.gz", **kwargs: object) -> None:
    shutil.rmtree(data / case_id)
    write_good_case(data, case_id, GOOD[case_id], seed=good_seed(case_id), suffix=suffix, **kwargs)


STORAGE = {
    "uncompressed .nii": {"suffix": ".nii"},
    "int16, scl_slope 2.5": {"dtype": np.int16},
    "uint16, scl_slope 2.5": {"dtype": np.uint16},
    "int32, scl_slope 2.5": {"dtype": np.int32},
    "float64": {"dtype": np.float64},
    "int16 levels - 400, scl_inter 1000": {"dtype": np.int16, "inter": 1000.0, "offset": -400.0},
    "NIfTI-2": {"nifti2": True},
}


@pytest.mark.parametrize("name", list(STORAGE))
def test_same_values_stored_another_way_give_the_same_bytes(
    name: str, data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    options = dict(STORAGE[name])
    offset = float(options.pop("offset", 0.0))  # type: ignore[arg-type]
    case_id = "BraTS-MEN-00102-000"
    shutil.rmtree(data / case_id)
    folder = data / case_id
    folder.mkdir()
    suffix = str(options.pop("suffix", ".nii.gz"))
    for index, seq in enumerate(["t1c", "t2w", "t2f"], start=1):
        levels = good_levels(10 * good_seed(case_id) + index)
        write_nifti(folder / f"{case_id}-{seq}{suffix}", levels + offset, **options)  # type: ignore[arg-type]

    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    others = [c for c in GOOD if c != case_id]
    assert_good_cases_identical(run, clean_outputs, others)
    name_out = f"{case_id}-t1n.nii.gz"
    # Values and header, all but the provenance record, which names the input files and their SHA-256
    # (stored another way, they are other files): the rest of the record is the same.
    written, clean = (run.out / name_out).read_bytes(), clean_outputs[name_out]
    assert without_provenance(written) == without_provenance(clean)
    made, expected = read_record(run.out / name_out), _record_of(clean, tmp_path)
    assert made is not None and expected is not None
    assert [s["sha256"] for s in made["sources"]] != [s["sha256"] for s in expected["sources"]]
    assert {k: v for k, v in made.items() if k != "sources"} == {
        k: v for k, v in expected.items() if k != "sources"
    }
    assert run.names() == good_names()


def _record_of(content: bytes, tmp_path: Path) -> dict | None:
    path = tmp_path / "clean-copy.nii.gz"
    path.write_bytes(content)
    return read_record(path)


def test_4d_volume_with_one_time_point_is_a_3d_volume(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    case_id = "BraTS-GLI-00101-000"
    for index, seq in enumerate(["t1n", "t1c", "t2w"]):
        levels = good_levels(10 * good_seed(case_id) + index)
        write_nifti(case_file(data, case_id, seq), levels[..., np.newaxis])
    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    assert_good_cases_identical(run, clean_outputs)  # the 4D case's output too, byte for byte
    assert nib.load(run.out / f"{case_id}-t2f.nii.gz").shape == SHAPE


def test_stray_files_and_folders_are_ignored(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    case = data / "BraTS-GLI-00101-000"
    shutil.copy(case / "BraTS-GLI-00101-000-t1n.nii.gz", case / "BraTS-GLI-00101-000-seg.nii.gz")
    (case / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (case / "._BraTS-GLI-00101-000-t2f.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS resource fork
    (case / "README").write_text("notes")
    (case / "desktop.ini").write_text("[.ShellClassInfo]")
    (case / "derivatives" / "BraTS-GLI-00101-000-t2f.nii.gz").parent.mkdir()
    (case / "derivatives" / "BraTS-GLI-00101-000-t2f.nii.gz").write_bytes(b"not looked at")
    (data / "README.md").write_text("loose file in the data folder")
    (data / "cases.csv").write_text("id\n")
    (data / ".hidden-cache" / "x").mkdir(parents=True)
    before = snapshot(data)

    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    assert_good_cases_identical(run, clean_outputs)
    assert [r["case_id"] for r in run.report["cases"]] == list(GOOD)  # type: ignore[index]
    assert run.names() == good_names()
    assert "ignored README.md in the data folder" in run.stderr
    assert snapshot(data) == before


def test_symbolic_links_to_case_folders_and_files_are_followed(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(data / "BraTS-GLI-00101-000", elsewhere / "BraTS-GLI-00101-000")
    (data / "BraTS-GLI-00101-000").symlink_to(elsewhere / "BraTS-GLI-00101-000", target_is_directory=True)
    source = case_file(data, "BraTS-MEN-00102-000", "t2w")
    shutil.move(source, elsewhere / "t2w-volume.nii.gz")
    source.symlink_to(elsewhere / "t2w-volume.nii.gz")
    before, before_elsewhere = snapshot(data), snapshot(elsewhere)

    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == good_names()
    assert snapshot(data) == before and snapshot(elsewhere) == before_elsewhere


@pytest.mark.parametrize("first", [False, True], ids=["other condition", "first condition"])
def test_constant_volume_is_synthesised_with_a_warning(
    first: bool, data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    _bad_case(data, missing="t2f")  # conditions t1n (first), t1c, t2w
    seq = "t1n" if first else "t1c"
    write_nifti(case_file(data, BAD, seq), np.full(SHAPE, 120.0))  # no division by zero anywhere
    before = snapshot(data)

    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    words = [
        f"the {seq} volume BraTS-GLI-00900-000-{seq}.nii.gz is constant",
        "enters the network as all zeros",
    ]
    if first:
        words.append("the output is all zeros")
    assert_reported(run, BAD, "written", *words)
    output = np.asarray(nib.load(run.out / f"{BAD}-t2f.nii.gz").dataobj)
    assert output.shape == SHAPE and np.isfinite(output).all()
    assert output.min() >= 0.0 and output.max() <= 1.0
    assert (output.max() == 0.0) == first
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == sorted(good_names() + [f"{BAD}-t2f.nii.gz"])
    assert snapshot(data) == before


@pytest.mark.parametrize("shape", [(45, 33, 29), (17, 64, 9)])
def test_a_grid_other_than_brats_gets_its_output_on_that_grid(
    shape: tuple[int, int, int], data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    affine = AFFINE.copy()
    affine[:3, :3] *= 0.5  # other voxel sizes too
    write_good_case(data, BAD, "t1c", seed=9, shape=shape, affine=affine)
    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    output = nib.load(run.out / f"{BAD}-t1c.nii.gz")
    reference = nib.load(case_file(data, BAD, "t1n"))
    assert output.shape == shape and output.get_data_dtype() == np.float32
    np.testing.assert_allclose(output.affine, reference.affine, atol=1e-6)
    assert output.header.get_zooms() == reference.header.get_zooms()
    values = np.asarray(output.dataobj)
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    assert not values[np.asarray(reference.dataobj) == 0].any()  # the brain mask of the first condition
    assert_good_cases_identical(run, clean_outputs)


def test_an_empty_data_folder_is_a_failed_run_with_a_report(tmp_path: Path, weights: Path) -> None:
    (tmp_path / "data").mkdir()
    run = run_infer(tmp_path / "data", tmp_path / "out", weights)
    assert run.code == 1
    assert run.report is not None and run.report["cases"] == [] and run.report["exit_code"] == 1
    assert "0 written, 0 skipped, 0 failed, 0 ignored" in run.stdout
    assert run.names() == []


def test_an_unlistable_data_folder_stops_before_any_case(
    data: Path, tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Path.iterdir

    def iterdir(self: Path):  # type: ignore[no-untyped-def]
        if self == data:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 2
    assert f"cannot list the data folder {data} (Permission denied)" in run.stderr
    assert run.report is None and not run.out.exists()


def test_a_damaged_header_ends_in_a_volume_read_error_and_nothing_else(tmp_path: Path) -> None:
    """Seeded random damage to the header bytes (random bytes, and values such as -1, NaN, infinity,
    32767 written over fields), compressed or not: every failure is a VolumeReadError naming the file,
    whatever nibabel, the inflater or numpy raised underneath; what is read is finite."""
    rng = np.random.default_rng(7)
    base = nifti_bytes(good_levels(3, (8, 8, 8)), dtype=np.int16)
    values = [b"\xff\xff\xff\xff", b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f", b"\xff\x7f", b"\x00\x80"]
    refused = 0
    for number in range(300):
        content = bytearray(base)
        for _ in range(int(rng.integers(1, 5))):
            at = int(rng.integers(0, 352))
            if rng.random() < 0.5:
                content[at] = int(rng.integers(0, 256))
            else:
                value = values[int(rng.integers(0, len(values)))]
                content[at : at + len(value)] = value
        path = tmp_path / f"BraTS-GLI-00900-000-t1c{'.nii.gz' if number % 2 else '.nii'}"
        path.write_bytes(gzip.compress(bytes(content)) if number % 2 else bytes(content))
        try:
            volume = read_case_file(BAD, path, "t1c volume")
        except VolumeReadError as exc:
            assert exc.case_id == BAD and exc.path == path and path.name in str(exc)
            assert "\n" not in str(exc) and len(str(exc)) < 600
            refused += 1
        else:
            assert np.isfinite(volume.data).all() and np.isfinite(volume.affine).all()
        path.unlink()
    assert 50 < refused < 300  # both outcomes were exercised
