"""The shipped examples can be scored: the held-out case's truth is there, complete and real."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cwdm.cases.discovery import discover_cases
from cwdm.evaluation.evaluate import evaluate

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HELD_OUT = "BraTS-GLI-99909-000"


def test_the_held_out_truth_is_the_real_missing_sequence() -> None:
    (case,) = discover_cases(EXAMPLES / "ground_truth")
    assert case.case_id == HELD_OUT and case.is_complete
    (missing,) = next(
        c for c in discover_cases(EXAMPLES / "pseudo_validation") if c.case_id == HELD_OUT
    ).missing
    truth = case.files[missing].read_bytes()
    # The checksum that the sample data's SOURCES.md records for this file.
    assert (
        hashlib.sha256(truth).hexdigest()
        == "fa452fe63c5c778d0e0b92e1d28cd6739cd40ddd381d14799a8640bfa9bed960"
    )


def test_a_prediction_of_the_example_is_scored_with_its_tumour(tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(
        EXAMPLES / "pseudo_validation" / HELD_OUT / f"{HELD_OUT}-t2w.nii.gz", pred / f"{HELD_OUT}-t1c.nii.gz"
    )
    result = evaluate(pred, EXAMPLES / "ground_truth")
    assert not result.failures
    (scores,) = result.scores
    assert scores.case_id == HELD_OUT and "tumor" in scores.regions and scores.brasyn is not None


def _readme_commands(verb: str) -> list[str]:
    """The ``cwdm <verb>`` lines of examples/README.md's code blocks."""
    text = (EXAMPLES / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [
        line.strip() for block in blocks for line in block.splitlines() if line.startswith(f"cwdm {verb} ")
    ]


@pytest.fixture(scope="module")
def copied_predictions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prediction for each shipped case, fast: a present sequence copied under the missing one's name
    (the scores are then the copy baseline's; what matters here is which cases have a truth)."""
    pred = tmp_path_factory.mktemp("examples") / "predictions"
    pred.mkdir()
    for case in discover_cases(EXAMPLES / "pseudo_validation"):
        (target,) = case.missing
        shutil.copy(next(iter(case.files.values())), pred / f"{case.case_id}-{target}.nii.gz")
    return pred


def _as_in_a_log_file(command: str, pred: Path, qc: Path) -> tuple[int, list[str]]:
    """Run a README command with stdout and stderr redirected to one file, as a batch scheduler does."""
    verb, *rest = shlex.split(command)[1:]
    args = [verb] + [str(pred) if a == "predictions" else str(qc) if a == "qc" else a for a in rest]
    log = qc.parent / f"{args[0]}.log"
    with open(log, "w") as handle:
        code = subprocess.run(
            [sys.executable, "-c", "import sys; from cwdm.cli import app; sys.exit(app())", *args],
            cwd=EXAMPLES.parent,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "80"},
            timeout=600,
        ).returncode
    return code, log.read_text().splitlines()


def test_the_readme_scoring_command_scores_the_held_out_case_and_says_no_truth_for_the_rest(
    copied_predictions: Path, tmp_path: Path
) -> None:
    (command,) = _readme_commands("evaluate")
    code, lines = _as_in_a_log_file(command, copied_predictions, tmp_path / "qc")
    assert code == 0, "\n".join(lines)
    others = sorted(
        c.case_id for c in discover_cases(EXAMPLES / "pseudo_validation") if c.case_id != HELD_OUT
    )
    for case_id in others:  # one plain line each, with the reason
        (line,) = [line for line in lines if f": {case_id} (" in line and " of 10: " in line]
        assert f"no truth (no case folder examples/ground_truth/{case_id})" in line
    (line,) = [line for line in lines if f"{HELD_OUT} (t1c)" in line and " of 10: " in line]
    assert "scored" in line
    (summary,) = [line for line in lines if line.startswith("no truth (not scored, not a failure): ")]
    assert [name.split(" (")[0] for name in summary.split(": ", 1)[1].split(", ")] == others
    assert "10 predictions: 1 scored, 9 no truth, 0 failed" in lines
    assert not any("not scored:" in line or "failed:" in line for line in lines)


def test_the_readme_qc_command_draws_every_prediction_with_the_truth_where_shipped(
    copied_predictions: Path, tmp_path: Path
) -> None:
    (command,) = _readme_commands("qc")
    qc = tmp_path / "qc"
    code, lines = _as_in_a_log_file(command, copied_predictions, qc)
    assert code == 0, "\n".join(lines)
    statuses = [line for line in lines if line.startswith("BraTS-")]
    assert len(statuses) == 10
    for line in statuses:
        if line.startswith(HELD_OUT):
            assert line == f"{HELD_OUT}  t1c  previewed"
        else:
            assert line.endswith("  previewed: no truth in examples/ground_truth, drawn with its inputs only")
    assert len(list(qc.glob("*.png"))) == 10
    first_case, first_target = statuses[0].split()[:2]
    with (
        Image.open(qc / f"{HELD_OUT}-t1c.png") as truth,
        Image.open(qc / f"{first_case}-{first_target}.png") as bare,
    ):
        assert (
            truth.width > 1.3 * bare.width
        )  # six columns (inputs, prediction, truth, difference) against four
    page = (qc / "index.html").read_text()
    assert page.count("PSNR / MSE (full)") == 1 and page.count("no truth in examples/ground_truth") == 9
