"""Synthetic tumour cases for the segmentation tests and the tiny nnU-Net fixture: a brain-shaped ellipsoid
with smooth texture, and a tumour of three nested structures that each sequence shows as BraTS
sequences do (oedema bright on t2w/t2f, enhancing rim bright on t1c, necrosis dark on t1c), so that a
small network learns something in a few hundred iterations. Seeded; nothing is written to the repository."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: A non-identity affine (1 mm, LPS-like flips and an offset), so that geometry bugs show.
AFFINE = np.array([[-1.0, 0, 0, 31.0], [0, -1.0, 0, 31.0], [0, 0, 1.0, -7.0], [0, 0, 0, 1.0]])
SEQUENCES = ("t1n", "t1c", "t2w", "t2f")


def synthetic_case(
    seed: int, shape: tuple[int, int, int] = (32, 32, 24)
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({sequence: float32 volume}, labels)``, labels in the BraTS 2023 convention (1 NCR, 2 ED, 3 ET)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    centre = np.array(shape) / 2
    brain = (((grid - centre[:, None, None, None]) / (0.42 * np.array(shape))[:, None, None, None]) ** 2).sum(
        0
    ) <= 1
    where = centre + rng.uniform(-0.15, 0.15, 3) * np.array(shape)
    radius = rng.uniform(0.26, 0.34) * min(shape)
    distance = np.sqrt(((grid - where[:, None, None, None]) ** 2).sum(0))
    labels = np.zeros(shape, np.uint8)
    labels[(distance <= radius) & brain] = 2
    labels[(distance <= 0.7 * radius) & brain] = 3
    labels[(distance <= 0.45 * radius) & brain] = 1
    texture = rng.normal(0, 1, shape)
    volumes = {}
    contrast = {  # mean intensity of healthy tissue, NCR, ED, ET per sequence
        "t1n": (300.0, 150.0, 250.0, 260.0),
        "t1c": (320.0, 120.0, 300.0, 900.0),
        "t2w": (200.0, 500.0, 450.0, 350.0),
        "t2f": (250.0, 300.0, 700.0, 500.0),
    }
    for seq in SEQUENCES:
        healthy, ncr, ed, et = contrast[seq]
        values = np.full(shape, healthy) + 25 * texture
        values[labels == 1], values[labels == 2], values[labels == 3] = ncr, ed, et
        values = values + 10 * rng.normal(0, 1, shape)
        values[~brain] = 0
        volumes[seq] = np.clip(values, 0, None).astype(np.float32)
    return volumes, labels


def write_case_folder(
    root: Path,
    case_id: str,
    seed: int,
    shape: tuple[int, int, int] = (32, 32, 24),
    with_seg: bool = True,
    seg_convention: str = "brats2023",
) -> Path:
    """``root/<case_id>/<case_id>-<seq>.nii.gz`` and ``-seg`` (2021 labels if asked) of a synthetic case."""
    volumes, labels = synthetic_case(seed, shape)
    folder = Path(root) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for seq, values in volumes.items():
        nib.save(nib.Nifti1Image(values, AFFINE), folder / f"{case_id}-{seq}.nii.gz")
    if with_seg:
        seg = labels.copy()
        if seg_convention == "brats2021":
            seg[labels == 3] = 4
        nib.save(nib.Nifti1Image(seg, AFFINE), folder / f"{case_id}-seg.nii.gz")
    return folder
