"""Training data: the complete cases of a folder, preprocessed exactly as at inference, read once per run
and kept compact; and the random crops and flips drawn from them.

Each case is read and preprocessed once (:func:`cwdm.cases.reader.read_sequences`, then
:func:`cwdm.cases.preprocessing.normalise` and the network layout, as at inference) and kept in memory as
16-bit integers (:func:`quantise`): 2 bytes a voxel instead of 4, 64 MiB for a BraTS case, and at most
7.7e-6 away from the float value (float16 would be 32 times coarser near 1). With a cache folder the
preprocessed case is also stored on disk under a key made of its four files' contents, so that the next
run (a resumed one, another target's, another process's) skips reading and preprocessing altogether.
For training on a GPU the cases can be moved there once (:meth:`TrainingCases.to`): crops, flips and the
whole batch are then made on the GPU and nothing per step crosses the bus.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import replacing
from ..cases.discovery import Case, discover_cases
from ..cases.preprocessing import CLIP_QUANTILES, NetworkLayout, normalise
from ..cases.reader import read_segmentation, read_sequences
from ..errors import ConfigError, CwdmError
from ..segmentation.labels import convention_mapping, detect_convention, to_canonical
from ..sequences import CANONICAL_ORDER

log = logging.getLogger(__name__)

#: Preprocessed intensities in [0, 1] are stored as ``round(value * QUANTISATION_LEVELS)`` in uint16.
QUANTISATION_LEVELS = 65535
#: Part of every cache key: a change of the preprocessing or of the stored format must not reuse old files.
_CACHE_FORMAT = f"cwdm-training-case-v1/clip{CLIP_QUANTILES}/uint16x{QUANTISATION_LEVELS}"
#: The label channel of a case without a segmentation (with ``labels``): every voxel holds this.
UNLABELLED = 65535


def quantise(values: np.ndarray) -> Tensor:
    """``values`` in [0, 1] as uint16 levels (the nearest of 65536)."""
    return torch.from_numpy(
        np.rint(np.asarray(values, dtype=np.float64) * QUANTISATION_LEVELS).astype(np.uint16)
    )


def dequantise(levels: Tensor) -> Tensor:
    """uint16 levels back to float32 values in [0, 1], on ``levels``' device."""
    return levels.to(torch.float32) / QUANTISATION_LEVELS


class TrainingCases:
    """Complete cases of a training folder, preprocessed exactly as at inference.

    Safe to read from several threads (the trainer reads the next step's cases in the background when
    they are not all in memory).

    Args:
        cases: Cases with all four sequences.
        multiple: Image-space size multiple of the network (``2 * size_multiple``).
        cache: Keep each preprocessed case in memory after its first load.
        cache_bytes: Keep at most this many bytes of cases in memory (``None``: no limit); the others
            are read again whenever they are drawn. A BraTS case takes 64 MiB.
        cache_dir: Also keep preprocessed cases on disk here, keyed by their files' contents.
        labels: Keep a fifth channel: the case's tumour labels (canonical, 0 to 4), or :data:`UNLABELLED`
            everywhere for a case without a ``-seg`` file (objectives that weigh or segment the tumour).
    """

    def __init__(
        self,
        cases: list[Case],
        multiple: int,
        cache: bool = True,
        cache_bytes: int | None = None,
        cache_dir: Path | None = None,
        labels: bool = False,
    ) -> None:
        if not cases:
            raise CwdmError("no complete training cases (folders with all four sequences) found")
        self.cases = cases
        self.multiple = multiple
        self.labels = labels
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = torch.device("cpu")
        self._cache: dict[int, Tensor] | None = {} if cache else None
        self._cache_left = math.inf if cache_bytes is None else cache_bytes
        self._lock = threading.Lock()

    @classmethod
    def from_folder(
        cls,
        data_dir: Path,
        multiple: int,
        cache: bool = True,
        cache_bytes: int | None = None,
        cache_dir: Path | None = None,
        labels: bool = False,
        exclude: tuple[str, ...] = (),
    ) -> TrainingCases:
        """The complete cases of ``data_dir`` but those of ``exclude`` (held-out cases)."""
        complete = [
            case for case in discover_cases(data_dir) if case.is_complete and case.case_id not in exclude
        ]
        return cls(complete, multiple, cache, cache_bytes, cache_dir, labels)

    def __len__(self) -> int:
        return len(self.cases)

    def is_cached(self, index: int) -> bool:
        """Whether case ``index`` is in memory (drawing it costs no file reading)."""
        return self._cache is not None and index in self._cache

    def levels(self, index: int) -> Tensor:
        """``(4, X, Y, Z)`` uint16 network-layout volumes in canonical order (t1n, t1c, t2w, t2f), on
        :attr:`device` when the case is in memory (else on the CPU); :func:`dequantise` gives the values.

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
                    self._cache[index] = stacked = stacked.to(self.device)
                    self._cache_left -= stacked.nbytes
        return stacked

    def __getitem__(self, index: int) -> Tensor:
        """``(4, X, Y, Z)`` float32 values in [0, 1] (:meth:`levels`, dequantised)."""
        return dequantise(self.levels(index))

    def load(self, index: int) -> Tensor:
        """Case ``index`` as uint16 levels from the cache folder or, failing that, from its files."""
        if self.cache_dir is None:
            return self._preprocess(index)
        path = self.cache_dir / f"{self._cache_key(index)}.npy"
        if path.is_file():
            try:
                return torch.from_numpy(np.load(path, allow_pickle=False))
            except (OSError, ValueError) as exc:  # a damaged cache file is only a cache miss
                log.warning("ignoring the unreadable cache file %s (%s)", path, exc)
        levels = self._preprocess(index)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp, tmp.open("wb") as handle:
                np.save(handle, levels.numpy(), allow_pickle=False)
        except OSError as exc:
            log.warning("cannot write the cache file %s (%s); going on without it", path, exc)
        return levels

    def _preprocess(self, index: int) -> Tensor:
        case = self.cases[index]
        volumes = read_sequences(case, CANONICAL_ORDER)
        layout = NetworkLayout.for_shape(volumes[0].shape, self.multiple)
        levels = quantise(np.stack([layout.to_network(normalise(v.data)) for v in volumes]))
        if not self.labels:
            return levels
        seg = read_segmentation(case)
        if seg is None:
            channel = torch.full(levels.shape[1:], UNLABELLED, dtype=torch.uint16)
        else:
            canonical = to_canonical(seg, convention_mapping(detect_convention(seg)), f"{case.case_id}-seg")
            # The network layout pads with zeros: label 0, the background.
            channel = torch.from_numpy(layout.to_network(canonical).astype(np.uint16))
        return torch.cat([levels, channel.unsqueeze(0)])

    def _cache_key(self, index: int) -> str:
        labels = "/labels-v1" if self.labels else ""
        digest = hashlib.sha256(f"{_CACHE_FORMAT}/multiple{self.multiple}{labels}".encode())
        for seq in CANONICAL_ORDER:
            digest.update(_file_digest(self.cases[index].files[seq]))
        if self.labels:
            seg = next(
                (p for p in self.cases[index].folder.glob(f"{self.cases[index].case_id}-seg.nii*")), None
            )
            digest.update(_file_digest(seg) if seg is not None else b"unlabelled")
        return digest.hexdigest()

    def preload(self, threads: int | None = None, on_case: Callable[[int], None] | None = None) -> None:
        """Read every case into memory now, ``threads`` at a time (default: the CPU count, at most 8).

        Raises:
            CwdmError: the cases do not fit in the memory budget (``cache_bytes``), or caching is off.
            VolumeReadError, GeometryError: as :meth:`levels`.
        """
        if self._cache is None:
            raise CwdmError("preloading needs the in-memory cache (cache=True)")
        todo = [index for index in range(len(self)) if not self.is_cached(index)]
        workers = max(1, min(threads or os.cpu_count() or 1, 8, len(todo) or 1))

        def read(index: int) -> int:
            self.levels(index)
            return index

        with ThreadPoolExecutor(workers, thread_name_prefix="cwdm-preload") as pool:
            for index in pool.map(read, todo):
                if on_case is not None:
                    on_case(index)
        missing = [self.cases[i].case_id for i in range(len(self)) if not self.is_cached(i)]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise CwdmError(
                f"{len(missing)} of {len(self)} cases do not fit in the memory budget ({shown}); "
                "a BraTS case takes 64 MiB"
            )

    def to(self, device: torch.device | str) -> TrainingCases:
        """Move the cases in memory to ``device`` (cases read later go there too); returns ``self``."""
        self.device = torch.device(device)
        if self._cache is not None:
            with self._lock:
                self._cache = {index: levels.to(self.device) for index, levels in self._cache.items()}
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of the cases held in memory."""
        return 0 if self._cache is None else sum(levels.nbytes for levels in self._cache.values())


def _file_digest(path: Path) -> bytes:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def random_crop(volumes: Tensor, size: tuple[int, int, int] | None, generator: torch.Generator) -> Tensor:
    """A crop of ``(C, X, Y, Z)`` at an even offset (so its Haar pairs are the whole volume's).

    Draws one integer per axis from ``generator`` (a CPU generator, whatever ``volumes``' device).
    """
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


def random_flip(volumes: Tensor, generator: torch.Generator) -> Tensor:
    """``(C, X, Y, Z)`` mirrored along X (left-right on the BraTS grid) with probability 1/2.

    Draws one number from ``generator``. An even-sized axis keeps its Haar pairs when mirrored.
    """
    if float(torch.rand(1, generator=generator)) < 0.5:
        return volumes.flip(1)
    return volumes
