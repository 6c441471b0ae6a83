"""``cwdm sweep --segmenter``: Dice per setting, the baselines once per case, and a recommendation that
holds the Dice."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cwdm.evaluation.sweep.analysis as sweep_analysis
from cwdm.cli import app
from cwdm.evaluation.sweep import SettingSummary, recommend

from ..conftest import write_tiny_weights
from .synthetic import write_case_folder
from .test_command import SCRIPT
from .test_evaluate_dice import canonical_truth, expected_dice


def _summary(name: str, seconds: float, psnr: float, dice_et: float) -> SettingSummary:
    scores = {key: float("nan") for key in sweep_analysis.SUMMARY_SCORES}
    scores |= {"full_psnr": psnr, "full_ssim": 0.9, "dice_wt": 0.9, "dice_tc": 0.8, "dice_et": dice_et}
    return SettingSummary(name, None, 1, seconds, scores)


def test_the_recommendation_holds_the_dice_of_every_region() -> None:
    summaries = [
        _summary("fast-loses-et", 1.0, 25.9, 0.40),
        _summary("slower-keeps-et", 3.0, 25.8, 0.70),
        _summary("slowest-best", 9.0, 26.0, 0.71),
    ]
    assert recommend(summaries).setting == "slower-keeps-et"  # within 0.02 of the best ET Dice
    assert recommend(summaries, dice_tolerance=0.5).setting == "fast-loses-et"
    assert recommend([_summary("a", 1.0, 25.0, float("nan"))]).setting == "a"  # no Dice measured: PSNR/SSIM


def test_a_recommendation_when_no_setting_is_within_every_tolerance() -> None:
    # The best PSNR and the best ET Dice come from different settings, each far from the other's best:
    # nothing is within every tolerance, so the one falling least short (in tolerances) is chosen.
    summaries = [
        _summary("best-psnr", 1.0, 27.0, 0.40),  # ET 0.30 short: 15 tolerances
        _summary("best-et", 9.0, 25.0, 0.70),  # PSNR 2 dB short: 4 tolerances
        _summary("between", 5.0, 26.0, 0.62),  # 2 tolerances of PSNR, 4 of ET
        _summary("also-between", 3.0, 26.0, 0.62),
    ]
    assert recommend(summaries).setting == "also-between"  # worst shortfall 4 tolerances, and faster
    # Within every tolerance again, the fastest of those within wins, however short the others fall:
    assert recommend(summaries, psnr_tolerance=1.0, dice_tolerance=0.1).setting == "also-between"
    assert recommend(summaries, psnr_tolerance=5.0).setting == "best-et"  # the only one within 0.02 ET


@pytest.fixture
def segmented_cases(tmp_path: Path) -> tuple[Path, Path, Path]:
    cases = tmp_path / "cases"
    for number, convention in ((1, "brats2021"), (2, "brats2023")):
        write_case_folder(
            cases, f"BraTS-GLI-0000{number}-000", seed=number, shape=(32, 32, 16), seg_convention=convention
        )
    script = tmp_path / "segment.py"
    script.write_text(SCRIPT)
    spec = tmp_path / "segmenter.yaml"
    spec.write_text(
        f"kind: command\ncommand: ['{sys.executable}', '{script}', '{{input}}/{{case}}', "
        "'{output}/{case}.nii.gz']\nlabels: brats2021\n"
    )
    return cases, write_tiny_weights(tmp_path / "weights"), spec


def test_a_sweep_with_a_segmenter(segmented_cases: tuple[Path, Path, Path], tmp_path: Path) -> None:
    cases, weights, spec = segmented_cases
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {sampler: ddim, timestep_spacing: trailing, sampling_steps: [1, 2]}\n")
    out, kept = tmp_path / "sweep", tmp_path / "segmentations"
    command = [
        "sweep",
        str(cases),
        str(out),
        "--weights",
        str(weights),
        "--grid",
        str(grid),
        "--targets",
        "t1c",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--segmenter",
        str(spec),
        "--segmentations",
        str(kept),
        "--keep-predictions",
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "Dice WT/TC/ET" in result.output
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 * 2
    for row in rows:
        prediction = out / "work" / "predictions" / row["setting"] / f"{row['case']}-t1c.nii.gz"
        expected = expected_dice(cases / row["case"], prediction, tmp_path)
        assert {k: float(row[k]) for k in expected} == pytest.approx(expected)
        assert (kept / f"{row['case']}-t1c-{row['setting']}.nii.gz").is_file()
    baselines = list(csv.DictReader((out / "baselines.csv").open()))
    sources = sorted((b["case"], b["source"]) for b in baselines)
    assert sources == sorted(
        (f"BraTS-GLI-0000{n}-000", s) for n in (1, 2) for s in ("real", "copy-t1n", "copy-t2w", "copy-t2f")
    )
    real = next(b for b in baselines if b["source"] == "real" and b["case"] == "BraTS-GLI-00001-000")
    assert float(real["dice_et"]) == 1.0  # the stand-in segmenter's rule recovers the synthetic labels
    assert canonical_truth(cases / "BraTS-GLI-00001-000").any()
    report = (out / "sweep.md").read_text()
    assert "real complete case (ceiling)" in report and "Dice ET" in report
    assert "0.02 Dice of each region" in report and "- missing t1c:" in report
    assert (out / "sweep-t1c.png").stat().st_size > 20_000

    # A rerun scores nothing again: the baselines are kept, not recomputed.
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert list(csv.DictReader((out / "baselines.csv").open())) == baselines
