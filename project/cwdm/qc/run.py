"""``cwdm qc PRED DATA DIR``: previews and a contact sheet for predictions that are already written, by
this tool or any other that follows the challenge's naming (``<case>-<seq>.nii.gz``).

For each case folder of ``DATA`` the predictions of ``PRED`` that name it are drawn next to the case's
present sequences (the condition of their target) and, where the real sequence is known, next to the
truth and the difference map: the truth is the case folder's own file of the target (``DATA`` holds
complete cases) or, with a folder of complete cases (``cwdm qc --truth``), that folder's. A prediction
whose truth is in neither is drawn with its inputs alone. A case with no prediction is listed as
``missing``; a prediction with no case, or one that cannot be read, as ``failed`` with the reason.
Nothing in ``PRED``, ``DATA`` or the truth folder is written.

With a segmenter (``cwdm qc --segmenter``), each preview outlines the tumour as the segmenter sees it in
the case completed with the prediction, and, for a complete case, in the real case; the card gives the
Dice of the completed case's segmentation against the real case's (how much the synthesis changes the
segmentation) and against the case's ``-seg`` ground truth where it has one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cases.discovery import Case, discover_cases, read_case
from ..cases.preprocessing import normalise
from ..cases.reader import read_case_file, read_segmentation, read_sequences
from ..errors import CaseError, CwdmError
from ..segmentation.case import CompleteCase, Segmenter, can_segment_missing
from ..segmentation.labels import (
    RegionDice,
    convention_mapping,
    detect_convention,
    region_dice,
    to_canonical,
)
from ..sequences import MRISequence, condition_order
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
    truth_dir: Path | None = None,
    on_case: Callable[[SheetEntry], None] | None = None,
    segmenter: Segmenter | None = None,
    convention: str = "neurological",
    weights: str = "",
    read_record: Callable[[Path], Mapping[str, Any] | None] | None = None,
) -> list[SheetEntry]:
    """Draw a preview of every prediction of ``pred_dir`` into ``qc_dir`` and write its contact sheet.

    Args:
        pred_dir: Predictions, ``<case>-<seq>.nii.gz``.
        data_dir: The case folders the predictions were made from (or complete ones).
        qc_dir: Receives ``<case>-<seq>.png`` and ``index.html``; created if needed.
        truth_dir: Complete cases, ``<case>/<case>-<seq>.nii.gz``: where a prediction's case folder there
            holds the predicted sequence (and ``data_dir``'s does not), the preview shows it as the truth,
            with the difference map and PSNR/MSE; a prediction with no truth there is drawn with its
            inputs and noted so.
        on_case: Called with each entry as soon as it is known.
        segmenter: Outline the tumour it finds in the completed (and the real) case on the previews.
        convention: The previews' display convention (:data:`cwdm.qc.previews.CONVENTIONS`).
        weights: The weights that made the predictions, for the sheet's header (when known).
        read_record: Reads the provenance record in a prediction's header (``None`` when it has none):
            without ``weights``, the header names the checkpoints the previewed predictions record
            (:func:`recorded_weights`).

    Returns:
        The sheet's entries, in case order, then predictions that match no case.

    Raises:
        CwdmError: a folder does not exist, or ``qc_dir`` is one of the other two.
    """
    pred_dir, data_dir, qc_dir = Path(pred_dir), Path(data_dir), Path(qc_dir)
    if not pred_dir.is_dir():
        raise CwdmError(f"prediction folder {pred_dir} does not exist or is not a folder")
    if truth_dir is not None and not Path(truth_dir).is_dir():
        raise CwdmError(f"ground-truth folder {truth_dir} does not exist or is not a folder")
    others = [pred_dir, data_dir] + ([] if truth_dir is None else [Path(truth_dir)])
    if qc_dir.resolve() in [folder.resolve() for folder in others]:
        raise CwdmError(f"the QC folder {qc_dir} must differ from the prediction, data and truth folders")
    cases = discover_cases(data_dir)
    qc_dir.mkdir(parents=True, exist_ok=True)
    predictions: dict[str, list[tuple[MRISequence, Path]]] = {}
    for path in sorted(pred_dir.iterdir()):
        match = _PREDICTION_NAME.match(path.name)
        if match and path.is_file() and not path.name.startswith("."):
            predictions.setdefault(match["case"], []).append((MRISequence(match["seq"]), path))
    entries: list[SheetEntry] = []
    previewed: list[Path] = []

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
            truth = _truth_of(case, target, truth_dir)
            entry = _preview_entry(case, target, path, qc_dir, segmenter, convention, truth)
            add(entry)
            if entry.status == "previewed":
                previewed.append(path)
    hint = (
        ""
        if truth_dir is not None
        else "; DATA is the folder they were made from, --truth the complete cases"
    )
    for case_id, found in predictions.items():
        for target, path in found:
            add(
                SheetEntry(
                    case_id,
                    str(target),
                    "failed",
                    error=f"{path.name}: no case folder {case_id} in {data_dir}{hint}",
                )
            )
    if not weights and read_record is not None:
        weights = recorded_weights([read_record(path) for path in previewed])
        log.info("weights recorded in the predictions' headers: %s", weights)
    folders = f"predictions {pred_dir}; cases {data_dir}"
    write_sheet(
        qc_dir / SHEET_NAME,
        entries,
        f"cwdm qc: {pred_dir.name}",
        folders + ("" if truth_dir is None else f"; truth {truth_dir}"),
        weights=weights,
        convention=convention,
    )
    return entries


def recorded_weights(records: Sequence[Mapping[str, Any] | None]) -> str:
    """The checkpoints that provenance records name, for a sheet's header: each distinct one as its file
    name and the first 12 hex digits of its SHA-256 (``t1c.safetensors (sha256 cebc2b9bcf61)``), then how
    many predictions carry no record; ``not recorded in the predictions`` when none does.

    Args:
        records: One per prediction: its record (:func:`cwdm.inference.provenance.read_record`), or None.
    """
    models = sorted(
        {
            (str(model.get("file") or "?"), str(model.get("sha256") or "")[:12])
            for record in records
            if record is not None and isinstance(model := record.get("model"), Mapping)
        }
    )
    without = sum(record is None for record in records)
    if not models:
        return "not recorded in the predictions"
    named = ", ".join(f"{name} (sha256 {digest})" if digest else name for name, digest in models)
    return named + (f"; {without} prediction{'s' * (without != 1)} without a record" if without else "")


@dataclass(frozen=True)
class _Truth:
    """Where a prediction's truth is: the complete case holding the target (``None``: nowhere known),
    and, when a truth folder was given and lacks it, why (the card's note)."""

    case: Case | None
    note: str = ""


def _truth_of(case: Case, target: MRISequence, truth_dir: Path | None) -> _Truth:
    """The case folder that holds the real ``target``: the input case itself when it is complete, else
    ``truth_dir``'s folder of the case when it has the file."""
    if target in case.files or truth_dir is None:
        return _Truth(case if target in case.files else None)
    folder = Path(truth_dir) / case.case_id
    complete = read_case(folder) if folder.is_dir() else None
    if complete is None or target not in complete.files:
        return _Truth(None, f"no truth in {truth_dir}, drawn with its inputs only")
    return _Truth(complete)


def _preview_entry(
    case: Case,
    target: MRISequence,
    path: Path,
    qc_dir: Path,
    segmenter: Segmenter | None,
    convention: str = "neurological",
    truth: _Truth = _Truth(None),
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
        if seg is None and truth.case is not None:
            seg = read_segmentation(truth.case)
        truth_file = None if truth.case is None else truth.case.files[target]
        completed_labels = real_labels = None
        scores: list[tuple[str, str]] = []
        if segmenter is not None:
            files = {seq: case.files[seq] for seq in order} | {target: path}
            completed_labels = segmenter.segment(CompleteCase(case.case_id, files, str(target)))
            if truth_file is not None:
                real = CompleteCase(
                    case.case_id, {seq: case.files[seq] for seq in order} | {target: truth_file}
                )
                real_labels = segmenter.segment(real)
                agreement = region_dice(completed_labels, real_labels)
                scores.append(("Dice vs real case's seg.", _dice_text(agreement)))
            if seg is not None:
                expert = to_canonical(seg, convention_mapping(detect_convention(seg)), f"{case.case_id}-seg")
                scores.append(("Dice vs ground truth", _dice_text(region_dice(completed_labels, expert))))
                if real_labels is not None:
                    ceiling = region_dice(real_labels, expert)
                    scores.append(("real case vs truth", _dice_text(ceiling)))
                if can_segment_missing(segmenter):  # the skip-synthesis baseline: the target left out
                    completed = CompleteCase(case.case_id, files, f"{target}-missing")
                    skipped = segmenter.segment_missing(completed, target)  # type: ignore[attr-defined]
                    scores.append((f"{target} left out vs truth", _dice_text(region_dice(skipped, expert))))
        panels = [Panel(str(seq), normalise(volume.data)) for seq, volume in zip(order, inputs, strict=True)]
        # As stored, not normalised again: the scores are then cwdm evaluate's, and a prediction's
        # error of overall level (too bright, too dark) shows in the panel and the difference map.
        synthesis = np.asarray(prediction.data, dtype=np.float32)
        panels.append(Panel(f"{target} (prediction)", synthesis, outline=completed_labels))
        if truth_file is not None:
            truth_raw = read_case_file(case.case_id, truth_file, "ground truth").data
            if truth_raw.shape != synthesis.shape:
                raise CaseError(
                    case.case_id,
                    f"the ground truth's grid {truth_raw.shape} differs from the case's {synthesis.shape}",
                    truth_file,
                )
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
        log.debug("%s: no preview: %s", case.case_id, exc)  # the entry carries the reason
        return SheetEntry(case.case_id, str(target), "failed", error=str(exc))
    notes = (truth.note,) if truth.note else ()
    return SheetEntry(case.case_id, str(target), "previewed", preview=name, scores=tuple(scores), notes=notes)


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
