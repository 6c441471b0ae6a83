"""The per-voxel preprocessing on the device that samples: the percentile clip and scaling of
:func:`cwdm.cases.preprocessing.normalise`, for a volume that is already a tensor there.

On a GPU a one-step case is almost all pre- and post-processing on the CPU (docs/PERFORMANCE.md); once
a volume is on the device, its selection (``torch.kthvalue``), clip, shift and division can run there.
The arithmetic is the CPU path's, operation for operation, in float64 (IEEE-exact on CUDA as on the CPU):
the same order statistics, numpy's interpolation between them, one rounding to float32 at the end, so
the values are bit for bit those of :func:`cwdm.cases.preprocessing.normalise`
(tests/test_device_preprocessing.py checks it with CPU tensors; no GPU run has checked it yet).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..cases.preprocessing import CLIP_QUANTILES


def clip_percentiles_on_device(values: Tensor) -> tuple[float, float]:
    """:func:`cwdm.cases.preprocessing.clip_percentiles` of a tensor, on its device.

    Args:
        values: Voxel values, any shape, at least one voxel; float64 for bit-identity.
    """
    flat = values.reshape(-1).to(torch.float64)
    count = flat.numel()
    result = []
    for q in CLIP_QUANTILES:
        virtual = (count - 1) * q
        below = min(math.floor(virtual), count - 1)
        above = min(below + 1, count - 1)
        low = float(torch.kthvalue(flat, below + 1).values)
        high = low if above == below else float(torch.kthvalue(flat, above + 1).values)
        gamma = virtual - below
        diff = high - low
        result.append(high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma)
    return result[0], result[1]


def normalise_on_device(values: Tensor) -> Tensor:
    """Clip to the 0.1/99.9 percentiles and scale to [0, 1] on ``values.device``.

    Args:
        values: One volume, any shape, float64 (the published precision).

    Returns:
        float32 tensor of the same shape on the same device; all zeros for a constant volume.
    """
    low, high = clip_percentiles_on_device(values)
    if not high > low:
        return torch.zeros(values.shape, dtype=torch.float32, device=values.device)
    scaled = values.to(torch.float64).clamp(low, high)
    scaled.sub_(low).div_(high - low)
    return scaled.to(torch.float32)
