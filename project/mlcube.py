"""MLCube / MedPerf entry point of the cwdm-brasyn image (its ENTRYPOINT is
``python3 /opt/cwdm/project/mlcube.py``).

    python3 project/mlcube.py infer --data_path=DATA --parameters_file=parameters.yaml \\
        --weights=WEIGHTS --output_path=OUT

This file is run as a script, never imported as a module: ``mlcube`` is also the name of a PyPI
package (the MLCube runner itself). It does what ``cwdm infer`` does, with the MLCube conventions:

- options spelled ``--data_path`` ..., as MLCube's docker runner and MedPerf's ``run_args`` pass them;
- a no-op ``hotfix`` command, so that typer keeps the ``infer`` sub-command (MLCube convention);
- ``--weights``: a weights directory (one checkpoint per target, optional model.yaml). When it holds no
  checkpoint file at all (an empty ``additional_files/weights``), the weights baked into the image are
  used instead (``$CWDM_DEFAULT_WEIGHTS``, the demo weights), with a warning saying so;
- logs go to stderr and, with the JSON run report, to files outside the output folder: ``--report_path``
  or ``$TMPDIR/cwdm-<UTC time>-report.json`` (+ ``.log``); MedPerf mounts its own folder at /tmp;
- exit code 0 only when every case with exactly one missing sequence has its output; 1 when a case
  failed (its error is in the log and the report); 2 when nothing ran (bad parameters or weights);
  130 / 143 when SIGINT / SIGTERM stopped the run (cleanly: no partial output, the report and the
  summary table say which cases are unfinished, and a rerun does them). The summary table and the
  report are produced in every case where the run started.
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
from cwdm.inference.synthesizer import Synthesizer
from cwdm.runtime import configure_process
from cwdm.signals import stop_on_signals
from cwdm.weights.folder import WeightsDir

#: Environment variable naming the weights baked into the image (set by the Dockerfile).
DEFAULT_WEIGHTS_ENV = "CWDM_DEFAULT_WEIGHTS"
#: Sampling progress is logged this many times per batch.
_STEP_LOG_POINTS = 10

log = logging.getLogger("cwdm.mlcube")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def choose_weights(given: Path) -> Path:
    """The weights directory to use: ``given``, or ``$CWDM_DEFAULT_WEIGHTS`` when ``given`` has no checkpoint.

    Raises:
        CheckpointError: neither ``given`` nor the default holds a checkpoint.
    """
    if WeightsDir.holds_checkpoints(given):
        return given
    fallback = os.environ.get(DEFAULT_WEIGHTS_ENV)
    if not fallback or not WeightsDir.holds_checkpoints(Path(fallback)):
        raise CheckpointError(
            f"the weights folder {given} holds no checkpoint, and the image's default weights "
            f"({DEFAULT_WEIGHTS_ENV}={fallback or '(unset)'}) hold none either: put one checkpoint per "
            "target (t1n, t1c, t2w, t2f in the file name) and model.yaml into additional_files/weights"
        )
    log.warning(
        "the weights folder %s holds no checkpoint: using the weights built into the image (%s=%s)",
        given,
        DEFAULT_WEIGHTS_ENV,
        fallback,
    )
    return Path(fallback)


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
        "%d case folders; %s; %s %d steps",
        len(cases),
        synth.runtime.describe(),
        synth.settings.sampler,
        synth.settings.steps,
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
    parameters_file: Annotated[str, typer.Option("--parameters_file", help="parameters.yaml.")],
    weights: Annotated[str, typer.Option("--weights", help="Weights folder (additional_files/weights).")],
    output_path: Annotated[str, typer.Option("--output_path", help="Predictions folder.")],
    report_path: Annotated[
        str | None, typer.Option("--report_path", help="Run report (JSON); default under $TMPDIR.")
    ] = None,
    qc_path: Annotated[
        str | None,
        typer.Option(
            "--qc_path", help="QC folder (previews, index.html, uncertainty maps); never output_path."
        ),
    ] = None,
) -> None:
    """Synthesise the missing sequence of every case: <case>-<missing seq>.nii.gz in output_path."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_file = Path(report_path or Path(tempfile.gettempdir()) / f"cwdm-{stamp}-report.json")
    out_dir = Path(output_path)
    try:
        check_report_path(report_file, out_dir)
    except CwdmError as exc:
        _setup_logging(None)  # not even the log file may go into the output folder
        log.error("%s", exc)
        raise typer.Exit(2) from exc
    _setup_logging(report_file.with_suffix(".log"))
    try:
        with stop_on_signals():  # SIGTERM (docker stop, MedPerf) or SIGINT: stop cleanly, then report
            params = load_run_parameters(Path(parameters_file))
            configure_process(cudnn_benchmark=params.fast_path)
            run = run_folder(
                Path(data_path),
                out_dir,
                choose_weights(Path(weights)),
                params,
                report_file,
                qc_dir=Path(qc_path) if qc_path else None,
                on_ready=_log_ready,
                on_step=_log_steps,  # the pipeline logs each case
            )
    except CwdmError as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from exc
    except Interrupted as exc:
        log.error("stopped by %s before any case ran", exc.signal_name)
        raise typer.Exit(exc.exit_code) from None
    _log_summary(run.report, run.report_file)
    raise typer.Exit(run.report.exit_code)


@app.command("hotfix")
def hotfix() -> None:
    """No-op: keeps typer in multi-command mode (MLCube convention). Do not remove."""


if __name__ == "__main__":
    app()
