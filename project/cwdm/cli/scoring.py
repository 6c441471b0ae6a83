"""``cwdm evaluate``, ``cwdm qc`` and ``cwdm drop-sequence``: scoring predictions, their previews,
and pseudo-validation folders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from ..choices import LabelConventionName, ProtocolName
from ..errors import CwdmError

if TYPE_CHECKING:
    from ..evaluation.results import PredictionOutcome
from .app import Verbose, app, fail
from .logs import setup_logging

log = logging.getLogger("cwdm")


@app.command(short_help="Score predictions against the complete cases.")
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
        LabelConventionName | None,
        typer.Option(help="Ground-truth label convention.", show_default="told by its values"),
    ] = None,
    lesion_wise: Annotated[
        bool,
        typer.Option(help="Also the official BraTS metrics' lesion-wise Dice (optional extra, AGPL)."),
    ] = False,
    protocol: Annotated[
        ProtocolName | None,
        typer.Option(
            help="Also compute what that year's organisers computed (docs/EVALUATION.md); their segmenter is "
            "given with --segmenter.",
            show_default="none",
        ),
    ] = None,
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
    The table prints means per target and source; --csv keeps every score. A prediction whose case has
    no ground truth in TRUTH_DIR is listed as "no truth": not scored, not a failure. A prediction that
    cannot be scored is reported and the others go on (exit 1). Progress is logged per prediction."""
    import time

    from ..evaluation.evaluate import evaluate as evaluate_predictions

    setup_logging(verbose)
    progress = {"done": 0, "total": 0, "start": time.perf_counter()}

    def started(total: int) -> None:
        progress["total"] = total
        log.info(
            "scoring %d predictions%s",
            total,
            " (segmenting each case: minutes a case on a CPU)" * bool(segmenter),
        )

    def processed(outcome: PredictionOutcome) -> None:
        progress["done"] += 1
        elapsed = time.perf_counter() - progress["start"]
        what = {"scored": "scored", "no truth": f"no truth ({outcome.detail})", "failed": "failed"}
        log.info(
            "%d of %d: %s (%s) %s; %.0f s so far",
            progress["done"],
            progress["total"],
            outcome.case_id,
            outcome.target,
            what[outcome.status],
            elapsed,
        )

    try:
        if protocol is not None:
            result = _evaluate_protocol(
                pred_dir,
                truth_dir,
                protocol,
                segmenter,
                segmentations,
                truth_labels,
                lesion_wise,
                baseline,
                processed,
                started,
            )
            evaluation = result.evaluation
        else:
            downstream = _downstream_scorer(segmenter, segmentations, truth_labels, lesion_wise)
            result = evaluation = evaluate_predictions(
                pred_dir,
                truth_dir,
                baseline=baseline,
                downstream=downstream,
                on_case=processed,
                on_start=started,
            )
    except CwdmError as exc:
        raise fail(exc) from exc
    for failure in evaluation.failures:
        typer.secho(f"not scored: {failure.message}", err=True, fg=typer.colors.RED)
    if evaluation.scores:
        typer.echo(result.summary_table())
        _echo_verdicts(evaluation)
    elif evaluation.no_truth:
        typer.secho(
            f"nothing scored: no prediction has its ground truth in {truth_dir}",
            err=True,
            fg=typer.colors.RED,
        )
    if evaluation.no_truth:
        typer.echo(evaluation.no_truth_text())
    typer.echo(evaluation.counts_text())
    if csv is not None:
        typer.echo(f"csv: {result.write_csv(csv)}")
    raise typer.Exit(result.exit_code)


def _echo_verdicts(evaluation) -> None:  # noqa: ANN001 (an Evaluation, imported lazily)
    """With a segmenter and the baselines: per target, does the synthesis earn its place?"""
    from ..evaluation.verdict import verdict_table, verdicts

    rows = [
        {"case": s.case_id, "target": s.target, "source": s.source, **s.values()} for s in evaluation.scores
    ]
    found = verdicts(rows)
    if found and any(v.best_copy for v in found):
        typer.echo(
            "\nShould the missing sequence be synthesised? Dice of the completed case, mean [bootstrap 95 % "
            "interval] over cases:\n"
        )
        typer.echo(verdict_table(found))


def _evaluate_protocol(
    pred_dir: Path,
    truth_dir: Path,
    protocol: str,
    segmenter: str | None,
    segmentations: Path | None,
    truth_labels: str | None,
    lesion_wise: bool,
    baseline: bool,
    on_case: Callable[[PredictionOutcome], None],
    on_start: Callable[[int], None],
):  # noqa: ANN202 (a ProtocolEvaluation, imported lazily)
    """``cwdm evaluate --protocol``: the year's preset, its segmenter given with ``--segmenter``."""
    from ..evaluation.protocols import evaluate_protocol, get_protocol
    from ..segmentation.spec import open_segmenter

    extra = None
    if lesion_wise:
        from ..evaluation.lesionwise import OfficialMetrics

        extra = OfficialMetrics()
    return evaluate_protocol(
        pred_dir,
        truth_dir,
        get_protocol(protocol),
        segmenter=open_segmenter(segmenter) if segmenter else None,
        segmentations_dir=segmentations,
        truth_convention=truth_labels,  # type: ignore[arg-type]
        extra=extra,
        baseline=baseline,
        on_case=on_case,
        on_start=on_start,
    )


def _downstream_scorer(
    segmenter: str | None, segmentations: Path | None, truth_labels: str | None, lesion_wise: bool
):  # noqa: ANN202 (imported lazily)
    """The Dice scorer of ``--segmenter`` (None without one); the other options need it."""
    from ..errors import ConfigError

    if segmenter is None:
        if segmentations is not None or lesion_wise:
            raise ConfigError("--segmentations and --lesion-wise need --segmenter")
        return None
    from ..evaluation.downstream import DownstreamScorer
    from ..segmentation.spec import open_segmenter

    if truth_labels not in (None, "brats2021", "brats2023", "brats2024"):
        raise ConfigError(f"--truth-labels {truth_labels}: expected brats2021, brats2023 or brats2024")
    extra = None
    if lesion_wise:
        from ..evaluation.lesionwise import OfficialMetrics

        extra = OfficialMetrics()
    return DownstreamScorer(open_segmenter(segmenter), segmentations, truth_labels, extra)  # type: ignore[arg-type]


@app.command("drop-sequence", short_help="Make a pseudo-validation folder, as the organisers do.")
def drop_sequence(
    src: Annotated[Path, typer.Argument(help="Complete cases (read only).")],
    dst: Annotated[
        Path, typer.Argument(help="New pseudo-validation folder (or an unfinished one to resume).")
    ],
    verbose: Verbose = False,
) -> None:
    """Drop one sequence per case exactly as the organisers' script does (seed 123456)."""
    from ..evaluation.drop import drop_sequences

    setup_logging(verbose)
    try:
        report = drop_sequences(src, dst)
    except CwdmError as exc:
        raise fail(exc) from exc
    except OSError as exc:
        raise fail(CwdmError(f"copy failed: {exc}")) from exc
    for case in report.cases:
        files = len(case.copied)
        resumed = f", {len(case.kept)} already there from an earlier run" if case.kept else ""
        plural = "s" * (files != 1)
        typer.echo(f"{case.case_id}  dropped {case.dropped}  copied {files} file{plural}{resumed}")
    for path in report.ignored:
        typer.echo(f"skipped {path}: not a case folder or not a file")


@app.command(short_help="Previews and a contact sheet of predictions already written.")
def qc(
    pred_dir: Annotated[Path, typer.Argument(help="Predictions, <case>-<seq>.nii.gz (any tool's).")],
    data_dir: Annotated[
        Path, typer.Argument(help="The case folders they were made from (or complete ones).")
    ],
    out: Annotated[Path, typer.Argument(help="QC folder: a preview per prediction and index.html.")],
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Complete cases, <case>/<case>-<seq>.nii.gz: where one holds a prediction's real sequence, "
            "its card shows the truth and the difference map; the others show their inputs only."
        ),
    ] = None,
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
        str,
        typer.Option(
            help="The weights that made the predictions, named in the sheet's header.",
            show_default="the checkpoints the predictions' headers record",
        ),
    ] = "",
    verbose: Verbose = False,
) -> None:
    """Previews of predictions already written, and their contact sheet (OUT/index.html); where the
    real sequence is known (DATA holds complete cases, or --truth does), each card also shows the
    truth, the difference map and PSNR/MSE. One line per prediction: its status, and why when it
    failed or has no truth."""
    from ..inference.provenance import read_record
    from ..qc.run import qc_folder
    from ..segmentation.spec import open_segmenter

    setup_logging(verbose)
    try:
        entries = qc_folder(
            pred_dir,
            data_dir,
            out,
            truth_dir=truth,
            on_case=lambda entry: typer.echo(entry.line()),
            segmenter=None if segmenter is None else open_segmenter(segmenter),
            convention=convention,
            weights=weights,
            read_record=read_record,
        )
    except CwdmError as exc:
        raise fail(exc) from exc
    typer.echo(f"contact sheet: {out / 'index.html'}")
    raise typer.Exit(1 if any(entry.status == "failed" for entry in entries) else 0)
