"""cwdm: conditional wavelet diffusion models (Friedrich et al., 2024) for BraTS missing-sequence synthesis.

The public, stable API is listed in ``__all__``; see README.md for a runnable example.
"""

from __future__ import annotations

from .checkpoints import load_denoiser, read_state_dict, write_state_dict
from .denoiser import Denoiser, DenoiserConfig
from .errors import CaseError, CheckpointError, ConfigError, CwdmError, GeometryError, ShapeError
from .sampling import sample
from .schedule import NoiseSchedule
from .sequences import CANONICAL_ORDER, MRISequence, condition_order
from .wavelets import build_condition, clip_coeffs, decode, dwt3d, encode, idwt3d

__version__ = "0.1.0"

__all__ = [
    "CANONICAL_ORDER",
    "CaseError",
    "CheckpointError",
    "ConfigError",
    "CwdmError",
    "Denoiser",
    "DenoiserConfig",
    "GeometryError",
    "MRISequence",
    "NoiseSchedule",
    "ShapeError",
    "build_condition",
    "clip_coeffs",
    "condition_order",
    "decode",
    "dwt3d",
    "encode",
    "idwt3d",
    "load_denoiser",
    "read_state_dict",
    "sample",
    "write_state_dict",
]
