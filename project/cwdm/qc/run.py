"""``cwdm qc PRED DATA DIR``: previews and a contact sheet for predictions that are already written, by
this tool or any other that follows the challenge's naming (``<case>-<seq>.nii.gz``).

For each case folder of ``DATA`` the predictions of ``PRED`` that name it are drawn next to the case's
present sequences (the condition of their target) and, where ``DATA`` holds the real sequence too (a
complete case, as in a pseudo-validation set up from complete cases), next to the truth. A case with
no prediction is listed as ``missing``; a prediction with no case, or one that cannot be read, as
``failed`` with the reason. Nothing in ``PRED`` or ``DATA`` is written.

With a segmenter (``cwdm qc --segmenter``), each preview outlines the tumour as the segmenter sees it in
the case completed with the prediction, and, for a complete case, in the real case; the card gives the
Dice of the completed case's segmentation against the real case's (how much the synthesis changes the
segmentation) and against the case's ``-seg`` ground truth where it has one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..cases.discovery import Case, discover_cases
from ..cases.preprocessing import normalise
from ..cases.reader import read_case_file, read_segmentation, read_sequences
from ..errors import CaseError, CwdmError
from ..segmentation.case import CompleteCase, Segmenter
from ..segmentation.labels import (
    RegionDice,
    convention_mapping,
    detect_convention,
    region_dice,
    to_canonical,
)
from ..sequences import CANONICAL_ORDER, MRISequence, condition_order
from ..voxel_error import mse, psnr_of
from .previews import DIFFERENCE_SCALE, Panel, render_preview
from .sheet import SHEET_NAME, SheetEntry, write_sheet

log = logging.getLogger(__name__)

_PREDICTION_NAME = re.compile(r"^(?P<case>.+)-(?P<seq>t1n|t1c|t2w|t2f)\.nii(?:\.gz)?$")


def qc_folder(
    pred_dir: Path,
    data_dir: Path,
    qc_dir: Path,
    *,
    on_case: Callable[[SheetEntry], None] | None = None,
    segmenter: Segmenter | None = None,
    convention: str = "neurological",
    weights: str = "",
) -> list[SheetEntry]:
    """Draw a preview of every prediction of ``pred_dir`` into ``qc_dir`` and write its contact sheet.

    Args:
        pred_dir: Predictions, ``<case>-<seq>.nii.gz``.
        data_dir: The case folders the predictions were made from (or complete ones).
        qc_dir: Receives ``<case>-<seq>.png`` and ``index.html``; created if needed.
        on_case: Called with each entry as soon as it is known.
        segmenter: Outline the tumour it finds in the completed (and the real) case on the previews.
        convention: The previews' display convention (:data:`cwdm.qc.previews.CONVENTIONS`).
        weights: The weights that made the predictions, for the sheet's header (when known).

    Returns:
        The sheet's entries, in case order, then predictions that match no case.

    Raises:
        CwdmError: a folder does not exist, or ``qc_dir`` is one of the other two.
    """
    pred_dir, data_dir, qc_dir = Path(pred_dir), Path(data_dir), Path(qc_dir)
    if not pred_dir.is_dir():
        raise CwdmError(f"prediction folder {pred_dir} does not exist or is not a folder")
    if qc_dir.resolve() in (pred_dir.resolve(), data_dir.resolve()):
        raise CwdmError(f"the QC folder {qc_dir} must differ from the prediction and data folders")
    cases = discover_cases(data_dir)
    qc_dir.mkdir(parents=True, exist_ok=True)
    predictions: dict[str, list[tuple[MRISequence, Path]]] = {}
    for path in sorted(pred_dir.iterdir()):
        match = _PREDICTION_NAME.match(path.name)
        if match and path.is_file() and not path.name.startswith("."):
            predictions.setdefault(match["case"], []).append((MRISequence(match["seq"]), path))
    entries: list[SheetEntry] = []

    def add(entry: SheetEntry) -> None:
        entries.append(entry)
        if on_case is not None:
            on_case(entry)

    for case in cases:
        found = predictions.pop(case.case_id, [])
        if not found:
            target = case.missing[0] if case.expects_synthesis else None
            add(SheetEntry(case.case_id, None if target is None else str(target), "missing"))
        for target, path in found:
            add(_preview_entry(case, target, path, qc_dir, segmenter, convention))
    for case_id, found in predictions.items():
        for target, path in found:
            add(
                SheetEntry(
                    case_id,
                    str(target),
                    "failed",
                    error=f"{path.name}: no case folder {case_id} in {data_dir}",
                )
            )
    write_sheet(
        qc_dir / SHEET_NAME,
        entries,
        f"cwdm qc: {pred_dir.name}",
        f"predictions {pred_dir}; cases {data_dir}",
        weights=weights,
        convention=convention,
    )
    return entries


def _preview_entry(
    case: Case,
    target: MRISequence,
    path: Path,
    qc_dir: Path,
    segmenter: Segmenter | None,
    convention: str = "neurological",
) -> SheetEntry:
    try:
        order = [seq for seq in condition_order(target) if seq in case.files]
        if len(order) != 3:
            raise CaseError(case.case_id, f"the case folder lacks a present sequence of {target}'s condition")
        inputs = read_sequences(case, order)
        prediction = read_case_file(case.case_id, path, "prediction")
        if prediction.shape != inputs[0].shape:
            raise CaseError(
                case.case_id,
                f"the prediction's grid {prediction.shape} differs from the case's {inputs[0].shape}",
                path,
            )
        seg = read_segmentation(case)
        completed_labels = real_labels = None
        scores: list[tuple[str, str]] = []
        if segmenter is not None:
            files = {seq: case.files[seq] for seq in order} | {target: path}
            completed_labels = segmenter.segment(CompleteCase(case.case_id, files, str(target)))
            if target in case.files:
                real = CompleteCase(case.case_id, {seq: case.files[seq] for seq in CANONICAL_ORDER})
                real_labels = segmenter.segment(real)
                agreement = region_dice(completed_labels, real_labels)
                scores.append(("Dice vs real case's seg.", _dice_text(agreement)))
            if seg is not None:
                truth = to_canonical(seg, convention_mapping(detect_convention(seg)), f"{case.case_id}-seg")
                scores.append(("Dice vs ground truth", _dice_text(region_dice(completed_labels, truth))))
                if real_labels is not None:
                    ceiling = region_dice(real_labels, truth)
                    scores.append(("real case vs truth", _dice_text(ceiling)))
        panels = [Panel(str(seq), normalise(volume.data)) for seq, volume in zip(order, inputs, strict=True)]
        # As stored, not normalised again: the scores are then cwdm evaluate's, and a prediction's
        # error of overall level (too bright, too dark) shows in the panel and the difference map.
        synthesis = np.asarray(prediction.data, dtype=np.float32)
        panels.append(Panel(f"{target} (prediction)", synthesis, outline=completed_labels))
        if target in case.files:
            truth_raw = read_sequences(case, [target])[0].data
            truth_volume = normalise(truth_raw)
            panels.append(Panel(f"{target} (truth)", truth_volume, outline=real_labels))
            difference = np.abs(synthesis - truth_volume)
            panels.append(Panel("|prediction - truth|", difference, colour=True, scale=DIFFERENCE_SCALE))
            scores = [*_image_scores(synthesis, truth_volume, truth_raw != 0), *scores]
        centre = seg > 0 if seg is not None and (seg > 0).any() else panels[0].volume > 0
        name = f"{case.case_id}-{target}.png"
        render_preview(
            qc_dir / name,
            panels,
            inputs[0].affine,
            centre,
            f"{case.case_id}: {target} from {', '.join(order)}",
            convention,
        )
    except (CaseError, OSError, ValueError) as exc:
        log.error("%s: no preview: %s", case.case_id, exc)
        return SheetEntry(case.case_id, str(target), "failed", error=str(exc))
    return SheetEntry(case.case_id, str(target), "previewed", preview=name, scores=tuple(scores))


def _image_scores(synthesis: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> list[tuple[str, str]]:
    """PSNR and MSE of the full volume and the brain, both volumes in [0, 1] (data range 1); the
    complete scores, SSIM among them, are ``cwdm evaluate``'s."""
    rows = []
    for region, mask in (("full", np.ones_like(brain)), ("brain", brain)):
        if not mask.any():
            continue
        error = mse(synthesis[mask], truth[mask])
        rows.append((f"PSNR / MSE ({region})", f"{psnr_of(error):.2f} dB / {error:.5f}"))
    return rows


def _dice_text(scores: RegionDice) -> str:
    return f"WT {scores.wt:.3f} · TC {scores.tc:.3f} · ET {scores.et:.3f}"
