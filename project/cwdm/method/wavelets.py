"""Single-level 3D Haar wavelet transform and the method's coefficient scaling.

Band order and scaling follow docs/METHOD.md, "Wavelets" and "Conditioning": the eight sub-bands are
ordered LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH (letters name the spatial axes D, H, W in order;
L = (a + b) / sqrt(2), H = (a - b) / sqrt(2) over each pair of neighbouring voxels), which equals
``pywt.dwtn(x, "haar")`` with keys aaa, aad, ..., ddd. The network sees the LLL band divided by 3
("scaled coefficients", ``coeffs``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ShapeError

#: Number of sub-bands of a single-level 3D transform.
NUM_BANDS = 8
#: The LLL band is divided by this before the network and multiplied after (docs/METHOD.md, "Wavelets").
LLL_SCALE = 3.0

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def _check_volume(volume: Tensor) -> None:
    if volume.dim() != 5:
        raise ShapeError(f"expected a volume of shape (B, C, D, H, W), got {tuple(volume.shape)}")
    odd = [size for size in volume.shape[2:] if size % 2]
    if odd:
        raise ShapeError(
            f"the Haar transform needs even spatial sizes, got {tuple(volume.shape[2:])}; "
            "pad the volume to even sizes first"
        )


def _check_bands(bands: Tensor) -> None:
    if bands.dim() != 5 or bands.shape[1] % NUM_BANDS:
        raise ShapeError(f"expected wavelet bands of shape (B, 8*C, D, H, W), got {tuple(bands.shape)}")


def _analyse(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Split ``x`` along ``dim`` into its Haar low and high halves."""
    pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return (even + odd) * _SQRT_HALF, (even - odd) * _SQRT_HALF


def _synthesise(low: Tensor, high: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`_analyse`: interleave the reconstructed pairs along ``dim``."""
    even = (low + high) * _SQRT_HALF
    odd = (low - high) * _SQRT_HALF
    return torch.stack((even, odd), dim=dim + 1).flatten(dim, dim + 1)


def dwt3d(volume: Tensor) -> Tensor:
    """Single-level 3D Haar transform.

    Args:
        volume: ``(B, C, D, H, W)`` with even D, H, W; any float dtype and device.

    Returns:
        ``(B, 8 * C, D/2, H/2, W/2)``: for each input channel ``c`` its eight unscaled bands
        LLL, LLH, ..., HHH occupy channels ``8c .. 8c + 7``.

    Raises:
        ShapeError: the input is not 5D or a spatial size is odd.
    """
    _check_volume(volume)
    batch, channels = volume.shape[:2]
    bands = [volume]
    for dim in (2, 3, 4):  # D, then H, then W: band names read most significant axis first
        bands = [half for band in bands for half in _analyse(band, dim)]
    stacked = torch.stack(bands, dim=2)  # (B, C, 8, d, h, w)
    return stacked.reshape(batch, channels * NUM_BANDS, *stacked.shape[3:])


def idwt3d(bands: Tensor) -> Tensor:
    """Inverse of :func:`dwt3d`.

    Args:
        bands: ``(B, 8 * C, d, h, w)`` unscaled bands in the order of :func:`dwt3d`.

    Returns:
        ``(B, C, 2d, 2h, 2w)``; ``idwt3d(dwt3d(x))`` equals ``x`` to rounding.

    Raises:
        ShapeError: the input is not 5D or its channel count is not a multiple of 8.
    """
    _check_bands(bands)
    batch, channels = bands.shape[0], bands.shape[1] // NUM_BANDS
    grouped = bands.reshape(batch, channels, NUM_BANDS, *bands.shape[2:])
    parts = list(grouped.unbind(dim=2))
    for dim in (4, 3, 2):  # undo W, then H, then D
        parts = [_synthesise(parts[i], parts[i + 1], dim) for i in range(0, len(parts), 2)]
    return parts[0]


def _scale_lll(bands: Tensor, factor: float) -> Tensor:
    grouped = bands.unflatten(1, (bands.shape[1] // NUM_BANDS, NUM_BANDS))
    scale = torch.ones(NUM_BANDS, dtype=bands.dtype, device=bands.device)
    scale[0] = factor
    return (grouped * scale.view(1, 1, NUM_BANDS, 1, 1, 1)).flatten(1, 2)


def encode(volume: Tensor) -> Tensor:
    """Volume in image space -> scaled wavelet coefficients, as the network sees them.

    Args:
        volume: ``(B, C, D, H, W)`` in [0, 1], even spatial sizes.

    Returns:
        ``(B, 8 * C, D/2, H/2, W/2)``: :func:`dwt3d` with every LLL band divided by 3.
    """
    return _scale_lll(dwt3d(volume), 1.0 / LLL_SCALE)


def decode(coeffs: Tensor) -> Tensor:
    """Scaled wavelet coefficients -> volume; the inverse of :func:`encode`.

    Args:
        coeffs: ``(B, 8 * C, d, h, w)`` scaled coefficients.

    Returns:
        ``(B, C, 2d, 2h, 2w)`` in image space (not clamped).
    """
    _check_bands(coeffs)
    return idwt3d(_scale_lll(coeffs, LLL_SCALE))


def clip_coeffs(coeffs: Tensor) -> Tensor:
    """Clamp scaled coefficients in image space to [0, 1] (the published x0 clip, docs/METHOD.md, "Sampling").

    Args:
        coeffs: ``(B, 8 * C, d, h, w)`` scaled coefficients.

    Returns:
        ``encode(decode(coeffs).clamp(0, 1))``, same shape.
    """
    return encode(decode(coeffs).clamp(0.0, 1.0))


def build_condition(volumes: Tensor) -> Tensor:
    """Stack three present sequences into the network condition.

    Args:
        volumes: ``(B, 3, D, H, W)`` in [0, 1], the present sequences in the order of
            :func:`cwdm.sequences.condition_order` (for a missing t2f: t1n, t1c, t2w).

    Returns:
        ``(B, 24, D/2, H/2, W/2)``: the scaled coefficients of each sequence, eight channels each,
        in the same order.

    Raises:
        ShapeError: ``volumes`` does not hold exactly three sequences or has odd sizes.
    """
    if volumes.dim() != 5 or volumes.shape[1] != 3:
        raise ShapeError(
            f"expected the three present sequences as (B, 3, D, H, W), got {tuple(volumes.shape)}"
        )
    return encode(volumes)
