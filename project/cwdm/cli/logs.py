"""How every entry point logs: one time-stamp format, and one whole line per event when the log goes to
a file or a pipe (a scheduler's log file, ``docker logs``, CI), so that logs can be grepped.

On a terminal the lines go through rich (coloured levels, and they share the terminal with the progress
bars without overwriting them); anywhere else through a plain formatter that never wraps: rich would
hard-wrap at 80 columns when it cannot ask a terminal for its width.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

#: One time-stamp format for every command's log lines (ISO 8601, local time).
LOG_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
#: A log line where no terminal shows it: time, level, logger, message, on one line.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Marks the handlers this module installed: a second call replaces them, and leaves other handlers
#: (a test's log capture, an embedding application's) alone.
_OURS = "_cwdm_handler"


def setup_logging(verbose: bool = False, log_file: Path | None = None) -> Console:
    """Log to stderr (rich on a terminal, plain lines elsewhere) and, with ``log_file``, to that file in
    plain lines too. Returns the stderr console, for progress bars that share it.

    A log file that cannot be opened (a read-only folder) is reported on stderr; the run goes on.
    """
    console = Console(stderr=True)
    plain = logging.Formatter(PLAIN_FORMAT, datefmt=LOG_TIME_FORMAT)
    handlers: list[logging.Handler] = []
    if console.is_terminal:
        terminal = RichHandler(console=console, show_path=False, log_time_format=LOG_TIME_FORMAT)
        terminal.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handlers.append(terminal)
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(plain)
        handlers.append(stream)
    if log_file is not None:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:  # stderr still has everything
            print(f"cannot write the log file {log_file}: {exc}", file=sys.stderr)
        else:
            file_handler.setFormatter(plain)
            handlers.append(file_handler)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:  # an earlier call's, in-process
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return console
