"""Faults around the output folder: missing, not a folder, not writable, overlapping the inputs;
pre-existing outputs that are links, folders, FIFOs, truncated or on another grid; disk full while
writing; a report that cannot be written.

Not writable and disk full are injected (a PermissionError from the write probe; ENOSPC from the
output's fsync) and, where this machine lets the tests mount file systems (root with CAP_SYS_ADMIN, as
here), also made real with a read-only and a tiny tmpfs; without that permission those two are skipped.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import cwdm.inference.outputs
from cwdm.atomic import PARTIAL_PREFIX

from .conftest import (
    GOOD,
    assert_good_cases_identical,
    assert_reported,
    good_names,
    run_infer,
    snapshot,
)

OUT_OF = {
    "BraTS-GLI-00101-000": "BraTS-GLI-00101-000-t2f.nii.gz",
    "BraTS-MEN-00102-000": "BraTS-MEN-00102-000-t1n.nii.gz",
    "BraTS-PED-00103-000": "BraTS-PED-00103-000-t2w.nii.gz",
}


def test_a_missing_output_folder_is_created(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    out = tmp_path / "not" / "yet" / "there"
    run = run_infer(data, out, weights)
    assert run.code == 0, run.stderr
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == good_names()


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("a file", "cannot create the output folder"),
        ("under a file", "cannot create the output folder"),
        ("the data folder", "is inside the data folder"),
        ("inside the data folder", "is inside the data folder"),
        ("inside a case folder", "is inside the data folder"),
        ("around the data folder", "contains the data folder"),
        ("a link into the data folder", "is inside the data folder"),
        ("inside a linked case folder", "is inside the case folder"),
    ],
)
def test_an_unusable_output_folder_stops_before_any_case(
    where: str, words: str, data: Path, tmp_path: Path, weights: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    elsewhere = tmp_path / "elsewhere"
    out = {
        "a file": blocker,
        "under a file": blocker / "out",
        "the data folder": data,
        "inside the data folder": data / "predictions",
        "inside a case folder": data / "BraTS-GLI-00101-000" / "predictions",
        "around the data folder": tmp_path,
        "a link into the data folder": tmp_path / "out-link",
        "inside a linked case folder": elsewhere / "BraTS-MEN-00102-000" / "predictions",
    }[where]
    if where == "a link into the data folder":
        out.symlink_to(data / "predictions", target_is_directory=True)
    if where == "inside a linked case folder":
        elsewhere.mkdir()
        shutil.move(data / "BraTS-MEN-00102-000", elsewhere / "BraTS-MEN-00102-000")
        (data / "BraTS-MEN-00102-000").symlink_to(elsewhere / "BraTS-MEN-00102-000")
    before = snapshot(data)

    run = run_infer(data, out, weights, report=tmp_path.parent / f"{tmp_path.name}-report.json")
    assert run.code == 2
    assert words in run.stderr and str(out) in run.stderr, run.stderr
    assert run.report is None  # nothing ran
    assert snapshot(data) == before
    assert blocker.read_text() == "a file, not a folder"
    assert not (data / "predictions").exists()


def test_an_output_folder_that_is_not_writable_stops_before_any_case(
    data: Path, tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(folder: Path) -> None:
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(cwdm.inference.outputs, "probe_writable", refuse)
    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 2
    assert f"the output folder {tmp_path / 'out'} is not writable (Permission denied); nothing was run" in (
        run.stderr
    )
    assert run.report is None and run.names() == []


@contextmanager
def _tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    """A tmpfs at ``mount_point`` (skips the test where mounting is not permitted)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_read_only_output_file_system_stops_before_any_case(
    data: Path, tmp_path: Path, weights: Path
) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as out:
        run = run_infer(data, out, weights)
        assert run.code == 2
        assert "is not writable (Read-only file system); nothing was run" in run.stderr
        assert run.names() == []


def _fail_fsync_of(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """Make ``os.fsync`` raise ENOSPC for the temporary file of output ``name``; returns the paths hit."""
    real_fsync = os.fsync
    hits: list[str] = []

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if f"{PARTIAL_PREFIX}{name}." in path:
            hits.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return hits


def test_disk_full_while_writing_fails_that_case_and_leaves_no_partial_file(
    data: Path,
    tmp_path: Path,
    weights: Path,
    clean_outputs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hits = _fail_fsync_of(monkeypatch, OUT_OF["BraTS-MEN-00102-000"])
    run = run_infer(data, tmp_path / "out", weights)
    assert hits and all(not Path(path).exists() for path in hits)  # the temporary file was removed
    assert run.code == 1
    assert_reported(
        run,
        "BraTS-MEN-00102-000",
        "failed",
        "cannot write the output ([Errno 28] No space left on device)",
        error_type="CaseError",
    )
    assert_good_cases_identical(run, clean_outputs, ["BraTS-GLI-00101-000", "BraTS-PED-00103-000"])
    assert sorted(os.listdir(run.out)) == good_names(["BraTS-GLI-00101-000", "BraTS-PED-00103-000"])

    monkeypatch.undo()  # space again: the rerun does the missing case only
    again = run_infer(data, tmp_path / "out", weights)
    assert again.code == 0
    assert [again.case(c)["status"] for c in GOOD] == ["skipped", "written", "skipped"]
    assert again.outputs() == clean_outputs


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
def test_a_really_full_disk_leaves_only_complete_outputs(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    first = OUT_OF["BraTS-MEN-00102-000"]  # t1n: the first target sampled
    # Room for the first output only, plus a 4 KiB tmpfs block for each case's claim file while held.
    size_kib = len(clean_outputs[first]) // 1024 + 12 + 4 * len(GOOD)
    with _tmpfs(tmp_path / "small", f"size={size_kib}k") as out:
        run = run_infer(data, out, weights)
        assert run.code == 1
        assert run.case("BraTS-MEN-00102-000")["status"] == "written"
        for case_id in ("BraTS-PED-00103-000", "BraTS-GLI-00101-000"):
            assert_reported(run, case_id, "failed", "No space left on device", error_type="CaseError")
        assert os.listdir(out) == [first]  # no temporary file, no partial output
        assert (out / first).read_bytes() == clean_outputs[first]


def _prepare_out(out: Path, kind: str, tmp_path: Path, clean: dict[str, bytes]) -> Path:
    """Put ``kind`` where BraTS-GLI-00101-000's output goes; returns that path."""
    out.mkdir()
    target = out / OUT_OF["BraTS-GLI-00101-000"]
    if kind == "link to a file outside":
        victim = tmp_path / "victim.nii.gz"
        victim.write_bytes(b"precious data outside the output folder")
        target.symlink_to(victim)
    elif kind == "link to a complete output elsewhere":
        elsewhere = tmp_path / "elsewhere.nii.gz"
        elsewhere.write_bytes(clean[target.name])
        target.symlink_to(elsewhere)
    elif kind == "link to a folder":
        (tmp_path / "victim-folder").mkdir()
        target.symlink_to(tmp_path / "victim-folder", target_is_directory=True)
    elif kind == "truncated output":
        target.write_bytes(clean[target.name][:3000])
    elif kind == "output on another grid":
        nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)), target)
    elif kind == "FIFO":
        os.mkfifo(target)
    elif kind == "stale partial files":
        (out / f"{PARTIAL_PREFIX}{target.name}.x1y2z3.part").write_bytes(b"\x1f\x8b partial")
        (out / f"{PARTIAL_PREFIX}probe.a1b2c3.part").write_bytes(b"")
    return target


@pytest.mark.parametrize(
    "kind",
    [
        "link to a file outside",
        "link to a complete output elsewhere",
        "link to a folder",
        "truncated output",
        "output on another grid",
        "FIFO",
        "stale partial files",
    ],
)
def test_pre_existing_outputs_are_replaced_never_written_through(
    kind: str, data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    target = _prepare_out(tmp_path / "out", kind, tmp_path, clean_outputs)
    victims = {p: snapshot(p) if p.is_dir() else p.read_bytes() for p in tmp_path.glob("victim*")}

    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 0, run.stderr
    assert_good_cases_identical(run, clean_outputs)
    assert not target.is_symlink() and target.is_file()
    assert run.names() == good_names()  # partial files gone, nothing else
    for victim, content in victims.items():  # never written through the link
        assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == content
    if kind == "stale partial files":
        assert f"removed {PARTIAL_PREFIX}probe.a1b2c3.part, left by an interrupted run" in run.stderr
    else:
        assert f"BraTS-GLI-00101-000: {target} exists but is incomplete" in run.stderr


def test_a_folder_in_place_of_an_output_fails_that_case_only(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    out = tmp_path / "out"
    (out / OUT_OF["BraTS-GLI-00101-000"] / "inner").mkdir(parents=True)
    run = run_infer(data, out, weights)
    assert run.code == 1
    assert_reported(
        run,
        "BraTS-GLI-00101-000",
        "failed",
        "cannot write the output",
        "Is a directory",
        error_type="CaseError",
    )
    assert_good_cases_identical(run, clean_outputs, ["BraTS-MEN-00102-000", "BraTS-PED-00103-000"])
    assert (out / OUT_OF["BraTS-GLI-00101-000"] / "inner").is_dir()  # left alone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_complete_outputs_are_kept_as_they_are(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    first = run_infer(data, tmp_path / "out", weights)
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in first.out.iterdir()}
    again = run_infer(data, tmp_path / "out", weights)
    assert again.code == 0
    assert [again.case(c)["status"] for c in GOOD] == ["skipped"] * 3
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in again.out.iterdir()} == stats
    assert again.outputs() == clean_outputs


def test_a_report_that_cannot_be_written_leaves_the_outputs_and_the_summary(
    data: Path, tmp_path: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    blocker = tmp_path / "reports"
    blocker.write_text("a file where the report folder should be")
    run = run_infer(data, tmp_path / "out", weights, report=blocker / "run.json")
    assert run.code == 0  # the exit status follows the cases
    assert f"cannot write the run report {blocker / 'run.json'}" in run.stderr
    assert "report: not written (see the error above)" in run.stdout
    assert "3 written, 0 skipped, 0 failed, 0 ignored" in run.stdout
    assert run.outputs() == clean_outputs
