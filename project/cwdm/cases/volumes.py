"""NIfTI volumes: reading, grid checks and atomic writing (the preprocessing is
:mod:`cwdm.cases.preprocessing`'s).

Values are read as float64 (nibabel ``get_fdata``, so scl_slope/inter apply), as the published data
loader does (docs/METHOD.md, "Preprocessing").

What :func:`read_volume` accepts (docs/USAGE.md, "Bad inputs and faults"): NIfTI-1 or NIfTI-2, gzipped or
not, any real data type (integers, floats) with the header's scl_slope/scl_inter applied, 3D or 4D/5D
with trailing axes of length 1. It refuses, with a :class:`VolumeError` saying why: anything that is
not a regular file (a directory, a FIFO that would block a reader forever, a device), a corrupt,
truncated or non-NIfTI file, complex or RGB data, and a header that declares an unknown data type, a
negative or empty grid, more than :data:`MAX_VOXELS` voxels, an offset to the voxels beyond
:data:`MAX_VOX_OFFSET`, a non-finite scaling intercept or a non-finite affine (all checked on the header,
before any voxel is read); a ``.nii.gz`` whose gzip stream inflates beyond what its header declares
(refused after at most :data:`INFLATE_SLACK` bytes more, so that a small file cannot exhaust memory);
more than three non-trivial axes, and NaN or infinite voxels. Whatever else nibabel, the gzip stream,
numpy or the file system raise while a file is parsed becomes a :class:`VolumeError` too (the reader's
one boundary, :func:`read_volume`).
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ..atomic import write_atomic
from . import gzip_codec
from .gzip_codec import GzipError, GzipSizeError

#: Grids of two present sequences count as equal when their affines differ by less than this (mm).
AFFINE_TOLERANCE_MM = 1e-3
#: The most voxels a volume may have: about 15 times the BraTS grid (8.9 million voxels). The size is
#: checked on the header before any data is read, so that a damaged or hostile header cannot make the
#: reader allocate terabytes (the network could not process such a grid anyway).
MAX_VOXELS = 2**27
#: The largest offset from the start of a file to its voxels (vox_offset: the header and its
#: extensions), 64 MiB: far more than scanners' extensions take, small enough to bound what is read.
MAX_VOX_OFFSET = 2**26
#: How many bytes a ``.nii.gz`` may inflate to beyond the size its header declares (some writers pad).
INFLATE_SLACK = 2**20


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

    This is the reader's one boundary: whatever nibabel, the gzip stream, numpy or the file system
    raise while a file is parsed (a header nibabel refuses, a stream that is not gzip, a file that does
    not fit in memory, ...) ends here as a :class:`VolumeError` with a short reason.

    Args:
        path: A ``.nii.gz`` or ``.nii`` file.

    Returns:
        The :class:`Volume`; a 4D file whose extra axes have length 1 is accepted as 3D. Integer and
        scaled data types are read through the header's scaling (scl_slope, scl_inter) as float64.

    Raises:
        VolumeError: not a regular file; unreadable, corrupt or truncated file; not NIfTI; a header
            that declares an unknown data type, a negative or empty grid, more than :data:`MAX_VOXELS`
            voxels, a non-finite scaling or affine; a gzip stream that inflates to more than its header
            declares; complex or RGB data; not 3D; non-finite voxels.
    """
    image, data = _read(Path(path), lambda image: image.get_fdata(dtype=np.float64))
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


def read_labels(path: Path) -> np.ndarray:
    """The voxel values of a label volume (a segmenter's output) in their stored type, read through the
    checks and the boundary of :func:`read_volume` (its header checked, a ``.nii.gz`` inflated no
    further than its header declares).

    Raises:
        VolumeError: as :func:`read_volume`, for the file, its header and its gzip stream.
    """
    return _read(Path(path), lambda image: np.asanyarray(image.dataobj))[1]


def _read(path: Path, values: Callable[[nib.Nifti1Image], np.ndarray]) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image of ``path`` and ``values`` of it, every failure a :class:`VolumeError` (the boundary)."""
    size = _require_regular_file(path)
    try:
        image = _load_image(path, size)
        if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"not a NIfTI image ({type(image).__name__})")
        _check_declared(image.header)
        return image, np.asarray(values(image))
    except VolumeError:
        raise
    except _READ_ERRORS as exc:  # the reader's boundary (see read_volume)
        raise VolumeError(f"cannot read NIfTI file ({_reason(exc)})") from exc


#: What parsing a file may raise, from nibabel (its header and image errors, and the builtin types it
#: raises for damaged headers: ValueError, OverflowError, struct.error, ...), the gzip stream, numpy and
#: the file system; :func:`read_volume` turns each into a :class:`VolumeError`.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    ArithmeticError,
    LookupError,
    TypeError,
    MemoryError,
    struct.error,
    zlib.error,
    HeaderDataError,
    ImageFileError,
)
#: The longest reason quoted from a library's exception.
_REASON_CHARS = 200


def _reason(exc: BaseException) -> str:
    """``Type: message`` on one line, at most :data:`_REASON_CHARS` characters of the message."""
    if isinstance(exc, MemoryError):
        return "MemoryError: not enough memory to read it"
    if isinstance(exc, GzipError):  # its message already starts with the inflater's error type
        return _clip(str(exc))
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {_clip(text)}".rstrip(": ")


def _clip(text: str, limit: int = _REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_image(path: Path, size: int) -> nib.Nifti1Image:
    """The image of ``path``, its header checked before any voxel is read.

    A ``.nii.gz`` is inflated in memory by :mod:`cwdm.cases.gzip_codec` (faster than nibabel's stream
    through the standard gzip module, and concurrent: it releases the GIL), never further than the size
    its header declares (:func:`_inflate_bounded`). A ``.nii`` is opened by nibabel (memory-mapped) once
    its header has passed. A file whose first bytes are not a NIfTI-1 or NIfTI-2 header goes to
    ``nib.load`` as it is (which reads no more than a header), so that its errors are nibabel's.
    """
    compressed = path.name.endswith(".gz")
    start = read_bytes(path, _PROBE_BYTES)
    head = gzip_codec.inflate_prefix(start, _HEADER_BYTES) if compressed else start[:_HEADER_BYTES]
    header = _parse_header(head)
    if header is None:
        return nib.load(path)
    declared = _declared_bytes(header)
    if not compressed:
        return nib.load(path)
    return _NIFTI_BY_HEADER_SIZE[head[:4]].from_bytes(_inflate_bounded(path, size, declared))


def _inflate_bounded(path: Path, size: int, declared: int) -> bytes:
    """The inflated content of a ``.nii.gz`` whose header declares ``declared`` bytes (header,
    extensions and voxels): refused, unread, when the compressed file is larger than any gzip stream of
    that many bytes could be, and refused after at most ``declared`` + :data:`INFLATE_SLACK` bytes when
    its stream inflates further."""
    limit = declared + INFLATE_SLACK
    # Deflate's worst case stores the data with 5 bytes per 64 KiB block, plus the gzip header and trailer.
    largest = limit + limit // 8192 + INFLATE_SLACK
    if size > largest:
        raise VolumeError(
            f"the file has {size:,} bytes, more than a gzip stream of the {declared:,} bytes its header "
            f"declares (header and voxels) can take; it is damaged"
        )
    try:
        return gzip_codec.decompress(read_bytes(path), max_size=limit)
    except GzipSizeError as exc:
        raise VolumeError(
            f"its gzip stream inflates to more than {limit:,} bytes, but its header declares "
            f"{declared:,} (header and voxels); the rest was not inflated: a damaged file, or one made "
            "to exhaust memory"
        ) from exc


def read_bytes(path: Path, limit: int = -1) -> bytes:
    """A file's bytes (at most ``limit`` of them; all with -1): the one place the reader opens a volume
    file itself."""
    with open(path, "rb") as handle:
        return handle.read(limit)


#: The first four bytes of a NIfTI header (its size, in either byte order) and the image class it opens.
_NIFTI_BY_HEADER_SIZE = {
    size.to_bytes(4, order): kind
    for size, kind in ((348, nib.Nifti1Image), (540, nib.Nifti2Image))
    for order in ("little", "big")
}
#: The size of the larger header (NIfTI-2), and how much of a compressed file is read to inflate it.
_HEADER_BYTES = 540
_PROBE_BYTES = 2**16


def _parse_header(head: bytes) -> nib.Nifti1Header | None:
    """The NIfTI header at the start of ``head``; ``None`` when it does not start with one."""
    kind = _NIFTI_BY_HEADER_SIZE.get(head[:4])
    if kind is None:
        return None
    header_class = kind.header_class
    length = header_class.template_dtype.itemsize
    if len(head) < length:
        raise VolumeError(f"the file ends inside its {length}-byte NIfTI header ({len(head)} bytes)")
    return header_class(head[:length], check=False)


def _declared_bytes(header: nib.Nifti1Header) -> int:
    """The size of the file ``header`` declares: its offset to the voxels plus the voxels' bytes, the
    header checked first (:func:`_check_declared`).

    Raises:
        VolumeError: a header :func:`_check_declared` refuses, or an offset to the voxels that is not a
            number between the header's size and :data:`MAX_VOX_OFFSET`.
    """
    dtype, shape = _check_declared(header)
    offset = float(header["vox_offset"])
    if not (0 <= offset <= MAX_VOX_OFFSET):
        raise VolumeError(
            f"the header's offset to the voxels (vox_offset {offset:g}) is not between 0 and "
            f"{MAX_VOX_OFFSET:,} bytes"
        )
    voxels = math.prod(shape)
    return max(int(offset), header.template_dtype.itemsize) + voxels * dtype.itemsize


def _require_regular_file(path: Path) -> int:
    """Refuse what is not a regular, readable file before nibabel opens it (a FIFO would block the
    reader forever; an unreadable file would be reported without its reason); returns its size."""
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
        with open(path, "rb") as handle:
            return os.fstat(handle.fileno()).st_size
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


def _check_declared(header: nib.Nifti1Header) -> tuple[np.dtype, tuple[int, ...]]:
    """Check what a header declares before any voxel is read: the data type, the grid's size, the
    scaling and the affine. Returns the data type and the shape.

    Raises:
        VolumeError: an unknown, complex or structured data type; a negative or empty grid, or more
            than :data:`MAX_VOXELS` voxels; a non-finite scaling; a non-finite affine.
    """
    try:
        dtype = header.get_data_dtype()
    except (HeaderDataError, KeyError) as exc:  # nibabel's error for an unknown code, or its lookup's
        raise VolumeError(
            f"the header's data type code {int(header['datatype'])} is not a NIfTI data type"
        ) from exc
    if dtype.kind not in "biuf":
        kind = "complex" if dtype.kind == "c" else "RGB or other structured"
        raise VolumeError(
            f"{kind} data type {dtype} is not a real-valued intensity volume; expected integers or floats"
        )
    shape = tuple(int(n) for n in header.get_data_shape())
    if any(n < 0 for n in shape):
        raise VolumeError(f"the header declares a negative size ({_format_shape(shape)})")
    voxels = math.prod(shape)
    if voxels == 0:
        raise VolumeError(f"the grid {_format_shape(shape)} has no voxels")
    if voxels > MAX_VOXELS:
        raise VolumeError(
            f"the header declares a grid of {_format_shape(shape)} ({voxels:,} voxels), more than the "
            f"{MAX_VOXELS:,} this pipeline reads (a BraTS volume has 240x240x155 = 8,928,000)"
        )
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and math.isfinite(slope) and not math.isfinite(inter):
        # nibabel applies no scaling when scl_slope is 0 or not finite; otherwise the intercept counts
        raise VolumeError(
            f"the header's scaling intercept is not finite (scl_slope {slope:g}, scl_inter {inter:g}); "
            "voxel values cannot be computed from it"
        )
    if not np.isfinite(header.get_best_affine()).all():
        raise VolumeError(
            "the header's affine (sform, qform or voxel sizes) holds NaN or infinite values; "
            "the volume cannot be placed in space"
        )
    return dtype, shape


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
    (:mod:`cwdm.cases.gzip_codec`: isal at level 2, or zlib at level 1) carries no time stamp; the same
    data and header give the same NIfTI, and nearly always the same file (see :func:`gzip_codec.compress`).

    Raises:
        OSError: the folder is not writable, the disk is full, ...; no temporary file remains.
    """
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None, output_header(reference))
    content = image.to_bytes()
    if path.name.endswith(".gz"):
        content = gzip_codec.compress(content)
    return write_atomic(path, content)
