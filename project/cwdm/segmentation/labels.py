"""BraTS tumour labels, the regions scored on them, and the Dice of a segmentation against the truth.

Three label conventions are in use in BraTS data:

- BraTS 2018-2021: 1 necrotic tumour core (NCR), 2 peritumoral oedema (ED), 4 enhancing tumour (ET);
- BraTS 2023 (pre-treatment glioma, the BraSyn data): 1 NCR, 2 surrounding non-enhancing FLAIR
  hyperintensity (SNFH, the former ED), 3 ET;
- BraTS 2024 post-treatment glioma: as 2023, plus 4 resection cavity (RC), which no tumour region holds.

Inside the package every label volume is in the 2024 numbering (:data:`CANONICAL`: 1 NCR, 2 ED, 3 ET,
4 RC), of which 2023 is the subset without RC. A ground truth's convention is recognised by its values
(:func:`detect_convention`: a 4 without a 3 is 2018-2021, a 3 and a 4 together are 2024) or declared, and
a segmentation is written back in the ground truth's. The three regions the BraTS evaluation ranks on
are unions of labels: whole tumour (WT) = NCR + ED + ET, tumour core (TC) = NCR + ET, enhancing tumour
(ET) = ET.

Dice of a region follows the BraTS rule for empty regions: when the truth has no voxel of the region, a
segmentation that has none scores 1 and one that has any scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np

from ..errors import ConfigError


class Structure(str, Enum):
    """A tumour sub-region that a BraTS label names."""

    NCR = "NCR"  # necrotic tumour core
    ED = "ED"  # oedema (2023: SNFH)
    ET = "ET"  # enhancing tumour
    RC = "RC"  # resection cavity (2024 post-treatment data)

    def __str__(self) -> str:
        return self.value


ConventionName = Literal["brats2021", "brats2023", "brats2024"]

#: Label value of each structure, per convention.
CONVENTIONS: Mapping[str, Mapping[Structure, int]] = {
    "brats2021": {Structure.NCR: 1, Structure.ED: 2, Structure.ET: 4},
    "brats2023": {Structure.NCR: 1, Structure.ED: 2, Structure.ET: 3},
    "brats2024": {Structure.NCR: 1, Structure.ED: 2, Structure.ET: 3, Structure.RC: 4},
}
#: The numbering of every label volume inside the package.
CANONICAL: ConventionName = "brats2024"

#: The regions the BraTS evaluation scores, as unions of structures, in the order of the CSV columns.
REGIONS: Mapping[str, frozenset[Structure]] = {
    "wt": frozenset({Structure.NCR, Structure.ED, Structure.ET}),
    "tc": frozenset({Structure.NCR, Structure.ET}),
    "et": frozenset({Structure.ET}),
}
#: The CSV columns of the Dice scores.
DICE_COLUMNS = tuple(f"dice_{region}" for region in REGIONS)


class LabelError(ValueError):
    """A label volume holds values that its convention does not define."""


def detect_convention(labels: np.ndarray) -> ConventionName:
    """The convention of a ground-truth label volume, from its values.

    A 4 without a 3 is ``brats2021`` (4 = ET), a 3 and a 4 together ``brats2024`` (4 = RC), anything else
    ``brats2023``. A volume with only 0, 1 and 2 reads the same in every convention. A 2024 volume
    without ET but with a cavity is indistinguishable from a 2021 one: declare the convention for such
    data.

    Raises:
        LabelError: a value other than 0 to 4.
    """
    values = set(np.unique(labels).tolist())
    unknown = values - {0, 1, 2, 3, 4}
    if unknown:
        raise LabelError(
            f"labels {sorted(values)} are not BraTS labels (2018-2021: 0, 1, 2, 4; 2023: 0, 1, 2, 3; "
            "2024: 0, 1, 2, 3, 4)"
        )
    if 4 in values:
        return "brats2024" if 3 in values else "brats2021"
    return "brats2023"


def mapping_from_structures(
    structures: Mapping[int, Structure | str], source: str = "label mapping"
) -> dict[int, int]:
    """Label value -> canonical label, from a declared ``{value: structure}`` mapping (0 is background).

    Raises:
        ConfigError: an unknown structure name, a negative or background value, or a structure named twice.
    """
    out: dict[int, int] = {}
    seen: set[Structure] = set()
    for value, name in structures.items():
        try:
            structure = Structure(str(name).upper())
        except ValueError as exc:
            raise ConfigError(
                f"{source}: unknown structure {name!r} for label {value}; expected NCR, ED, ET or RC"
            ) from exc
        if int(value) <= 0:
            raise ConfigError(f"{source}: label {value} cannot name a structure (0 is the background)")
        if structure in seen:
            raise ConfigError(f"{source}: {structure} is named by two labels")
        seen.add(structure)
        out[int(value)] = CONVENTIONS[CANONICAL][structure]
    return out


def convention_mapping(name: ConventionName) -> dict[int, int]:
    """Label value of convention ``name`` -> canonical label."""
    return mapping_from_structures({value: structure for structure, value in CONVENTIONS[name].items()}, name)


def to_canonical(labels: np.ndarray, mapping: Mapping[int, int], source: str) -> np.ndarray:
    """Relabel ``labels`` into the canonical convention through ``mapping`` (value -> canonical value).

    Args:
        labels: Integer-valued label volume, any shape.
        mapping: Every non-zero value the volume may hold, and its canonical label.
        source: What the volume is, for the message.

    Returns:
        ``uint8`` volume of the same shape, values in {0, 1, 2, 3}.

    Raises:
        LabelError: the volume holds a value that is neither 0 nor in ``mapping`` (or a non-integer).
    """
    values = np.unique(labels)
    unknown = [v for v in values.tolist() if v != 0 and v not in mapping]
    if unknown or not np.all(np.equal(np.mod(values, 1), 0)):
        allowed = sorted({0, *mapping})
        raise LabelError(f"{source} holds labels {values.tolist()}; expected only {allowed}")
    lookup = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for value, canonical in mapping.items():
        if value < len(lookup):
            lookup[value] = canonical
    return lookup[np.asarray(labels).astype(np.int64)]


def from_canonical(labels: np.ndarray, convention: ConventionName) -> np.ndarray:
    """Canonical labels written in ``convention`` (``uint8``); a structure the convention has no label
    for (RC outside 2024) becomes background."""
    lookup = np.zeros(max(CONVENTIONS[CANONICAL].values()) + 1, dtype=np.uint8)
    for structure, value in CONVENTIONS[convention].items():
        lookup[CONVENTIONS[CANONICAL][structure]] = value
    return lookup[np.asarray(labels, dtype=np.intp)]


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """The boolean mask of a region (``wt``, ``tc`` or ``et``) of a canonical label volume."""
    values = [CONVENTIONS[CANONICAL][s] for s in REGIONS[region]]
    return np.isin(labels, values)


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every region's mask of a canonical label volume, by region name."""
    return {region: region_mask(labels, region) for region in REGIONS}


def labels_from_regions(wt: np.ndarray, tc: np.ndarray, et: np.ndarray) -> np.ndarray:
    """Canonical labels from three region masks, painted from the outside in (as region-trained BraTS
    models are decoded): WT as ED, then TC as NCR, then ET as ET, so the regions nest by construction."""
    labels = np.zeros(np.shape(wt), dtype=np.uint8)
    labels[wt] = CONVENTIONS[CANONICAL][Structure.ED]
    labels[tc] = CONVENTIONS[CANONICAL][Structure.NCR]
    labels[et] = CONVENTIONS[CANONICAL][Structure.ET]
    return labels


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks, with the BraTS rule for an empty truth (1 if the prediction is empty
    too, else 0)."""
    truth_count = int(np.count_nonzero(truth))
    predicted_count = int(np.count_nonzero(prediction))
    if truth_count == 0:
        return 1.0 if predicted_count == 0 else 0.0
    overlap = int(np.count_nonzero(np.logical_and(prediction, truth)))
    return 2.0 * overlap / (truth_count + predicted_count)


@dataclass(frozen=True)
class RegionDice:
    """Dice of the three BraTS regions of one segmentation against its truth."""

    wt: float
    tc: float
    et: float

    def values(self) -> dict[str, float]:
        """By CSV column (:data:`DICE_COLUMNS`)."""
        return {"dice_wt": self.wt, "dice_tc": self.tc, "dice_et": self.et}


def region_dice(prediction: np.ndarray, truth: np.ndarray) -> RegionDice:
    """Dice of WT, TC and ET of two canonical label volumes of one shape.

    Raises:
        ValueError: the shapes differ.
    """
    if np.shape(prediction) != np.shape(truth):
        raise ValueError(
            f"segmentation shape {np.shape(prediction)} differs from the truth's {np.shape(truth)}"
        )
    return RegionDice(
        **{region: dice(region_mask(prediction, region), region_mask(truth, region)) for region in REGIONS}
    )


def mean_dice(scores: Iterable[RegionDice]) -> RegionDice:
    """The mean of each region's Dice over ``scores`` (NaN for none)."""
    scores = list(scores)
    if not scores:
        return RegionDice(float("nan"), float("nan"), float("nan"))
    return RegionDice(*(float(np.mean([getattr(s, r) for s in scores])) for r in REGIONS))
