"""The one front door of a folder run: ``cwdm infer``, the image's entry point (MLCube, MedPerf, the 2025
convention), the sweep and the Python API all describe their run as a :class:`RunRequest` and call
:func:`run_request`.

It discovers the cases (keeping those of its part of a split folder), builds the synthesizer (or takes
the caller's), synthesises every missing sequence into the output folder and saves the JSON run report
outside it, also when a signal stops the run. The entry points around it only translate their
conventions into the request, set up logging and progress, render the summary and turn
:attr:`RunReport.exit_code` into their exit status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from ..cases.discovery import Case, discover_cases, needed_targets
from ..config import RunParameters, SamplingSettings
from ..errors import Interrupted
from ..qc.sheet import SHEET_NAME, SheetEntry, write_sheet
from ..runtime import resolve_runtime
from ..sequences import MRISequence
from ..weights.folder import WeightsDir
from . import provenance
from .casework import preview_name
from .execution import BatchStepCallback
from .outputs import check_output_folder
from .plan import ExistingOutputs, unfinished_cases
from .report import CaseCallback, RunReport, check_report_path, save_report
from .runner import run_cases
from .split import SPLIT_RULE, WorkPart
from .synthesizer import Synthesizer

log = logging.getLogger(__name__)

#: Called once the models are loaded, before the first case, with the synthesizer and the cases.
ReadyCallback = Callable[[Synthesizer, Sequence[Case]], None]


@dataclass(frozen=True)
class RunRequest:
    """Everything that defines a folder run.

    Attributes:
        data_dir: One sub-folder per case (docs/USAGE.md, "Running inference").
        out_dir: Receives ``<case>-<missing seq>.nii.gz`` and nothing else.
        weights_dir: One checkpoint per target plus ``model.yaml``.
        params: The run parameters, already merged with any command-line options.
        report_path: The JSON run report (never inside ``out_dir``: checked before anything runs);
            ``None``: no report file (the sweep). :func:`cwdm.inference.report.default_report_path` is the
            commands' default.
        qc_dir: A folder for quality control, never ``out_dir``: each written case's preview and, with
            ``samples`` > 1, its uncertainty map, and ``index.html``, the contact sheet of every case
            (written when the run ends, also when a signal stops it).
        part: Run only this part of a split folder (:mod:`cwdm.inference.split`); the report records it,
            and ``cwdm report merge`` combines the parts' reports.
        overwrite: Resample the cases whose finished output records other settings or inputs than this
            run's (otherwise they are kept and reported ``mismatched``).
        case_ids: Run only these cases of the folder (``None``: all of them).
    """

    data_dir: Path
    out_dir: Path
    weights_dir: Path
    params: RunParameters = RunParameters()
    report_path: Path | None = None
    qc_dir: Path | None = None
    part: WorkPart | None = None
    overwrite: bool = False
    case_ids: Collection[str] | None = None


class FolderRun(NamedTuple):
    """The outcome of :func:`run_request`.

    Attributes:
        report: Every case's result; ``report.exit_code`` is the run's exit status.
        report_file: Where the JSON report was saved, or ``None`` when it was not (not asked for, or it
            could not be written: logged).
    """

    report: RunReport
    report_file: Path | None


def run_request(
    request: RunRequest,
    *,
    synthesizer: Synthesizer | None = None,
    on_ready: ReadyCallback | None = None,
    on_case: CaseCallback | None = None,
    on_step: BatchStepCallback | None = None,
) -> FolderRun:
    """Synthesise the missing sequence of every case of the request's folder; save the report.

    Args:
        request: The run.
        synthesizer: Use this one (built from ``request.weights_dir`` and ``request.params``, e.g. with
            :meth:`Synthesizer.from_loaded` by a sweep that keeps its models); default: loaded here, the
            targets the cases need only.
        on_ready: See :data:`ReadyCallback` (progress bars, a log line of the settings).
        on_case: Called with each case's result as soon as it is known.
        on_step: Called after every sampling step of a batch.

    Returns:
        The report and where it was saved. A run stopped by a signal (SIGINT/SIGTERM under
        :func:`cwdm.stop_on_signals`) returns too: its report marks the unfinished cases ``interrupted``
        and its exit code is 128 + the signal number.

    Raises:
        CwdmError: nothing ran: a report path inside the output folder, a missing data folder, a bad
            weights directory or ``model.yaml``, an output folder that overlaps the inputs or cannot be
            written (:class:`cwdm.ConfigError` and :class:`cwdm.CheckpointError` among them).
        Interrupted: a signal arrived before the first case started (there is no report).
    """
    if request.report_path is not None:
        check_report_path(request.report_path, request.out_dir)
    cases = discover_cases(request.data_dir)
    total = len(cases)
    if request.part is not None:
        check_output_folder(request.out_dir, cases)  # against every case, also those of the other parts
        cases = request.part.select(cases)
        log.info("%s: %d of the %d cases (%s)", request.part.label, len(cases), total, SPLIT_RULE)
    if request.case_ids is not None:
        cases = [case for case in cases if case.case_id in request.case_ids]
    synth = synthesizer or Synthesizer.from_weights(
        request.weights_dir, request.params, _targets_to_load(request, cases)
    )
    if on_ready is not None:
        on_ready(synth, cases)
    try:
        options = synth.run_options(
            qc_dir=request.qc_dir, overwrite=request.overwrite, on_case=on_case, on_step=on_step
        )
        report = run_cases(synth, cases, request.out_dir, options)
    except Interrupted as exc:
        if exc.report is None:
            raise
        report = exc.report  # type: ignore[assignment]
    if request.part is not None:
        report = replace(report, part=request.part, cases_total=total)
    if request.qc_dir is not None:
        _save_sheet(report, Path(request.qc_dir))
    saved = None if request.report_path is None else save_report(report, request.report_path)
    return FolderRun(report, saved)


def _targets_to_load(request: RunRequest, cases: Sequence[Case]) -> list[MRISequence]:
    """The targets of the cases that still need a synthesis: a rerun whose outputs are all there (and made
    with this run's settings, model and inputs) loads no model at all."""
    weights = WeightsDir.open(Path(request.weights_dir))
    precision = resolve_runtime(request.params.device, request.params.precision).precision

    def settings(target: MRISequence) -> dict[str, object]:
        own = SamplingSettings.resolve(request.params, weights.spec, weights.spec_path, str(target))
        return own.output_record(precision)

    digests = provenance.DigestCache()

    def model_sha256(target: MRISequence) -> str | None:
        path = weights.checkpoints.get(target)
        return digests(path) if path is not None else None

    existing = ExistingOutputs(settings, model_sha256, digests, request.overwrite)
    return needed_targets(unfinished_cases(cases, request.out_dir, existing))


def run_folder(
    data_dir: Path,
    out_dir: Path,
    weights_dir: Path,
    params: RunParameters,
    report_path: Path,
    *,
    qc_dir: Path | None = None,
    on_ready: ReadyCallback | None = None,
    on_case: CaseCallback | None = None,
    on_step: BatchStepCallback | None = None,
    part: WorkPart | None = None,
    overwrite: bool = False,
) -> FolderRun:
    """:func:`run_request` with the request's fields as arguments (the Python API before requests)."""
    request = RunRequest(data_dir, out_dir, weights_dir, params, report_path, qc_dir, part, overwrite)
    return run_request(request, on_ready=on_ready, on_case=on_case, on_step=on_step)


def _save_sheet(report: RunReport, qc_dir: Path) -> None:
    """The contact sheet of ``report`` in ``qc_dir``; a failure is logged (the outputs stand)."""
    entries = []
    for result in report.cases:
        preview = preview_name(result.case_id, result.target) if result.target is not None else None
        has_preview = preview is not None and (qc_dir / preview).is_file()
        notes = result.warnings
        if result.status == "skipped" and not has_preview:  # written by an earlier run without --qc
            notes += (f"written before this run: cwdm qc {report.out_dir} DATA {qc_dir} draws its preview",)
        entries.append(
            SheetEntry(
                case_id=result.case_id,
                target=None if result.target is None else str(result.target),
                status=result.status,
                preview=preview if has_preview else None,
                elapsed_s=result.elapsed_s if result.status == "written" else None,
                uncertainty=result.uncertainty,
                error=result.error,
                notes=notes,
            )
        )
    settings = report.settings
    meta = (
        f"{report.elapsed_s:.1f} s on {report.runtime.device} "
        f"({report.runtime.precision}); {settings.label_with(report.target_settings)}, "
        f"{settings.timestep_spacing} timesteps, "
        f"{settings.samples} draw(s) a case, seed {settings.seed}; output folder {report.out_dir}"
    )
    try:
        weights = ", ".join(sorted({str(Path(path).parent) for path in report.models.values()}))
        write_sheet(qc_dir / SHEET_NAME, entries, f"cwdm infer: {report.out_dir.name}", meta, weights=weights)
    except OSError as exc:
        log.error("cannot write the contact sheet in %s (%s)", qc_dir, exc)
