"""The ``cwdm`` command: thin typer commands over the library (parse options, build config, call the
library, render, exit code)."""

from __future__ import annotations

import logging
import math
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .choices import (
    DeviceName,
    LabelConventionName,
    PostprocessName,
    PrecisionName,
    SamplerName,
    TimestepSpacing,
    TrainPrecisionName,
)
from .errors import CwdmError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .cases.discovery import Case
    from .inference.report import CaseResult, RunReport
    from .inference.synthesizer import Synthesizer

#: Help in click's plain layout: choices as [a|b], flags without a type, defaults listed; -h and --help.
_COMMAND_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}

app = typer.Typer(
    name="cwdm",
    help="Conditional wavelet diffusion (cWDM) for BraTS missing-sequence synthesis.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=_COMMAND_SETTINGS,
)

log = logging.getLogger("cwdm")

Sampler, Spacing, Device, Precision = SamplerName, TimestepSpacing, DeviceName, PrecisionName
Postprocess, TrainPrecision, LabelConvention = PostprocessName, TrainPrecisionName, LabelConventionName

#: One time-stamp format for every command's log lines (ISO 8601, local time).
LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages too.")]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt=LOG_TIME_FORMAT,
    )


def _show_version(value: bool) -> None:
    if value:
        from .version import __version__

        typer.echo(f"cwdm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Conditional wavelet diffusion (cWDM) for BraTS missing-sequence synthesis."""


def _fail(exc: CwdmError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


@app.command()
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
    steps: Annotated[
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
        Sampler | None,
        typer.Option(help="ddpm (published) or ddim.", show_default="model.yaml's"),
    ] = None,
    spacing: Annotated[
        Spacing | None,
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
    device: Annotated[Device | None, typer.Option(help="Where to run.", show_default="auto")] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(help="Network arithmetic (auto: bf16 on a GPU that has it).", show_default="auto"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Cases with the same target sampled together.", show_default="1"),
    ] = None,
    postprocess: Annotated[
        Postprocess | None,
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
    from .config import load_run_parameters, override_run_parameters
    from .errors import Interrupted
    from .inference.run import run_folder
    from .inference.split import resolve_part
    from .runtime import configure_process
    from .signals import stop_on_signals

    console = _setup_rich_logging(verbose)
    weights = _weights_or_shipped(weights)
    options = {"sampling_steps": steps, "sampler": sampler, "seed": seed, "device": device}
    options |= {"precision": precision, "batch_size": batch_size, "postprocess": postprocess}
    options |= {"timestep_spacing": spacing, "samples": samples}
    progress = _InferProgress(console)
    try:
        with stop_on_signals(), progress:  # SIGINT/SIGTERM: stop cleanly, then report what was done
            params = override_run_parameters(load_run_parameters(parameters), options)
            part = resolve_part(num_parts, part_id, os.environ)
            configure_process(cudnn_benchmark=params.fast_path)
            suffix = "" if part is None else f"-{part.suffix}"
            run = run_folder(
                data,
                out,
                weights,
                params,
                report or out.with_name(f"{out.name}-report{suffix}.json"),
                qc_dir=qc,
                on_ready=progress.start,
                on_case=progress.case_done,
                on_step=progress.step,
                part=part,
                overwrite=overwrite,
            )
    except CwdmError as exc:
        raise _fail(exc) from exc
    except Interrupted as exc:
        typer.secho(f"stopped by {exc.signal_name} before any case ran", err=True, fg=typer.colors.RED)
        raise typer.Exit(exc.exit_code) from None
    _render_summary(run.report, run.report_file)
    raise typer.Exit(run.report.exit_code)


def _setup_rich_logging(verbose: bool) -> Console:
    """Log through rich on stderr, so that log lines and the progress bar do not overwrite each other."""
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False, log_time_format=LOG_TIME_FORMAT)],
        force=True,
    )
    return console


def _weights_or_shipped(weights: Path | None) -> Path:
    """``--weights``, or the shipped weights, saying in the log which ran.

    Raises:
        CheckpointError: no ``--weights`` and no shipped weights (a wheel without the repository).
    """
    if weights is not None:
        log.info("weights: %s", weights)
        return weights
    from .weights.shipped import shipped_weights

    try:
        shipped = shipped_weights()
    except CwdmError as exc:
        raise _fail(exc) from exc
    log.info("weights: %s (no --weights given: the shipped demo weights, not the published model)", shipped)
    return shipped


class _InferProgress:
    """The progress bars of ``cwdm infer``: cases done, and sampling steps of the current batch."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.cases = self.bars.add_task("cases", total=None, visible=False)
        self.steps = self.bars.add_task("sampling", total=None, visible=False)

    def __enter__(self) -> _InferProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, synth: Synthesizer, cases: Sequence[Case]) -> None:
        self.bars.update(self.cases, total=len(cases), visible=True)
        self.bars.update(self.steps, total=synth.settings.sampling_steps)

    def case_done(self, result: CaseResult) -> None:
        del result  # each case's outcome and timing is logged by the pipeline
        self.bars.advance(self.cases)

    def step(self, case_ids: tuple[str, ...], done: int, total: int) -> None:
        label = case_ids[0] if len(case_ids) == 1 else f"{case_ids[0]} +{len(case_ids) - 1}"
        self.bars.update(
            self.steps, description=f"sampling {label}", completed=done, total=total, visible=True
        )


def _render_summary(result: RunReport, report_path: Path | None) -> None:
    table = Table(title=f"cwdm infer: {result.out_dir}", title_justify="left")
    columns = ["case", "target", "status", "time (s)"] + (
        ["detail"] if any(c.error for c in result.cases) else []
    )
    for column in columns:
        table.add_column(column, justify="right" if column == "time (s)" else "left")
    for case in result.cases:
        timing = f"{case.elapsed_s:.1f}" if case.status == "written" else ""
        cells = [case.case_id, case.target or "-", case.status, timing, case.error or ""]
        table.add_row(*cells[: len(columns)])
    console = Console()
    console.print(table)
    stopped = "" if result.interrupted_by is None else f"; stopped early, exit {result.exit_code}"
    console.print(
        f"{result.counts_text()} in {result.elapsed_s:.1f} s on {result.runtime.device} "
        f"({result.runtime.precision}, {result.settings.sampler} {result.settings.steps_label}{stopped}); "
        f"report: {report_path or 'not written (see the error above)'}",
        highlight=False,
    )


@app.command()
def train(
    data: Annotated[
        Path, typer.Argument(help="Training folder: one sub-folder per case, all four sequences.")
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Run folder: checkpoints/, train_log.csv, weights/ (several targets: OUT/<target>/)."
        ),
    ],
    target: Annotated[
        str, typer.Option(help="Sequence(s) to synthesise: t1n, t1c, t2w, t2f, a comma list, or all.")
    ],
    iterations: Annotated[int, typer.Option(help="Optimiser steps (published: 1200000).")] = 1_200_000,
    lr: Annotated[float, typer.Option(help="Adam learning rate (published: 1e-5).")] = 1e-5,
    lr_schedule: Annotated[
        Literal["constant", "cosine"],
        typer.Option(help="constant (published) or cosine (decays to 0 over --iterations)."),
    ] = "constant",
    batch_size: Annotated[int, typer.Option(help="Cases per step and GPU (published: 1).")] = 1,
    crop: Annotated[
        str | None,
        typer.Option(help="Random crops of this image-space size, e.g. 96,96,96 (default: whole volumes)."),
    ] = None,
    flip: Annotated[bool, typer.Option(help="Mirror cases left-right at random (not published).")] = False,
    model_channels: Annotated[int, typer.Option(help="Base width (published: 64).")] = 64,
    channel_mult: Annotated[
        str, typer.Option(help="Width multipliers per level (published: 1,2,2,4,4).")
    ] = "1,2,2,4,4",
    num_res_blocks: Annotated[int, typer.Option(help="Residual blocks per level (published: 2).")] = 2,
    num_groups: Annotated[int, typer.Option(help="GroupNorm groups (published: 32).")] = 32,
    sampling_steps: Annotated[int, typer.Option(help="Default sampling steps written to model.yaml.")] = 1000,
    sampler: Annotated[Sampler, typer.Option(help="Default sampler written to model.yaml.")] = "ddpm",
    ema_rate: Annotated[
        float | None, typer.Option(help="Export EMA weights at this rate, e.g. 0.9999.")
    ] = None,
    save_every: Annotated[int, typer.Option(help="Checkpoint interval in steps.")] = 100_000,
    log_every: Annotated[int, typer.Option(help="CSV log interval in steps.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of weights init and of every draw of the loop.")] = 0,
    precision: Annotated[
        TrainPrecision, typer.Option(help="bf16: a GPU, or a CPU with AVX512-BF16 or AMX; fp16: a GPU.")
    ] = "fp32",
    weights_dir: Annotated[
        Path | None,
        typer.Option(help="Where to export <target>.safetensors + model.yaml (default OUT/weights)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint in the run folder.")
    ] = True,
    cache_gb: Annotated[
        float,
        typer.Option(
            help="Keep up to this many GB of preprocessed cases in memory (a BraTS case: 0.064 GB); "
            "the others are read, in the background, whenever drawn."
        ),
    ] = 16.0,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Also keep preprocessed cases here, keyed by content: later runs skip reading."),
    ] = None,
    max_seconds: Annotated[
        float | None,
        typer.Option(help="Stop each target after this many seconds, checkpointed (rerun to go on)."),
    ] = None,
    init_weights: Annotated[
        Path | None,
        typer.Option(
            help="Start new runs from these weights (a file, or a weights directory for several targets), "
            "e.g. to fine-tune crop-trained weights on whole volumes; ignored when resuming."
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Train denoisers, one target after another on one copy of the data; multi-GPU with
    ``torchrun --nproc-per-node N $(which cwdm) train ...``."""
    from .config import ModelSpec
    from .runtime import configure_process
    from .signals import stop_requested_on_signals
    from .training.run import train_targets
    from .training.trainer import StepReport, TrainingConfig

    _setup_logging(verbose)

    def report(r: StepReport) -> None:
        log.info("step %d  loss %.5f  %.2f it/s", r.step, r.loss, r.steps_per_s)

    try:
        spec = ModelSpec.model_validate(
            {
                "model_channels": model_channels,
                "channel_mult": _integers(channel_mult),
                "num_res_blocks": num_res_blocks,
                "num_groups": num_groups,
                "sampling_steps": sampling_steps,
                "sampler": sampler,
            }
        )
        configs = [
            TrainingConfig(
                target=name,
                spec=spec,
                iterations=iterations,
                lr=lr,
                lr_schedule=lr_schedule,  # type: ignore[arg-type]
                batch_size=batch_size,
                crop_size=tuple(_integers(crop)) if crop else None,  # type: ignore[arg-type]
                flip=flip,
                ema_rate=ema_rate,
                save_every=save_every,
                log_every=log_every,
                seed=seed,
                precision=precision,
            )
            for name in _targets(target)
        ]
        configure_process(cudnn_benchmark=False)
        # SIGINT/SIGTERM: finish the step, checkpoint it, exit 128 + signal; the same command resumes.
        with stop_requested_on_signals() as stop:
            trainers = train_targets(
                data,
                out,
                configs,
                weights_dir=weights_dir,
                resume=resume,
                init_weights=init_weights,
                cache_bytes=int(cache_gb * 1e9),
                cache_dir=cache_dir,
                max_seconds=max_seconds,
                on_log=report,
                should_stop=stop.is_set,
            )
    except CwdmError as exc:
        raise _fail(exc) from exc
    for trainer in trainers:
        state = "done" if trainer.step >= trainer.config.iterations else "stopped"
        where = f"weights: {trainer.weights_file}"
        typer.echo(f"{trainer.config.target}: step {trainer.step} of {iterations} ({state}); {where}")
    unfinished = len(trainers) < len(configs) or any(t.step < t.config.iterations for t in trainers)
    if unfinished and (stop.is_set() or max_seconds is None):
        signum = stop.signal_number or signal.SIGTERM  # another rank's signal stopped this one
        last = trainers[-1]
        typer.secho(
            f"stopped by {signal.Signals(signum).name} after step {last.step} of {iterations}; checkpoint "
            f"saved, weights exported to {last.weights_file}: rerun the same command to resume",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(128 + signum)
    if unfinished:
        typer.secho(
            f"time limit of {max_seconds:g} s a target reached; checkpoints saved: rerun to go on",
            err=True,
            fg=typer.colors.YELLOW,
        )


def _targets(text: str) -> list[str]:
    """``"t1n,t2f"`` -> ``["t1n", "t2f"]``; ``"all"`` -> the four sequences in canonical order."""
    from .sequences import CANONICAL_ORDER

    if text.strip().lower() == "all":
        return [str(seq) for seq in CANONICAL_ORDER]
    return [item.strip() for item in text.split(",") if item.strip()]


def _integers(text: str) -> list[int]:
    """``"1,2,2,4,4"`` -> ``[1, 2, 2, 4, 4]``.

    Raises:
        ConfigError: an item is not an integer.
    """
    from .errors import ConfigError

    try:
        return [int(item) for item in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated integers such as 1,2,2,4,4, got {text!r}") from exc


@app.command()
def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Predictions, <case>-<seq>.nii.gz (the output folder).")],
    truth_dir: Annotated[Path, typer.Argument(help="Complete cases, <case>/<case>-<seq>.nii.gz.")],
    csv: Annotated[Path | None, typer.Option(help="Also write every score to this CSV file.")] = None,
    baseline: Annotated[
        bool,
        typer.Option(help="Also score the dummy baseline: each present sequence copied as the missing one."),
    ] = False,
    segmenter: Annotated[
        str | None,
        typer.Option(
            help="Segment each completed case and score Dice of WT, TC, ET: 'builtin' (the shipped "
            "reference segmenter), a reference segmenter folder, or a YAML file describing an nnU-Net "
            "model folder or a command."
        ),
    ] = None,
    segmentations: Annotated[
        Path | None,
        typer.Option(help="Keep every label volume made here (never inside the prediction folder)."),
    ] = None,
    truth_labels: Annotated[
        LabelConvention | None,
        typer.Option(help="Ground-truth label convention.", show_default="told by its values"),
    ] = None,
    lesion_wise: Annotated[
        bool,
        typer.Option(help="Also the official BraTS metrics' lesion-wise Dice (optional extra, AGPL)."),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Score every prediction PRED_DIR/<case>-<seq>.nii.gz against TRUTH_DIR/<case>/.

    \b
    As in the cWDM paper, the ground truth is scaled as in training (0.1/99.9 percentile clip, [0, 1])
    and each prediction is scored as written, in four regions: the full volume, the 224x224x155 centre
    crop, the brain (non-zero truth) and, where the case has a -seg file, the tumour. Per region: MSE,
    PSNR and SSIM (scikit-image, 7-voxel window); with a -seg file also the organisers' BraSyn SSIM
    inside and outside the tumour. --baseline adds the challenge's dummy: each present sequence copied
    into the missing slot. --segmenter adds the downstream half: the Dice of WT, TC and ET of the completed
    case's segmentation against the ground-truth labels, with the real complete case as the ceiling.
    The table prints means per target and source; --csv keeps every score. A prediction that cannot
    be scored is reported and the others go on (exit 1). Progress is logged per prediction."""
    import time

    from .evaluation.evaluate import evaluate as evaluate_predictions

    _setup_logging(verbose)
    progress = {"done": 0, "total": 0, "start": time.perf_counter()}

    def started(total: int) -> None:
        progress["total"] = total
        log.info(
            "scoring %d predictions%s",
            total,
            " (segmenting each case: minutes a case on a CPU)" * bool(segmenter),
        )

    def scored(case_id: str, target: object) -> None:
        progress["done"] += 1
        elapsed = time.perf_counter() - progress["start"]
        log.info(
            "%d of %d: %s (%s) scored; %.0f s so far",
            progress["done"],
            progress["total"],
            case_id,
            target,
            elapsed,
        )

    try:
        downstream = _downstream_scorer(segmenter, segmentations, truth_labels, lesion_wise)
        result = evaluate_predictions(
            pred_dir, truth_dir, baseline=baseline, downstream=downstream, on_case=scored, on_start=started
        )
    except CwdmError as exc:
        raise _fail(exc) from exc
    for failure in result.failures:
        typer.secho(f"not scored: {failure.message}", err=True, fg=typer.colors.RED)
    if result.scores:
        typer.echo(result.summary_table())
    if csv is not None:
        typer.echo(f"csv: {result.write_csv(csv)}")
    raise typer.Exit(1 if result.failures or not result.scores else 0)


def _downstream_scorer(
    segmenter: str | None, segmentations: Path | None, truth_labels: str | None, lesion_wise: bool
):  # noqa: ANN202 (imported lazily)
    """The Dice scorer of ``--segmenter`` (None without one); the other options need it."""
    from .errors import ConfigError

    if segmenter is None:
        if segmentations is not None or lesion_wise:
            raise ConfigError("--segmentations and --lesion-wise need --segmenter")
        return None
    from .evaluation.downstream import DownstreamScorer
    from .segmentation.spec import open_segmenter

    if truth_labels not in (None, "brats2021", "brats2023", "brats2024"):
        raise ConfigError(f"--truth-labels {truth_labels}: expected brats2021, brats2023 or brats2024")
    extra = None
    if lesion_wise:
        from .evaluation.lesionwise import OfficialMetrics

        extra = OfficialMetrics()
    return DownstreamScorer(open_segmenter(segmenter), segmentations, truth_labels, extra)  # type: ignore[arg-type]


@app.command("drop-sequence")
def drop_sequence(
    src: Annotated[Path, typer.Argument(help="Complete cases (read only).")],
    dst: Annotated[
        Path, typer.Argument(help="New pseudo-validation folder (or an unfinished one to resume).")
    ],
    verbose: Verbose = False,
) -> None:
    """Drop one sequence per case exactly as the organisers' script does (seed 123456)."""
    from .evaluation.drop import drop_sequences

    _setup_logging(verbose)
    try:
        report = drop_sequences(src, dst)
    except CwdmError as exc:
        raise _fail(exc) from exc
    except OSError as exc:
        raise _fail(CwdmError(f"copy failed: {exc}")) from exc
    for case in report.cases:
        files = len(case.copied)
        resumed = f", {len(case.kept)} already there from an earlier run" if case.kept else ""
        plural = "s" * (files != 1)
        typer.echo(f"{case.case_id}  dropped {case.dropped}  copied {files} file{plural}{resumed}")
    for path in report.ignored:
        typer.echo(f"skipped {path}: not a case folder or not a file")


@app.command()
def sweep(
    cases: Annotated[
        Path, typer.Argument(help="Complete cases (all four sequences; -seg used when present).")
    ],
    out: Annotated[Path, typer.Argument(help="Sweep folder: sweep.csv (resumable), sweep.md, sweep.png.")],
    weights: Annotated[
        Path | None,
        typer.Option(help="Weights directory to measure.", show_default="the shipped demo weights"),
    ] = None,
    grid: Annotated[
        Path | None,
        typer.Option(help="Grid YAML: a list of settings, lists expanded (default: the built-in grid)."),
    ] = None,
    targets: Annotated[str, typer.Option(help="Targets to drop in turn: a comma list or all.")] = "all",
    device: Annotated[Device, typer.Option(help="Where to run.")] = "auto",
    seed: Annotated[int, typer.Option(min=0, help="Run seed.")] = 42,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="0: score each synthesis after it is timed, in this process (trustworthy times); N: N "
            "scoring processes beside the syntheses (faster, but their load counts in the times).",
        ),
    ] = 0,
    repeats: Annotated[
        int,
        typer.Option(
            min=1, help="Time each synthesis up to this many times while cheap (under 20 s in all)."
        ),
    ] = 3,
    keep_predictions: Annotated[bool, typer.Option(help="Keep every prediction under OUT/work/.")] = False,
    segmenter: Annotated[
        str | None,
        typer.Option(
            help="Also the Dice of each completed case (and of the real case and the copies, once each): "
            "'builtin', a reference segmenter folder, or an nnU-Net / command description file."
        ),
    ] = None,
    segmentations: Annotated[
        Path | None, typer.Option(help="Keep every label volume made here (with --segmenter).")
    ] = None,
    title: Annotated[str, typer.Option(help="Title of sweep.md and sweep.png.")] = "cwdm sweep",
    verbose: Verbose = False,
) -> None:
    """Drop each target of each case in turn, synthesise it with every setting of a grid, time and score
    it: what each sampling setting costs in score (resumes where it stopped)."""
    from .config import RunParameters, SweepSetting, load_sweep_grid
    from .errors import Interrupted
    from .evaluation.sweep import SweepRow, run_sweep, write_report
    from .runtime import configure_process
    from .signals import stop_on_signals

    _setup_logging(verbose)
    weights = _weights_or_shipped(weights)

    def show(row: SweepRow) -> None:
        scores = f"PSNR {row.scores['full_psnr']:.2f}  SSIM {row.scores['full_ssim']:.4f}"
        if math.isfinite(row.scores.get("dice_wt", math.nan)):
            scores += "  Dice WT/TC/ET " + "/".join(
                f"{row.scores[k]:.3f}" for k in ("dice_wt", "dice_tc", "dice_et")
            )
        typer.echo(f"{row.setting.name}  {row.case_id}  {row.target}  {row.seconds:.1f} s  {scores}")

    def scoring(setting: SweepSetting, case_id: str, target: str) -> None:
        log.info(
            "%s  %s  %s: timed; scoring%s", setting.name, case_id, target, " and segmenting" * bool(segmenter)
        )

    try:
        base = RunParameters.model_validate({"device": device, "seed": seed})
        settings = load_sweep_grid(grid) if grid is not None else None
        configure_process(cudnn_benchmark=True)
        with stop_on_signals():
            rows = run_sweep(
                cases,
                out,
                weights,
                settings,
                targets=_targets(targets),
                base=base,
                workers=workers,
                repeats=repeats,
                keep_predictions=keep_predictions,
                segmenter=segmenter,
                segmentations_dir=segmentations,
                on_row=show,
                on_scoring=scoring,
            )
    except CwdmError as exc:
        raise _fail(exc) from exc
    except Interrupted as exc:
        typer.secho(
            f"stopped by {exc.signal_name}; rerun the same command to go on", err=True, fg=typer.colors.YELLOW
        )
        raise typer.Exit(exc.exit_code) from None
    table, picture, choice = write_report(rows, out, title)
    typer.echo(
        f"table: {table}; plot: {picture}; recommended: {choice.setting} ({choice.seconds:.1f} s a case), "
        f"as parameters: {out / 'recommended.yaml'} (cwdm infer ... --parameters {out / 'recommended.yaml'})"
    )


@app.command()
def qc(
    pred_dir: Annotated[Path, typer.Argument(help="Predictions, <case>-<seq>.nii.gz (any tool's).")],
    data_dir: Annotated[
        Path, typer.Argument(help="The case folders they were made from (or complete ones).")
    ],
    out: Annotated[Path, typer.Argument(help="QC folder: a preview per prediction and index.html.")],
    segmenter: Annotated[
        str | None,
        typer.Option(
            help="Outline the tumour this segmenter finds in the completed case (and the real one) on "
            "each preview, with their Dice on the card: 'builtin', a reference segmenter folder, or a "
            "segmenter YAML (nnU-Net model, command).",
        ),
    ] = None,
    convention: Annotated[
        Literal["neurological", "radiological"],
        typer.Option(
            help="Display: patient's right on the right (neurological) or on the left (radiological)."
        ),
    ] = "neurological",
    weights: Annotated[
        str, typer.Option(help="The weights that made the predictions, named in the sheet's header.")
    ] = "",
    verbose: Verbose = False,
) -> None:
    """Previews of predictions already written, and their contact sheet (OUT/index.html); where DATA
    holds the real sequence, each card also shows the difference map and PSNR/MSE."""
    from .qc.run import qc_folder
    from .segmentation.spec import open_segmenter

    _setup_logging(verbose)
    try:
        entries = qc_folder(
            pred_dir,
            data_dir,
            out,
            on_case=lambda e: typer.echo(f"{e.case_id}  {e.target or '-'}  {e.status}"),
            segmenter=None if segmenter is None else open_segmenter(segmenter),
            convention=convention,
            weights=weights,
        )
    except CwdmError as exc:
        raise _fail(exc) from exc
    typer.echo(f"contact sheet: {out / 'index.html'}")
    raise typer.Exit(1 if any(entry.status == "failed" for entry in entries) else 0)


weights_app = typer.Typer(
    help="Check or fetch a weights directory.", no_args_is_help=True, context_settings=_COMMAND_SETTINGS
)
app.add_typer(weights_app, name="weights")


@weights_app.command("check")
def weights_check(
    directory: Annotated[
        Path, typer.Argument(help="Weights directory: a checkpoint per target, model.yaml.")
    ],
) -> None:
    """Verify that every target's checkpoint loads strictly with the model.yaml architecture."""
    from .weights.folder import check_weights

    try:
        report = check_weights(directory)
    except CwdmError as exc:
        raise _fail(exc) from exc
    typer.echo("\n".join(report.lines()))
    raise typer.Exit(0 if report.ok else 1)


@weights_app.command("fetch")
def weights_fetch(
    dest: Annotated[Path, typer.Argument(help="Weights directory to fill.")],
    repo: Annotated[str, typer.Option(help="HuggingFace repository.")] = "pfriedri/cwdm",
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (pin a commit).")] = None,
    file: Annotated[
        list[str] | None, typer.Option(help="Repository file to fetch, once per target (default: by tag).")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Download the published checkpoints (image build time only; needs the 'hub' extra), then check."""
    from .weights.hub import fetch_weights

    _setup_logging(verbose)
    try:
        report = fetch_weights(dest, repo, revision, file or None)
    except CwdmError as exc:
        raise _fail(exc) from exc
    typer.echo("\n".join(report.lines()))
    raise typer.Exit(0 if report.ok else 1)


report_app = typer.Typer(
    help="Combine the run reports of a split run.", no_args_is_help=True, context_settings=_COMMAND_SETTINGS
)
app.add_typer(report_app, name="report")


@report_app.command("merge")
def report_merge(
    reports: Annotated[list[Path], typer.Argument(help="The report of every part (cwdm infer --num-parts).")],
    out: Annotated[Path | None, typer.Option(help="Write the merged report (JSON) here.")] = None,
) -> None:
    """One report and one exit status for a split run: missing or unfinished parts, every case's outcome."""
    import json

    from .atomic import write_atomic
    from .inference.merge import merge_reports

    try:
        merged = merge_reports(reports)
    except CwdmError as exc:
        raise _fail(exc) from exc
    if out is not None:
        write_atomic(out, json.dumps(merged.to_dict(), indent=2) + "\n")
    parts = "" if merged.num_parts is None else f" from {merged.num_parts} part(s)"
    typer.echo(f"{len(merged.cases)} cases{parts}: {merged.counts_text()}")
    if merged.missing_parts:
        typer.echo(f"missing parts (no report): {', '.join(map(str, merged.missing_parts))}")
    for index, why in merged.unfinished_parts.items():
        typer.echo(f"part {index} unfinished: {why}")
    for case_id, writers in merged.written_twice.items():
        typer.echo(f"{case_id} written by {len(writers)} processes: {', '.join(writers)}")
    for problem in merged.problems:
        typer.echo(problem)
    for case in merged.cases:
        if case["status"] not in ("written", "skipped", "ignored"):
            typer.echo(f"{case['case_id']} {case['status']}: {case.get('error') or ''}")
    raise typer.Exit(merged.exit_code)


segmenter_app = typer.Typer(
    help="Train the reference tumour segmenter.", no_args_is_help=True, context_settings=_COMMAND_SETTINGS
)
app.add_typer(segmenter_app, name="segmenter")


@segmenter_app.command("train")
def segmenter_train(
    data: Annotated[
        Path, typer.Argument(help="Training folder: complete cases with a <case>-seg.nii.gz each.")
    ],
    out: Annotated[Path, typer.Argument(help="Run folder: checkpoints/, train_log.csv, weights/.")],
    iterations: Annotated[int, typer.Option(help="Optimiser steps.")] = 4000,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, then cosine).")] = 5e-4,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 1,
    crop: Annotated[str, typer.Option(help="Crop of the 2 mm network grid, e.g. 96,96,64.")] = "96,96,64",
    init_filters: Annotated[int, typer.Option(help="SegResNet base width.")] = 16,
    exclude: Annotated[str, typer.Option(help="Comma list of case ids to hold out of training.")] = "",
    save_every: Annotated[int, typer.Option(help="Checkpoint interval in steps.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the initial weights and of every draw.")] = 0,
    precision: Annotated[
        Literal["fp32", "bf16"], typer.Option(help="bf16: a GPU, or a CPU with native bf16.")
    ] = "fp32",
    device: Annotated[Literal["cpu", "cuda"], typer.Option(help="Where to train.")] = "cpu",
    max_seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds, checkpointed (rerun to go on).")
    ] = None,
    init_weights: Annotated[
        Path | None, typer.Option(help="Start a new run from these segmenter.safetensors weights.")
    ] = None,
    sequence_dropout: Annotated[
        float,
        typer.Option(
            help="Probability that a crop has one sequence zeroed, so that the segmenter also segments "
            "cases with a sequence absent (the skip-synthesis baseline)."
        ),
    ] = 0.0,
    verbose: Verbose = False,
) -> None:
    """Train the reference segmenter (MONAI SegResNet, 2 mm, WT/TC/ET); a rerun resumes."""
    from .config import ReferenceSegmenterSpec
    from .segmentation.training import SegmenterStep, SegmenterTrainingConfig, train_segmenter
    from .signals import stop_requested_on_signals

    _setup_logging(verbose)

    def report(r: SegmenterStep) -> None:
        log.info("step %d  loss %.4f  %.3f it/s", r.step, r.loss, r.steps_per_s)

    try:
        config = SegmenterTrainingConfig(
            spec=ReferenceSegmenterSpec(
                init_filters=init_filters, accepts_absent_sequence=sequence_dropout > 0
            ),
            sequence_dropout=sequence_dropout,
            iterations=iterations,
            lr=lr,
            batch_size=batch_size,
            crop_size=tuple(_integers(crop)),  # type: ignore[arg-type]
            save_every=save_every,
            seed=seed,
            precision=precision,
            exclude=tuple(item.strip() for item in exclude.split(",") if item.strip()),
        )
        with stop_requested_on_signals() as stop:
            trainer = train_segmenter(
                data,
                out,
                config,
                init_weights=init_weights,
                device=device,
                max_seconds=max_seconds,
                on_log=report,
                should_stop=stop.is_set,
            )
    except CwdmError as exc:
        raise _fail(exc) from exc
    typer.echo(f"step {trainer.step} of {iterations}; weights: {trainer.weights_dir}")
    if stop.is_set():
        raise typer.Exit(128 + (stop.signal_number or signal.SIGTERM))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
