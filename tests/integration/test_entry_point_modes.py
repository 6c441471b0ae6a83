"""The image's entry point (project/mlcube.py) in every way it is called: no arguments (the 2025
convention, /input to /output), `infer` with only the two folders (the brats package's 2024 entries),
`infer` with everything (MLCube, MedPerf); the defaults of --weights and --parameters_file, the
environment variables, and the usage message. No container needed."""

from __future__ import annotations

import hashlib
import runpy
from pathlib import Path

import pytest
import yaml
from tests.conftest import write_case, write_tiny_weights
from tests.integration.test_mlcube_contract import CASES, ENTRY_POINT, MLCUBE_DIR, _run_entry_point

from cwdm.config import RunParameters, load_run_parameters


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "input"
    for seed, (case_id, missing) in enumerate(CASES.items()):
        write_case(root, case_id, missing=missing, seed=seed)
    return root


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_shipped_parameters_file_is_the_defaults() -> None:
    """So a run without --parameters_file is the run with the shipped parameters.yaml, bit for bit."""
    assert load_run_parameters(MLCUBE_DIR / "workspace" / "parameters.yaml") == RunParameters()


def test_every_way_of_calling_gives_the_same_bytes(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = write_tiny_weights(tmp_path / "built-in")
    params = MLCUBE_DIR / "workspace" / "parameters.yaml"
    full = ["infer", f"--data_path={data}", f"--output_path={tmp_path / 'mlcube'}"]
    full += [f"--weights={weights}", f"--parameters_file={params}"]
    result = _run_entry_point(full, tmp_path, default_weights=None)
    assert result.returncode == 0, result.stderr
    folders_only = ["infer", f"--data_path={data}", f"--output_path={tmp_path / 'brats2024'}"]
    result = _run_entry_point(folders_only, tmp_path, default_weights=weights)
    assert result.returncode == 0, result.stderr
    assert "using the weights built into the image" not in result.stderr  # no --weights: no warning

    # The 2025 convention, in this process: no arguments, /input and /output (here: test folders).
    (tmp_path / "brats2025").mkdir()
    entry = runpy.run_path(str(ENTRY_POINT), run_name="cwdm_entry_point")
    monkeypatch.setitem(entry["main"].__globals__, "INPUT_DIR", data)
    monkeypatch.setitem(entry["main"].__globals__, "OUTPUT_DIR", tmp_path / "brats2025")
    monkeypatch.setenv("CWDM_DEFAULT_WEIGHTS", str(weights))
    monkeypatch.setenv("CWDM_REPORT_DIR", str(tmp_path / "reports"))
    assert entry["main"]([]) == 0
    expected = _hashes(tmp_path / "mlcube")
    assert sorted(expected) == sorted(f"{c}-{m}.nii.gz" for c, m in CASES.items())
    assert _hashes(tmp_path / "brats2024") == expected == _hashes(tmp_path / "brats2025")
    assert len(list((tmp_path / "reports").glob("cwdm-*-report.json"))) == 1  # CWDM_REPORT_DIR


def test_without_arguments_or_folders_it_says_how_to_call_it(tmp_path: Path) -> None:
    result = _run_entry_point([], tmp_path, default_weights=None)
    assert result.returncode == 2
    for words in (
        "Three ways",
        "/input",
        "/output",
        "infer --data_path",
        "--entrypoint cwdm",
        "CWDM_PARAMETERS_FILE",
    ):
        assert words in result.stderr, words
    assert "is not a mounted folder" in result.stderr


def test_parameters_come_from_the_environment_when_not_given(tmp_path: Path, data: Path) -> None:
    weights = write_tiny_weights(tmp_path / "weights")
    bad = tmp_path / "organiser.yaml"
    bad.write_text(yaml.safe_dump({"sampler": "euler"}))
    args = ["infer", f"--data_path={data}", f"--output_path={tmp_path / 'out'}", f"--weights={weights}"]
    result = _run_entry_point(
        args, tmp_path, default_weights=None, extra_env={"CWDM_PARAMETERS_FILE": str(bad)}
    )
    assert result.returncode == 2 and "organiser.yaml" in result.stderr and "'euler'" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"sampling_steps": 1, "sampler": "ddim", "timestep_spacing": "trailing"}))
    result = _run_entry_point(
        args, tmp_path, default_weights=None, extra_env={"CWDM_PARAMETERS_FILE": str(good)}
    )
    assert result.returncode == 0, result.stderr
    assert "ddim 1 step" in result.stderr and "1 steps" not in result.stderr


def test_weights_folders_missing_empty_or_one_level_up(tmp_path: Path, data: Path) -> None:
    built_in = write_tiny_weights(tmp_path / "built-in")
    base = ["infer", f"--data_path={data}"]
    result = _run_entry_point(
        [*base, f"--output_path={tmp_path / 'a'}", f"--weights={tmp_path / 'nowhere'}"], tmp_path, built_in
    )
    assert result.returncode == 2 and "does not exist (is it mounted?)" in result.stderr
    extra = tmp_path / "additional_files"
    write_tiny_weights(extra / "weights")  # MedPerf's additional files hold a weights/ folder
    result = _run_entry_point(
        [*base, f"--output_path={tmp_path / 'b'}", f"--weights={extra}"], tmp_path, None
    )
    assert result.returncode == 0, result.stderr
    (tmp_path / "empty").mkdir()
    result = _run_entry_point(
        [*base, f"--output_path={tmp_path / 'c'}", f"--weights={tmp_path / 'empty'}"], tmp_path, built_in
    )
    assert result.returncode == 0 and "using the weights built into the image" in result.stderr
