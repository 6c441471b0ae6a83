"""The sweep's rows, typed once, and what is read from them: means per setting, Pareto fronts, the
recommended setting, the baselines beside them.

``sweep.csv`` holds one row per setting, case and target (:class:`SweepRow`, parsed from the file once
by :func:`read_rows`); ``baselines.csv`` one per case for the real complete case and one per case,
target and copied sequence (:class:`BaselineRow`). :func:`summarise` gives each setting's mean scores
and time over a group of rows, :func:`recommend` picks the fastest setting within a tolerance of the
best score measured.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...atomic import write_atomic
from ...config import SweepSetting
from ...segmentation.labels import DICE_COLUMNS
from ..results import REAL, columns
from ..timing import Timing

#: The CSV's columns of a setting, before the scores (the setting's name, then its fields).
SETTING_COLUMNS = ["setting", *SweepSetting.model_fields]
#: After ``seconds`` (the median of the runs): each run, and the load (:class:`Timing`).
TIMING_COLUMNS = ["seconds_runs", "other_cores", "load_1min"]
ROW_COLUMNS = [
    *SETTING_COLUMNS,
    "case",
    "target",
    "seconds",
    *TIMING_COLUMNS,
    "device",
    "uncertainty",
    *columns(),
]
BASELINE_COLUMNS = ["case", "target", "source", *columns()]
#: The scores the summary shows, with their titles.
SUMMARY_SCORES = {
    "full_psnr": "PSNR",
    "full_ssim": "SSIM",
    "brain_psnr": "PSNR brain",
    "brasyn_ssim_tumor": "BraSyn SSIM tumour",
    "brasyn_ssim_non_tumor": "BraSyn SSIM non-tumour",
    "dice_wt": "Dice WT",
    "dice_tc": "Dice TC",
    "dice_et": "Dice ET",
}


def _number(text: str | None) -> float:
    return math.nan if text in ("", None) else float(text)  # type: ignore[arg-type]


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def _two_decimals(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


@dataclass(frozen=True)
class SweepRow:
    """One synthesis of the sweep, scored.

    Attributes:
        name: The setting's name in the CSV (:attr:`SweepSetting.name` for rows the sweep wrote).
        setting: The setting.
        case_id: The case.
        target: The sequence synthesised.
        seconds: Its time end to end (the median of ``timing.runs``).
        device: Where it ran.
        uncertainty: The mean sd of its draws inside the brain (several draws only).
        scores: Every score column (NaN where not measured).
        timing: How the time was taken (runs, the machine's load); ``None`` in older rows.
    """

    name: str
    setting: SweepSetting
    case_id: str
    target: str
    seconds: float
    device: str = ""
    uncertainty: float | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    timing: Timing | None = None

    def score(self, key: str) -> float:
        return self.scores.get(key, math.nan)

    def to_csv(self) -> dict[str, str]:
        values = {
            "setting": self.name,
            **{key: str(value) for key, value in self.setting.model_dump().items()},
            "case": self.case_id,
            "target": self.target,
            "seconds": repr(self.seconds),
            "device": self.device,
            "uncertainty": "" if self.uncertainty is None else repr(self.uncertainty),
        }
        if self.timing is not None:
            values["seconds_runs"] = " ".join(f"{run:.3f}" for run in self.timing.runs)
            values["other_cores"] = (
                "" if math.isnan(self.timing.other_cores) else f"{self.timing.other_cores:.2f}"
            )
            values["load_1min"] = "" if math.isnan(self.timing.load_1min) else f"{self.timing.load_1min:.2f}"
        return values | {key: _cell(value) for key, value in self.scores.items()}

    @classmethod
    def from_csv(cls, row: Mapping[str, str]) -> SweepRow:
        """A row of ``sweep.csv``."""
        fields = {key: row[key] for key in SweepSetting.model_fields if row.get(key) not in (None, "")}
        for key in ("sampling_steps", "samples"):
            if key in fields:
                fields[key] = int(fields[key])  # type: ignore[assignment]
        runs = tuple(float(value) for value in (row.get("seconds_runs") or "").split())
        timing = None
        if runs:
            timing = Timing(
                _number(row["seconds"]), runs, _number(row.get("other_cores")), _number(row.get("load_1min"))
            )
        uncertainty = row.get("uncertainty")
        return cls(
            name=row["setting"],
            setting=SweepSetting.model_validate(fields),
            case_id=row.get("case", ""),
            target=row["target"],
            seconds=_number(row["seconds"]),
            device=row.get("device", ""),
            uncertainty=float(uncertainty) if uncertainty else None,
            scores={key: _number(row.get(key)) for key in columns()},
            timing=timing,
        )


@dataclass(frozen=True)
class BaselineRow:
    """The real complete case (``source`` ``real``, target ``all``) or a copy baseline of a target."""

    case_id: str
    target: str
    source: str
    scores: Mapping[str, float]

    def to_csv(self) -> dict[str, str]:
        cells = {key: _cell(value) for key, value in self.scores.items() if key in BASELINE_COLUMNS}
        return {"case": self.case_id, "target": self.target, "source": self.source} | cells

    @classmethod
    def from_csv(cls, row: Mapping[str, str]) -> BaselineRow:
        scores = {key: _number(row.get(key)) for key in columns()}
        return cls(row["case"], row["target"], row["source"], scores)


def read_rows(path: Path) -> list[SweepRow]:
    """The rows of an existing ``sweep.csv`` (none when it does not exist)."""
    return [SweepRow.from_csv(row) for row in _read_csv(path)]


def read_baselines(path: Path) -> list[BaselineRow]:
    """The rows of an existing ``baselines.csv`` (none when it does not exist)."""
    return [BaselineRow.from_csv(row) for row in _read_csv(path)]


def write_rows(path: Path, rows: Iterable[SweepRow | BaselineRow]) -> Path:
    """Write ``sweep.csv`` or ``baselines.csv`` (by the rows' kind) atomically."""
    rows = list(rows)
    header = BASELINE_COLUMNS if rows and isinstance(rows[0], BaselineRow) else ROW_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.to_csv() for row in rows)
    return write_atomic(path, buffer.getvalue())


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- summaries -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SettingSummary:
    """Mean scores and time of one setting over a group of rows (a target's, or all)."""

    setting: str
    fields: SweepSetting | None
    n: int
    seconds: float
    scores: dict[str, float]
    pareto_psnr: bool = False
    pareto_ssim: bool = False


def _mean(values: Iterable[float]) -> float:
    numbers = [v for v in values if not math.isnan(v)]
    return float(np.mean(numbers)) if numbers else math.nan


def comparable(rows: Sequence[SweepRow], target: str | None = None) -> list[SweepRow]:
    """The rows (of ``target``, or of all targets) of the settings measured on every case and target
    that any setting was: a mean over fewer or other syntheses is not comparable (a slow reference run
    on one target only, say)."""
    chosen = [row for row in rows if target is None or row.target == target]
    measured = {(row.case_id, row.target) for row in chosen}
    covered: dict[str, set[tuple[str, str]]] = {}
    for row in chosen:
        covered.setdefault(row.name, set()).add((row.case_id, row.target))
    return [row for row in chosen if covered[row.name] == measured]


def summarise(rows: Sequence[SweepRow], target: str | None = None) -> list[SettingSummary]:
    """One :class:`SettingSummary` per setting (of ``target``, or over all targets), fastest first,
    with the Pareto fronts of PSNR and SSIM against seconds marked."""
    chosen = [row for row in rows if target is None or row.target == target]
    summaries = []
    for name in dict.fromkeys(row.name for row in chosen):
        group = [row for row in chosen if row.name == name]
        summaries.append(
            SettingSummary(
                setting=name,
                fields=group[0].setting,
                n=len(group),
                seconds=_mean(row.seconds for row in group),
                scores={key: _mean(row.score(key) for row in group) for key in SUMMARY_SCORES},
            )
        )
    summaries.sort(key=lambda s: s.seconds)
    return [
        SettingSummary(
            s.setting,
            s.fields,
            s.n,
            s.seconds,
            s.scores,
            _on_front(s, summaries, "full_psnr"),
            _on_front(s, summaries, "full_ssim"),
        )
        for s in summaries
    ]


def _on_front(candidate: SettingSummary, others: Sequence[SettingSummary], key: str) -> bool:
    """No other setting is at least as fast and as good, and strictly better in one of the two."""
    score = candidate.scores[key]
    return not any(
        o.seconds <= candidate.seconds
        and o.scores[key] >= score
        and (o.seconds < candidate.seconds or o.scores[key] > score)
        for o in others
        if o is not candidate
    )


@dataclass(frozen=True)
class Tolerances:
    """How far below the best measured mean a setting may be and still count as as good."""

    psnr: float = 0.5
    ssim: float = 0.01
    dice: float = 0.02

    def describe(self, with_dice: bool) -> str:
        rule = f"within {self.psnr:g} dB PSNR and {self.ssim:g} SSIM"
        return rule + (f" and {self.dice:g} Dice of each region" if with_dice else "")


def shortfalls(
    summaries: Sequence[SettingSummary], tolerances: Tolerances = Tolerances()
) -> dict[str, float]:
    """Each setting's worst shortfall from the best measured mean PSNR, SSIM and (where the rows have
    Dice) Dice of each region, counted in that score's tolerance: at most 1 is within every tolerance;
    a missing score is an infinite shortfall."""
    best_psnr = max(s.scores["full_psnr"] for s in summaries)
    best_ssim = max(s.scores["full_ssim"] for s in summaries)
    dice_keys = [k for k in DICE_COLUMNS if any(math.isfinite(s.scores.get(k, math.nan)) for s in summaries)]
    best_dice = {k: max(s.scores[k] for s in summaries if math.isfinite(s.scores[k])) for k in dice_keys}
    tolerances = tolerances or Tolerances()
    out = {}
    for summary in summaries:
        gaps = [
            (best_psnr - summary.scores["full_psnr"]) / tolerances.psnr,
            (best_ssim - summary.scores["full_ssim"]) / tolerances.ssim,
            *((best_dice[k] - summary.scores[k]) / tolerances.dice for k in dice_keys),
        ]
        out[summary.setting] = math.inf if any(math.isnan(gap) for gap in gaps) else max(gaps)
    return out


@dataclass(frozen=True)
class Recommendation:
    """The recommended setting of a group of summaries, and whether it is within every tolerance."""

    choice: SettingSummary
    within: bool


def recommend(
    summaries: Sequence[SettingSummary],
    psnr_tolerance: float = 0.5,
    ssim_tolerance: float = 0.01,
    dice_tolerance: float = 0.02,
) -> SettingSummary:
    """The fastest setting whose mean PSNR and SSIM are within the tolerances of the best measured and,
    where the rows have Dice, whose mean Dice of every region (WT, TC, ET) is within ``dice_tolerance``
    of the best measured for that region.

    The bests may come from different settings, so that no setting is within every tolerance (on two
    held-out cases, t1c's best PSNR came from 1 step and its best TC and ET Dice from 10, 0.9 dB
    lower). Then the setting that falls least short (:func:`shortfalls`) is the one recommended, the
    fastest of those if tied.
    """
    return recommendation(summaries, Tolerances(psnr_tolerance, ssim_tolerance, dice_tolerance)).choice


def recommendation(
    summaries: Sequence[SettingSummary], tolerances: Tolerances = Tolerances()
) -> Recommendation:
    """:func:`recommend`, saying whether the choice is within every tolerance."""
    short = shortfalls(summaries, tolerances)
    good = [s for s in summaries if short[s.setting] <= 1.0]
    if good:
        return Recommendation(min(good, key=lambda s: s.seconds), True)
    return Recommendation(min(summaries, key=lambda s: (short[s.setting], s.seconds)), False)


def baseline_summary(
    baselines: Sequence[BaselineRow], rows: Sequence[SweepRow], target: str | None = None
) -> dict[str, dict[str, float]]:
    """Mean scores of the real case and of each baseline source over the cases and targets of ``rows``.

    Returns:
        ``{source: {column: mean, "n": rows averaged}}``, the real case first (one row per case: its
        Dice does not depend on the target).
    """
    pairs = {(row.case_id, row.target) for row in rows if target is None or row.target == target}
    cases = {case for case, _ in pairs}
    out: dict[str, dict[str, float]] = {}
    for source in sorted({b.source for b in baselines}, key=lambda src: (src != REAL, src)):
        chosen = [
            b
            for b in baselines
            if b.source == source
            and (b.case_id in cases if source == REAL else (b.case_id, b.target) in pairs)
        ]
        if chosen:
            out[source] = {key: _mean(b.scores.get(key, math.nan) for b in chosen) for key in SUMMARY_SCORES}
            out[source]["n"] = float(len(chosen))
    return out
