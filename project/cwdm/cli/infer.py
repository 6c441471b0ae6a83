"""``cwdm infer``, and the infer flow every entry point shares (:func:`run_and_report`: the image's
entry point, ``project/mlcube.py``, calls it too): signals, process set-up, the front door
(:func:`cwdm.inference.run.run_request`), progress, the summary and the exit status."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..choices import DeviceName, PostprocessName, PrecisionName, SamplerName, TimestepSpacing
from ..errors import CwdmError
from .app import Verbose, app, weights_or_shipped
from .logs import setup_logging

if TYPE_CHECKING:
    from ..cases.discovery import Case
    from ..inference.report import CaseResult, RunReport
    from ..inference.run import RunRequest
    from ..inference.synthesizer import Synthesizer

log = logging.getLogger("cwdm")

#: Without a terminal, sampling progress is logged this many times per batch.
STEP_LOG_POINTS = 10


@app.command(short_help="Synthesise the missing sequence of every case in a folder.")
def infer(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="Input folder: one sub-folder per case, one sequence missing (the folder above the cases).",
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(metavar="OUT", help="Output folder: receives <case>-<missing seq>.nii.gz only."),
    ],
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Weights directory: a checkpoint per target, model.yaml.",
            show_default="the shipped demo weights",
        ),
    ] = None,
    parameters: Annotated[
        Path | None,
        typer.Option(
            help="parameters.yaml (its keys are these options' names; the options below override it).",
            show_default="none",
        ),
    ] = None,
    sampling_steps: Annotated[
        int | None,
        typer.Option(
            "--sampling-steps",
            "--steps",
            min=1,
            max=1000,
            help="Sampling steps, respaced evenly.",
            show_default="model.yaml's",
        ),
    ] = None,
    sampler: Annotated[
        SamplerName | None,
        typer.Option(help="ddpm (published) or ddim.", show_default="model.yaml's"),
    ] = None,
    timestep_spacing: Annotated[
        TimestepSpacing | None,
        typer.Option(
            "--timestep-spacing",
            "--spacing",
            help="Which timesteps respacing keeps: trailing is needed for 1-2 steps.",
            show_default="model.yaml's",
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Draws per case: their mean is written, their sd is the uncertainty.",
            show_default="1",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="Run seed; each case's generator derives from it.", show_default="42"),
    ] = None,
    device: Annotated[DeviceName | None, typer.Option(help="Where to run.", show_default="auto")] = None,
    precision: Annotated[
        PrecisionName | None,
        typer.Option(help="Network arithmetic (auto: bf16 on a GPU that has it).", show_default="auto"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Cases with the same target sampled together.", show_default="1"),
    ] = None,
    postprocess: Annotated[
        PostprocessName | None,
        typer.Option(help="brain_mask (the published evaluation) or threshold.", show_default="brain_mask"),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Run report (JSON), outside OUT (default: OUT-report.json beside OUT)."),
    ] = None,
    qc: Annotated[
        Path | None,
        typer.Option(help="QC folder, outside OUT: a preview per case, index.html, uncertainty maps."),
    ] = None,
    num_parts: Annotated[
        int | None,
        typer.Option(
            help="Split DATA into this many parts and run one (Slurm arrays, Kubernetes indexed Jobs)."
        ),
    ] = None,
    part_id: Annotated[
        int | None,
        typer.Option(
            help="This process's part, 0-based (default: SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Resample finished outputs whose header records other settings than this run's."),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Synthesise the missing sequence of every case in DATA into OUT (a rerun skips finished cases)."""
    options = {
        "sampling_steps": sampling_steps,
        "sampler": sampler,
        "timestep_spacing": timestep_spacing,
        "samples": samples,
        "seed": seed,
        "device": device,
        "precision": precision,
        "batch_size": batch_size,
        "postprocess": postprocess,
    }
    console = setup_logging(verbose)
    chosen = weights_or_shipped(weights)

    def build() -> RunRequest:
        from ..config import load_run_parameters, override_run_parameters
        from ..inference.report import default_report_path
        from ..inference.run import RunRequest
        from ..inference.split import resolve_part

        params = override_run_parameters(load_run_parameters(parameters), options)
        part = resolve_part(num_parts, part_id, os.environ)
        report_path = report or default_report_path(out, part)
        return RunRequest(data, out, chosen, params, report_path, qc, part, overwrite)

    def failed(message: str) -> None:
        typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)

    code = run_and_report(build, InferProgress(console), render_summary, failed)
    raise typer.Exit(code)


def run_and_report(
    build: Callable[[], RunRequest],
    progress: InferProgress,
    render: Callable[[RunReport, Path | None], None],
    failed: Callable[[str], None],
) -> int:
    """The infer flow of every entry point; returns its exit status.

    Inside a clean stop on SIGINT/SIGTERM: ``build`` the request, make the process-wide settings, run
    the request with ``progress``, then ``render`` the summary. A run that cannot start is reported
    through ``failed`` (exit status 2); a signal before the first case gives 128 + its number.
    """
    from ..errors import Interrupted
    from ..inference.run import run_request
    from ..runtime import configure_process
    from ..signals import stop_on_signals

    try:
        with stop_on_signals(), progress:  # a signal: stop cleanly, then report what was done
            request = build()
            configure_process(cudnn_benchmark=request.params.fast_path)
            run = run_request(
                request, on_ready=progress.start, on_case=progress.case_done, on_step=progress.step
            )
    except CwdmError as exc:
        failed(str(exc))
        return 2
    except Interrupted as exc:
        failed(f"stopped by {exc.signal_name} before any case ran")
        return exc.exit_code
    render(run.report, run.report_file)
    return run.report.exit_code


class InferProgress:
    """Progress of a run: on a terminal, bars of cases done and sampling steps of the current batch;
    anywhere else (a scheduler's log file), log lines, ten per batch."""

    def __init__(self, console: Console) -> None:
        self.interactive = console.is_terminal
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not self.interactive,
        )
        self.cases = self.bars.add_task("cases", total=None, visible=False)
        self.steps = self.bars.add_task("sampling", total=None, visible=False)

    def __enter__(self) -> InferProgress:
        if self.interactive:  # a disabled rich Progress still ends the log with a blank line
            self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.interactive:
            self.bars.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, synth: Synthesizer, cases: Sequence[Case]) -> None:
        log.info(
            "%d case folder%s; %s; %s",
            len(cases),
            "" if len(cases) == 1 else "s",
            synth.runtime.describe(),
            synth.settings.label_with(synth.target_settings),
        )
        # The sampling bar takes each batch's own step count from step(): targets may differ.
        self.bars.update(self.cases, total=len(cases), visible=True)

    def case_done(self, result: CaseResult) -> None:
        del result  # each case's outcome and timing is logged by the run
        self.bars.advance(self.cases)

    def step(self, case_ids: tuple[str, ...], done: int, total: int) -> None:
        label = case_ids[0] if len(case_ids) == 1 else f"{case_ids[0]} +{len(case_ids) - 1}"
        if not self.interactive:
            if done == total or done % max(1, total // STEP_LOG_POINTS) == 0:
                log.info("sampling %s: step %d/%d", ", ".join(case_ids), done, total)
            return
        self.bars.update(
            self.steps, description=f"sampling {label}", completed=done, total=total, visible=True
        )


def summary_lines(report: RunReport) -> list[str]:
    """The per-case summary as plain lines (case, target, status, seconds, draws, detail), one a case."""
    rows = [("case", "target", "status", "time (s)", "draws", "detail")]
    for result in report.cases:
        written = result.status == "written"
        timing = f"{result.elapsed_s:.1f}" if written else ""
        draws = str(report.settings.samples) if written else ""
        detail = result.error or "; ".join(result.warnings)
        rows.append((result.case_id, result.target or "-", result.status, timing, draws, detail))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return [
        (
            "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)) + "  " + row[5]
        ).rstrip()
        for row in rows
    ]


def counts_line(report: RunReport, report_path: Path | None) -> str:
    """``10 written, ... in 12.3 s on cpu (fp32, ddim 2 steps, 1 draw a case); report: ...``, with the
    targets whose own defaults differ after the steps: ``ddim 2 steps (t2w, t2f: ddim 1 step)``."""
    stopped = "" if report.interrupted_by is None else f"; stopped early, exit {report.exit_code}"
    settings = report.settings
    draws = f"{settings.samples} draw{'s' * (settings.samples != 1)} a case"
    return (
        f"{report.counts_text()} in {report.elapsed_s:.1f} s on {report.runtime.device} "
        f"({report.runtime.precision}, {settings.label_with(report.target_settings)}, {draws}{stopped}); "
        f"report: {report_path or 'not written (see the error above)'}"
    )


def render_summary(report: RunReport, report_path: Path | None) -> None:
    """The summary on stdout: a table on a terminal, plain lines that never wrap anywhere else."""
    console = Console()
    if not console.is_terminal:
        print(f"cwdm infer: {report.out_dir}")
        print("\n".join(summary_lines(report)))
        print(counts_line(report, report_path))
        return
    table = Table(title=f"cwdm infer: {report.out_dir}", title_justify="left")
    columns = ["case", "target", "status", "time (s)"] + (
        ["detail"] if any(c.error for c in report.cases) else []
    )
    for column in columns:
        table.add_column(column, justify="right" if column == "time (s)" else "left", overflow="fold")
    for case in report.cases:
        timing = f"{case.elapsed_s:.1f}" if case.status == "written" else ""
        cells = [case.case_id, case.target or "-", case.status, timing, case.error or ""]
        table.add_row(*cells[: len(columns)])
    console.print(table)
    console.print(counts_line(report, report_path), highlight=False, soft_wrap=True)
