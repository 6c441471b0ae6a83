"""The real image run by the BrainLesion `brats` package's own runner (`brats.core.docker.run_container`,
the code people use to run past BraSyn entries), once as a 2024 entry (MLCube style: `/mlcube_io*`
mounts, `infer --data_path=... --output_path=...`) and once as a 2025 entry (no command: `/input` to
`/output`), as a non-root user with no network, its own output check included; and the plain
`docker run` lines a 2025 organiser would type. Select with `pytest -m container`; the `brats` package
must be installed (`pip install brats`) and talks to podman through its docker-compatible socket.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import BuiltImage, Engine
from .test_image import (
    USER,
    _checksums,
    _copy_cases,
    _docker_like,
    _log,
    _run_logged,
    _writable_by_user,
    check_outputs,
)

pytestmark = pytest.mark.container

#: Runs the brats package's runner for our local image; DOCKER_HOST must be set before brats is imported.
_RUNNER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    uid, gid = (int(v) for v in sys.argv[5].split(":"))
    os.getuid, os.getgid = (lambda: uid), (lambda: gid)  # the caller brats runs the container as
    from brats.core.docker import run_container
    from brats.utils.algorithm_config import AlgorithmData, MetaData, RunArgs
    meta = MetaData(authors="cwdm-brasyn", paper="", challenge="BraSyn", challenge_manuscript="",
                    rank="-", year=int(sys.argv[1]))
    args = RunArgs(docker_image=sys.argv[2], input_name_schema="BraTS-GLI-{id:05d}-000",
                   parameters_file=False, requires_root=False, shm_size="4gb", cpu_compatible=True)
    algorithm = AlgorithmData(meta=meta, run_args=args, additional_files=None)
    start = time.monotonic()
    run_container(algorithm, Path(sys.argv[3]), Path(sys.argv[4]), cuda_devices="0", force_cpu=True)
    print(json.dumps({"seconds": time.monotonic() - start}))
    """
)


def _brats_env(docker_cli: tuple[str, dict[str, str]]) -> dict[str, str]:
    if importlib.util.find_spec("brats") is None:  # not imported here: it connects to docker on import
        pytest.skip("the brats package is not installed (pip install brats)")
    _, env = docker_cli
    if "DOCKER_HOST" not in env and not Path("/var/run/docker.sock").exists():
        pytest.skip("no docker-compatible socket for the brats package")
    return env


@pytest.mark.parametrize("year", [2024, 2025])
def test_brats_package_runs_the_image(
    year: int, image: BuiltImage, docker_cli: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    env = _brats_env(docker_cli)
    cases = _copy_cases(tmp_path / "data", per_target=1)[:2]
    for extra in sorted((tmp_path / "data").iterdir())[2:]:
        shutil.rmtree(extra)
    for case in cases:  # brats mounts its data folder read-write; the container user must read it
        for path in [case, *case.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    before = _checksums(tmp_path / "data")
    out = _writable_by_user(tmp_path / f"out-{year}")
    command = [sys.executable, "-c", _RUNNER, str(year), image.tag, str(tmp_path / "data"), str(out)]
    command.append(f"{USER[0]}:{USER[1]}")
    output = _run_logged(command, env=env)
    seconds = json.loads(output.strip().splitlines()[-1])["seconds"]
    _log(f"brats runner, {year} convention: {len(cases)} cases in {seconds:.0f} s")
    check_outputs(out, cases)  # brats's own check (as many loadable files as cases) passed too
    assert _checksums(tmp_path / "data") == before
    for path in out.iterdir():
        assert path.stat().st_uid == USER[0]  # written by the non-root user brats ran it as


def test_both_brats_conventions_write_the_same_bytes(
    image: BuiltImage, docker_cli: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    env = _brats_env(docker_cli)
    _copy_cases(tmp_path / "data", per_target=1)
    for extra in sorted((tmp_path / "data").iterdir())[1:]:
        shutil.rmtree(extra)
    outputs = {}
    for year in (2024, 2025):
        out = _writable_by_user(tmp_path / f"out-{year}")
        command = [sys.executable, "-c", _RUNNER, str(year), image.tag, str(tmp_path / "data"), str(out)]
        _run_logged([*command, f"{USER[0]}:{USER[1]}"], env=env)
        outputs[year] = _checksums(out)
    assert outputs[2024] == outputs[2025] and len(outputs[2024]) == 1


def test_plain_docker_run_as_a_2025_organiser_types_it(
    engine: Engine, image: BuiltImage, tmp_path: Path
) -> None:
    """`docker run --rm --network none -u UID:GID -v CASES:/input:ro -v OUT:/output IMAGE`, the settings
    from a mounted file named by CWDM_PARAMETERS_FILE, the report into a mounted CWDM_REPORT_DIR."""
    cases = _copy_cases(tmp_path / "data", per_target=1)
    params = tmp_path / "parameters.yaml"
    params.write_text("sampling_steps: 2\nsampler: ddim\ndevice: cpu\n")
    out = _writable_by_user(tmp_path / "output")
    reports = _writable_by_user(tmp_path / "reports")
    command = [
        engine.exe,
        "run",
        "--rm",
        "--network",
        "none",
        "-u",
        f"{USER[0]}:{USER[1]}",
        *_docker_like(engine),
    ]
    command += [
        "-v",
        f"{tmp_path / 'data'}:/input:ro",
        "-v",
        f"{out}:/output",
        "-v",
        f"{params}:/params.yaml:ro",
    ]
    command += [
        "-v",
        f"{reports}:/reports",
        "-e",
        "CWDM_PARAMETERS_FILE=/params.yaml",
        "-e",
        "CWDM_REPORT_DIR=/reports",
    ]
    start = time.monotonic()
    output = _run_logged([*command, image.tag])
    _log(f"plain docker run, 2025 convention: {len(cases)} cases in {time.monotonic() - start:.0f} s")
    check_outputs(out, cases)
    assert "ddim 2 steps" in output
    (report,) = reports.glob("cwdm-*-report.json")
    assert json.loads(report.read_text())["counts"]["written"] == len(cases)

    bare = subprocess.run(
        [engine.exe, "run", "--rm", "--network", "none", image.tag], capture_output=True, text=True
    )
    assert bare.returncode == 2 and "Three ways to call it" in bare.stderr, bare.stderr
    assert os.path.exists(out)  # untouched by the bare run
