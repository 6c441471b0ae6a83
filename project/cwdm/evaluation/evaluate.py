"""Scoring a folder of predictions against the complete cases they were made from: ``cwdm evaluate``.

Every prediction ``<case>-<seq>.nii.gz`` is scored against ``TRUTH/<case>/<case>-<seq>.nii.gz``
(:mod:`cwdm.evaluation.metrics`: MSE, PSNR and SSIM on the full volume, the centre crop, the brain and,
where ``TRUTH/<case>/<case>-seg.nii.gz`` exists, the tumour), and, with a segmentation, with the
organisers' SSIM inside and outside the tumour (:mod:`cwdm.evaluation.brasyn`). The challenge's "dummy
baseline" copies a present sequence as the missing one; the copy is normalised like the ground truth,
so it is scored on the same [0, 1] scale as a prediction (:func:`baseline_scores`; the organisers'
SSIM normalises it by its own percentiles, as it does a prediction).

One bad prediction never stops the others: it becomes an :class:`EvaluationFailure`. A prediction whose
case has no ground truth in the truth folder (a pseudo-validation set may come with the truth of some
cases only) is no failure: it is listed apart, as :class:`NoTruth`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from ..atomic import write_atomic
from ..cases.discovery import Case, read_case
from ..cases.preprocessing import normalise
from ..cases.reader import read_case_file, read_segmentation
from ..cases.volumes import Volume, same_grid
from ..errors import CaseError, CwdmError, ShapeError
from ..segmentation.labels import DICE_COLUMNS
from ..sequences import MRISequence, condition_order
from .brasyn import BraSynScores, brasyn_scores
from .downstream import DownstreamScorer, DownstreamScores
from .lesionwise import LESION_DICE_COLUMNS
from .metrics import METRICS, REGIONS, Scores, score_volumes

log = logging.getLogger(__name__)

#: The ``source`` of scores of the evaluated predictions (baseline rows are ``copy-<seq>``).
PREDICTION = "prediction"
#: The ``source`` of the real complete case's segmentation scores (the downstream ceiling).
REAL = "real"
#: The organisers' two numbers, as CSV columns.
BRASYN_COLUMNS = ("brasyn_ssim_tumor", "brasyn_ssim_non_tumor")
#: Dice of the segmentation of the completed case (:mod:`cwdm.evaluation.downstream`), then the official
#: BraTS metrics' lesion-wise Dice where that optional package ran.
DOWNSTREAM_COLUMNS = (*DICE_COLUMNS, *LESION_DICE_COLUMNS)

_PREDICTION_NAME = re.compile(r"^(?P<case>.+)-(?P<seq>t1n|t1c|t2w|t2f)\.nii(?:\.gz)?$")


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


# -- cases ----------------------------------------------------------------------------------------
def _truth_case(truth_dir: Path, case_id: str) -> Case:
    folder = Path(truth_dir) / case_id
    if not folder.is_dir():
        raise CaseError(case_id, "no ground-truth folder for this case", folder)
    case = read_case(folder)
    if case.problems:
        raise CaseError(case_id, "; ".join(case.problems), folder)
    return case


def _truth_file(case: Case, target: MRISequence) -> Path:
    if target not in case.files:
        raise CaseError(
            case.case_id,
            f"no ground truth for {target}: expected {case.case_id}-{target}.nii.gz in the case folder",
            case.folder,
        )
    return case.files[target]


def _score(
    case_id: str,
    target: MRISequence,
    source: str,
    scored: np.ndarray,
    stored: np.ndarray,
    truth: Volume,
    seg: np.ndarray | None,
) -> CaseScores:
    """Score ``scored`` (a prediction, or a normalised copy) against ``truth``; the organisers' SSIM
    takes ``stored``, the volume as it is on disk, since it normalises by its own percentiles."""
    tumour = seg > 0 if seg is not None else None
    regions = score_volumes(scored, normalise(truth.data), brain=truth.data != 0, tumour=tumour)
    brasyn = brasyn_scores(stored, truth.data, seg) if seg is not None else None
    return CaseScores(case_id, target, source, regions, brasyn)


def score_prediction(
    prediction_path: Path, truth_path: Path, case_id: str, seg: np.ndarray | None = None
) -> CaseScores:
    """Score one prediction file against its (raw) ground-truth file.

    Args:
        prediction_path: The prediction, as written.
        truth_path: The real sequence.
        case_id: The case (its target is read from the prediction's file name).
        seg: The case's segmentation labels, for the tumour region and the organisers' SSIM.

    Raises:
        CaseError: a file is unreadable or not 3D, or the shapes differ.
    """
    truth = read_case_file(case_id, truth_path, "ground truth")
    prediction = read_case_file(case_id, prediction_path, "prediction")
    if prediction.shape == truth.shape and not same_grid(prediction, truth):
        # Scored voxel by voxel all the same (the arrays line up), but a lost header is worth a look.
        log.warning(
            "%s: %s has another affine than the ground truth %s", case_id, prediction_path, truth_path
        )
    target = MRISequence(_PREDICTION_NAME.match(Path(prediction_path).name)["seq"])
    try:
        return _score(case_id, target, PREDICTION, prediction.data, prediction.data, truth, seg)
    except ShapeError as exc:
        raise CaseError(case_id, f"{exc} ({truth_path})", prediction_path) from exc


def baseline_scores(case_dir: Path, target: MRISequence | str) -> list[CaseScores]:
    """Score the challenge's dummy baseline: each present sequence copied as the missing ``target``.

    Args:
        case_dir: A complete case folder (ground truth of ``target`` plus the present sequences).
        target: The sequence treated as missing.

    Returns:
        One :class:`CaseScores` per available present sequence, source ``copy-<seq>``, in the
        condition order of ``target``; the copy is normalised like the ground truth.

    Raises:
        CaseError: no ground truth for ``target``, no present sequence, an unreadable file, or a grid
            that differs from the ground truth's.
    """
    target = MRISequence(target)
    case_dir = Path(case_dir)
    case = _truth_case(case_dir.parent, case_dir.name)
    truth = read_case_file(case.case_id, _truth_file(case, target), "ground truth")
    seg = read_segmentation(case)
    present = [seq for seq in condition_order(target) if seq in case.files]
    if not present:
        raise CaseError(case.case_id, f"no present sequence to copy as {target}", case.folder)
    results = []
    for seq in present:
        copy = read_case_file(case.case_id, case.files[seq], f"{seq} volume").data
        try:
            results.append(_score(case.case_id, target, f"copy-{seq}", normalise(copy), copy, truth, seg))
        except ShapeError as exc:
            raise CaseError(case.case_id, f"{seq} vs {target}: {exc}", case.files[seq]) from exc
    return results


def _prediction_files(pred_dir: Path) -> tuple[list[tuple[str, MRISequence, Path]], list[EvaluationFailure]]:
    found, failures = [], []
    for path in sorted(Path(pred_dir).iterdir()):
        if path.name.startswith("."):
            continue  # hidden files, including the pipeline's in-progress ``.cwdm-*.part`` writes
        match = _PREDICTION_NAME.match(path.name)
        if match is None or not path.is_file():
            failures.append(
                EvaluationFailure(
                    path.name,
                    None,
                    PREDICTION,
                    f"{path}: not a prediction file; expected <case>-<seq>.nii.gz (seq t1n, t1c, t2w or "
                    "t2f) and nothing else in the folder (the organisers' evaluator parses every name)",
                )
            )
            continue
        found.append((match["case"], MRISequence(match["seq"]), path))
    return found, failures


def evaluate(
    pred_dir: Path,
    truth_dir: Path,
    *,
    baseline: bool = False,
    downstream: DownstreamScorer | None = None,
    on_case: Callable[[PredictionOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score every prediction ``<case>-<seq>.nii.gz`` of ``pred_dir`` against ``truth_dir/<case>/``.

    Each prediction is scored on its own: an unreadable file or a shape mismatch becomes an
    :class:`EvaluationFailure` and the other predictions are still scored. A prediction whose case has no
    folder in ``truth_dir``, or whose case folder has no file of the predicted sequence, is a
    :class:`NoTruth`: not scored, and not a failure.

    Args:
        pred_dir: Folder of predictions (the pipeline's output folder).
        truth_dir: Folder of complete cases, ``<case>/<case>-<seq>.nii.gz`` (and ``-seg`` where known).
        baseline: Also score the dummy baseline (:func:`baseline_scores`) of every predicted case and
            target.
        downstream: Segment each completed case and score its Dice (cases with a ``-seg`` file), and
            the real case once per case (source :data:`REAL`), and with ``baseline`` each copy too. A
            segmenter that fails on a case is a failure of that case's Dice (source ``segmentation``);
            its image scores stand.
        on_case: Called with each prediction's :class:`PredictionOutcome` once it is processed.
        on_start: Called with the number of predictions found, before the first is scored.

    Returns:
        The :class:`Evaluation`.

    Raises:
        CwdmError: ``pred_dir`` or ``truth_dir`` is not a folder.
        ConfigError: the segmentations folder overlaps ``pred_dir``.
    """
    for label, folder in (("prediction", pred_dir), ("ground-truth", truth_dir)):
        if not Path(folder).is_dir():
            raise CwdmError(f"{label} folder {folder} does not exist or is not a folder")
    if downstream is not None:
        downstream.check_output_folder(Path(pred_dir))
    predictions, failures = _prediction_files(pred_dir)
    if not predictions:
        log.warning("no prediction files (<case>-<seq>.nii.gz) in %s", pred_dir)
    if on_start is not None:
        on_start(len(predictions))
    scores: list[CaseScores] = []
    no_truth: list[NoTruth] = []
    for case_id, target, path in predictions:
        outcome = PredictionOutcome(case_id, target, "scored")
        try:
            absent = _absent_truth(Path(truth_dir), case_id, target)
            if absent:
                no_truth.append(NoTruth(case_id, target, path, absent))
                outcome = replace(outcome, status="no truth", detail=absent)
            else:
                scores += _scores_of_prediction(
                    path, truth_dir, case_id, target, baseline, downstream, failures
                )
        except CaseError as exc:
            log.debug("not scored: %s", exc)
            failures.append(EvaluationFailure(case_id, target, PREDICTION, str(exc)))
            outcome = replace(outcome, status="failed", detail=str(exc))
        if on_case is not None:
            on_case(outcome)
    return Evaluation(scores=tuple(_sorted(scores)), failures=tuple(failures), no_truth=tuple(no_truth))


def _absent_truth(truth_dir: Path, case_id: str, target: MRISequence) -> str:
    """What of a prediction's ground truth ``truth_dir`` lacks: the case folder, or the target's file in
    it; empty when the truth is there (or the case folder is unusable: a failure, for the reader to say).
    """
    folder = truth_dir / case_id
    if not folder.is_dir():
        return f"no case folder {folder}"
    case = read_case(folder)
    if not case.problems and target not in case.files:
        return f"no {case_id}-{target}.nii.gz in {folder}"
    return ""


def _scores_of_prediction(
    path: Path,
    truth_dir: Path,
    case_id: str,
    target: MRISequence,
    baseline: bool,
    downstream: DownstreamScorer | None,
    failures: list[EvaluationFailure],
) -> list[CaseScores]:
    """The scores of one prediction that has its ground truth: its own, and with ``downstream`` the real
    case's, with ``baseline`` the copies'; failures of the Dice and the baselines go to ``failures``.

    Raises:
        CaseError: the prediction itself cannot be scored.
    """
    truth_case = _truth_case(truth_dir, case_id)
    seg = read_segmentation(truth_case)
    scored = score_prediction(path, _truth_file(truth_case, target), case_id, seg)
    scores = []
    segmented = downstream is not None and seg is not None
    if segmented:
        scored = _with_downstream(scored, partial(downstream.completed, truth_case, target, path), failures)
        real = CaseScores(case_id, target, REAL)
        scores.append(_with_downstream(real, partial(downstream.real, truth_case), failures))
    scores.append(scored)
    if baseline:
        for copy in _baseline_or_failure(truth_case.folder, target, failures):
            if segmented:
                source = MRISequence(copy.source.removeprefix("copy-"))
                copy = _with_downstream(copy, partial(downstream.copy, truth_case, target, source), failures)
            scores.append(copy)
    return scores


def _with_downstream(
    scores: CaseScores, compute: Callable[[], DownstreamScores], failures: list[EvaluationFailure]
) -> CaseScores:
    """``scores`` with the Dice ``compute`` gives; a case error there becomes a failure of its own."""
    try:
        downstream = compute()
    except CaseError as exc:
        log.warning("%s", exc)
        failures.append(EvaluationFailure(scores.case_id, scores.target, "segmentation", str(exc)))
        return scores
    return replace(scores, downstream=downstream.values())


def _baseline_or_failure(
    case_dir: Path, target: MRISequence, failures: list[EvaluationFailure]
) -> list[CaseScores]:
    try:
        return baseline_scores(case_dir, target)
    except CaseError as exc:
        log.debug("baseline not scored: %s", exc)
        failures.append(EvaluationFailure(case_dir.name, target, "baseline", str(exc)))
        return []


def _sorted(scores: Iterable[CaseScores]) -> list[CaseScores]:
    return sorted(scores, key=lambda s: (_source_key(s.source), s.case_id, _canonical_index(s.target)))
