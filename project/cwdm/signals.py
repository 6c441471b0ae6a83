"""Turning SIGINT and SIGTERM into a clean stop of a run (docs/USAGE.md, "Bad inputs and faults").

``docker stop``, MedPerf and batch schedulers end a container with SIGTERM (then SIGKILL after a grace
period); a person presses Ctrl-C (SIGINT). Python's default for SIGTERM ends the process on the spot,
and a container's first process (PID 1) ignores SIGTERM altogether unless it installs a handler. Inside
:func:`stop_on_signals`, both signals raise :class:`cwdm.errors.Interrupted` in the main thread instead:
the run stops where it is, the output being written loses only its temporary file (outputs are atomic,
:func:`cwdm.cases.volumes.write_volume_atomic`), :meth:`cwdm.Synthesizer.run` attaches the partial report, and
the command writes that report, shows its summary and exits with 128 + the signal number. A rerun
skips the finished cases and does the rest.

``cwdm train`` stops differently (:func:`stop_requested_on_signals`): a signal only sets a flag, which the
training loop reads between steps, so that it can save a checkpoint of a whole step before it exits.

Only the commands (``cwdm infer``, ``cwdm train``, ``project/mlcube.py``) install the handlers; the library
never does.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
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

    def stop(signum: int) -> None:
        raise Interrupted(signum)  # no logging here: the handler may run inside a logging call

    with _first_signal_calls(stop, signals):
        yield


class StopRequest:
    """Set by the first stop signal inside :func:`stop_requested_on_signals`; read between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_number: int | None = None

    def set(self, signum: int) -> None:
        self.signal_number = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@contextmanager
def stop_requested_on_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Within the block, the first of ``signals`` only sets the yielded :class:`StopRequest`.

    For loops that must not be cut mid-step (training: a step half applied cannot be checkpointed).
    As with :func:`stop_on_signals`, a second signal acts as it did before the block, and outside the
    main thread nothing is installed (the request is then never set by a signal).
    """
    request = StopRequest()
    with _first_signal_calls(request.set, signals):
        yield request


@contextmanager
def _first_signal_calls(action: Callable[[int], None], signals: tuple[signal.Signals, ...]) -> Iterator[None]:
    """Install handlers that restore the previous ones, then call ``action(signum)``; restore on exit."""
    if threading.current_thread() is not threading.main_thread():
        log.debug("not the main thread: signal handlers left as they are")
        yield
        return
    # getsignal gives None for a handler installed outside Python: restore the default then.
    previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        restore()
        action(signum)

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        restore()
