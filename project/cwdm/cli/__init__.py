"""The ``cwdm`` command: one module per command group, each command a thin layer over the library.

Importing this package loads neither torch nor the scientific stack: every command imports what it
needs when it runs, so ``cwdm --help`` answers at once.
"""

from __future__ import annotations

from . import admin, infer, scoring, sweep, training
from .app import app

__all__ = ["app", "main"]
_COMMAND_MODULES = (admin, infer, scoring, sweep, training)  # imported to register their commands


def main() -> None:
    app()
