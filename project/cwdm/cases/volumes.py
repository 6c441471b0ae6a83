"""NIfTI volumes: reading, grid checks, the training preprocessing, the network crop/pad and its
inverse, the published post-processing variants, and atomic writing.

Preprocessing reproduces the published data loader (REFERENCE.md section 1): values as float64 (nibabel
``get_fdata``, so scl_slope/inter apply), clipped to the 0.1 and 99.9 percentiles of the whole volume
(background included) and min-max scaled to [0, 1]. On the BraTS grid (240 x 240 x 155) the network
sees the published 224 x 224 x 160 layout: 8 voxels cropped from each side of the two 240 axes, the last
axis zero-padded after index 154. Other grids are zero-padded after each axis to the next size the
network accepts, so nothing is cropped from them (see README, "Running inference").

What :func:`read_volume` accepts (README, "Bad inputs and faults"): NIfTI-1 or NIfTI-2, gzipped or
not, any real data type (integers, floats) with the header's scl_slope/scl_inter applied, 3D or 4D/5D
with trailing axes of length 1. It refuses, with a :class:`VolumeError` saying why: anything that is
not a regular file (a directory, a FIFO that would block a reader forever, a device), a corrupt,
truncated or non-NIfTI file, complex or RGB data, more than :data:`MAX_VOXELS` voxels (checked on the
header, before any data is read), an empty grid, more than three non-trivial axes, and NaN or infinite
voxels.
"""

from __future__ import annotations

import gzip
import os
import stat
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

#: Percentiles of the published intensity clip (as fractions for ``np.quantile``).
CLIP_QUANTILES = (0.001, 0.999)
#: The BraTS grid and the published crop of its 240-voxel axes (REFERENCE.md section 1).
BRATS_SHAPE = (240, 240, 155)
_BRATS_CROPPED_SIZE = 240
_BRATS_MARGIN = 8
#: Grids of two present sequences count as equal when their affines differ by less than this (mm).
AFFINE_TOLERANCE_MM = 1e-3
#: The challenge script's background threshold (REFERENCE.md section 6).
THRESHOLD = 0.04
#: The most voxels a volume may have: about 15 times the BraTS grid (8.9 million voxels). The size is
#: checked on the header before any data is read, so that a damaged or hostile header cannot make the
#: reader allocate terabytes (the network could not process such a grid anyway).
MAX_VOXELS = 2**27
#: Hidden prefix and suffix of the temporary files that atomic writes leave while in progress.
PARTIAL_PREFIX = ".cwdm-"
PARTIAL_SUFFIX = ".part"

Postprocess = Literal["brain_mask", "threshold"]


class VolumeError(ValueError):
    """A file is not a usable 3D volume; the caller adds the case id (see :class:`cwdm.CaseError`)."""


@dataclass(frozen=True)
class Volume:
    """A loaded volume: voxel data and the header that places it in space.

    Attributes:
        data: ``(X, Y, Z)`` float64 voxel values, scaling applied.
        header: The file's NIfTI header (its affine, sform/qform codes and zooms are kept on output).
        path: Where it was read from.
    """

    data: np.ndarray
    header: nib.Nifti1Header
    path: Path

    @property
    def affine(self) -> np.ndarray:
        return self.header.get_best_affine()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def read_volume(path: Path) -> Volume:
    """Read a 3D NIfTI volume as float64.

    Args:
        path: A ``.nii.gz`` or ``.nii`` file.

    Returns:
        The :class:`Volume`; a 4D file whose extra axes have length 1 is accepted as 3D. Integer and
        scaled data types are read through the header's scaling (scl_slope, scl_inter) as float64.

    Raises:
        VolumeError: not a regular file; unreadable, corrupt or truncated file; not NIfTI; complex or
            RGB data; an empty grid or more than :data:`MAX_VOXELS` voxels; not 3D; non-finite voxels.
    """
    path = Path(path)
    _require_regular_file(path)
    try:
        image = nib.load(path)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"not a NIfTI image ({type(image).__name__})")
        _check_declared(image)
        data = np.asarray(image.get_fdata(dtype=np.float64))
    except VolumeError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        gzip.BadGzipFile,
        nib.filebasedimages.ImageFileError,
    ) as exc:
        raise VolumeError(f"cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise VolumeError(
            f"expected a 3D volume, got a {data.ndim}D one of shape {_format_shape(data.shape)} "
            "(axes after the third are accepted only with length 1)"
        )
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise VolumeError(
            f"{bad:,} voxels are NaN or infinite; such a file is damaged, and no value is guessed for them"
        )
    header = image.header.copy()
    if not isinstance(header, nib.Nifti1Header):
        header = nib.Nifti1Header.from_header(header)
    return Volume(data=data, header=header, path=Path(path))


def _require_regular_file(path: Path) -> None:
    """Refuse what is not a regular, readable file before nibabel opens it (a FIFO would block the
    reader forever; an unreadable file would be reported without its reason)."""
    try:
        mode = path.stat().st_mode  # follows symbolic links: their target is what gets read
    except OSError as exc:
        if path.is_symlink():
            raise VolumeError(
                f"symbolic link to {os.readlink(path)!r}, which cannot be followed ({exc.strerror or exc})"
            ) from exc
        raise VolumeError(f"cannot access the file ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        raise VolumeError(f"{describe_file_type(mode)}, not a regular file")
    try:  # nibabel reports an unreadable file as "Could not read file": say why
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise VolumeError(f"cannot open the file ({exc.strerror or exc})") from exc


def describe_file_type(mode: int) -> str:
    """What a non-regular file is, for messages: ``a directory``, ``a named pipe (FIFO)``, ..."""
    kinds = [
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _check_declared(image: nib.Nifti1Image) -> None:
    """Check the header's data type and grid size before any voxel is read."""
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf":
        kind = "complex" if dtype.kind == "c" else "RGB or other structured"
        raise VolumeError(
            f"{kind} data type {dtype} is not a real-valued intensity volume; expected integers or floats"
        )
    shape = tuple(int(n) for n in image.shape)
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels == 0:
        raise VolumeError(f"the grid {_format_shape(shape)} has no voxels")
    if voxels > MAX_VOXELS:
        raise VolumeError(
            f"the header declares a grid of {_format_shape(shape)} ({voxels:,} voxels), more than the "
            f"{MAX_VOXELS:,} this pipeline reads (a BraTS volume has 240x240x155 = 8,928,000)"
        )


def _format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def same_grid(a: Volume, b: Volume) -> bool:
    """Whether two volumes share one voxel grid (shape and affine)."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=AFFINE_TOLERANCE_MM, rtol=0)


def describe_grid(volume: Volume) -> str:
    shape = "x".join(str(n) for n in volume.shape)
    zooms = "x".join(f"{z:g}" for z in volume.header.get_zooms()[:3])
    return f"shape {shape}, voxel {zooms} mm"


def normalise(data: np.ndarray) -> np.ndarray:
    """Clip to the 0.1/99.9 percentiles and min-max scale to [0, 1], as in training.

    Args:
        data: Voxel values of one volume, any shape, float64 recommended (the published precision).

    Returns:
        float32 array in [0, 1]; a constant volume (nothing to scale) gives all zeros.
    """
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

    def to_network(self, volume: np.ndarray) -> np.ndarray:
        """Crop and pad one ``shape``-sized array to :attr:`network_shape` (zeros padded after)."""
        cropped = volume[tuple(slice(c, n - c) for n, c in zip(self.shape, self.crop, strict=True))]
        return np.pad(cropped, [(0, p) for p in self.pad])

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


def output_header(reference: nib.Nifti1Header) -> nib.Nifti1Header:
    """A header for a float32 output on ``reference``'s grid: same affine, sform/qform and zooms."""
    header = reference.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    return header


def write_volume_atomic(data: np.ndarray, reference: nib.Nifti1Header, path: Path) -> Path:
    """Write ``data`` as a float32 NIfTI on the reference header's grid, atomically.

    The file is written to a hidden temporary name next to ``path`` (``.cwdm-<name>.<random>.part``,
    which does not end in ``.nii.gz``), flushed to disk, then renamed over ``path``: readers never see
    a partial file, and a pre-existing symbolic link at ``path`` is replaced, never written through.
    The gzip header carries no time stamp, so the same data and header give the same bytes.
    Only a killed process can leave the temporary file behind; :func:`remove_partial_files` clears it.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; no temporary file remains.
    """
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None, output_header(reference))
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{PARTIAL_PREFIX}{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent
    )
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                image.to_bytes()
                if not path.name.endswith(".gz")
                else gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def probe_writable(folder: Path) -> None:
    """Check that ``folder`` takes a new file: create, write, sync and delete a hidden temporary one.

    The probe is named like an atomic write in progress (``.cwdm-probe.<random>.part``), so that a
    process killed in between leaves only what :func:`remove_partial_files` clears.

    Raises:
        OSError: the folder is read-only, not writable for this user, full, ...
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}probe.", suffix=PARTIAL_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"\0")
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files that an interrupted :func:`write_volume_atomic` left in ``folder``.

    Only hidden files named ``.cwdm-*.part`` are touched: nothing else in the folder is ours to delete.

    Returns:
        The files removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}")):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
