"""cases.py: case discovery, missing-sequence detection and the errors of bad case folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cwdm.cases.discovery import Case, discover_cases, read_case
from cwdm.errors import CaseError, CwdmError
from cwdm.sequences import CANONICAL_ORDER, MRISequence

from .conftest import EXAMPLES_DIR

SEQUENCES = [str(seq) for seq in CANONICAL_ORDER]


def _touch_case(root: Path, case_id: str, present: list[str], suffix: str = ".nii.gz") -> Path:
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for seq in present:
        (folder / f"{case_id}-{seq}{suffix}").write_bytes(b"")
    return folder


@pytest.mark.parametrize("missing", SEQUENCES)
def test_target_is_the_one_missing_sequence(tmp_path: Path, missing: str) -> None:
    folder = _touch_case(tmp_path, "BraTS-GLI-01666-000", [s for s in SEQUENCES if s != missing])
    case = read_case(folder)
    assert case.target() is MRISequence(missing)
    assert case.expects_synthesis and not case.is_complete
    assert case.output_name(case.target()) == f"BraTS-GLI-01666-000-{missing}.nii.gz"
    assert set(case.files) == {MRISequence(s) for s in SEQUENCES if s != missing}


@pytest.mark.parametrize("cohort", ["GLI", "MEN", "MET", "PED", "SSA"])
def test_any_cohort_tag_and_extra_files_are_tolerated(tmp_path: Path, cohort: str) -> None:
    case_id = f"BraTS-{cohort}-00012-001"
    folder = _touch_case(tmp_path, case_id, ["t1n", "t1c", "t2w"])
    for extra in [f"{case_id}-seg.nii.gz", ".DS_Store", "._BraTS-x-t2f.nii.gz", "notes.txt"]:
        (folder / extra).write_bytes(b"")
    (folder / f"{case_id}-t2f.nii.gz.d").mkdir()  # a sub-folder is not a volume
    case = read_case(folder)
    assert case.case_id == case_id
    assert case.target() is MRISequence.T2F
    assert case.problems == ()


def test_uncompressed_nifti_is_a_sequence_file(tmp_path: Path) -> None:
    folder = _touch_case(tmp_path, "BraTS-GLI-00002-000", ["t1n", "t1c", "t2f"], suffix=".nii")
    assert read_case(folder).target() is MRISequence.T2W


def test_discover_sorts_and_skips_hidden_folders_and_loose_files(tmp_path: Path) -> None:
    for case_id in ["BraTS-GLI-00003-000", "BraTS-GLI-00001-000", ".cache", "BraTS-MEN-00002-000"]:
        _touch_case(tmp_path, case_id, ["t1n", "t1c", "t2w"])
    (tmp_path / "README.txt").write_text("not a case")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00001-000", "BraTS-GLI-00003-000", "BraTS-MEN-00002-000"]
    assert all(isinstance(c, Case) for c in cases)


def test_discover_the_shipped_pseudo_validation_cases(tmp_path: Path) -> None:
    data = Path(shutil.copytree(EXAMPLES_DIR / "pseudo_validation", tmp_path / "data"))
    cases = discover_cases(data)
    targets = {case.case_id: str(case.target()) for case in cases}
    assert len(cases) == 10
    # the table of examples/README.md (the organisers' drop with seed 123456)
    assert targets["BraTS-GLI-00001-000"] == "t1n"
    assert targets["BraTS-GLI-99904-000"] == "t1c"
    assert targets["BraTS-GLI-99905-000"] == "t2w"
    assert targets["BraTS-GLI-99901-000"] == "t2f"
    assert sorted(set(targets.values())) == ["t1c", "t1n", "t2f", "t2w"]


def test_discover_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(CwdmError, match="does not exist"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CwdmError, match="not a folder"):
        discover_cases(tmp_path / "file")


@pytest.mark.parametrize(
    ("present", "match", "expects"),
    [
        (["t1n", "t1c"], "2 sequences are missing \\(t2w, t2f\\); exactly one may be missing", False),
        (SEQUENCES, "all four sequences are present", False),
        ([], "no sequence files found; expected three of BraTS-GLI-00009-000-t1n.nii.gz", False),
    ],
)
def test_target_errors_name_the_case_and_the_problem(
    tmp_path: Path, present: list[str], match: str, expects: bool
) -> None:
    case = read_case(_touch_case(tmp_path, "BraTS-GLI-00009-000", present))
    assert case.expects_synthesis is expects
    with pytest.raises(CaseError, match=match) as info:
        case.target()
    assert info.value.case_id == "BraTS-GLI-00009-000"
    assert str(info.value).startswith("BraTS-GLI-00009-000: ")


def test_two_files_for_one_sequence_is_a_problem(tmp_path: Path) -> None:
    folder = _touch_case(tmp_path, "BraTS-GLI-00004-000", ["t1n", "t1c", "t2w"])
    (folder / "BraTS-GLI-00004-000-t1n.nii").write_bytes(b"")
    case = read_case(folder)
    with pytest.raises(CaseError, match="two files for t1n"):
        case.target()


def test_file_of_another_case_is_a_problem(tmp_path: Path) -> None:
    folder = _touch_case(tmp_path, "BraTS-GLI-00005-000", ["t1n", "t1c"])
    (folder / "BraTS-GLI-00006-000-t2w.nii.gz").write_bytes(b"")
    case = read_case(folder)
    assert case.problems
    with pytest.raises(CaseError, match="does not belong to this case") as info:
        case.target()
    assert info.value.path == folder


def test_unlistable_folder_is_a_problem_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _touch_case(tmp_path, "BraTS-GLI-00007-000", ["t1n", "t1c", "t2w"])
    original = Path.iterdir

    def iterdir(self: Path):  # type: ignore[no-untyped-def]
        if self == folder:
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    case = read_case(folder)
    with pytest.raises(CaseError, match="cannot list the folder \\(Permission denied\\)"):
        case.target()


def test_case_errors_survive_pickling_for_worker_processes():
    import pickle

    from cwdm.errors import GeometryError

    error = GeometryError("BraTS-GLI-00001-000", "t2w grid differs", Path("/x/y.nii.gz"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is GeometryError and str(again) == str(error)
    assert (again.case_id, again.detail, again.path) == (error.case_id, error.detail, error.path)
