"""One case, before and after sampling: read and preprocess its present sequences into the network's
condition (:func:`prepare_case`), and turn a sampled volume into its output file (:func:`write_prediction`).

Before (docs/USAGE.md, "Running inference"): read the three present sequences in :func:`cwdm.condition_order`
through :func:`cwdm.cases.reader.read_sequences` (one grid, or a :class:`cwdm.errors.GeometryError`), clip
and scale each as in training (:func:`cwdm.cases.preprocessing.normalise`) and lay it out for the network
(:class:`cwdm.cases.preprocessing.NetworkLayout`). After: refuse non-finite values, post-process (brain
mask by default, or the challenge container's threshold; docs/METHOD.md, "Post-processing"), put the
volume back on the input grid and write ``<case>-<target>.nii.gz`` (float32, header of the first condition
sequence) atomically. The output's name is :meth:`cwdm.cases.discovery.Case.output_name`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..cases.contract import contract_warnings
from ..cases.discovery import Case
from ..cases.preprocessing import POSTPROCESSES, NetworkLayout, normalise
from ..cases.reader import check_same_grid, read_case_file, read_segmentation
from ..cases.volumes import Volume, write_volume_atomic
from ..choices import PostprocessName
from ..errors import CaseError
from ..qc.previews import Panel, render_preview
from ..sequences import MRISequence, condition_order
from .report import CaseResult

log = logging.getLogger(__name__)

#: The stages of a case, in the order they happen (:attr:`cwdm.inference.report.CaseResult.stages_s`).
STAGES = ("read", "preprocess", "network", "postprocess", "write")


@dataclass
class PreparedCase:
    """A case ready for sampling: condition volumes in network layout and where its output goes.

    Attributes:
        case: The case.
        target: The sequence to synthesise.
        cond: ``(3, *layout.network_shape)`` float32 in [0, 1], in condition order.
        layout: How the input grid maps onto the network's.
        reference: The first condition sequence: its header goes on the output.
        output: The output file.
        elapsed_s: Time spent reading and preprocessing.
        warnings: Remarks that go into the case's result (constant input volumes).
        stages_s: Seconds each stage took so far (``read``, ``preprocess``; summed over the sequences,
            which may overlap); sampling and writing add ``network``, ``postprocess`` and ``write``.
    """

    case: Case
    target: MRISequence
    cond: np.ndarray
    layout: NetworkLayout
    reference: Volume
    output: Path
    elapsed_s: float = 0.0
    warnings: tuple[str, ...] = ()
    stages_s: dict[str, float] = field(default_factory=dict)


def prepare_case(
    case: Case,
    target: MRISequence,
    out_dir: Path,
    multiple: int,
    postprocess: PostprocessName,
    pool: Executor | None = None,
) -> PreparedCase:
    """Read, check and preprocess the three present sequences of ``case``.

    Each sequence is read and preprocessed as one task; with ``pool`` the three run concurrently (the
    gzip inflate, the partition and the scaling release the GIL). An error is the one the sequential
    order would raise first.

    Args:
        case: The case.
        target: Its missing sequence.
        out_dir: The output folder.
        multiple: Image-space sizes the network accepts must divide by this.
        postprocess: The run's post-processing (named in a warning about a blank brain mask).
        pool: Threads for the sequences' tasks; ``None`` runs them one after the other.

    Raises:
        VolumeReadError: a present sequence cannot be read.
        GeometryError: the present sequences do not share one grid.
    """
    start = time.perf_counter()
    order = condition_order(target)
    if pool is None:
        done = [_read_and_normalise(case, seq) for seq in order]
    else:
        futures = [pool.submit(_read_and_normalise, case, seq) for seq in order]
        done = [future.result() for future in futures]
    volumes = [task.volume for task in done]
    check_same_grid(case, order, volumes)
    layout = NetworkLayout.for_shape(volumes[0].shape, multiple)
    # One allocation for the condition, each sequence copied into its channel (C order, as the network
    # wants it, from nibabel's Fortran order): no padded copy per sequence and no stack of them.
    layout_start = time.perf_counter()
    cond = np.empty((len(done), *layout.network_shape), dtype=np.float32)
    for channel, task in zip(cond, done, strict=True):
        layout.to_network(task.values, out=channel)
    layout_s = time.perf_counter() - layout_start
    elapsed_s = time.perf_counter() - start
    return PreparedCase(
        case=case,
        target=target,
        cond=cond,
        layout=layout,
        reference=volumes[0],
        output=Path(out_dir) / case.output_name(target),
        elapsed_s=elapsed_s,
        warnings=_blank_inputs(case, order, volumes, [task.blank for task in done], postprocess)
        + _contract(case, order, volumes),
        stages_s={
            "read": sum(task.stages_s["read"] for task in done),
            "preprocess": sum(task.stages_s["preprocess"] for task in done) + layout_s,
        },
    )


@dataclass
class _SequenceTask:
    """One sequence of a case, read and preprocessed: its volume, its values on the input grid, whether
    they are all zeros, and the time each step took."""

    volume: Volume
    values: np.ndarray
    blank: bool
    stages_s: dict[str, float]


def _read_and_normalise(case: Case, seq: MRISequence) -> _SequenceTask:
    """Read one sequence and preprocess it (on a pool thread)."""
    start = time.perf_counter()
    volume = read_case_file(case.case_id, case.files[seq], f"{seq} volume")
    read_s = time.perf_counter() - start
    values = normalise(volume.data)
    return _SequenceTask(
        volume,
        values,
        not values.any(),
        {"read": read_s, "preprocess": time.perf_counter() - start - read_s},
    )


def _contract(case: Case, order: Sequence[MRISequence], volumes: Sequence[Volume]) -> tuple[str, ...]:
    """Warnings for inputs that do not look BraTS-preprocessed (:mod:`cwdm.cases.contract`)."""
    notes = contract_warnings([str(seq) for seq in order], volumes)
    for note in notes:
        log.warning("%s: %s", case.case_id, note)
    return notes


def _blank_inputs(
    case: Case,
    order: Sequence[MRISequence],
    volumes: Sequence[Volume],
    blank: Sequence[bool],
    postprocess: PostprocessName,
) -> tuple[str, ...]:
    """Warnings for present sequences that are all zeros after preprocessing (constant volumes: nothing
    to scale, so no division by zero either); the case is still synthesised."""
    notes = []
    for index, (seq, volume, is_blank) in enumerate(zip(order, volumes, blank, strict=True)):
        if not is_blank:
            continue
        note = (
            f"the {seq} volume {volume.path.name} is constant between its 0.1 and 99.9 percentiles: "
            "it enters the network as all zeros"
        )
        if index == 0 and postprocess == "brain_mask":
            note += "; as the first condition it defines the brain mask, so the output is all zeros"
        log.warning("%s: %s", case.case_id, note)
        notes.append(note)
    return tuple(notes)


def write_prediction(
    item: PreparedCase,
    volumes: np.ndarray,
    elapsed_s: float,
    postprocess: PostprocessName,
    checkpoint: Path | None = None,
    qc_dir: Path | None = None,
    network_s: float | None = None,
    *,
    header: nib.Nifti1Header | None = None,
) -> CaseResult:
    """Post-process the sampled volumes of one case, put their mean on the input grid, write it atomically.

    With several draws the written prediction is the voxel-wise mean of the post-processed draws, and the
    result carries the mean of their voxel-wise standard deviation (ddof 1) inside the brain (the first
    condition's non-zero voxels). With ``qc_dir`` the case also gets its preview there
    (:func:`cwdm.qc.previews.render_preview`) and, with several draws, the standard deviation as NIfTI on
    the input grid; a preview that cannot be drawn is a warning on the result, not a failure.

    Args:
        item: The prepared case.
        volumes: ``(draws, *network_shape)`` sampled image-space volumes in network layout (not clamped).
        elapsed_s: Time spent on the case so far.
        postprocess: The post-processing variant.
        checkpoint: The model's file, named in the error about non-finite values.
        qc_dir: The quality-control folder, if any.
        network_s: The case's share of its batches' sampling time, for :attr:`CaseResult.stages_s`.
        header: The output's header (default: the reference's; the synthesizer passes one stamped with
            the provenance, :func:`cwdm.inference.provenance.stamp`).

    Raises:
        CaseError: a sampled volume has NaN or infinite values, or the output file cannot be written
            (no partial file remains).
    """
    start = time.perf_counter()
    finite = np.isfinite(volumes)
    if not finite.all():
        raise CaseError(
            item.case.case_id,
            f"the {item.target} model produced {int(finite.size - finite.sum()):,} NaN or infinite "
            "voxels; nothing was written (check the checkpoint, or use precision fp32)",
            checkpoint,
        )
    del finite
    draws = [POSTPROCESSES[postprocess](volume, item.cond[0]) for volume in volumes]
    mean = draws[0] if len(draws) == 1 else np.mean(draws, axis=0, dtype=np.float64).astype(np.float32)
    spread = None if len(draws) == 1 else np.std(draws, axis=0, ddof=1, dtype=np.float64).astype(np.float32)
    result = item.layout.to_grid(mean)
    written = time.perf_counter()
    try:
        write_volume_atomic(result, item.reference.header if header is None else header, item.output)
    except OSError as exc:
        raise CaseError(item.case.case_id, f"cannot write the output ({exc})", item.output) from exc
    stages = {**item.stages_s, "postprocess": written - start, "write": time.perf_counter() - written}
    if network_s is not None:
        stages = {"read": 0.0, "preprocess": 0.0, **stages, "network": network_s}
        stages = {key: stages[key] for key in STAGES if key in stages}
    uncertainty = None
    warnings = item.warnings
    if spread is not None:
        brain = item.cond[0] > 0
        uncertainty = float(spread[brain].mean()) if brain.any() else 0.0
    if qc_dir is not None:
        warnings += _quality_control(item, result, spread, Path(qc_dir))
    elapsed_s += time.perf_counter() - start
    return CaseResult(
        item.case.case_id,
        "written",
        item.target,
        item.output,
        elapsed_s,
        warnings=warnings,
        uncertainty=uncertainty,
        stages_s=stages,
    )


def preview_name(case_id: str, target: MRISequence) -> str:
    """The preview's file name in the QC folder."""
    return f"{case_id}-{target}.png"


def uncertainty_name(case_id: str, target: MRISequence) -> str:
    """The uncertainty map's file name in the QC folder (not a prediction's name: it ends in ``-std``)."""
    return f"{case_id}-{target}-std.nii.gz"


def _quality_control(
    item: PreparedCase, synthesis: np.ndarray, spread: np.ndarray | None, qc_dir: Path
) -> tuple[str, ...]:
    """Write the case's uncertainty map and preview into ``qc_dir``; returns warnings instead of raising:
    the prediction is written already and stands."""
    case, target = item.case, item.target
    try:
        spread_on_grid = None if spread is None else item.layout.to_grid(spread)
        if spread_on_grid is not None:
            write_volume_atomic(
                spread_on_grid, item.reference.header, qc_dir / uncertainty_name(case.case_id, target)
            )
        inputs = [item.layout.to_grid(values) for values in item.cond]
        panels = [
            Panel(str(seq), values) for seq, values in zip(condition_order(target), inputs, strict=True)
        ]
        panels.append(Panel(f"{target} (synthesised)", normalise(synthesis)))
        if spread_on_grid is not None:
            panels.append(Panel("uncertainty (sd)", spread_on_grid, colour=True))
        tumour = read_segmentation(case)
        render_preview(
            qc_dir / preview_name(case.case_id, target),
            panels,
            item.reference.affine,
            tumour > 0 if tumour is not None and (tumour > 0).any() else inputs[0] > 0,
            f"{case.case_id}: {target} synthesised from {', '.join(str(s) for s in condition_order(target))}",
        )
    except (OSError, ValueError, CaseError) as exc:  # the prediction is written already and stands
        note = f"no preview or uncertainty map: {type(exc).__name__}: {exc}"
        log.warning("%s: %s", case.case_id, note)
        return (note,)
    return ()
