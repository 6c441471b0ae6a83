"""Scoring a folder of predictions against the complete cases they were made from: ``cwdm evaluate``.

Every prediction ``<case>-<seq>.nii.gz`` is scored against ``TRUTH/<case>/<case>-<seq>.nii.gz``
(:mod:`cwdm.evaluation.metrics`: MSE, PSNR and SSIM on the full volume, the centre crop, the brain and,
where ``TRUTH/<case>/<case>-seg.nii.gz`` exists, the tumour), and, with a segmentation, with the
organisers' SSIM inside and outside the tumour (:mod:`cwdm.evaluation.brasyn`). The challenge's "dummy
baseline" copies a present sequence as the missing one; the copy is normalised like the ground truth,
so it is scored on the same [0, 1] scale as a prediction (:func:`baseline_scores`; the organisers'
SSIM normalises it by its own percentiles, as it does a prediction).

One bad prediction never stops the others: it becomes an ``EvaluationFailure``. A prediction whose case
has no ground truth in the truth folder (a pseudo-validation set may come with the truth of some cases
only) is no failure: it is listed apart, as a ``NoTruth``. Those records, and the :class:`Evaluation`
that holds them with its tables and CSV, are :mod:`cwdm.evaluation.results`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from ..cases.discovery import Case, read_case
from ..cases.preprocessing import normalise
from ..cases.reader import read_case_file, read_segmentation
from ..cases.volumes import Volume, same_grid
from ..errors import CaseError, CwdmError, ShapeError
from ..sequences import MRISequence, condition_order
from .brasyn import brasyn_scores
from .downstream import DownstreamScorer, DownstreamScores
from .metrics import score_volumes
from .results import (
    MISSING,
    PREDICTION,
    REAL,
    CaseScores,
    Evaluation,
    EvaluationFailure,
    NoTruth,
    PredictionOutcome,
    sorted_scores,
)

log = logging.getLogger(__name__)

_PREDICTION_NAME = re.compile(r"^(?P<case>.+)-(?P<seq>t1n|t1c|t2w|t2f)\.nii(?:\.gz)?$")


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
    return Evaluation(scores=tuple(sorted_scores(scores)), failures=tuple(failures), no_truth=tuple(no_truth))


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
        if segmented:
            scores += _missing_row(downstream, truth_case, target, failures)
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


def _missing_row(
    downstream: DownstreamScorer, truth_case: Case, target: MRISequence, failures: list[EvaluationFailure]
) -> list[CaseScores]:
    """The skip-synthesis row (source :data:`MISSING`: the case segmented with ``target`` left out), or
    none when the segmenter segments complete cases only."""
    try:
        missing = downstream.missing(truth_case, target)
    except CaseError as exc:
        failures.append(EvaluationFailure(truth_case.case_id, target, MISSING, str(exc)))
        return []
    if missing is None:
        return []
    return [CaseScores(truth_case.case_id, target, MISSING, downstream=missing.values())]


def _baseline_or_failure(
    case_dir: Path, target: MRISequence, failures: list[EvaluationFailure]
) -> list[CaseScores]:
    try:
        return baseline_scores(case_dir, target)
    except CaseError as exc:
        log.debug("baseline not scored: %s", exc)
        failures.append(EvaluationFailure(case_dir.name, target, "baseline", str(exc)))
        return []
