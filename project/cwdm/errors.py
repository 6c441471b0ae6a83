"""The exception hierarchy of the cwdm package.

Callers catch :class:`CwdmError` for anything this package raises on purpose; the narrower classes
let the pipeline tell a bad case (skip it, go on) from a bad configuration (stop before any case).
:class:`Interrupted` (a stop requested by a signal) is deliberately not a :class:`CwdmError`.
"""

from __future__ import annotations

import signal
from pathlib import Path


class CwdmError(Exception):
    """Base class of every error raised on purpose by cwdm."""


class ShapeError(CwdmError, ValueError):
    """A tensor or volume has a shape the method cannot use (odd size, wrong rank, ...)."""


class ConfigError(CwdmError, ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, out of range)."""


class CheckpointError(CwdmError):
    """A checkpoint cannot be read or does not match the architecture."""


class CaseError(CwdmError):
    """A case cannot be processed; carries the case id and, where known, the offending file.

    Args:
        case_id: The case folder name, e.g. ``BraTS-GLI-01666-000``.
        message: What is wrong and, when obvious, the fix.
        path: The file or folder at fault, if there is one.
    """

    def __init__(self, case_id: str, message: str, path: Path | None = None) -> None:
        self.case_id = case_id
        self.path = path
        self.detail = message
        where = f" ({path})" if path is not None else ""
        super().__init__(f"{case_id}: {message}{where}")

    def __reduce__(self) -> tuple[type, tuple[str, str, Path | None]]:
        # Rebuilt from the three arguments (the default would pass the formatted message alone), so that
        # a case error crosses a process boundary intact (the sweep scores in worker processes).
        return type(self), (self.case_id, self.detail, self.path)


class GeometryError(CaseError):
    """The present sequences of a case do not share one voxel grid."""


class VolumeReadError(CaseError):
    """A volume file is missing, unreadable, corrupt or not a usable 3D NIfTI image."""


class DeviceMemoryError(CaseError):
    """A case does not fit in the accelerator's memory even when sampled alone (batch size 1)."""


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal (SIGINT or SIGTERM; see :func:`cwdm.signals.stop_on_signals`).

    A :class:`KeyboardInterrupt`, not a :class:`CwdmError`: no per-case isolation boundary catches it,
    so the run stops where the signal arrives; an output being written loses only its temporary file.
    :meth:`cwdm.Synthesizer.run` re-raises it with :attr:`report` set to the partial run report.

    Args:
        signum: The signal number.
        report: The :class:`cwdm.inference.synthesizer.RunReport` so far, when raised out of a run.
    """

    def __init__(self, signum: int, report: object | None = None) -> None:
        self.signum = int(signum)
        self.report = report
        super().__init__(f"stopped by {self.signal_name}")

    @property
    def signal_name(self) -> str:
        """``SIGINT``, ``SIGTERM``, ..."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + its number (130, 143)."""
        return 128 + self.signum
