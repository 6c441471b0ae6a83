"""Entry point of the cwdm-brasyn image (its ENTRYPOINT is ``python3 /opt/cwdm/project/mlcube.py``), for
every way BraSyn entries are run (docs/DEPLOYMENT.md, "Where it runs"):

1. No arguments at all (BraSyn 2025, the ``brats`` package's entries after 2024, plain ``docker run``):
   cases from ``/input``, predictions to ``/output``, both mounted. Without both folders it prints how
   to call it and exits with 2.
2. ``infer --data_path=DATA --output_path=OUT [--weights=DIR] [--parameters_file=FILE]`` (MLCube,
   MedPerf, the ``brats`` package's 2024 and earlier entries, which pass only the two folders).
3. ``--entrypoint cwdm``: the whole ``cwdm`` command line (``infer``, ``evaluate``, ``qc``, ...).

This file is run as a script, never imported as a module: ``mlcube`` is also the name of a PyPI package
(the MLCube runner itself). It does what ``cwdm infer`` does, with the MLCube conventions:

- options spelled ``--data_path`` ..., as MLCube's docker runner and MedPerf's ``run_args`` pass them;
- a no-op ``hotfix`` command, so that typer keeps the ``infer`` sub-command (MLCube convention);
- ``--weights``: a weights directory (one checkpoint per target, optional model.yaml), or a folder whose
  ``weights/`` sub-folder is one (MedPerf's additional files). Without ``--weights``, or when the folder
  exists but holds no checkpoint (an empty ``additional_files/weights``), the weights baked into the
  image are used (``$CWDM_DEFAULT_WEIGHTS``), with a warning; a folder that does not exist is an error;
- ``--parameters_file``: a parameters.yaml; without it, the file ``$CWDM_PARAMETERS_FILE`` names (mounted
  by an organiser who wants other settings without arguments), else the shipped defaults;
- logs go to stderr and, with the JSON run report, to files outside the output folder: ``--report_path``
  or ``<$CWDM_REPORT_DIR or $TMPDIR>/cwdm-<UTC time>-report.json`` (+ ``.log``); MedPerf mounts its own
  folder at /tmp. ``--qc_path`` (or ``$CWDM_QC_DIR``) adds previews and a contact sheet, never in the
  output folder;
- exit code 0 only when every case with exactly one missing sequence has its output; 1 when a case
  failed (its error is in the log and the report); 2 when nothing ran (bad parameters, weights or
  folders, or no arguments without /input and /output); 130 / 143 when SIGINT / SIGTERM stopped the run
  (cleanly: no partial output, the report and the summary table say which cases are unfinished, and a
  rerun does them). The summary table and the report are produced in every case where the run started.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from cwdm.cases.discovery import Case
from cwdm.config import load_run_parameters
from cwdm.errors import CheckpointError, CwdmError, Interrupted
from cwdm.inference.report import RunReport, check_report_path
from cwdm.inference.run import run_folder
from cwdm.inference.split import resolve_part
from cwdm.inference.synthesizer import Synthesizer
from cwdm.runtime import configure_process
from cwdm.signals import stop_on_signals
from cwdm.weights.folder import WeightsDir

#: Environment variable naming the weights baked into the image (set by the Dockerfile).
DEFAULT_WEIGHTS_ENV = "CWDM_DEFAULT_WEIGHTS"
#: Environment variables an organiser may set instead of arguments (the 2025 convention passes none).
PARAMETERS_ENV = "CWDM_PARAMETERS_FILE"
REPORT_DIR_ENV = "CWDM_REPORT_DIR"
QC_DIR_ENV = "CWDM_QC_DIR"
#: The folders of the 2025 convention (``docker run -v CASES:/input -v OUT:/output IMAGE``).
INPUT_DIR, OUTPUT_DIR = Path("/input"), Path("/output")
USAGE = f"""\
cwdm-brasyn: synthesises the missing MRI sequence of every BraTS case. Three ways to call it:

  1. no arguments, with the cases mounted at {INPUT_DIR} and an output folder at {OUTPUT_DIR}
     (BraSyn 2025; the brats package for entries after 2024):
       docker run --rm -v CASES:{INPUT_DIR}:ro -v OUT:{OUTPUT_DIR} [--gpus all] IMAGE
  2. infer --data_path=CASES --output_path=OUT [--weights=DIR] [--parameters_file=FILE]
     [--report_path=FILE] [--qc_path=DIR]   (MLCube, MedPerf, the brats package for 2024 entries)
  3. --entrypoint cwdm IMAGE ...   (the cwdm command line: infer, evaluate, qc, sweep, ...)

Environment: {PARAMETERS_ENV} (a parameters.yaml), {REPORT_DIR_ENV} (where the run report goes),
{QC_DIR_ENV} (a folder for previews), {DEFAULT_WEIGHTS_ENV} (the built-in weights).
"""
#: Sampling progress is logged this many times per batch.
_STEP_LOG_POINTS = 10

log = logging.getLogger("cwdm.mlcube")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def choose_weights(given: Path | None) -> Path:
    """The weights directory to use.

    ``given`` when it holds a checkpoint, else its ``weights/`` sub-folder when that does (MedPerf's
    additional files); the image's built-in weights (``$CWDM_DEFAULT_WEIGHTS``) when ``given`` is None
    or an existing folder without checkpoints (an empty ``additional_files/weights``).

    Raises:
        CheckpointError: ``given`` does not exist, or no checkpoint is found where it should be.
    """
    if given is not None:
        for folder in (given, given / "weights"):
            if WeightsDir.holds_checkpoints(folder):
                return folder
        if not given.is_dir():
            raise CheckpointError(
                f"the weights folder {given} does not exist (is it mounted?); leave --weights out to use "
                "the weights built into the image"
            )
    fallback = os.environ.get(DEFAULT_WEIGHTS_ENV)
    if not fallback or not WeightsDir.holds_checkpoints(Path(fallback)):
        where = (
            f"the weights folder {given} holds no checkpoint, and"
            if given is not None
            else "no --weights, and"
        )
        raise CheckpointError(
            f"{where} the image's default weights ({DEFAULT_WEIGHTS_ENV}={fallback or '(unset)'}) hold none "
            "either: give one checkpoint per target (t1n, t1c, t2w, t2f in the file name) and model.yaml"
        )
    if given is not None:
        log.warning(
            "the weights folder %s holds no checkpoint: using the weights built into the image (%s=%s)",
            given,
            DEFAULT_WEIGHTS_ENV,
            fallback,
        )
    return Path(fallback)


def choose_parameters(given: Path | None) -> Path | None:
    """The parameters file: ``given``, else ``$CWDM_PARAMETERS_FILE``, else None (the shipped defaults)."""
    if given is not None:
        return given
    named = os.environ.get(PARAMETERS_ENV)
    return Path(named) if named else None


def _setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    except OSError as exc:  # a read-only /tmp must not stop the run: stderr still has everything
        print(f"cannot write the log file {log_file}: {exc}", file=sys.stderr)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def _log_ready(synth: Synthesizer, cases: Sequence[Case]) -> None:
    log.info(
        "%d case folder%s; %s; %s %s",
        len(cases),
        "" if len(cases) == 1 else "s",
        synth.runtime.describe(),
        synth.settings.sampler,
        synth.settings.steps_label,
    )


def _log_steps(case_ids: tuple[str, ...], done: int, total: int) -> None:
    if done == total or done % max(1, total // _STEP_LOG_POINTS) == 0:
        log.info("sampling %s: step %d/%d", ", ".join(case_ids), done, total)


def summary_table(report: RunReport) -> str:
    """The per-case summary as a plain-text table (case, target, status, seconds, detail)."""
    rows = [("case", "target", "status", "time (s)", "detail")]
    for result in report.cases:
        timing = f"{result.elapsed_s:.1f}" if result.status == "written" else ""
        detail = result.error or "; ".join(result.warnings)
        rows.append((result.case_id, result.target or "-", result.status, timing, detail))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def _log_summary(report: RunReport, report_path: Path | None) -> None:
    log.info("summary:\n%s", summary_table(report))
    log.info(
        "%s in %.1f s; exit status %d; report: %s",
        report.counts_text(),
        report.elapsed_s,
        report.exit_code,
        report_path or "not written (see the error above)",
    )
    for result in report.cases:
        if not result.ok:
            log.log(
                logging.ERROR if result.status == "failed" else logging.WARNING,
                "%s %s: %s",
                result.case_id,
                result.status,
                result.error,
            )


@app.command("infer")
def infer(
    data_path: Annotated[str, typer.Option("--data_path", help="Folder of case folders.")],
    output_path: Annotated[str, typer.Option("--output_path", help="Predictions folder.")],
    weights: Annotated[
        str | None,
        typer.Option("--weights", help="Weights folder (additional_files/weights); default: the image's."),
    ] = None,
    parameters_file: Annotated[
        str | None,
        typer.Option(
            "--parameters_file", help=f"parameters.yaml; default ${PARAMETERS_ENV} or the defaults."
        ),
    ] = None,
    report_path: Annotated[
        str | None,
        typer.Option("--report_path", help=f"Run report (JSON); default under ${REPORT_DIR_ENV} or $TMPDIR."),
    ] = None,
    qc_path: Annotated[
        str | None,
        typer.Option(
            "--qc_path", help=f"QC folder (previews, index.html); never output_path. Default ${QC_DIR_ENV}."
        ),
    ] = None,
    num_parts: Annotated[
        int | None, typer.Option("--num_parts", help="Split the cases into this many parts; run one.")
    ] = None,
    part_id: Annotated[
        int | None,
        typer.Option(
            "--part_id", help="This part, 0-based (default: SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX)."
        ),
    ] = None,
) -> None:
    """Synthesise the missing sequence of every case: <case>-<missing seq>.nii.gz in output_path."""
    code = run(
        Path(data_path), Path(output_path), weights, parameters_file, report_path, qc_path, num_parts, part_id
    )
    raise typer.Exit(code)


def run(
    data_dir: Path,
    out_dir: Path,
    weights: str | None = None,
    parameters_file: str | None = None,
    report_path: str | None = None,
    qc_path: str | None = None,
    num_parts: int | None = None,
    part_id: int | None = None,
) -> int:
    """The inference of every way the image is called; returns the exit status."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_dir = Path(os.environ.get(REPORT_DIR_ENV) or tempfile.gettempdir())
    try:
        part = resolve_part(num_parts, part_id, os.environ)
    except CwdmError as exc:
        _setup_logging(None)
        log.error("%s", exc)
        return 2
    suffix = "" if part is None else f"-{part.suffix}"
    report_file = Path(report_path) if report_path else report_dir / f"cwdm-{stamp}-report{suffix}.json"
    qc = qc_path or os.environ.get(QC_DIR_ENV)
    try:
        check_report_path(report_file, out_dir)
    except CwdmError as exc:
        _setup_logging(None)  # not even the log file may go into the output folder
        log.error("%s", exc)
        return 2
    _setup_logging(report_file.with_suffix(".log"))
    try:
        with stop_on_signals():  # SIGTERM (docker stop, MedPerf) or SIGINT: stop cleanly, then report
            params = load_run_parameters(
                choose_parameters(Path(parameters_file) if parameters_file else None)
            )
            configure_process(cudnn_benchmark=params.fast_path)
            outcome = run_folder(
                data_dir,
                out_dir,
                choose_weights(Path(weights) if weights else None),
                params,
                report_file,
                qc_dir=Path(qc) if qc else None,
                on_ready=_log_ready,
                on_step=_log_steps,  # the pipeline logs each case
                part=part,
            )
    except CwdmError as exc:
        log.error("%s", exc)
        return 2
    except Interrupted as exc:
        log.error("stopped by %s before any case ran", exc.signal_name)
        return exc.exit_code
    _log_summary(outcome.report, outcome.report_file)
    return outcome.report.exit_code


@app.command("hotfix")
def hotfix() -> None:
    """No-op: keeps typer in multi-command mode (MLCube convention). Do not remove."""


def main(argv: Sequence[str]) -> int:
    """Dispatch: no arguments is the 2025 convention (``/input`` to ``/output``), anything else typer's."""
    if argv:
        app(args=list(argv), prog_name="mlcube.py")  # exits with the command's status
        return 0
    if INPUT_DIR.is_dir() and OUTPUT_DIR.is_dir():
        return run(INPUT_DIR, OUTPUT_DIR)
    print(USAGE, file=sys.stderr, end="")
    missing = ", ".join(str(p) for p in (INPUT_DIR, OUTPUT_DIR) if not p.is_dir())
    print(f"\nerror: called without arguments, but {missing} is not a mounted folder", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
