"""Per target: does the synthesis earn its place against the best copy and the skip baseline?"""

from __future__ import annotations

import numpy as np
import pytest

from cwdm.evaluation.verdict import verdict_table, verdicts

CASES = [f"BraTS-GLI-0000{n}-000" for n in range(1, 6)]


def _rows(target: str, source: str, wt: list[float], tc: list[float], et: list[float]) -> list[dict]:
    return [
        {"case": case, "target": target, "source": source, "dice_wt": a, "dice_tc": b, "dice_et": c}
        for case, a, b, c in zip(CASES, wt, tc, et, strict=True)
    ]


def test_a_synthesis_that_beats_every_rival_and_one_that_loses_a_region() -> None:
    base = [0.70, 0.60, 0.80, 0.65, 0.75]
    shift = lambda values, d: [v + d for v in values]  # noqa: E731
    rows = (
        _rows("t1n", "prediction", shift(base, 0.05), base, shift(base, -0.1))
        + _rows("t1n", "real", shift(base, 0.1), shift(base, 0.05), base)
        + _rows("t1n", "copy-t1c", base, shift(base, -0.02), shift(base, -0.2))
        + _rows("t1n", "copy-t2w", shift(base, -0.3), shift(base, -0.3), shift(base, -0.3))
        + _rows("t1n", "missing", shift(base, -0.01), shift(base, -0.05), shift(base, -0.15))
        + _rows("t1c", "prediction", base, base, shift(base, -0.3))
        + _rows("t1c", "real", base, base, base)
        + _rows("t1c", "copy-t2w", shift(base, -0.1), shift(base, -0.1), shift(base, -0.1))
    )
    rows[0]["dice_et"] = ""  # one case's synthesis was not measured: that case leaves t1n's comparison
    found = {v.target: v for v in verdicts(rows)}
    t1n, t1c = found["t1n"], found["t1c"]
    assert t1n.cases == tuple(CASES[1:]) and t1n.best_copy == "copy-t1c"
    assert t1n.versus_copy["dice_wt"].mean == pytest.approx(0.05)
    assert t1n.versus_missing["dice_et"].mean == pytest.approx(0.05)
    assert t1n.means["prediction"]["dice_tc"].mean == pytest.approx(np.mean(base[1:]))
    assert t1n.earns_its_place and not t1n.shortfalls()
    assert not t1c.earns_its_place and not t1c.versus_missing  # no skip baseline measured for t1c
    (note,) = t1c.shortfalls()
    assert note.startswith("ET Dice") and "copying t2w" in note
    table = verdict_table([t1n, t1c])
    assert "synthesis earns its place" in table and "**does not**" in table
