"""One picture per synthesis: the present sequences and the synthesised one side by side, in three planes.

Rows are the axial, coronal and sagittal planes through one point: the centre of the tumour when the case
has a segmentation, else the centre of the brain (the centroid of the first condition's non-zero
voxels). Columns are the three present sequences, the synthesis, and, when there is one, the ground truth
(``cwdm qc`` on complete cases) and the uncertainty map (``samples`` > 1). Every intensity volume is shown
on the same scale: values in [0, 1] after the training normalisation (the synthesis is already on it),
grey from 0 to 1. The uncertainty map (voxel-wise standard deviation of the draws) and the difference
map (|synthesis - truth|) have colour scales of their own, fixed across cases (0 to
:data:`UNCERTAINTY_SCALE` and :data:`DIFFERENCE_SCALE`), so that two cards compare at a glance, with a
colour bar. Where a segmenter ran
(``cwdm qc --segmenter``), a panel carries the outline of a segmentation: on the synthesis, that of the
case completed with it; on the truth, that of the real complete case; the BraTS regions in three colours
(:data:`OUTLINE_COLOURS`), so a reader sees what the synthesis does to the tumour.

The volumes are turned to the RAS+ orientation of their affine first, and shown in the neurological
convention (patient's right on the right of the picture, anterior and superior up) or, with
``convention="radiological"``, as radiologists read them (patient's right on the left), with the letters
and the convention's name on the panels. Drawn with matplotlib's object API on the Agg canvas (no
display and no pyplot state, so the writer thread may draw while the main thread samples); written
atomically.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import write_atomic
from ..segmentation.labels import region_mask

#: Each panel is drawn this many inches a side; the picture's resolution: 243 pixels a panel, about one
#: a voxel of the 240-voxel BraTS axes (nothing lost to downsampling), and 8-point labels 14 pixels high,
#: readable where the contact sheet shows the picture at its own size.
_PANEL_INCHES = 1.9
_DPI = 128
#: (name, axis of the slice, letters at the panel's left/right and bottom/top), for a RAS+ array.
_PLANES = (
    ("axial", 2, ("L", "R", "P", "A")),
    ("coronal", 1, ("L", "R", "I", "S")),
    ("sagittal", 0, ("P", "A", "I", "S")),
)


#: The top of the uncertainty map's colour scale (sd of the draws, intensities in [0, 1]), the same for
#: every case; larger values show in the top colour.
UNCERTAINTY_SCALE = 0.1
#: The top of the difference map's colour scale (|synthesis - truth|, intensities in [0, 1]).
DIFFERENCE_SCALE = 0.3
#: The display conventions: where the patient's right is in axial and coronal panels.
CONVENTIONS = ("neurological", "radiological")

#: Region -> outline colour (whole tumour, tumour core, enhancing tumour), drawn in this order.
OUTLINE_COLOURS = {"wt": "#3c3", "tc": "#f44", "et": "#fd0"}


@dataclass(frozen=True)
class Panel:
    """One column of a preview.

    Attributes:
        label: Shown above the column (``t1n``, ``t2f (synthesised)``, ``uncertainty (sd)``).
        volume: ``(X, Y, Z)`` on the case's grid; intensities in [0, 1] (the grey scale), or the
            uncertainty map when ``colour`` is set.
        colour: Draw with a colour map on ``scale`` instead of grey 0..1 (uncertainty, difference).
        scale: The top of a colour panel's scale (default :data:`UNCERTAINTY_SCALE`).
        outline: ``(X, Y, Z)`` canonical tumour labels to outline on the panel (1 NCR, 2 ED, 3 ET,
            4 RC; :mod:`cwdm.segmentation.labels`), or None.
    """

    label: str
    volume: np.ndarray
    colour: bool = False
    outline: np.ndarray | None = None
    scale: float = UNCERTAINTY_SCALE


def centre_of(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel at the centroid of ``mask`` (the grid's centre when the mask is empty)."""
    points = np.argwhere(mask)
    if points.size == 0:
        return tuple(n // 2 for n in mask.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in points.mean(axis=0))  # type: ignore[return-value]


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The slices of ``mask``'s non-zero bounding box, widened by ``margin`` (the whole grid if empty)."""
    points = np.argwhere(mask)
    if points.size == 0:
        return tuple(slice(None) for _ in mask.shape)
    low, high = points.min(axis=0), points.max(axis=0) + 1
    return tuple(
        slice(max(0, int(a) - margin), min(n, int(b) + margin))
        for a, b, n in zip(low, high, mask.shape, strict=True)
    )


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    orientation = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(orientation, nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(volume, transform)


def render_preview(
    path: Path,
    panels: Sequence[Panel],
    affine: np.ndarray,
    centre_mask: np.ndarray,
    title: str,
    convention: str = "neurological",
) -> Path:
    """Draw ``panels`` in three planes through the centroid of ``centre_mask`` and write a PNG.

    Args:
        path: The PNG to write (atomically).
        panels: The columns, left to right; every volume on one grid.
        affine: The grid's voxel-to-world affine (for the orientation).
        centre_mask: ``(X, Y, Z)`` the region to centre the planes on (tumour, else brain).
        title: The line above the picture.
        convention: ``neurological`` (patient's right on the right) or ``radiological`` (on the left).

    Returns:
        ``path``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"display convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    radiological = convention == "radiological"
    from matplotlib.figure import Figure  # here, not at the top: matplotlib loads only when QC draws

    oriented = [_to_ras(panel.volume, affine) for panel in panels]
    outlines = [None if panel.outline is None else _to_ras(panel.outline, affine) for panel in panels]
    mask = _to_ras(centre_mask, affine)
    # Crop every panel to the head (the non-zero voxels of the intensity volumes, plus a margin): a
    # skull-stripped brain fills only part of the BraTS grid.
    head = np.zeros(mask.shape, dtype=bool)
    for panel, volume in zip(panels, oriented, strict=True):
        if not panel.colour:
            head |= volume > 0
    box = _bounding_box(head | mask, margin=4)
    oriented = [volume[box] for volume in oriented]
    outlines = [None if labels is None else labels[box] for labels in outlines]
    centre = centre_of(mask[box])
    figure = Figure(
        figsize=(_PANEL_INCHES * len(panels), _PANEL_INCHES * len(_PLANES) + 0.5), facecolor="black"
    )
    axes = figure.subplots(len(_PLANES), len(panels), squeeze=False)
    figure.subplots_adjust(left=0.03, right=0.93, top=0.9, bottom=0.02, wspace=0.04, hspace=0.12)
    for column, (panel, volume) in enumerate(zip(panels, oriented, strict=True)):
        vmax = panel.scale if panel.colour else 1.0
        for row, (name, axis, letters) in enumerate(_PLANES):
            ax = axes[row][column]
            # Left-right flipped in the radiological convention (axial, coronal; sagittal has no L/R).
            flip = radiological and axis != 0
            plane = np.rot90(np.take(volume, centre[axis], axis=axis))
            image = ax.imshow(
                plane[:, ::-1] if flip else plane,
                cmap="magma" if panel.colour else "gray",
                vmin=0.0,
                vmax=vmax,
                interpolation="nearest",
            )
            if outlines[column] is not None:
                _draw_outline(ax, np.take(outlines[column], centre[axis], axis=axis), flip)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            left, right, bottom, top = letters
            if flip:
                left, right = right, left
            style = {"color": "yellow", "fontsize": 7, "transform": ax.transAxes}
            ax.text(0.02, 0.5, left, va="center", **style)
            ax.text(0.93, 0.5, right, va="center", **style)
            ax.text(0.5, 0.02, bottom, ha="center", **style)
            ax.text(0.5, 0.90, top, ha="center", **style)
            if axis != 0:  # the convention, named on every panel it applies to
                ax.text(
                    0.98,
                    0.02,
                    convention[:5] + ".",
                    ha="right",
                    color="#8cf",
                    fontsize=5,
                    transform=ax.transAxes,
                )
            if row == 0:
                ax.set_title(panel.label, color="white", fontsize=8)
            if column == 0:
                ax.set_ylabel(name, color="white", fontsize=8)
            if panel.colour and row == len(_PLANES) - 1:
                bar = figure.colorbar(image, ax=axes[:, column].tolist(), fraction=0.05, pad=0.02)
                bar.ax.tick_params(labelsize=6, colors="white")
    if any(labels is not None for labels in outlines):
        title += "  |  tumour outlines: " + ", ".join(r.upper() for r in OUTLINE_COLOURS)
        for offset, (region, colour) in enumerate(OUTLINE_COLOURS.items()):
            figure.text(0.03 + 0.045 * offset, 0.005, region.upper(), color=colour, fontsize=7, weight="bold")
    figure.suptitle(
        f"{title}  |  {convention} convention (patient's right on the {'left' if radiological else 'right'})"
        "  |  SYNTHETIC, not for diagnosis",
        color="white",
        fontsize=8,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="black")
    return write_atomic(Path(path), buffer.getvalue())


def _draw_outline(ax, labels: np.ndarray, flip: bool = False) -> None:
    """Contour each BraTS region of the 2-D label slice ``labels`` on ``ax`` (nothing for an absent one),
    left-right flipped as its image is."""
    for region, colour in OUTLINE_COLOURS.items():
        inside = region_mask(labels, region)
        if inside.any() and not inside.all():
            plane = np.rot90(inside.astype(np.float32))
            ax.contour(plane[:, ::-1] if flip else plane, levels=[0.5], colors=colour, linewidths=0.7)
