"""``cwdm sweep``: what each sampling setting costs in score."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import typer

from ..choices import DeviceName
from ..errors import CwdmError
from .app import Verbose, app, fail, targets_of, weights_or_shipped
from .logs import setup_logging

log = logging.getLogger("cwdm")


@app.command(short_help="Time and score sampling settings on complete cases.")
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
    device: Annotated[DeviceName, typer.Option(help="Where to run.")] = "auto",
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
    from ..config import RunParameters, SweepSetting, load_sweep_grid
    from ..errors import Interrupted
    from ..evaluation.sweep import SweepRow, run_sweep, write_report
    from ..runtime import configure_process
    from ..signals import stop_on_signals

    setup_logging(verbose)
    weights = weights_or_shipped(weights)

    def show(row: SweepRow) -> None:
        scores = f"PSNR {row.scores['full_psnr']:.2f}  SSIM {row.scores['full_ssim']:.4f}"
        if math.isfinite(row.scores.get("dice_wt", math.nan)):
            scores += "  Dice WT/TC/ET " + "/".join(
                f"{row.scores[k]:.3f}" for k in ("dice_wt", "dice_tc", "dice_et")
            )
        typer.echo(f"{row.name}  {row.case_id}  {row.target}  {row.seconds:.1f} s  {scores}")

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
                targets=targets_of(targets),
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
        raise fail(exc) from exc
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
