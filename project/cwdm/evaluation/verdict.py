"""Should the missing sequence be synthesised at all? Per target, the Dice of the case completed with the
synthesis against the three other ways to get a segmentation: the real complete case (the ceiling), the
best present sequence copied into the slot (the challenge's dummy), and the sequence left out (the
skip-synthesis baseline, where the segmenter can segment an incomplete case).

Each is a mean over cases with its bootstrap 95 % interval (:mod:`cwdm.evaluation.stats`), and the
comparisons are paired differences over the same cases. A synthesis *earns its place* for a target when
its mean Dice is above the best copy's and the skip baseline's on every region (WT, TC, ET).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..segmentation.labels import DICE_COLUMNS
from ..sequences import CANONICAL_ORDER
from .stats import Interval, bootstrap_mean, paired_difference

#: The sources a verdict reads, as :mod:`cwdm.evaluation.results` names them.
PREDICTION, REAL, MISSING = "prediction", "real", "missing"
REGION_TITLES = {"dice_wt": "WT", "dice_tc": "TC", "dice_et": "ET"}


@dataclass(frozen=True)
class TargetVerdict:
    """The downstream comparison of one target.

    Attributes:
        target: The synthesised sequence.
        cases: The case ids compared (those with every source measured).
        means: Source -> region column -> mean and interval; sources ``prediction``, ``real``,
            ``missing`` (when measured) and :attr:`best_copy`.
        best_copy: The copy source with the highest mean Dice over the three regions.
        versus_copy, versus_missing: Region column -> the paired difference synthesis minus that source.
    """

    target: str
    cases: tuple[str, ...]
    means: Mapping[str, Mapping[str, Interval]]
    best_copy: str | None
    versus_copy: Mapping[str, Interval]
    versus_missing: Mapping[str, Interval]

    @property
    def earns_its_place(self) -> bool:
        """The synthesis's mean Dice is above the best copy's and the skip baseline's on every region."""
        rivals = [self.versus_copy, self.versus_missing] if self.versus_missing else [self.versus_copy]
        return bool(self.versus_copy) and all(rival[key].mean > 0 for rival in rivals for key in rival)

    def shortfalls(self) -> list[str]:
        """Where the synthesis falls short, in words with the numbers (empty when it earns its place)."""
        notes = []
        for label, rival, differences in (
            (f"copying {(self.best_copy or '').removeprefix('copy-')}", self.best_copy, self.versus_copy),
            ("leaving it out", MISSING, self.versus_missing),
        ):
            for key, difference in differences.items():
                if difference.mean <= 0:
                    ours = self.means[PREDICTION][key].mean
                    theirs = self.means[rival][key].mean  # type: ignore[index]
                    notes.append(
                        f"{REGION_TITLES[key]} Dice {ours:.3f} against {theirs:.3f} for {label} "
                        f"(difference {difference.text()})"
                    )
        return notes


def verdicts(rows: Iterable[Mapping[str, object]]) -> list[TargetVerdict]:
    """One :class:`TargetVerdict` per target of ``rows``: records with ``case``, ``target``, ``source``
    and the Dice columns (``cwdm evaluate --baseline --segmenter``'s CSV rows, or its scores' values).
    A case enters a target's comparison only when its synthesis, real case, copies (and skip baseline,
    where there is one) are all measured."""
    table: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in rows:
        values = {key: _number(row.get(key)) for key in DICE_COLUMNS}
        table[(str(row["target"]), str(row["source"]), str(row["case"]))] = values
    found = [_verdict(table, str(target)) for target in CANONICAL_ORDER]
    return [verdict for verdict in found if verdict is not None]


def _verdict(table: Mapping[tuple[str, str, str], Mapping[str, float]], target: str) -> TargetVerdict | None:
    sources = {source for t, source, _ in table if t == target}
    if PREDICTION not in sources or REAL not in sources:
        return None
    copies = sorted(source for source in sources if source.startswith("copy-"))
    wanted = [PREDICTION, REAL, *copies] + ([MISSING] if MISSING in sources else [])
    cases = sorted(
        case
        for t, source, case in table
        if t == target
        and source == PREDICTION
        and all((target, w, case) in table and _measured(table[(target, w, case)]) for w in wanted)
    )
    if not cases:
        return None

    def series(source: str, key: str) -> list[float]:
        return [table[(target, source, case)][key] for case in cases]

    def differences(rival: str) -> dict[str, Interval]:
        return {key: paired_difference(series(PREDICTION, key), series(rival, key)) for key in DICE_COLUMNS}

    means = {source: {key: bootstrap_mean(series(source, key)) for key in DICE_COLUMNS} for source in wanted}
    best = max(copies, key=lambda s: sum(means[s][k].mean for k in DICE_COLUMNS), default=None)
    shown = {s: means[s] for s in (PREDICTION, REAL, best, MISSING) if s in means}
    versus_copy = differences(best) if best else {}
    versus_missing = differences(MISSING) if MISSING in wanted else {}
    return TargetVerdict(target, tuple(cases), shown, best, versus_copy, versus_missing)


def verdict_table(found: Sequence[TargetVerdict]) -> str:
    """A Markdown table: per target, Dice WT/TC/ET (mean [95 % interval]) of the synthesis, the real
    case, the best copy and the skip baseline, the paired differences, and the verdict."""
    lines = [
        "| missing | n | synthesis | real case (ceiling) | best copy | sequence left out "
        "| synthesis - best copy | synthesis - left out | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in found:

        def cell(intervals: Mapping[str, Interval] | None) -> str:
            if not intervals:
                return "-"
            return "<br>".join(f"{REGION_TITLES[k]} {intervals[k].text()}" for k in DICE_COLUMNS)

        copy = f"{v.best_copy}: " + cell(v.means.get(v.best_copy or "")) if v.best_copy else "-"
        verdict = (
            "synthesis earns its place" if v.earns_its_place else "**does not**: " + "; ".join(v.shortfalls())
        )
        lines.append(
            f"| {v.target} | {len(v.cases)} | {cell(v.means[PREDICTION])} | {cell(v.means[REAL])} | {copy} "
            f"| {cell(v.means.get(MISSING))} | {cell(v.versus_copy)} | {cell(v.versus_missing)} | {verdict} |"
        )
    return "\n".join(lines)


def _number(value: object) -> float:
    if value in (None, ""):
        return math.nan
    return float(value)  # type: ignore[arg-type]


def _measured(values: Mapping[str, float]) -> bool:
    return all(not math.isnan(values[key]) for key in DICE_COLUMNS)
