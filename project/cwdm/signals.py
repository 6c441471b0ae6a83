"""Turning SIGINT and SIGTERM into a clean stop of a run (README, "Bad inputs and faults").

``docker stop``, MedPerf and batch schedulers end a container with SIGTERM (then SIGKILL after a grace
period); a person presses Ctrl-C (SIGINT). Python's default for SIGTERM ends the process on the spot,
and a container's first process (PID 1) ignores SIGTERM altogether unless it installs a handler. Inside
:func:`stop_on_signals`, both signals raise :class:`cwdm.errors.Interrupted` in the main thread instead:
the run stops where it is, the output being written loses only its temporary file (outputs are atomic,
:func:`cwdm.volumes.write_volume_atomic`), :meth:`cwdm.Synthesizer.run` attaches the partial report, and
the command writes that report, shows its summary and exits with 128 + the signal number. A rerun
skips the finished cases and does the rest.

Only the commands (``cwdm infer``, ``project/mlcube.py``) install the handlers; the library never does.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import Interrupted

log = logging.getLogger(__name__)

#: The signals that stop a run cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the first of ``signals`` raises :class:`Interrupted` in the main thread.

    The first signal also restores the previous handlers, so that a second one acts as it did before
    (a second Ctrl-C raises KeyboardInterrupt, a second SIGTERM ends the process at once) when the
    clean stop itself hangs. The previous handlers are restored on leaving the block in any case.
    Outside the main thread (where Python refuses signal handlers) the block runs unchanged.

    Args:
        signals: The signals to turn into :class:`Interrupted`.
    """
    if threading.current_thread() is not threading.main_thread():
        log.debug("not the main thread: signal handlers left as they are")
        yield
        return
    # getsignal gives None for a handler installed outside Python: restore the default then.
    previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        del frame
        restore()
        raise Interrupted(signum)  # no logging here: the handler may run inside a logging call

    for sig in signals:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        restore()
