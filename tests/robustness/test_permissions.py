"""Real permission errors: ``cwdm infer`` run as an unprivileged user (``setpriv``, so only where the
tests run as root), the way MedPerf runs the container (``-u uid:gid``). A volume with mode 000 fails
its case with the system's "Permission denied"; an output folder the user cannot write stops the run
before any case. The other tests inject these errors; here they come from the kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    BAD,
    Run,
    assert_good_cases_identical,
    assert_reported,
    good_names,
    snapshot,
    write_good_case,
)

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the command as an unprivileged user",
)


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's own temporary folders are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="cwdm-permissions-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def _owned_by_nobody(path: Path) -> Path:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


def _infer_as_nobody(world: Path, out: Path, weights: Path) -> subprocess.CompletedProcess:
    home = world / "home"
    if not home.exists():
        _owned_by_nobody(home)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "COLUMNS": "3000"}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    command += [sys.executable, "-m", "cwdm.cli", "infer", str(world / "data"), str(out)]
    command += ["--weights", str(weights), "--device", "cpu", "--report", str(home / "report.json")]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_unreadable_volume_and_unwritable_output_folder_as_an_unprivileged_user(
    world: Path, pristine: Path, weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    data = world / "data"
    shutil.copytree(pristine, data)
    shutil.copytree(weights, world / "weights")
    write_good_case(data, BAD, "t2f", seed=9)
    unreadable = data / BAD / f"{BAD}-t1c.nii.gz"
    unreadable.chmod(0o000)
    before = snapshot(data)

    # written by cwdm.write_state_dict: readable by every user (mkstemp alone would leave 0600)
    assert {oct(p.stat().st_mode & 0o777) for p in (world / "weights").glob("*.safetensors")} == {"0o644"}

    done = _infer_as_nobody(world, _owned_by_nobody(world / "out"), world / "weights")
    report = json.loads((world / "home" / "report.json").read_text())
    run = Run(done.returncode, done.stdout, done.stderr, report, world / "out")
    assert run.code == 1, done.stderr
    assert_reported(
        run,
        BAD,
        "failed",
        f"cannot use the t1c volume {BAD}-t1c.nii.gz",
        "Permission denied",
        error_type="VolumeReadError",
    )
    assert_good_cases_identical(run, clean_outputs)
    assert run.names() == good_names()
    assert snapshot(data) == before

    locked = world / "locked"
    locked.mkdir()  # owned by root, mode 755: the unprivileged user cannot create files in it
    done = _infer_as_nobody(world, locked, world / "weights")
    assert done.returncode == 2
    assert f"the output folder {locked} is not writable (Permission denied); nothing was run" in done.stderr
    assert list(locked.iterdir()) == []
