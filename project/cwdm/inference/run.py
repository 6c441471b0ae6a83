"""A folder of cases, end to end: the one inference flow behind ``cwdm infer`` and the MLCube entry point.

:func:`run_folder` discovers the cases, loads the models they need once, synthesises every missing
sequence into the output folder and saves the JSON run report outside it, also when a signal stops the
run. The commands around it only parse options, set up logging and progress, render the summary and
turn :attr:`RunReport.exit_code` into their exit status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from ..cases.discovery import Case, discover_cases, needed_targets
from ..config import RunParameters
from ..errors import CwdmError, Interrupted
from ..qc.sheet import SHEET_NAME, SheetEntry, write_sheet
from .casework import preview_name
from .outputs import check_output_folder
from .report import CaseCallback, RunReport, check_report_path, write_report
from .split import SPLIT_RULE, WorkPart
from .synthesizer import BatchStepCallback, Synthesizer

log = logging.getLogger(__name__)

#: Called once the models are loaded, before the first case, with the synthesizer and the cases.
ReadyCallback = Callable[[Synthesizer, Sequence[Case]], None]


class FolderRun(NamedTuple):
    """The outcome of :func:`run_folder`.

    Attributes:
        report: Every case's result; ``report.exit_code`` is the run's exit status.
        report_file: Where the JSON report was saved, or ``None`` when it could not be (logged).
    """

    report: RunReport
    report_file: Path | None


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
    """Synthesise the missing sequence of every case of ``data_dir`` into ``out_dir``; save the report.

    Args:
        data_dir: One sub-folder per case (docs/USAGE.md, "Running inference").
        out_dir: Receives ``<case>-<missing seq>.nii.gz`` and nothing else.
        weights_dir: One checkpoint per target plus ``model.yaml``.
        params: The run parameters, already merged with any command-line options.
        report_path: The JSON run report; never inside ``out_dir`` (checked before anything runs).
        qc_dir: A folder for quality control, never ``out_dir``: each written case's preview and, with
            ``samples`` > 1, its uncertainty map, and ``index.html``, the contact sheet of every case
            (written when the run ends, also when a signal stops it).
        on_ready: See :data:`ReadyCallback` (progress bars, a log line of the settings).
        on_case: Called with each case's result as soon as it is known.
        on_step: Called after every sampling step of a batch.
        part: Run only this part of a split folder (:mod:`cwdm.inference.split`); the report records
            it, and ``cwdm report merge`` combines the parts' reports.
        overwrite: Resample the cases whose finished output records other settings than this run's
            (otherwise they are kept and reported ``mismatched``).

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
    check_report_path(report_path, out_dir)
    cases = discover_cases(data_dir)
    if part is not None:
        check_output_folder(out_dir, cases)  # against every case, also those of the other parts
        total, cases = len(cases), part.select(cases)
        log.info("%s: %d of the %d cases (%s)", part.label, len(cases), total, SPLIT_RULE)
    synth = Synthesizer.from_weights(weights_dir, params, needed_targets(cases))
    if on_ready is not None:
        on_ready(synth, cases)
    try:
        report = synth.run(
            cases, out_dir, qc_dir=qc_dir, on_case=on_case, on_step=on_step, overwrite=overwrite
        )
    except Interrupted as exc:
        if exc.report is None:
            raise
        report = exc.report  # type: ignore[assignment]
    if part is not None:
        report = replace(report, part=part, cases_total=total)
    if qc_dir is not None:
        _save_sheet(report, Path(qc_dir))
    return FolderRun(report, _save_report(report, report_path))


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
        f"({report.runtime.precision}); {settings.sampler} {settings.steps_label} "
        f"({settings.timestep_spacing}), "
        f"{settings.samples} draw(s) a case, seed {settings.seed}; output folder {report.out_dir}"
    )
    try:
        weights = ", ".join(sorted({str(Path(path).parent) for path in report.models.values()}))
        write_sheet(qc_dir / SHEET_NAME, entries, f"cwdm infer: {report.out_dir.name}", meta, weights=weights)
    except OSError as exc:
        log.error("cannot write the contact sheet in %s (%s)", qc_dir, exc)


def _save_report(report: RunReport, path: Path) -> Path | None:
    """:func:`write_report`, with a failure logged rather than raised: the outputs stand, and the log and
    the summary hold every case's outcome (the exit status still follows the cases)."""
    try:
        return write_report(report, path)
    except CwdmError as exc:
        log.error("%s", exc)
        return None
