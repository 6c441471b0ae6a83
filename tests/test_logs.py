"""Logs a scheduler's log file can hold: one whole line per event when not on a terminal (no wrapping at
80 columns, paths unbroken), one ISO time-stamp format for ``cwdm`` and the image's entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import write_case, write_tiny_weights

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_run_whose_output_is_not_a_terminal_logs_whole_lines(tmp_path: Path) -> None:
    # A deep folder: the output path alone is over 200 characters, as on a cluster's scratch space.
    deep = tmp_path / ("scratch-" + "x" * 60) / ("project-" + "y" * 60) / ("run-" + "z" * 60)
    data = deep / "cases"
    write_case(data, "BraTS-GLI-00001-000", missing="t2f", seed=1)
    weights = write_tiny_weights(tmp_path / "weights")
    out = deep / "predictions"
    command = "from cwdm.cli import main; main()"
    args = ["-c", command, "infer", str(data), str(out), "--weights", str(weights), "--device", "cpu"]
    first = _run(args, tmp_path)
    assert first.returncode == 0, first.stderr
    again = _run(args, tmp_path)  # a rerun logs the skipped output's full path
    output = out / "BraTS-GLI-00001-000-t2f.nii.gz"
    assert len(str(output)) > 200
    for result in (first, again):
        lines = result.stderr.splitlines()
        assert lines and all(STAMP.match(line) for line in lines), result.stderr
    assert any(str(output) in line and "already complete" in line for line in again.stderr.splitlines())
    summary = first.stdout.splitlines()
    assert any(line.startswith("BraTS-GLI-00001-000") and "written" in line for line in summary)
    assert any("1 written" in line and "ddpm 2 steps, 1 draw a case" in line for line in summary)


def test_the_entry_point_stamps_its_lines_as_cwdm_does(tmp_path: Path) -> None:
    data = tmp_path / "cases"
    write_case(data, "BraTS-GLI-00001-000", missing="t1n", seed=2)
    weights = write_tiny_weights(tmp_path / "weights")
    args = [str(ROOT / "project" / "mlcube.py"), "infer", f"--data_path={data}"]
    args += [
        f"--output_path={tmp_path / 'out'}",
        f"--weights={weights}",
        f"--report_path={tmp_path / 'r.json'}",
    ]
    result = _run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if STAMP.match(line)]
    assert any("BraTS-GLI-00001-000 (t1n): written" in line for line in lines)
    assert result.stdout == ""  # the MLCube convention: everything on stderr and in the log file
    log_file = (tmp_path / "r.log").read_text().splitlines()
    assert log_file and all(
        STAMP.match(line) or not line.strip() or line.startswith(("case", "BraTS")) for line in log_file
    )


def test_the_sampling_bar_on_a_terminal_takes_each_batchs_own_step_count() -> None:
    """Targets may sample in different step counts (model.yaml ``targets:``): the bar's total is the
    current batch's, never the run-wide default."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from cwdm.cli.infer import InferProgress
    from cwdm.config.run import SamplingSettings

    run_wide = SamplingSettings(sampler="ddim", sampling_steps=2)
    synth = SimpleNamespace(
        runtime=SimpleNamespace(describe=lambda: "cpu (fp32)"),
        settings=run_wide,
        target_settings={"t2w": SamplingSettings(sampler="ddim", sampling_steps=1)},
    )
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with InferProgress(console) as progress:
        progress.start(synth, [object(), object()])  # type: ignore[arg-type]
        task = progress.bars.tasks[progress.steps]
        assert not task.visible  # nothing shown before the first step
        progress.step(("BraTS-GLI-00001-000",), 1, 1)  # a t2w batch: 1 step
        assert (task.total, task.completed, task.visible) == (1, 1, True)
        progress.step(("BraTS-GLI-00002-000",), 1, 2)  # a t1n batch: 2 steps
        assert (task.total, task.completed) == (2, 1)
