"""cwdm: conditional wavelet diffusion models (Friedrich et al., 2024) for BraTS missing-sequence synthesis.

The public, stable API is listed in ``__all__``; see README.md for a runnable example.
"""

from __future__ import annotations

from .cases.discovery import Case, discover_cases, needed_targets
from .config import RunParameters, load_run_parameters
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
from .inference.fastpath import FastPathOptions, prepare_denoiser
from .inference.report import CaseResult, RunReport, write_report
from .inference.synthesizer import Synthesizer
from .inference.throughput import Throughput
from .method.denoiser import Denoiser, DenoiserConfig
from .method.sampling import sample
from .method.schedule import NoiseSchedule
from .method.wavelets import build_condition, clip_coeffs, decode, dwt3d, encode, idwt3d
from .runtime import Runtime, resolve_runtime
from .sequences import CANONICAL_ORDER, MRISequence, condition_order
from .signals import stop_on_signals
from .version import __version__ as __version__
from .weights.checkpoints import load_denoiser, read_state_dict, write_state_dict

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
