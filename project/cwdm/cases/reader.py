"""Reading a case's volumes: each file turned into a :class:`Volume` or a :class:`cwdm.CaseError` that
names the case and the file, and the sequences of one case checked to share one grid.

Inference (the three present sequences), training (all four) and evaluation (a prediction and its ground
truth) read through here, so that a bad file is reported the same way wherever it is found.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import GeometryError, VolumeReadError
from ..sequences import MRISequence
from .discovery import Case
from .volumes import Volume, VolumeError, describe_grid, read_volume, same_grid


def read_case_file(case_id: str, path: Path, label: str) -> Volume:
    """Read one volume file of a case.

    Args:
        case_id: The case, named in the error.
        path: The file.
        label: What the file is, for the message (``"t1n volume"``, ``"prediction"``).

    Raises:
        VolumeReadError: the file cannot be read or is not a usable 3D volume (:func:`read_volume`).
    """
    path = Path(path)
    try:
        return read_volume(path)
    except VolumeError as exc:
        raise VolumeReadError(case_id, f"cannot use the {label} {path.name}: {exc}", path) from exc


def read_sequences(case: Case, sequences: Sequence[MRISequence]) -> list[Volume]:
    """Read ``sequences`` of ``case``, in the order given, and check that they share one grid.

    Raises:
        VolumeReadError: a file cannot be read.
        GeometryError: a sequence's grid (shape, or affine beyond the tolerance) differs from the first's;
            the message names both files and grids.
    """
    volumes = [read_case_file(case.case_id, case.files[seq], f"{seq} volume") for seq in sequences]
    check_same_grid(case, sequences, volumes)
    return volumes


def check_same_grid(case: Case, sequences: Sequence[MRISequence], volumes: Sequence[Volume]) -> None:
    """Check that ``volumes`` (of ``sequences``, in that order) share the first one's grid.

    Raises:
        GeometryError: as :func:`read_sequences`.
    """
    first = volumes[0]
    for seq, volume in zip(sequences[1:], volumes[1:], strict=True):
        if not same_grid(first, volume):
            raise GeometryError(
                case.case_id,
                f"{seq} grid differs from {sequences[0]} ({volume.path.name}: {describe_grid(volume)}; "
                f"{first.path.name}: {describe_grid(first)}{_affine_note(first, volume)}); "
                "the sequences of a case must share one grid",
                volume.path,
            )


def read_segmentation(case: Case) -> np.ndarray | None:
    """The labels of the case's ``<case>-seg.nii.gz`` (or ``.nii``), or None when it has none.

    Raises:
        VolumeReadError: the file is there but cannot be read.
    """
    for suffix in (".nii.gz", ".nii"):
        path = case.folder / f"{case.case_id}-seg{suffix}"
        if path.is_file():
            return read_case_file(case.case_id, path, "segmentation").data
    return None


def _affine_note(a: Volume, b: Volume) -> str:
    if a.shape != b.shape:
        return ""
    offset = float(np.abs(a.affine - b.affine).max())
    return f"; same shape but the affines differ by up to {offset:.3g} mm"
