"""``cwdm weights check|fetch`` and ``cwdm report merge``: weights directories and split runs' reports."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from ..errors import CwdmError
from .app import COMMAND_SETTINGS, Verbose, app, fail
from .logs import setup_logging

log = logging.getLogger("cwdm")


weights_app = typer.Typer(
    help="Check or fetch a weights directory.", no_args_is_help=True, context_settings=COMMAND_SETTINGS
)
app.add_typer(weights_app, name="weights")


@weights_app.command("check", short_help="Check that every target's checkpoint loads.")
def weights_check(
    directory: Annotated[
        Path, typer.Argument(help="Weights directory: a checkpoint per target, model.yaml.")
    ],
) -> None:
    """Verify that every target's checkpoint loads strictly with the model.yaml architecture."""
    from ..weights.folder import check_weights

    try:
        report = check_weights(directory)
    except CwdmError as exc:
        raise fail(exc) from exc
    typer.echo("\n".join(report.lines()))
    raise typer.Exit(0 if report.ok else 1)


@weights_app.command("fetch", short_help="Download the published checkpoints, then check them.")
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
    from ..weights.hub import fetch_weights

    setup_logging(verbose)
    try:
        report = fetch_weights(dest, repo, revision, file or None)
    except CwdmError as exc:
        raise fail(exc) from exc
    typer.echo("\n".join(report.lines()))
    raise typer.Exit(0 if report.ok else 1)


report_app = typer.Typer(
    help="Combine the run reports of a split run.", no_args_is_help=True, context_settings=COMMAND_SETTINGS
)
app.add_typer(report_app, name="report")


@report_app.command("merge", short_help="One report and one exit status for a split run.")
def report_merge(
    reports: Annotated[list[Path], typer.Argument(help="The report of every part (cwdm infer --num-parts).")],
    out: Annotated[Path | None, typer.Option(help="Write the merged report (JSON) here.")] = None,
) -> None:
    """One report and one exit status for a split run: missing or unfinished parts, every case's outcome."""
    import json

    from ..atomic import write_atomic
    from ..inference.merge import merge_reports

    try:
        merged = merge_reports(reports)
    except CwdmError as exc:
        raise fail(exc) from exc
    if out is not None:
        write_atomic(out, json.dumps(merged.to_dict(), indent=2) + "\n")
    typer.echo(merged.headline())
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


@app.command("heldout", short_help="Draw the held-out cases of a training, reproducibly.")
def heldout(
    data: Annotated[
        Path, typer.Argument(help="Folder of complete cases (those with a -seg file are candidates).")
    ],
    count: Annotated[
        int, typer.Option(min=1, help="How many cases to hold out, the kept ones included.")
    ] = 8,
    seed: Annotated[int, typer.Option(help="The draw's seed: write it down beside the set.")] = 20261207,
    keep: Annotated[str, typer.Option(help="Comma list of case ids held out whatever the draw.")] = "",
    among: Annotated[
        str, typer.Option(help="Draw only among these case ids (comma list; default: every candidate).")
    ] = "",
) -> None:
    """Draw the held-out cases of a training, reproducibly: prints them as one comma list (for --exclude)."""
    from ..cases.discovery import discover_cases
    from ..cases.holdout import draw_heldout
    from ..cases.reader import read_segmentation

    try:
        labelled = [case.case_id for case in discover_cases(data) if read_segmentation(case) is not None]
        wanted = [item.strip() for item in among.split(",") if item.strip()]
        candidates = [case_id for case_id in labelled if not wanted or case_id in wanted]
        kept = [item.strip() for item in keep.split(",") if item.strip()]
        drawn = draw_heldout(candidates, count, seed, kept)
    except CwdmError as exc:
        raise fail(exc) from exc
    typer.echo(",".join(drawn))
