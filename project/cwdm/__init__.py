"""cwdm: conditional wavelet diffusion models (Friedrich et al., 2024) for BraTS missing-sequence synthesis.

The public, stable API is listed in ``__all__``; see README.md for a runnable example.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    CaseError,
    CheckpointError,
    ConfigError,
    CwdmError,
    DeviceMemoryError,
    GeometryError,
    Interrupted,
    ShapeError,
    VolumeReadError,
)
from .sequences import CANONICAL_ORDER, MRISequence, condition_order
from .version import __version__ as __version__

if TYPE_CHECKING:  # the names below load on first use (see __getattr__), for a fast start-up
    from .cases.discovery import Case, discover_cases, needed_targets
    from .config import RunParameters, load_run_parameters
    from .inference.fastpath import FastPathOptions, prepare_denoiser
    from .inference.report import CaseResult, RunReport, write_report
    from .inference.synthesizer import Synthesizer
    from .inference.throughput import Throughput
    from .method.denoiser import Denoiser, DenoiserConfig
    from .method.sampling import sample
    from .method.schedule import NoiseSchedule
    from .method.wavelets import build_condition, clip_coeffs, decode, dwt3d, encode, idwt3d
    from .runtime import Runtime, resolve_runtime
    from .signals import stop_on_signals
    from .weights.checkpoints import load_denoiser, read_state_dict, write_state_dict

#: Public names that load their module on first use: ``cwdm --help`` and light commands need no torch.
_LAZY = {
    "Case": "cases.discovery",
    "discover_cases": "cases.discovery",
    "needed_targets": "cases.discovery",
    "RunParameters": "config",
    "load_run_parameters": "config",
    "FastPathOptions": "inference.fastpath",
    "prepare_denoiser": "inference.fastpath",
    "CaseResult": "inference.report",
    "RunReport": "inference.report",
    "write_report": "inference.report",
    "Synthesizer": "inference.synthesizer",
    "Throughput": "inference.throughput",
    "Denoiser": "method.denoiser",
    "DenoiserConfig": "method.denoiser",
    "sample": "method.sampling",
    "NoiseSchedule": "method.schedule",
    "build_condition": "method.wavelets",
    "clip_coeffs": "method.wavelets",
    "decode": "method.wavelets",
    "dwt3d": "method.wavelets",
    "encode": "method.wavelets",
    "idwt3d": "method.wavelets",
    "Runtime": "runtime",
    "resolve_runtime": "runtime",
    "stop_on_signals": "signals",
    "load_denoiser": "weights.checkpoints",
    "read_state_dict": "weights.checkpoints",
    "write_state_dict": "weights.checkpoints",
}


__all__ = [
    "CANONICAL_ORDER",
    "Case",
    "CaseError",
    "CaseResult",
    "CheckpointError",
    "ConfigError",
    "CwdmError",
    "Denoiser",
    "DenoiserConfig",
    "DeviceMemoryError",
    "FastPathOptions",
    "GeometryError",
    "Interrupted",
    "MRISequence",
    "NoiseSchedule",
    "RunParameters",
    "RunReport",
    "Runtime",
    "ShapeError",
    "Synthesizer",
    "Throughput",
    "VolumeReadError",
    "build_condition",
    "clip_coeffs",
    "condition_order",
    "decode",
    "discover_cases",
    "dwt3d",
    "encode",
    "idwt3d",
    "load_denoiser",
    "load_run_parameters",
    "needed_targets",
    "prepare_denoiser",
    "read_state_dict",
    "resolve_runtime",
    "sample",
    "stop_on_signals",
    "write_report",
    "write_state_dict",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cwdm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
