"""Training data: the complete cases of a folder, preprocessed exactly as at inference, and the random
crops drawn from them.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..cases.discovery import Case, discover_cases
from ..cases.preprocessing import NetworkLayout, normalise
from ..cases.reader import read_sequences
from ..errors import ConfigError, CwdmError
from ..sequences import CANONICAL_ORDER


class TrainingCases:
    """Complete cases of a training folder, preprocessed exactly as at inference.

    Safe to read from several threads (the trainer prefetches the next step's cases in the
    background when they are not all in memory).

    Args:
        cases: Cases with all four sequences.
        multiple: Image-space size multiple of the network (``2 * size_multiple``).
        cache: Keep each preprocessed case in memory after its first load.
        cache_bytes: Keep at most this many bytes of cases in memory (``None``: no limit); the others
            are read again whenever they are drawn. A BraTS case takes 128 MiB in the network layout.
    """

    def __init__(
        self, cases: list[Case], multiple: int, cache: bool = True, cache_bytes: int | None = None
    ) -> None:
        if not cases:
            raise CwdmError("no complete training cases (folders with all four sequences) found")
        self.cases = cases
        self.multiple = multiple
        self._cache: dict[int, Tensor] | None = {} if cache else None
        self._cache_left = math.inf if cache_bytes is None else cache_bytes
        self._lock = threading.Lock()

    @classmethod
    def from_folder(
        cls, data_dir: Path, multiple: int, cache: bool = True, cache_bytes: int | None = None
    ) -> TrainingCases:
        complete = [case for case in discover_cases(data_dir) if case.is_complete]
        return cls(complete, multiple, cache, cache_bytes)

    def __len__(self) -> int:
        return len(self.cases)

    def is_cached(self, index: int) -> bool:
        """Whether case ``index`` is in memory (drawing it costs no file reading)."""
        return self._cache is not None and index in self._cache

    def __getitem__(self, index: int) -> Tensor:
        """``(4, X, Y, Z)`` float32 network-layout volumes in canonical order (t1n, t1c, t2w, t2f).

        Raises:
            VolumeReadError: a file of the case is unreadable or not a 3D volume.
            GeometryError: the four sequences do not share one grid.
        """
        if self._cache is not None and (cached := self._cache.get(index)) is not None:
            return cached
        stacked = self.load(index)
        if self._cache is not None:
            with self._lock:
                if index not in self._cache and stacked.nbytes <= self._cache_left:
                    self._cache[index] = stacked
                    self._cache_left -= stacked.nbytes
        return stacked

    def load(self, index: int) -> Tensor:
        """Read and preprocess case ``index`` from disk (no cache); as :meth:`__getitem__`."""
        volumes = read_sequences(self.cases[index], CANONICAL_ORDER)
        layout = NetworkLayout.for_shape(volumes[0].shape, self.multiple)
        return torch.from_numpy(np.stack([layout.to_network(normalise(v.data)) for v in volumes]))


def random_crop(volumes: Tensor, size: tuple[int, int, int] | None, generator: torch.Generator) -> Tensor:
    """A crop of ``(C, X, Y, Z)`` at an even offset (so its Haar pairs are the whole volume's)."""
    if size is None:
        return volumes
    starts = []
    for extent, crop in zip(volumes.shape[1:], size, strict=True):
        if crop > extent:
            raise ConfigError(
                f"crop_size {size} exceeds the volume's network shape {tuple(volumes.shape[1:])}"
            )
        choices = (extent - crop) // 2 + 1
        starts.append(2 * int(torch.randint(choices, (1,), generator=generator)))
    return volumes[tuple([slice(None)] + [slice(s, s + c) for s, c in zip(starts, size, strict=True)])]
