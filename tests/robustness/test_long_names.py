"""Long case folder names: legal names whose output, claim file or temporary file would pass the file
system's 255-byte limit on a file name.

A case folder of 240 characters holds files of 251 bytes (``<case>-t1n.nii.gz``; 255 bytes at 244), and
its output has the same length: the case is synthesised (its claim file and temporary file get
shortened names). A case whose output name would pass 255 bytes (uncompressed ``.nii`` inputs are 3
bytes shorter than the ``.nii.gz`` output) fails alone with a message that says so; the other cases
are written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cwdm.atomic import NAME_MAX_BYTES, helper_stem, replacing, write_atomic
from cwdm.inference.claims import ClaimSet, lock_path
from cwdm.inference.outputs import prepare_output_folder

from .conftest import (
    assert_good_cases_identical,
    assert_reported,
    good_names,
    run_infer,
    snapshot,
    write_good_case,
)


def _case_id(length: int) -> str:
    stem = "BraTS-GLI-00900-000-"
    return stem + "x" * (length - len(stem))


@pytest.mark.parametrize("length", [240, 244])
def test_a_long_case_folder_name_is_synthesised(
    length: int, data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    case_id = _case_id(length)
    write_good_case(data, case_id, "t2f", seed=9)
    assert len(f"{case_id}-t1n.nii.gz") == length + 11 <= NAME_MAX_BYTES  # legal: the inputs exist
    before = snapshot(data)

    run = run_infer(data, tmp_path / "out", weights)

    assert run.code == 0, run.stderr
    assert run.case(case_id)["status"] == "written"
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == sorted(good_names() + [f"{case_id}-t2f.nii.gz"])  # no claim or temporary file
    assert snapshot(data) == before


def test_a_case_whose_output_name_passes_255_bytes_fails_alone(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    case_id = _case_id(245)
    write_good_case(data, case_id, "t2f", seed=9, suffix=".nii")  # inputs of 253 bytes, output of 256
    before = snapshot(data)

    run = run_infer(data, tmp_path / "out", weights)

    assert run.code == 1, run.stderr
    assert_reported(
        run, case_id, "failed", "would take 256 bytes, more than the 255", "shorten", error_type="CaseError"
    )
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == good_names()
    assert snapshot(data) == before


def test_helper_files_of_a_long_name_are_shortened_and_stay_distinct(tmp_path: Path) -> None:
    names = [_case_id(240) + f"-{seq}.nii.gz" for seq in ("t1n", "t2f")]
    stems = [helper_stem(name) for name in names]
    assert stems[0] != stems[1] and all(stem.startswith("BraTS-GLI-00900-000-xxx") for stem in stems)
    assert helper_stem("BraTS-GLI-00001-000-t2f.nii.gz") == "BraTS-GLI-00001-000-t2f.nii.gz"
    for name in names:
        target = tmp_path / name
        with replacing(target) as tmp:
            assert len(os.fsencode(tmp.name)) <= NAME_MAX_BYTES
            tmp.write_bytes(b"volume")
        assert len(os.fsencode(lock_path(target).name)) <= NAME_MAX_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_a_live_claim_of_a_long_name_keeps_its_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    output = out / (_case_id(240) + "-t2f.nii.gz")
    with ClaimSet() as claims:
        assert claims.claim(output) is None
        assert list(claims.live_claims(out)) == [output]  # the full name, from the claim's record
        partial = out / f".cwdm-{helper_stem(output.name)}.abcd1234.part"  # its write in progress
        partial.write_bytes(b"half")
        stray = out / ".cwdm-BraTS-GLI-00001-000-t2f.nii.gz.abcd1234.part"  # a dead run's leftover
        stray.write_bytes(b"half")
        prepare_output_folder(out, [], in_use={path.name for path in claims.live_claims(out)})
        assert partial.exists() and not stray.exists()
    write_atomic(output, b"done")
    assert sorted(p.name for p in out.iterdir()) == [partial.name, output.name]
