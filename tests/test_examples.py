"""The shipped examples can be scored: the held-out case's truth is there, complete and real."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

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
