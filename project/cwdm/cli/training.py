"""``cwdm train`` and ``cwdm segmenter train``: the two resumable trainings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ..choices import SamplerName, TrainPrecisionName
from ..errors import CwdmError
from .app import COMMAND_SETTINGS, Verbose, app, fail, integers, targets_of
from .logs import setup_logging

if TYPE_CHECKING:
    from ..resumable import TrainingOutcome

log = logging.getLogger("cwdm")


@app.command(short_help="Train the denoisers, one target after another.")
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
    sampler: Annotated[SamplerName, typer.Option(help="Default sampler written to model.yaml.")] = "ddpm",
    ema_rate: Annotated[
        float | None, typer.Option(help="Export EMA weights at this rate, e.g. 0.9999.")
    ] = None,
    save_every: Annotated[int, typer.Option(help="Checkpoint interval in steps.")] = 100_000,
    log_every: Annotated[int, typer.Option(help="CSV log interval in steps.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of weights init and of every draw of the loop.")] = 0,
    precision: Annotated[
        TrainPrecisionName, typer.Option(help="bf16: a GPU, or a CPU with AVX512-BF16 or AMX; fp16: a GPU.")
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
    exclude: Annotated[
        str, typer.Option(help="Comma list of case ids to hold out of training (see cwdm heldout).")
    ] = "",
    tumour_weight: Annotated[
        float,
        typer.Option(
            min=0.0, help="Weigh the error inside the tumour 1 + this (needs -seg files; 0: published)."
        ),
    ] = 0.0,
    segmentation_weight: Annotated[
        float,
        typer.Option(
            min=0.0, help="Add this times the segmentation-consistency term through --segmenter (0: none)."
        ),
    ] = 0.0,
    segmenter: Annotated[
        str | None,
        typer.Option(help="The frozen reference segmenter of that term: 'builtin' or a segmenter folder."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Train denoisers, one target after another on one copy of the data; multi-GPU with
    ``torchrun --nproc-per-node N $(which cwdm) train ...``."""
    from ..config import ModelSpec
    from ..resumable import StepReport
    from ..runtime import configure_process
    from ..signals import stop_requested_on_signals
    from ..training.run import train_targets
    from ..training.trainer import TrainingConfig

    setup_logging(verbose)

    def report(r: StepReport) -> None:
        log.info("step %d  loss %.5f  %.2f it/s", r.step, r.loss, r.steps_per_s)

    try:
        spec = ModelSpec.model_validate(
            {
                "model_channels": model_channels,
                "channel_mult": integers(channel_mult),
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
                crop_size=tuple(integers(crop)) if crop else None,  # type: ignore[arg-type]
                flip=flip,
                ema_rate=ema_rate,
                save_every=save_every,
                log_every=log_every,
                seed=seed,
                precision=precision,
                tumour_weight=tumour_weight,
                segmentation_weight=segmentation_weight,
                segmenter=segmenter,
            )
            for name in targets_of(target)
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
                exclude=tuple(item.strip() for item in exclude.split(",") if item.strip()),
            )
    except CwdmError as exc:
        raise fail(exc) from exc
    from ..resumable import TrainingOutcome

    runs = [trainer.outcome(str(trainer.config.target)) for trainer in trainers]
    stopped_by = stop.signal_number if stop.is_set() else None
    _render_outcome(TrainingOutcome.of(runs, len(configs), stopped_by, max_seconds))


def _render_outcome(outcome: TrainingOutcome) -> None:
    """A line per run, why the training ended early (if it did), and its exit status."""
    typer.echo("\n".join(outcome.lines()))
    notice = outcome.notice()
    if notice is not None:
        typer.secho(notice, err=True, fg=typer.colors.YELLOW)
    raise typer.Exit(outcome.exit_code)


segmenter_app = typer.Typer(
    help="Train the reference tumour segmenter.", no_args_is_help=True, context_settings=COMMAND_SETTINGS
)
app.add_typer(segmenter_app, name="segmenter")


@segmenter_app.command("train", short_help="Train the reference segmenter (MONAI SegResNet).")
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
    from ..config import ReferenceSegmenterSpec
    from ..resumable import StepReport
    from ..segmentation.training import SegmenterTrainingConfig, train_segmenter
    from ..signals import stop_requested_on_signals

    setup_logging(verbose)

    def report(r: StepReport) -> None:
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
            crop_size=tuple(integers(crop)),  # type: ignore[arg-type]
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
        raise fail(exc) from exc
    from ..resumable import TrainingOutcome

    stopped_by = stop.signal_number if stop.is_set() else None
    _render_outcome(TrainingOutcome.of([trainer.outcome("segmenter")], 1, stopped_by, max_seconds))
