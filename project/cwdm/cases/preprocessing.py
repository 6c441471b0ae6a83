"""The training preprocessing, the network crop/pad and its inverse, and the published post-processing
variants: what happens to a case's values between reading and writing.

Preprocessing reproduces the published data loader (docs/METHOD.md, "Preprocessing"): each volume clipped
to the 0.1 and 99.9 percentiles of the whole volume (background included) and min-max scaled to [0, 1]. On the
BraTS grid (240 x 240 x 155) the network sees the published 224 x 224 x 160 layout: 8 voxels cropped from
each side of the two 240 axes, the last axis zero-padded after index 154. Other grids are zero-padded
after each axis to the next size the network accepts, so nothing is cropped from them (docs/USAGE.md, "Running
inference").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Percentiles of the published intensity clip (as fractions for ``np.quantile``).
CLIP_QUANTILES = (0.001, 0.999)
#: The BraTS grid and the published crop of its 240-voxel axes (docs/METHOD.md, "Preprocessing").
BRATS_SHAPE = (240, 240, 155)
_BRATS_CROPPED_SIZE = 240
_BRATS_MARGIN = 8
#: The published challenge script's background threshold (docs/METHOD.md, "Post-processing").
THRESHOLD = 0.04


def clip_percentiles(data: np.ndarray) -> tuple[float, float]:
    """The 0.1 and 99.9 percentiles of ``data``, exactly as ``np.quantile(data, CLIP_QUANTILES)`` gives
    them for float64 data (its default ``linear`` method), by selection instead of a full quantile.

    ``np.quantile`` copies the array, partitions it around the two neighbours of each virtual index
    ``(n - 1) * q`` and interpolates between them; here the same four order statistics come from one
    in-place partition of a single copy, and the interpolation is numpy's own formula (``_lerp``:
    ``a + (b - a) * g``, or ``b - (b - a) * (1 - g)`` when ``g >= 0.5``) in float64, so the values are
    bit for bit those of ``np.quantile`` (tests/test_preprocessing.py checks it on the shipped volumes).

    Args:
        data: Voxel values, any shape, at least one voxel; float64 for bit-identity with ``np.quantile``.

    Returns:
        ``(low, high)`` as Python floats.
    """
    # One copy in the input's own memory order (nibabel gives Fortran order): a C-order reshape of it
    # would transpose the volume, which costs more than the selection.
    values = np.array(data, dtype=np.float64, order="K", copy=True).ravel(order="K")
    count = values.size
    virtual = [(count - 1) * q for q in CLIP_QUANTILES]
    below = [min(int(np.floor(v)), count - 1) for v in virtual]
    above = [min(b + 1, count - 1) for b in below]
    values.partition(sorted(set(below + above)))
    result = []
    for v, b, a in zip(virtual, below, above, strict=True):
        low, high, gamma = values[b], values[a], v - b
        diff = high - low
        result.append(float(high - diff * (1 - gamma) if gamma >= 0.5 else low + diff * gamma))
    return result[0], result[1]


def normalise(data: np.ndarray) -> np.ndarray:
    """Clip to the 0.1/99.9 percentiles and min-max scale to [0, 1], as in training.

    The percentiles come from :func:`clip_percentiles`; the clip, shift and division run in float64 in
    one buffer (the clipped volume's minimum and maximum are the two percentiles themselves, so they
    need no pass of their own), and the result is rounded to float32 once: the values of the published
    float64 path, without its copies.

    Args:
        data: Voxel values of one volume, any shape, float64 recommended (the published precision).

    Returns:
        float32 array in [0, 1]; a constant volume (nothing to scale) gives all zeros.
    """
    if data.dtype != np.float64:  # other precisions keep numpy's own quantile arithmetic
        return _normalise_by_quantile(data)
    low, high = clip_percentiles(data)
    if not high > low:
        return np.zeros(data.shape, dtype=np.float32)
    scaled = np.clip(data, low, high)
    scaled -= low
    scaled /= high - low
    return scaled.astype(np.float32)


def _normalise_by_quantile(data: np.ndarray) -> np.ndarray:
    """The published arithmetic, for inputs that are not float64 (previews of float32 predictions)."""
    low, high = np.quantile(data, CLIP_QUANTILES)
    clipped = np.clip(data, low, high)
    span = clipped.max() - clipped.min()
    if span <= 0:
        return np.zeros(data.shape, dtype=np.float32)
    return ((clipped - clipped.min()) / span).astype(np.float32)


@dataclass(frozen=True)
class NetworkLayout:
    """How a grid maps onto the network input: per axis, a crop of the input and a zero pad after.

    Attributes:
        shape: The input grid's shape.
        crop: Per axis, voxels removed from each side (8 on the BraTS 240 axes, else 0).
        pad: Per axis, zeros appended after the (cropped) data.
    """

    shape: tuple[int, int, int]
    crop: tuple[int, int, int]
    pad: tuple[int, int, int]

    @classmethod
    def for_shape(cls, shape: tuple[int, ...], multiple: int) -> NetworkLayout:
        """The layout of ``shape`` for a network whose image-space sizes must divide by ``multiple``.

        Args:
            shape: The input grid, ``(X, Y, Z)``.
            multiple: ``2 * DenoiserConfig.size_multiple`` (32 for the published model).
        """
        crop, pad = [], []
        for size in shape:
            cut = _BRATS_MARGIN if size == _BRATS_CROPPED_SIZE else 0
            kept = size - 2 * cut
            crop.append(cut if kept % multiple == 0 else 0)
            kept = size - 2 * crop[-1]
            pad.append(-kept % multiple)
        return cls(shape=tuple(shape), crop=tuple(crop), pad=tuple(pad))  # type: ignore[arg-type]

    @property
    def network_shape(self) -> tuple[int, int, int]:
        return tuple(n - 2 * c + p for n, c, p in zip(self.shape, self.crop, self.pad, strict=True))  # type: ignore[return-value]

    def to_network(self, volume: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Crop and pad one ``shape``-sized array to :attr:`network_shape` (zeros padded after).

        Args:
            volume: The array on the input grid.
            out: Where to write it (``network_shape``, any dtype and order), e.g. one channel of a
                condition allocated once; ``None`` allocates a new array.
        """
        cropped = volume[tuple(slice(c, n - c) for n, c in zip(self.shape, self.crop, strict=True))]
        if out is None:
            return np.pad(cropped, [(0, p) for p in self.pad])
        a, b, c = cropped.shape
        out[:a, :b, :c] = cropped
        out[a:] = 0
        out[:a, b:] = 0
        out[:a, :b, c:] = 0
        return out

    def to_grid(self, volume: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_network`: drop the padding and restore the cropped margins as zeros."""
        unpadded = volume[tuple(slice(0, n - p) for n, p in zip(volume.shape, self.pad, strict=True))]
        return np.pad(unpadded, [(c, c) for c in self.crop])


def brain_mask_postprocess(volume: np.ndarray, first_condition: np.ndarray) -> np.ndarray:
    """The published evaluation post-processing: clamp to [0, 1], zero outside the brain.

    Args:
        volume: Synthesised volume (any shape).
        first_condition: The first condition sequence after preprocessing, same shape; voxels where
            it is exactly 0 are background (BraTS cases are skull-stripped).
    """
    out = np.clip(volume, 0.0, 1.0)
    out[first_condition == 0] = 0.0
    return out


def threshold_postprocess(volume: np.ndarray, first_condition: np.ndarray) -> np.ndarray:
    """The published challenge-container post-processing: values <= 0.04 set to 0.

    The top is clamped at 1, which only changes float rounding: the sampler's last step already
    clips x0 to [0, 1] in image space. ``first_condition`` is unused (kept for a common signature).
    """
    del first_condition
    out = np.minimum(volume, 1.0)
    out[out <= THRESHOLD] = 0.0
    return out


#: The post-processing variants by their parameters.yaml name.
POSTPROCESSES = {"brain_mask": brain_mask_postprocess, "threshold": threshold_postprocess}
