"""Entry point of the cwdm-brasyn image (its ENTRYPOINT is ``python3 /opt/cwdm/project/mlcube.py``), for
every way BraSyn entries are run (docs/DEPLOYMENT.md, "Where it runs"):

1. No arguments at all (BraSyn 2025, the ``brats`` package's entries after 2024, plain ``docker run``):
   cases from ``/input``, predictions to ``/output``, both mounted. Without both folders it prints how
   to call it and exits with 2.
2. ``infer --data_path=DATA --output_path=OUT [--weights=DIR] [--parameters_file=FILE]`` (MLCube,
   MedPerf, the ``brats`` package's 2024 and earlier entries, which pass only the two folders).
3. ``--entrypoint cwdm``: the whole ``cwdm`` command line (``infer``, ``evaluate``, ``qc``, ...).

Run as a script, never imported (``mlcube`` is also the MLCube runner's PyPI package), it translates
the runners' conventions into ``cwdm infer``'s one flow (:func:`cwdm.cli.infer.run_and_report`): options
spelled ``--data_path`` as MLCube and MedPerf pass them (and a no-op ``hotfix`` command that keeps typer
in multi-command mode); ``--weights`` may be MedPerf's additional-files folder, and without checkpoints
there the image's weights (``$CWDM_DEFAULT_WEIGHTS``) run, with a warning (outside the image pass
``--weights=weights/demo``); parameters from ``$CWDM_PARAMETERS_FILE`` when not given; stdout stays
empty: logs and the summary go to stderr and, with the run report, outside the output folder
(``<$CWDM_REPORT_DIR or $TMPDIR>/cwdm-<UTC time>-report.json`` and ``.log``). Exit status as ``cwdm
infer`` (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cwdm.cli.infer import InferProgress, counts_line, run_and_report, summary_lines
from cwdm.cli.logs import setup_logging
from cwdm.errors import CheckpointError, CwdmError
from cwdm.inference.outputs import is_inside
from cwdm.inference.report import check_report_path
from cwdm.inference.split import resolve_part
from cwdm.weights.folder import WeightsDir
from cwdm.weights.shipped import DEFAULT_WEIGHTS_ENV

if TYPE_CHECKING:
    from cwdm.inference.report import RunReport

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

log = logging.getLogger("cwdm.mlcube")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def choose_weights(given: Path | None) -> Path:
    """``given`` when it holds a checkpoint, else its ``weights/`` sub-folder when that does; the image's
    weights (``$CWDM_DEFAULT_WEIGHTS``) when ``given`` is None or an existing folder without checkpoints.

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
        where = f"the weights folder {given} holds no checkpoint, and" if given else "no --weights, and"
        raise CheckpointError(
            f"{where} the image's default weights ({DEFAULT_WEIGHTS_ENV}={fallback or '(unset)'}) hold none "
            "either: give one checkpoint per target (t1n, t1c, t2w, t2f in the file name) and model.yaml; "
            "outside the image, --weights=weights/demo runs the repository's demo weights"
        )
    if given is not None:
        source = f"{DEFAULT_WEIGHTS_ENV}={fallback}"
        log.warning("%s holds no checkpoint: using the weights built into the image (%s)", given, source)
    return Path(fallback)


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
        typer.Option("--parameters_file", help=f"parameters.yaml (default ${PARAMETERS_ENV})."),
    ] = None,
    report_path: Annotated[
        str | None,
        typer.Option("--report_path", help=f"Run report (JSON); default under ${REPORT_DIR_ENV} or $TMPDIR."),
    ] = None,
    qc_path: Annotated[
        str | None,
        typer.Option("--qc_path", help=f"QC folder (default ${QC_DIR_ENV})."),
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
    options = (weights, parameters_file, report_path, qc_path, num_parts, part_id)
    raise typer.Exit(run(Path(data_path), Path(output_path), *options))


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
    from cwdm.config import load_run_parameters
    from cwdm.inference.run import RunRequest

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report_dir = Path(os.environ.get(REPORT_DIR_ENV) or tempfile.gettempdir())
    try:
        part = resolve_part(num_parts, part_id, os.environ)
    except CwdmError as exc:
        setup_logging()
        log.error("%s", exc)
        return 2
    suffix = "" if part is None else f"-{part.suffix}"
    report_file = Path(report_path) if report_path else report_dir / f"cwdm-{stamp}-report{suffix}.json"
    log_file = None if is_inside(report_file.parent, out_dir) else report_file.with_suffix(".log")
    progress = InferProgress(setup_logging(log_file=log_file))  # never in the output folder
    qc = qc_path or os.environ.get(QC_DIR_ENV)
    parameters = parameters_file or os.environ.get(PARAMETERS_ENV)

    def build() -> RunRequest:
        check_report_path(report_file, out_dir)  # before anything else is looked at
        params = load_run_parameters(Path(parameters) if parameters else None)
        chosen = choose_weights(Path(weights) if weights else None)
        return RunRequest(data_dir, out_dir, chosen, params, report_file, Path(qc) if qc else None, part)

    def render(report: RunReport, saved: Path | None) -> None:
        log.info("summary:\n%s", "\n".join(summary_lines(report)))
        log.info("%s; exit status %d", counts_line(report, saved), report.exit_code)

    return run_and_report(build, progress, render, lambda message: log.error("%s", message))


@app.command("hotfix")
def hotfix() -> None:  # keeps typer in multi-command mode (the MLCube convention): do not remove
    """No-op."""


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
