"""The outcome of a training command: its exit status and what it tells the user, from where each run
stopped (the loop and checkpoints themselves are tested through both trainings)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cwdm.resumable import RunOutcome, TrainingOutcome

DONE = RunOutcome("t1n", 10, 10, Path("w/t1n.safetensors"))
HALF = RunOutcome("t2f", 4, 10, Path("w/t2f.safetensors"))


@pytest.mark.parametrize(
    ("runs", "planned", "signum", "limit", "code", "says"),
    [
        ([DONE], 1, None, None, 0, None),
        ([DONE, HALF], 2, None, 60.0, 0, "time limit of 60 s a run reached"),
        ([DONE, HALF], 2, signal.SIGINT, None, 130, "stopped by SIGINT after step 4 of 10"),
        ([DONE, HALF], 2, signal.SIGTERM, 60.0, 143, "stopped by SIGTERM"),  # a signal beats the limit
        ([DONE], 2, None, None, 143, "stopped by SIGTERM after step 10 of 10"),  # another rank's signal
    ],
)
def test_the_exit_status_says_why_a_training_ended(
    runs: list[RunOutcome], planned: int, signum: int | None, limit: float | None, code: int, says: str | None
) -> None:
    outcome = TrainingOutcome.of(runs, planned, signum, limit)
    assert outcome.exit_code == code
    notice = outcome.notice()
    assert (notice is None) if says is None else (says in notice and "rerun" in notice)
    assert outcome.lines()[0] == "t1n: step 10 of 10 (done); weights: w/t1n.safetensors"
