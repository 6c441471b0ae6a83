"""``cwdm infer``: options, parameters file, summary table, run report and exit codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.conftest import tree_checksums, write_case
from typer.testing import CliRunner

from cwdm.cli import app


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The command installs its own root handler (rich, on the runner's stderr): undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_case(root, "BraTS-GLI-00001-000", missing="t2f", seed=1)
    write_case(root, "BraTS-GLI-00002-000", missing="t2f", seed=2)
    write_case(root, "BraTS-PED-00003-000", missing="t1c", seed=3)
    return root


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["infer", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_infer_writes_outputs_summary_and_default_report(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    before = tree_checksums(data)
    code, output = _invoke(data, tmp_path / "out", "--weights", tiny_weights, "--device", "cpu")
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "BraTS-GLI-00001-000-t2f.nii.gz",
        "BraTS-GLI-00002-000-t2f.nii.gz",
        "BraTS-PED-00003-000-t1c.nii.gz",
    ]
    for case_id in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-PED-00003-000"):
        assert case_id in output
    assert "3 written, 0 skipped, 0 failed, 0 ignored" in output
    assert "ddpm 2 steps" in output  # model.yaml's defaults
    report = tmp_path / "out-report.json"  # beside the output folder, not in it
    assert json.loads(report.read_text())["counts"]["written"] == 3
    assert tree_checksums(data) == before


def test_options_override_the_parameters_file(data: Path, tmp_path: Path, tiny_weights: Path) -> None:
    params = tmp_path / "parameters.yaml"
    params.write_text("sampling_steps: 3\nsampler: ddpm\nseed: 1\ndevice: cpu\npostprocess: threshold\n")
    report = tmp_path / "reports" / "run.json"
    code, output = _invoke(
        data,
        tmp_path / "out",
        "--weights",
        tiny_weights,
        "--parameters",
        params,
        "--steps",
        "1",
        "--sampler",
        "ddim",
        "--spacing",
        "trailing",
        "--samples",
        "2",
        "--batch-size",
        "2",
        "--report",
        report,
    )
    assert code == 0, output
    settings = json.loads(report.read_text())["settings"]
    assert settings == {
        "sampling_steps": 1,
        "sampler": "ddim",
        "seed": 1,
        "batch_size": 2,
        "postprocess": "threshold",
        "timestep_spacing": "trailing",
        "samples": 2,
    }


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--sampler", "euler"], ["'--sampler'", "'euler'", "'ddpm', 'ddim'"]),
        (["--steps", "0"], ["'--sampling-steps' / '--steps'", "greater than or equal to 1"]),
        (["--precision", "fp64"], ["'--precision'", "'fp64'"]),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    data: Path, tmp_path: Path, tiny_weights: Path, extra: list[str], words: list[str]
) -> None:
    code, output = _invoke(data, tmp_path / "out", "--weights", tiny_weights, *extra)
    assert code == 2
    for word in words:
        assert word in output
    assert not (tmp_path / "out").exists()


def test_report_inside_the_output_folder_is_refused_before_running(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    out = tmp_path / "out"
    code, output = _invoke(data, out, "--weights", tiny_weights, "--report", out / "report.json")
    assert code == 2 and "inside the output folder" in output
    assert not out.exists()


def test_missing_weights_or_data_exit_2(data: Path, tmp_path: Path, tiny_weights: Path) -> None:
    code, output = _invoke(data, tmp_path / "out", "--weights", tmp_path / "nope")
    assert code == 2 and "does not exist" in output
    code, output = _invoke(tmp_path / "no-data", tmp_path / "out", "--weights", tiny_weights)
    assert code == 2 and "data folder" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cuda_without_gpu_exit_2(data: Path, tmp_path: Path, tiny_weights: Path) -> None:
    code, output = _invoke(data, tmp_path / "out", "--weights", tiny_weights, "--device", "cuda")
    assert code == 2 and "sees no CUDA GPU" in output


def test_a_failed_case_gives_exit_1_and_shows_why(data: Path, tmp_path: Path, tiny_weights: Path) -> None:
    bad = data / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2w.nii.gz"
    bad.write_bytes(b"not a volume")
    code, output = _invoke(data, tmp_path / "out", "--weights", tiny_weights, "--steps", "1")
    assert code == 1
    assert "2 written, 0 skipped, 1 failed, 0 ignored" in output
    assert "cannot use the t2w volume" in output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "BraTS-GLI-00001-000-t2f.nii.gz",
        "BraTS-PED-00003-000-t1c.nii.gz",
    ]
