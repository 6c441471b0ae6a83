"""What every segmenter takes and gives: a complete case in, a label volume on its grid out.

:class:`CompleteCase` is the four sequences of one case as files on one grid, exactly as a downstream
user feeds a segmenter: three acquired volumes and, for a completed case, the synthesis in the place of
the fourth. :class:`Segmenter` is the protocol every adapter implements (the shipped reference network,
an nnU-Net model folder, a command); :func:`checked_labels` turns what an adapter produced into canonical
labels or a :class:`SegmentationError` naming the case, the segmenter and what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..cases.discovery import Case
from ..cases.reader import read_sequences
from ..cases.volumes import Volume
from ..errors import CaseError
from ..sequences import CANONICAL_ORDER, MRISequence
from .labels import LabelError, to_canonical


class SegmentationError(CaseError):
    """A segmenter failed on a case: it crashed, timed out, or gave labels off the grid or unknown."""


@dataclass(frozen=True)
class CompleteCase:
    """The four sequences of one case on one grid.

    Attributes:
        case_id: The case id, e.g. ``BraTS-GLI-01666-000``.
        files: The volume file of each of the four sequences (a synthesis is one of them for a completed
            case; a copy baseline names one file twice).
        label: What this completion is, for messages and file names (``real``, ``t1c``, ``t1c-copy-t2f``).
    """

    case_id: str
    files: Mapping[MRISequence, Path]
    label: str = "real"
    _cache: dict[MRISequence, Volume] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        missing = [str(seq) for seq in CANONICAL_ORDER if seq not in self.files]
        if missing:
            raise CaseError(self.case_id, f"a complete case needs all four sequences; missing {missing}")

    def volumes(self, order: Sequence[MRISequence] = CANONICAL_ORDER) -> list[Volume]:
        """The volumes in ``order``, read once and checked to share one grid.

        Raises:
            VolumeReadError: a file cannot be read.
            GeometryError: the files are not on one grid (a synthesis must carry its sources' geometry).
        """
        if len(self._cache) < len(CANONICAL_ORDER):
            first = next(iter(self.files.values()))
            case = Case(self.case_id, first.parent, dict(self.files))
            self._cache.update(zip(CANONICAL_ORDER, read_sequences(case, CANONICAL_ORDER), strict=True))
        return [self._cache[MRISequence(seq)] for seq in order]

    @property
    def grid(self) -> tuple[int, int, int]:
        """The case's grid shape (reads the volumes if they are not read yet)."""
        return self.volumes()[0].shape  # type: ignore[return-value]

    def with_file(self, seq: MRISequence, path: Path, label: str) -> CompleteCase:
        """This case with ``seq`` taken from ``path`` (the other volumes already read are kept)."""
        files = dict(self.files)
        files[seq] = Path(path)
        kept = {s: v for s, v in self._cache.items() if s != seq and files[s] == self.files[s]}
        return CompleteCase(self.case_id, files, label, kept)


@runtime_checkable
class Segmenter(Protocol):
    """Turns a complete case into a tumour label volume on the case's grid.

    ``segment`` returns canonical labels (:mod:`cwdm.segmentation.labels`: 1 NCR, 2 ED, 3 ET, 4 RC) as
    an integer array of the case's grid shape, or raises :class:`SegmentationError`.
    """

    name: str

    def segment(self, case: CompleteCase) -> np.ndarray: ...


def can_segment_missing(segmenter: Segmenter) -> bool:
    """Whether ``segmenter`` segments a case with one sequence absent (the skip-synthesis baseline): it
    has ``segment_missing(case, absent)`` and says it was trained for it (``accepts_absent_sequence``).
    An nnU-Net model or a command trained on four sequences does not, and gets no such row."""
    return bool(getattr(segmenter, "accepts_absent_sequence", False)) and hasattr(
        segmenter, "segment_missing"
    )


def checked_labels(
    labels: np.ndarray,
    case: CompleteCase,
    segmenter: str,
    mapping: Mapping[int, int],
    path: Path | None = None,
) -> np.ndarray:
    """A segmenter's raw output as canonical labels, after checking its grid and its values.

    Args:
        labels: The label volume the segmenter produced.
        case: The case it segmented.
        segmenter: Its name, for the message.
        mapping: Every label value it may produce -> canonical label.
        path: The file it wrote, if any.

    Raises:
        SegmentationError: another shape than the case's grid, non-integer values, or a label value
            outside ``mapping``.
    """
    labels = np.asarray(labels)
    if labels.ndim > 3 and all(n == 1 for n in labels.shape[3:]):
        labels = labels.reshape(labels.shape[:3])
    if tuple(labels.shape) != tuple(case.grid):
        raise SegmentationError(
            case.case_id,
            f"segmenter {segmenter} returned a label volume of shape {'x'.join(map(str, labels.shape))} for "
            f"the {case.label} case on the grid {'x'.join(map(str, case.grid))}",
            path,
        )
    try:
        return to_canonical(labels, mapping, f"the {segmenter} segmentation of the {case.label} case")
    except LabelError as exc:
        raise SegmentationError(case.case_id, str(exc), path) from exc
