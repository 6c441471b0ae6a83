"""The pseudo-validation drop against the organisers' assignment (examples/pseudo_validation)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cwdm.cli import app
from cwdm.errors import CwdmError
from cwdm.evaluation.drop import drop_assignment, drop_sequences
from cwdm.sequences import MRISequence

from .conftest import EXAMPLES_DIR

PSEUDO_VALIDATION = EXAMPLES_DIR / "pseudo_validation"
SAMPLE_CASES = sorted(p.name for p in PSEUDO_VALIDATION.iterdir() if p.is_dir())


def make_source(root: Path, cases: list[str], with_seg: bool = True) -> Path:
    """Complete case folders of tiny dummy files (the drop copies bytes; it never parses them)."""
    for i, case in enumerate(cases):
        folder = root / case
        folder.mkdir(parents=True)
        for seq in MRISequence:
            (folder / f"{case}-{seq}.nii.gz").write_bytes(f"{case} {seq} {i}".encode())
        if with_seg:
            (folder / f"{case}-seg.nii.gz").write_bytes(f"{case} seg".encode())
    return root


def checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def absent_sequence(case_dir: Path) -> MRISequence:
    absent = [seq for seq in MRISequence if not (case_dir / f"{case_dir.name}-{seq}.nii.gz").exists()]
    assert len(absent) == 1, absent
    return absent[0]


def test_reproduces_the_organisers_assignment_of_the_sample_cases(tmp_path):
    assert len(SAMPLE_CASES) == 10
    # Created in reverse order and with a stray file and a hidden folder: the drop must sort the case
    # names itself and count case folders only.
    src = make_source(tmp_path / "src", SAMPLE_CASES[::-1])
    (src / "SOURCES.md").write_text("notes")
    (src / ".ipynb_checkpoints").mkdir()
    before = checksums(src)

    report = drop_sequences(src, tmp_path / "dst")

    assert checksums(src) == before
    assert [case.case_id for case in report.cases] == SAMPLE_CASES
    for case in report.cases:
        expected = absent_sequence(PSEUDO_VALIDATION / case.case_id)
        assert case.dropped == expected, case.case_id
        assert absent_sequence(tmp_path / "dst" / case.case_id) == expected
        assert case.dropped_files == (f"{case.case_id}-{expected}.nii.gz",)
    assert sorted(p.name for p in report.ignored) == [".ipynb_checkpoints", "SOURCES.md"]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == SAMPLE_CASES


def test_assignment_equals_the_seeded_global_legacy_generator_and_leaves_it_alone():
    names = [f"BraTS-MET-{i:05d}-000" for i in range(57, 0, -1)]
    saved = np.random.get_state()
    try:
        np.random.seed(123456)  # what the organisers' script does
        draws = np.random.randint(0, 4, size=len(names))
        tags = ["t1c", "t1n", "t2f", "t2w"]
        expected = {name: tags[i] for name, i in zip(sorted(names), draws, strict=True)}
        np.random.seed(7)
        state_before = np.random.get_state()[1].copy()
        assert {k: str(v) for k, v in drop_assignment(names).items()} == expected
        assert (np.random.get_state()[1] == state_before).all()  # global generator untouched
    finally:
        np.random.set_state(saved)


def test_copies_every_file_without_the_tag_byte_for_byte(tmp_path):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:3])
    case = SAMPLE_CASES[0]
    dropped = drop_assignment(SAMPLE_CASES[:3])[case]
    (src / case / f"notes-{dropped}.txt").write_text("the tag anywhere in the name drops the file")
    (src / case / ".hidden").write_text("copied like any other file")
    report = drop_sequences(src, tmp_path / "dst")
    copied = sorted(p.name for p in (tmp_path / "dst" / case).iterdir())
    expected = sorted(p.name for p in (src / case).iterdir() if str(dropped) not in p.name)
    assert copied == expected
    assert sorted(report.cases[0].copied) == expected
    for name in copied:
        assert (tmp_path / "dst" / case / name).read_bytes() == (src / case / name).read_bytes()


def test_resumes_an_interrupted_drop(tmp_path):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:4])
    dst = tmp_path / "dst"
    drop_sequences(src, dst)
    victim = next((dst / SAMPLE_CASES[1]).iterdir())
    victim.unlink()
    partial = dst / SAMPLE_CASES[1] / ".cwdm-abc.part"
    partial.write_bytes(b"half a copy")
    shutil.rmtree(dst / SAMPLE_CASES[3])

    report = drop_sequences(src, dst)

    by_case = {case.case_id: case for case in report.cases}
    assert by_case[SAMPLE_CASES[1]].copied == (victim.name,)
    assert len(by_case[SAMPLE_CASES[0]].kept) == 4 and by_case[SAMPLE_CASES[0]].copied == ()
    assert len(by_case[SAMPLE_CASES[3]].copied) == 4
    assert not partial.exists()
    drop_sequences(src, tmp_path / "fresh")
    assert checksums(dst) == checksums(tmp_path / "fresh")


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (lambda dst, case: (dst / "unrelated.txt").write_text("x"), "unrelated.txt is not a case folder"),
        (
            lambda dst, case: (dst / case / f"{case}-t1n.nii.gz").write_text("x"),
            "not a file this drop copies",
        ),
        (lambda dst, case: (dst / case / f"{case}-t2w.nii.gz").write_text("x"), "differs from"),
    ],
    ids=["foreign-entry", "dropped-sequence-present", "different-bytes"],
)
def test_refuses_a_destination_that_is_not_this_drop(tmp_path, spoil, match):
    case = SAMPLE_CASES[0]  # its t1n is dropped (examples/README.md)
    src = make_source(tmp_path / "src", SAMPLE_CASES[:2])
    dst = tmp_path / "dst"
    drop_sequences(src, dst)
    spoil(dst, case)
    before = checksums(dst)
    with pytest.raises(CwdmError, match=match):
        drop_sequences(src, dst)
    assert checksums(dst) == before


@pytest.mark.parametrize(
    ("dst_of", "match"),
    [
        (lambda src: src, "inside the source"),
        (lambda src: src / "pseudo", "inside the source"),
        (lambda src: src / SAMPLE_CASES[0] / "pseudo", "inside the source"),
        (lambda src: src.parent, "contains the source"),
    ],
    ids=["same", "inside", "deep-inside", "parent"],
)
def test_refuses_destinations_that_overlap_the_source(tmp_path, dst_of, match):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:2])
    before = checksums(src)
    with pytest.raises(CwdmError, match=match):
        drop_sequences(src, dst_of(src))
    assert checksums(src) == before


def test_refuses_a_symlinked_alias_of_the_source(tmp_path):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:2])
    (tmp_path / "alias").symlink_to(src)
    with pytest.raises(CwdmError, match="inside the source"):
        drop_sequences(src, tmp_path / "alias" / "out")


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no case folders"),
    ],
    ids=["missing", "empty"],
)
def test_unusable_sources_raise(tmp_path, setup, match):
    with pytest.raises(CwdmError, match=match):
        drop_sequences(setup(tmp_path), tmp_path / "dst")


def test_destination_that_is_a_file_raises(tmp_path):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:1])
    (tmp_path / "dst").write_text("x")
    with pytest.raises(CwdmError, match="not a folder"):
        drop_sequences(src, tmp_path / "dst")


def test_a_failed_copy_leaves_no_partial_file(tmp_path, monkeypatch):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:1])

    def broken_copy(source, destination):
        Path(destination).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("cwdm.evaluation.drop.shutil.copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        drop_sequences(src, tmp_path / "dst")
    assert list((tmp_path / "dst" / SAMPLE_CASES[0]).iterdir()) == []


def test_cli_drop_sequence(tmp_path):
    src = make_source(tmp_path / "src", SAMPLE_CASES[:2], with_seg=False)
    result = CliRunner().invoke(app, ["drop-sequence", str(src), str(tmp_path / "dst")])
    assert result.exit_code == 0, result.output
    assert f"{SAMPLE_CASES[0]}  dropped t1n  copied 3 files\n" in result.output
    result = CliRunner().invoke(app, ["drop-sequence", str(src), str(src / "x")])
    assert result.exit_code == 2 and "inside the source" in result.output
