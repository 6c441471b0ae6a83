"""What an evaluation found (:func:`cwdm.evaluation.evaluate.evaluate`): the scores of each prediction
and baseline (:class:`CaseScores`), what could not be scored (:class:`EvaluationFailure`), what had no
ground truth (:class:`NoTruth`), and the :class:`Evaluation` that holds them all, with its summary
tables, counts line and CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..atomic import write_atomic
from ..segmentation.labels import DICE_COLUMNS
from ..sequences import MRISequence
from .brasyn import BraSynScores
from .lesionwise import LESION_DICE_COLUMNS
from .metrics import METRICS, REGIONS, Scores

#: The ``source`` of scores of the evaluated predictions (baseline rows are ``copy-<seq>``).
PREDICTION = "prediction"
#: The ``source`` of the real complete case's segmentation scores (the downstream ceiling).
REAL = "real"
#: The ``source`` of the case segmented with the missing sequence left out (the skip-synthesis baseline).
MISSING = "missing"
#: The organisers' two numbers, as CSV columns.
BRASYN_COLUMNS = ("brasyn_ssim_tumor", "brasyn_ssim_non_tumor")
#: Dice of the segmentation of the completed case (:mod:`cwdm.evaluation.downstream`), then the official
#: BraTS metrics' lesion-wise Dice where that optional package ran.
DOWNSTREAM_COLUMNS = (*DICE_COLUMNS, *LESION_DICE_COLUMNS)


@dataclass(frozen=True)
class CaseScores:
    """The scores of one synthesised (or baseline-copied) sequence of one case.

    Attributes:
        case_id: The case folder name.
        target: The sequence that was synthesised.
        source: :data:`PREDICTION`, or ``copy-<seq>`` for the baseline that copies ``<seq>``.
        regions: :class:`Scores` by region (``full`` and ``crop`` always; ``brain``, ``tumor`` when known).
        brasyn: The organisers' SSIM inside and outside the tumour, when the case has a segmentation.
        downstream: Dice of the completed case's segmentation by column (:data:`DOWNSTREAM_COLUMNS`),
            when a segmenter ran.
    """

    case_id: str
    target: MRISequence
    source: str
    regions: Mapping[str, Scores] = field(default_factory=dict)
    brasyn: BraSynScores | None = None
    downstream: Mapping[str, float] = field(default_factory=dict)

    @property
    def full(self) -> Scores:
        return self.regions["full"]

    @property
    def crop(self) -> Scores:
        return self.regions["crop"]

    def values(self, extra: Iterable[str] = ()) -> dict[str, float]:
        """Every number by column name (:func:`columns`, then the ``extra`` columns of the segmentation's
        further scores, such as :mod:`cwdm.evaluation.labelwise`'s); NaN where a region, a segmentation or
        a score is missing."""
        values = {
            f"{region}_{metric}": getattr(self.regions[region], metric)
            if region in self.regions
            else math.nan
            for region in REGIONS
            for metric in METRICS
        }
        tumour, rest = (self.brasyn.tumor, self.brasyn.non_tumor) if self.brasyn else (math.nan, math.nan)
        values |= dict(zip(BRASYN_COLUMNS, (tumour, rest), strict=True))
        return values | {key: self.downstream.get(key, math.nan) for key in (*DOWNSTREAM_COLUMNS, *extra)}


def columns() -> list[str]:
    """The score columns of the CSV, in order: ``<region>_<metric>``, the organisers' two, the Dice."""
    return (
        [f"{region}_{metric}" for region in REGIONS for metric in METRICS]
        + list(BRASYN_COLUMNS)
        + list(DOWNSTREAM_COLUMNS)
    )


@dataclass(frozen=True)
class EvaluationFailure:
    """A prediction (or baseline) that could not be scored, and why.

    Attributes:
        case_id: The case, or the offending file name when it names no case.
        target: The sequence, when known.
        source: As in :class:`CaseScores`.
        message: What is wrong, where, and what was expected.
    """

    case_id: str
    target: MRISequence | None
    source: str
    message: str


@dataclass(frozen=True)
class NoTruth:
    """A prediction with no ground truth to score it against: not scored, and not a failure.

    Attributes:
        case_id: The case.
        target: The predicted sequence.
        prediction: The prediction file.
        reason: What is not there: the case folder, or the sequence's file in it.
    """

    case_id: str
    target: MRISequence
    prediction: Path
    reason: str


#: What became of one prediction.
PredictionStatus = Literal["scored", "no truth", "failed"]


@dataclass(frozen=True)
class PredictionOutcome:
    """What became of one prediction, as :func:`evaluate` reports it to its ``on_case`` callback.

    Attributes:
        case_id: The case.
        target: The predicted sequence.
        status: ``scored``, ``no truth`` (:class:`NoTruth`) or ``failed`` (an :class:`EvaluationFailure`).
        detail: Why it was not scored (empty when scored).
    """

    case_id: str
    target: MRISequence
    status: PredictionStatus
    detail: str = ""


@dataclass(frozen=True)
class SummaryRow:
    """Mean and sample standard deviation of each number over a group of :class:`CaseScores`.

    Attributes:
        source: The source the group belongs to.
        target: A sequence tag, or ``"all"`` for every target of the source.
        n: Number of scored cases.
        mean: Mean by column (e.g. ``"crop_ssim"``), over the cases that have the number; NaN if none.
        sd: Sample standard deviation (ddof 1) by the same keys; NaN for fewer than two values.
        counts: How many cases each number was averaged over (fewer than ``n`` for the tumour numbers
            when some cases have no segmentation).
    """

    source: str
    target: str
    n: int
    mean: dict[str, float]
    sd: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)


def _source_key(source: str) -> tuple[int, str]:
    """Predictions first, the real case, then the baseline copies in canonical order (t1n, ..., t2f)."""
    if source == PREDICTION:
        return (0, source)
    if source == REAL:
        return (1, source)
    if source == MISSING:
        return (len(MRISequence) + 2, source)
    tag = source.removeprefix("copy-")
    order = [str(seq) for seq in MRISequence]
    return (2 + order.index(tag), source) if tag in order else (len(order) + 2, source)


_DOWNSTREAM_TITLES = [(key, "Dice") for key in DICE_COLUMNS] + [
    (key, "lesion-wise Dice") for key in LESION_DICE_COLUMNS
]
#: The printed summary: the paper's protocol, then the regions and the organisers' score (columns, titles).
_TABLES = (
    [(f"{r}_{m}", f"{m.upper()} {r}") for r in ("full", "crop") for m in METRICS],
    [(f"{r}_{m}", f"{m.upper()} {r}") for r in ("brain", "tumor") for m in ("psnr", "ssim")]
    + [("brasyn_ssim_tumor", "BraSyn SSIM tumor"), ("brasyn_ssim_non_tumor", "BraSyn SSIM non-tumor")],
    [(key, f"{prefix} {key.rsplit('_', 1)[1].upper()}") for key, prefix in _DOWNSTREAM_TITLES],
)

#: The title of every score column in the printed tables.
COLUMN_TITLES = {key: title for table in _TABLES for key, title in table}


@dataclass(frozen=True)
class Evaluation:
    """Every score and every failure of an evaluation run.

    Attributes:
        scores: One record per scored (case, target, source), sorted.
        failures: One record per prediction or baseline that could not be scored.
        no_truth: One record per prediction whose case has no ground truth in the truth folder (not
            scored, not a failure).
        extra_columns: Further segmentation scores to report (column -> title in the printed tables),
            after :func:`columns`: those the downstream scorer's ``extra`` adds beyond the Dice columns
            (a protocol's per-label scores, :mod:`cwdm.evaluation.protocols`).
    """

    scores: tuple[CaseScores, ...]
    failures: tuple[EvaluationFailure, ...]
    extra_columns: Mapping[str, str] = field(default_factory=dict)
    no_truth: tuple[NoTruth, ...] = ()

    def score_columns(self) -> list[str]:
        """The score columns of this evaluation's CSV and summary: :func:`columns`, then the extra ones."""
        return [*columns(), *(key for key in self.extra_columns if key not in columns())]

    @property
    def exit_code(self) -> int:
        """1 when anything could not be scored or nothing was, else 0 (``cwdm evaluate``'s status); a
        prediction with no ground truth is neither."""
        return 1 if self.failures or not self.scores else 0

    def counts_text(self) -> str:
        """``10 predictions: 1 scored, 9 no truth, 0 failed`` (and the failures of baselines and
        segmentations, when there are any): the one counts line of an evaluation."""
        scored = {(s.case_id, s.target) for s in self.scores if s.source == PREDICTION}
        failed = sum(f.source == PREDICTION for f in self.failures)
        total = len(scored) + len(self.no_truth) + failed
        other = len(self.failures) - failed
        text = f"{total} predictions: {len(scored)} scored, {len(self.no_truth)} no truth, {failed} failed"
        return text + (f"; {other} baseline or segmentation failure{'s' * (other != 1)}" if other else "")

    def no_truth_text(self, limit: int = 20) -> str:
        """The predictions with no ground truth, named on one line (the first ``limit``); empty when
        every prediction had its truth."""
        if not self.no_truth:
            return ""
        names = [f"{item.case_id} ({item.target})" for item in self.no_truth]
        more = len(names) - limit
        shown = ", ".join(names[:limit]) + (f" and {more} more (the CSV lists them all)" if more > 0 else "")
        return f"no truth (not scored, not a failure): {shown}"

    def summary(self) -> list[SummaryRow]:
        """Mean ± sd per source and target, then, for a source with several targets, over all of them
        (``target="all"``)."""
        rows = []
        for source in sorted({s.source for s in self.scores}, key=_source_key):
            of_source = [s for s in self.scores if s.source == source]
            targets = [str(t) for t in sorted({s.target for s in of_source}, key=_canonical_index)]
            for target in [*targets, "all"] if len(targets) > 1 else targets:
                group = [s for s in of_source if target in ("all", str(s.target))]
                keys = self.score_columns()
                table = {key: np.array([s.values(self.extra_columns)[key] for s in group]) for key in keys}
                known = {key: values[~np.isnan(values)] for key, values in table.items()}
                rows.append(
                    SummaryRow(
                        source=source,
                        target=target,
                        n=len(group),
                        mean={k: float(np.mean(v)) if len(v) else math.nan for k, v in known.items()},
                        sd={
                            k: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for k, v in known.items()
                        },
                        counts={k: len(v) for k, v in known.items()},
                    )
                )
        return rows

    def to_csv(self) -> str:
        """One row per score, per failure and per prediction with no truth: case, target, source, every
        number, error, status (``scored``, ``failed``, ``no truth``; empty cells where a number does not
        apply)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        keys = self.score_columns()
        writer.writerow(["case", "target", "source", *keys, "error", "status"])
        for s in self.scores:
            values = s.values(self.extra_columns)
            cells = ["" if math.isnan(values[key]) else repr(values[key]) for key in keys]
            writer.writerow([s.case_id, s.target, s.source, *cells, "", "scored"])
        for f in self.failures:
            writer.writerow([f.case_id, f.target or "", f.source, *([""] * len(keys)), f.message, "failed"])
        for n in self.no_truth:
            writer.writerow([n.case_id, n.target, PREDICTION, *([""] * len(keys)), "", "no truth"])
        return buffer.getvalue()

    def write_csv(self, path: Path) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically (:func:`cwdm.atomic.write_atomic`)."""
        return write_atomic(Path(path), self.to_csv())

    def summary_table(self) -> str:
        """The summary as aligned plain text, mean ± sd: the paper's protocol (full volume and crop), then,
        when any case has them, the brain and tumour regions and the organisers' SSIM, the Dice, and the
        extra columns (a number averaged over fewer cases than ``n`` shows its count as ``[k]``)."""
        summary = self.summary()
        tables = [*_TABLES, list(self.extra_columns.items())]
        blocks = [
            self.table(table, summary)
            for index, table in enumerate(tables)
            if table and not (index and all(row.counts[key] == 0 for row in summary for key, _ in table))
        ]
        return "\n\n".join(blocks)

    def table(self, columns: Sequence[tuple[str, str]], summary: Sequence[SummaryRow] | None = None) -> str:
        """One block of the summary: a row per source and target, a cell (mean ± sd) per ``(column,
        title)`` of ``columns``; ``-`` where no case has the number."""
        summary = self.summary() if summary is None else summary
        header = ["source", "target", "n"] + [title for _, title in columns]
        lines = [header]
        for row in summary:
            lines.append([row.source, row.target, str(row.n)] + [_cell(row, key) for key, _ in columns])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
        )


def _cell(row: SummaryRow, key: str) -> str:
    if row.counts[key] == 0:
        return "-"
    digits = 5 if key.endswith("mse") else 2 if key.endswith("psnr") or key.startswith("hd95") else 4
    mean, sd = row.mean[key], row.sd[key]
    text = f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")
    return text + (f" [{row.counts[key]}]" if row.counts[key] < row.n else "")


def _canonical_index(seq: MRISequence) -> int:
    return list(MRISequence).index(seq)


def sorted_scores(scores: Iterable[CaseScores]) -> list[CaseScores]:
    """Scores in the order of the tables and the CSV: predictions, the real case, the copies (canonical
    order), the skip baseline; then by case and target."""
    return sorted(scores, key=lambda s: (_source_key(s.source), s.case_id, _canonical_index(s.target)))
