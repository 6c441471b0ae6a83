"""The downstream half of the BraSyn score: segment the completed case, Dice of WT, TC and ET.

A prediction completes its case as a downstream user would feed it to a segmenter: the three acquired
volumes as they are on disk, the synthesis as written. The same segmenter also segments, once per case,
the real complete case (the ceiling every synthesis is read against) and, once per case and target, each
copy baseline (a present sequence's file put in the missing slot, the challenge's dummy). Each label
volume is compared with the case's ``-seg`` in the canonical labels (:mod:`cwdm.segmentation.labels`)
and, with a segmentations folder, written there in the ground truth's own convention, so that a reader
can recompute every Dice: ``<case>-<target>.nii.gz`` (completed with the synthesis),
``<case>-real.nii.gz``, ``<case>-<target>-copy-<seq>.nii.gz`` and, where the segmenter segments a case
with a sequence absent, ``<case>-<target>-missing.nii.gz`` (the sequence left out: the skip-synthesis
baseline, which says whether synthesising is worth it at all).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import write_atomic
from ..cases.discovery import Case
from ..cases.reader import read_case_file
from ..errors import CaseError, ConfigError
from ..segmentation.case import CompleteCase, Segmenter, can_segment_missing
from ..segmentation.labels import (
    ConventionName,
    LabelError,
    RegionDice,
    convention_mapping,
    detect_convention,
    from_canonical,
    region_dice,
    to_canonical,
)
from ..sequences import MRISequence

log = logging.getLogger(__name__)

#: Computes extra per-region scores of a segmentation against the truth (both canonical labels, with
#: the truth file's affine): the lesion-wise Dice of the official BraTS metrics, for one.
ExtraScores = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]


def combined_scores(*extras: ExtraScores | None) -> ExtraScores | None:
    """One :data:`ExtraScores` giving the columns of every one of ``extras`` (``None`` ones left out);
    ``None`` when none is left. A column two of them give is an error of the caller (``ValueError``)."""
    chosen = [extra for extra in extras if extra is not None]
    if len(chosen) < 2:
        return chosen[0] if chosen else None

    def scores(prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for extra in chosen:
            values = extra(prediction, truth, affine)
            if set(values) & set(out):
                raise ValueError(f"two extra scorers give the columns {sorted(set(values) & set(out))}")
            out |= values
        return out

    return scores


@dataclass(frozen=True)
class DownstreamScores:
    """Dice of one segmentation of a completed (or real, or copy-completed) case."""

    dice: RegionDice
    extra: dict[str, float] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        return self.dice.values() | self.extra


@dataclass
class _Truth:
    labels: np.ndarray  # canonical
    convention: ConventionName
    header: nib.Nifti1Header
    affine: np.ndarray


class DownstreamScorer:
    """Segments completed cases with one segmenter and scores them; caches the per-case baselines.

    Args:
        segmenter: Any :class:`cwdm.segmentation.Segmenter`.
        segmentations_dir: Where every label volume made is kept (never the prediction folder); ``None``
            keeps none.
        truth_convention: The ground truth's label convention; ``None`` recognises it from its values
            (:func:`cwdm.segmentation.labels.detect_convention`).
        extra: Further scores of each segmentation (lesion-wise Dice).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        segmentations_dir: Path | None = None,
        truth_convention: ConventionName | None = None,
        extra: ExtraScores | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.segmentations_dir = None if segmentations_dir is None else Path(segmentations_dir)
        self.truth_convention = truth_convention
        self.extra = extra
        self._truths: dict[str, _Truth] = {}
        self._baselines: dict[str, DownstreamScores] = {}
        self._said_no_missing = False

    def check_output_folder(self, prediction_dir: Path) -> None:
        """Refuse a segmentations folder inside (or around) the prediction folder: the organisers'
        evaluator reads every file there.

        Raises:
            ConfigError: naming both folders.
        """
        if self.segmentations_dir is None:
            return
        seg, pred = self.segmentations_dir.resolve(), Path(prediction_dir).resolve()
        if seg == pred or pred in seg.parents or seg in pred.parents:
            raise ConfigError(
                f"the segmentations folder {self.segmentations_dir} overlaps the prediction folder "
                f"{prediction_dir}; keep it apart (the prediction folder holds predictions only)"
            )

    # -- the three kinds of completed case ------------------------------------------------------
    def completed(
        self, truth_case: Case, target: MRISequence, prediction: Path, tag: str | None = None
    ) -> DownstreamScores:
        """The case completed with ``prediction`` as ``target``.

        Args:
            truth_case: The complete case (with its ``-seg``).
            target: The synthesised sequence.
            prediction: The synthesis.
            tag: Appended to the kept label volume's name (``<case>-<target>-<tag>.nii.gz``), where
                several syntheses of one case and target are kept (a sweep's settings).

        Raises:
            CaseError: no ``-seg`` file, an unreadable file, files off one grid, a failed segmenter, a
                kept segmentation that cannot be written.
        """
        case = self._complete(truth_case).with_file(target, prediction, str(target))
        name = f"{truth_case.case_id}-{target}" + (f"-{tag}" if tag else "")
        return self._score(truth_case, case, name)

    def real(self, truth_case: Case) -> DownstreamScores:
        """The real complete case: the ceiling (segmented once per case)."""
        key = f"{truth_case.case_id}-real"
        if key not in self._baselines:
            self._baselines[key] = self._score(truth_case, self._complete(truth_case), key)
        return self._baselines[key]

    def copy(self, truth_case: Case, target: MRISequence, source: MRISequence) -> DownstreamScores:
        """The case with ``source``'s file in the place of ``target`` (segmented once per pair)."""
        key = f"{truth_case.case_id}-{target}-copy-{source}"
        if key not in self._baselines:
            case = self._complete(truth_case).with_file(
                target, truth_case.files[source], f"{target}-copy-{source}"
            )
            self._baselines[key] = self._score(truth_case, case, key)
        return self._baselines[key]

    def missing(self, truth_case: Case, target: MRISequence) -> DownstreamScores | None:
        """The case with ``target`` left out, not synthesised (the skip-synthesis baseline; segmented once
        per pair); ``None`` when the segmenter cannot segment an incomplete case (said once in the log)."""
        if not can_segment_missing(self.segmenter):
            if not self._said_no_missing:
                log.info(
                    "segmenter %s segments complete cases only: no skip-synthesis (missing) baseline",
                    self.segmenter.name,
                )
                self._said_no_missing = True
            return None
        key = f"{truth_case.case_id}-{target}-missing"
        if key not in self._baselines:
            case = self._complete(truth_case)
            segment = self.segmenter.segment_missing  # type: ignore[attr-defined]
            self._baselines[key] = self._score(truth_case, case, key, labels=segment(case, target))
        return self._baselines[key]

    # -- helpers ------------------------------------------------------------------------------------
    def _complete(self, truth_case: Case) -> CompleteCase:
        return CompleteCase(truth_case.case_id, truth_case.files)

    def _truth(self, case: Case) -> _Truth:
        if case.case_id not in self._truths:
            path = next(
                (
                    case.folder / f"{case.case_id}-seg{s}"
                    for s in (".nii.gz", ".nii")
                    if (case.folder / f"{case.case_id}-seg{s}").is_file()
                ),
                None,
            )
            if path is None:
                raise CaseError(case.case_id, "no ground-truth segmentation (<case>-seg.nii.gz)", case.folder)
            volume = read_case_file(case.case_id, path, "ground-truth segmentation")
            try:
                convention = self.truth_convention or detect_convention(volume.data)
                labels = to_canonical(volume.data, convention_mapping(convention), path.name)
            except LabelError as exc:
                raise CaseError(case.case_id, str(exc), path) from exc
            self._truths[case.case_id] = _Truth(labels, convention, volume.header, volume.affine)
        return self._truths[case.case_id]

    def _score(
        self, truth_case: Case, case: CompleteCase, name: str, labels: np.ndarray | None = None
    ) -> DownstreamScores:
        truth = self._truth(truth_case)
        if labels is None:
            labels = self.segmenter.segment(case)
        if labels.shape != truth.labels.shape:
            raise CaseError(
                case.case_id,
                f"the {case.label} case's grid {labels.shape} differs from the ground-truth "
                f"segmentation's {truth.labels.shape}",
            )
        if self.segmentations_dir is not None:
            kept = self.segmentations_dir / f"{name}.nii.gz"
            try:
                self.segmentations_dir.mkdir(parents=True, exist_ok=True)
                _write_labels(from_canonical(labels, truth.convention), truth.header, kept)
            except OSError as exc:  # a full disk, or a name longer than the file system takes
                raise CaseError(
                    case.case_id, f"cannot keep the segmentation {kept.name} ({exc.strerror or exc})", kept
                ) from exc
        extra = self.extra(labels, truth.labels, truth.affine) if self.extra is not None else {}
        scores = DownstreamScores(region_dice(labels, truth.labels), extra)
        log.debug("%s: %s", name, scores.values())
        return scores


def _write_labels(labels: np.ndarray, header: nib.Nifti1Header, path: Path) -> Path:
    """A uint8 label volume on ``header``'s grid, gzipped without a time stamp, written atomically."""
    out = header.copy()
    out.set_data_dtype(np.uint8)
    out.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(labels.astype(np.uint8), None, out)
    return write_atomic(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))
