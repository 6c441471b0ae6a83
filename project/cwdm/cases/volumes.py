"""NIfTI volumes: reading, grid checks and atomic writing (the preprocessing is
:mod:`cwdm.cases.preprocessing`'s).

Values are read as float64 (nibabel ``get_fdata``, so scl_slope/inter apply), as the published data
loader does (REFERENCE.md section 1).

What :func:`read_volume` accepts (docs/USAGE.md, "Bad inputs and faults"): NIfTI-1 or NIfTI-2, gzipped or
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
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import write_atomic
from . import gzip_codec
from .gzip_codec import GzipError

#: Grids of two present sequences count as equal when their affines differ by less than this (mm).
AFFINE_TOLERANCE_MM = 1e-3
#: The most voxels a volume may have: about 15 times the BraTS grid (8.9 million voxels). The size is
#: checked on the header before any data is read, so that a damaged or hostile header cannot make the
#: reader allocate terabytes (the network could not process such a grid anyway).
MAX_VOXELS = 2**27


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
        image = _load_image(path)
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
        GzipError,
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


def _load_image(path: Path) -> nib.Nifti1Image:
    """The image of a ``.nii.gz`` inflated in memory by :mod:`cwdm.cases.gzip_codec` (faster than
    nibabel's stream through the standard gzip module, and concurrent: it releases the GIL); any other
    file, or a stream whose first bytes are not a NIfTI-1 or NIfTI-2 header, goes to ``nib.load`` as it is,
    so that its errors are nibabel's."""
    if not path.name.endswith(".gz"):
        return nib.load(path)
    raw = gzip_codec.decompress(read_bytes(path))
    kind = _NIFTI_BY_HEADER_SIZE.get(raw[:4])
    if kind is None:
        return nib.load(path)
    return kind.from_bytes(raw)


def read_bytes(path: Path) -> bytes:
    """A file's bytes: the one place the reader opens a volume file itself."""
    return Path(path).read_bytes()


#: The first four bytes of a NIfTI header (its size, in either byte order) and the image class it opens.
_NIFTI_BY_HEADER_SIZE = {
    size.to_bytes(4, order): kind
    for size, kind in ((348, nib.Nifti1Image), (540, nib.Nifti2Image))
    for order in ("little", "big")
}


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


def output_header(reference: nib.Nifti1Header) -> nib.Nifti1Header:
    """A header for a float32 output on ``reference``'s grid: same affine, sform/qform and zooms."""
    header = reference.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    return header


def write_volume_atomic(data: np.ndarray, reference: nib.Nifti1Header, path: Path) -> Path:
    """Write ``data`` as a float32 NIfTI on the reference header's grid, atomically.

    The file is written through :func:`cwdm.atomic.replacing`: readers never see a partial file, and a
    pre-existing symbolic link at ``path`` is replaced, never written through. The gzip stream
    (:mod:`cwdm.cases.gzip_codec`: isal at level 2, or zlib at level 1) carries no time stamp, so the same
    data and header give the same bytes.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; no temporary file remains.
    """
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None, output_header(reference))
    content = image.to_bytes()
    if path.name.endswith(".gz"):
        content = gzip_codec.compress(content)
    return write_atomic(path, content)
