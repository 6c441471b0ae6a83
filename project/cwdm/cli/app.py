"""The ``cwdm`` typer application and what its commands share: option conventions, the error exit, and
small option parsers. Every command module registers itself on :data:`app`; a command is a thin layer
over the library (parse options, build the request or config, call the library, render, exit code)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CwdmError

#: Help in click's plain layout: choices as [a|b], flags without a type, defaults listed; -h and --help.
COMMAND_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}

app = typer.Typer(
    name="cwdm",
    help="Conditional wavelet diffusion (cWDM) for BraTS missing-sequence synthesis.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=COMMAND_SETTINGS,
)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages too.")]


def _show_version(value: bool) -> None:
    if value:
        from ..version import __version__

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


def fail(exc: CwdmError) -> typer.Exit:
    """Say what went wrong on stderr; the exit of a command that could not run (status 2)."""
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def weights_or_shipped(weights: Path | None) -> Path:
    """``--weights``, or the shipped weights, saying in the log which ran.

    Raises:
        typer.Exit: no ``--weights`` and no shipped weights (a wheel without the repository).
    """
    import logging

    log = logging.getLogger("cwdm")
    if weights is not None:
        log.info("weights: %s", weights)
        return weights
    from ..weights.shipped import shipped_weights

    try:
        shipped = shipped_weights()
    except CwdmError as exc:
        raise fail(exc) from exc
    log.info("weights: %s (no --weights given: the shipped demo weights, not the published model)", shipped)
    return shipped


def integers(text: str) -> list[int]:
    """``"1,2,2,4,4"`` -> ``[1, 2, 2, 4, 4]``.

    Raises:
        ConfigError: an item is not an integer.
    """
    from ..errors import ConfigError

    try:
        return [int(item) for item in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated integers such as 1,2,2,4,4, got {text!r}") from exc


def targets_of(text: str) -> list[str]:
    """``"t1n,t2f"`` -> ``["t1n", "t2f"]``; ``"all"`` -> the four sequences in canonical order."""
    from ..sequences import CANONICAL_ORDER

    if text.strip().lower() == "all":
        return [str(seq) for seq in CANONICAL_ORDER]
    return [item.strip() for item in text.split(",") if item.strip()]
