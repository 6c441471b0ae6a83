"""Image similarity of synthesised sequences against the ground truth: MSE, PSNR and SSIM.

The protocol follows the cWDM paper: the ground truth is normalised exactly as in training
(:func:`cwdm.cases.volumes.normalise`: 0.1/99.9 percentile clip, min-max scaled to [0, 1]); a prediction is
scored as written (the pipeline writes it in [0, 1]). Every case is scored on two regions:

- ``full``: the complete volume (the paper's Table 1);
- ``crop``: the centre crop that drops :data:`CROP_MARGIN` voxels from each side of the first two axes,
  224 x 224 x 155 on the BraTS grid (the paper's Table 2, "155 x 224 x 224").

PSNR uses a data range of 1. SSIM is scikit-image's ``structural_similarity`` on the 3D volume, computed
in float64 with the settings in :data:`SSIM_SETTINGS` (7 x 7 x 7 uniform window, K1 = 0.01, K2 = 0.03,
sample covariance, data range 1, mean over the voxels whose window lies inside the volume). They are
passed explicitly so that a change of the library's defaults cannot change our numbers.

The "dummy baseline" of the challenge copies a present sequence as the missing one; here the copy is
normalised like the ground truth, so it is scored on the same [0, 1] scale as a prediction
(:func:`baseline_scores`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.metrics import structural_similarity

from ..atomic import write_atomic
from ..cases.discovery import Case, read_case
from ..cases.preprocessing import normalise
from ..cases.reader import read_case_file
from ..cases.volumes import same_grid
from ..errors import CaseError, CwdmError, ShapeError
from ..sequences import MRISequence, condition_order

log = logging.getLogger(__name__)

#: Voxels dropped from each side of the first two axes for the ``crop`` region (240 -> 224 on BraTS).
CROP_MARGIN = 8
#: The regions every case is scored on, in report order.
REGIONS = ("full", "crop")
#: The metrics, in report order.
METRICS = ("mse", "psnr", "ssim")
#: Keyword arguments of ``skimage.metrics.structural_similarity`` (besides the two volumes).
SSIM_SETTINGS = {
    "data_range": 1.0,
    "win_size": 7,
    "gaussian_weights": False,
    "use_sample_covariance": True,
    "K1": 0.01,
    "K2": 0.03,
}
#: The ``source`` of scores of the evaluated predictions (baseline rows are ``copy-<seq>``).
PREDICTION = "prediction"

_PREDICTION_NAME = re.compile(r"^(?P<case>.+)-(?P<seq>t1n|t1c|t2w|t2f)\.nii(?:\.gz)?$")


# -- the metrics ------------------------------------------------------------------------------------
def mse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error over all voxels, computed in float64."""
    diff = np.asarray(prediction, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.mean(diff * diff))


def psnr(prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical inputs."""
    error = mse(prediction, truth)
    return math.inf if error == 0 else float(10.0 * math.log10(data_range**2 / error))


def ssim(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean structural similarity of two 3D volumes (scikit-image, :data:`SSIM_SETTINGS`, float64).

    Raises:
        ShapeError: the volumes differ in shape or an axis is shorter than the 7-voxel window.
    """
    if prediction.shape != truth.shape:
        raise ShapeError(f"SSIM needs equal shapes, got {prediction.shape} and {truth.shape}")
    if min(truth.shape) < SSIM_SETTINGS["win_size"]:
        raise ShapeError(
            f"SSIM needs every axis to be at least {SSIM_SETTINGS['win_size']} voxels, got {truth.shape}"
        )
    return float(
        structural_similarity(
            np.asarray(truth, dtype=np.float64), np.asarray(prediction, dtype=np.float64), **SSIM_SETTINGS
        )
    )


def centre_crop(volume: np.ndarray, margin: int = CROP_MARGIN) -> np.ndarray:
    """Drop ``margin`` voxels from each side of the first two axes (BraTS: 240x240x155 -> 224x224x155).

    Raises:
        ShapeError: an axis is too short to keep any voxel.
    """
    if volume.ndim != 3 or min(volume.shape[:2]) <= 2 * margin:
        raise ShapeError(
            f"the centre crop removes {margin} voxels from each side of the first two axes; "
            f"shape {volume.shape} is too small for it"
        )
    return volume[margin:-margin, margin:-margin, :]


@dataclass(frozen=True)
class Scores:
    """The three metrics on one region.

    Attributes:
        mse: Mean squared error (intensities in [0, 1]).
        psnr: Peak signal-to-noise ratio in dB, data range 1.
        ssim: Mean SSIM (:data:`SSIM_SETTINGS`).
    """

    mse: float
    psnr: float
    ssim: float


def score_volumes(prediction: np.ndarray, truth: np.ndarray) -> dict[str, Scores]:
    """Score a prediction against an already normalised ground truth on both regions.

    Args:
        prediction: ``(X, Y, Z)`` predicted intensities, as written.
        truth: ``(X, Y, Z)`` ground truth in [0, 1] (:func:`cwdm.cases.volumes.normalise`).

    Returns:
        :class:`Scores` by region name, ``{"full": ..., "crop": ...}``.

    Raises:
        ShapeError: the shapes differ or are too small for the crop or the SSIM window.
    """
    if prediction.shape != truth.shape:
        raise ShapeError(
            f"prediction shape {_shape(prediction.shape)} differs from the ground truth's "
            f"{_shape(truth.shape)}"
        )
    regions = {"full": (prediction, truth), "crop": (centre_crop(prediction), centre_crop(truth))}
    return {
        name: Scores(mse=mse(pred, true), psnr=psnr(pred, true), ssim=ssim(pred, true))
        for name, (pred, true) in regions.items()
    }


# -- records --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseScores:
    """The scores of one synthesised (or baseline-copied) sequence of one case.

    Attributes:
        case_id: The case folder name.
        target: The sequence that was synthesised.
        source: :data:`PREDICTION`, or ``copy-<seq>`` for the baseline that copies ``<seq>``.
        full: Scores on the complete volume.
        crop: Scores on the centre crop.
    """

    case_id: str
    target: MRISequence
    source: str
    full: Scores
    crop: Scores


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
class SummaryRow:
    """Mean and sample standard deviation of each metric over a group of :class:`CaseScores`.

    Attributes:
        source: The source the group belongs to.
        target: A sequence tag, or ``"all"`` for every target of the source.
        n: Number of scored cases.
        mean: Mean by ``"<region>_<metric>"`` (e.g. ``"crop_ssim"``).
        sd: Sample standard deviation (ddof 1) by the same keys; NaN when ``n < 2``.
    """

    source: str
    target: str
    n: int
    mean: dict[str, float]
    sd: dict[str, float]


def _columns() -> list[str]:
    return [f"{region}_{metric}" for region in REGIONS for metric in METRICS]


def _values(scores: CaseScores) -> dict[str, float]:
    return {
        f"{region}_{metric}": getattr(getattr(scores, region), metric)
        for region in REGIONS
        for metric in METRICS
    }


def _source_key(source: str) -> tuple[int, str]:
    """Predictions first, then the baseline copies in canonical order (t1n, t1c, t2w, t2f)."""
    if source == PREDICTION:
        return (0, source)
    tag = source.removeprefix("copy-")
    order = [str(seq) for seq in MRISequence]
    return (1 + order.index(tag), source) if tag in order else (len(order) + 1, source)


@dataclass(frozen=True)
class Evaluation:
    """Every score and every failure of an evaluation run.

    Attributes:
        scores: One record per scored (case, target, source), sorted.
        failures: One record per prediction or baseline that could not be scored.
    """

    scores: tuple[CaseScores, ...]
    failures: tuple[EvaluationFailure, ...]

    def summary(self) -> list[SummaryRow]:
        """Mean ± sd per source and target, then, for a source with several targets, over all of them
        (``target="all"``)."""
        rows = []
        for source in sorted({s.source for s in self.scores}, key=_source_key):
            of_source = [s for s in self.scores if s.source == source]
            targets = [str(t) for t in sorted({s.target for s in of_source}, key=_canonical_index)]
            for target in [*targets, "all"] if len(targets) > 1 else targets:
                group = [s for s in of_source if target in ("all", str(s.target))]
                table = {key: np.array([_values(s)[key] for s in group]) for key in _columns()}
                rows.append(
                    SummaryRow(
                        source=source,
                        target=target,
                        n=len(group),
                        mean={k: float(np.mean(v)) for k, v in table.items()},
                        sd={
                            k: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for k, v in table.items()
                        },
                    )
                )
        return rows

    def to_csv(self) -> str:
        """One row per score and per failure: case, target, source, the six metrics, error."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["case", "target", "source", *_columns(), "error"])
        for s in self.scores:
            writer.writerow([s.case_id, s.target, s.source, *(repr(v) for v in _values(s).values()), ""])
        for f in self.failures:
            writer.writerow([f.case_id, f.target or "", f.source, *([""] * len(_columns())), f.message])
        return buffer.getvalue()

    def write_csv(self, path: Path) -> Path:
        """Write :meth:`to_csv` to ``path`` atomically (:func:`cwdm.atomic.write_atomic`)."""
        return write_atomic(Path(path), self.to_csv())

    def summary_table(self) -> str:
        """The summary as aligned plain text: one line per :class:`SummaryRow`, mean ± sd."""
        header = ["source", "target", "n"] + [f"{m.upper()} {r}" for r in REGIONS for m in METRICS]
        lines = [header]
        for row in self.summary():
            cells = [row.source, row.target, str(row.n)]
            for key in _columns():
                digits = 5 if key.endswith("mse") else 4 if key.endswith("ssim") else 2
                mean, sd = row.mean[key], row.sd[key]
                cells.append(f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}"))
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
        )


def _canonical_index(seq: MRISequence) -> int:
    return list(MRISequence).index(seq)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


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


def score_prediction(prediction_path: Path, truth_path: Path, case_id: str) -> dict[str, Scores]:
    """Score one prediction file against its (raw) ground-truth file on both regions.

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
    try:
        return score_volumes(prediction.data, normalise(truth.data))
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
    truth_path = _truth_file(case, target)
    truth = normalise(read_case_file(case.case_id, truth_path, "ground truth").data)
    present = [seq for seq in condition_order(target) if seq in case.files]
    if not present:
        raise CaseError(case.case_id, f"no present sequence to copy as {target}", case.folder)
    results = []
    for seq in present:
        copy = normalise(read_case_file(case.case_id, case.files[seq], f"{seq} volume").data)
        try:
            regions = score_volumes(copy, truth)
        except ShapeError as exc:
            raise CaseError(case.case_id, f"{seq} vs {target}: {exc}", case.files[seq]) from exc
        results.append(CaseScores(case.case_id, target, f"copy-{seq}", regions["full"], regions["crop"]))
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
    on_case: Callable[[str, MRISequence], None] | None = None,
) -> Evaluation:
    """Score every prediction ``<case>-<seq>.nii.gz`` of ``pred_dir`` against ``truth_dir/<case>/``.

    Each prediction is scored on its own: a missing ground truth, an unreadable file or a shape
    mismatch becomes an :class:`EvaluationFailure` and the other predictions are still scored.

    Args:
        pred_dir: Folder of predictions (the pipeline's output folder).
        truth_dir: Folder of complete cases, ``<case>/<case>-<seq>.nii.gz``.
        baseline: Also score the dummy baseline (:func:`baseline_scores`) of every predicted case and
            target.
        on_case: Called with the case id and target after each prediction is processed.

    Returns:
        The :class:`Evaluation`.

    Raises:
        CwdmError: ``pred_dir`` or ``truth_dir`` is not a folder.
    """
    for label, folder in (("prediction", pred_dir), ("ground-truth", truth_dir)):
        if not Path(folder).is_dir():
            raise CwdmError(f"{label} folder {folder} does not exist or is not a folder")
    predictions, failures = _prediction_files(pred_dir)
    if not predictions:
        log.warning("no prediction files (<case>-<seq>.nii.gz) in %s", pred_dir)
    scores: list[CaseScores] = []
    for case_id, target, path in predictions:
        try:
            truth_case = _truth_case(truth_dir, case_id)
            regions = score_prediction(path, _truth_file(truth_case, target), case_id)
            scores.append(CaseScores(case_id, target, PREDICTION, regions["full"], regions["crop"]))
        except CaseError as exc:
            log.debug("not scored: %s", exc)
            failures.append(EvaluationFailure(case_id, target, PREDICTION, str(exc)))
        else:
            if baseline:
                scores.extend(_baseline_or_failure(truth_case.folder, target, failures))
        if on_case is not None:
            on_case(case_id, target)
    return Evaluation(scores=tuple(_sorted(scores)), failures=tuple(failures))


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
