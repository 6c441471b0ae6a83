"""The gzip streams of ``.nii.gz`` files: which implementation inflates and deflates them, at what level.

Decompressing the inputs and compressing the output are most of what a case costs outside the network
(docs/PERFORMANCE.md, "The case pipeline"). ``isal`` (Python bindings of Intel's ISA-L, PSF-2.0 licence,
ISA-L itself BSD-3) inflates the same standard gzip streams about 2.5 times faster than zlib and deflates
at its level 2 about 8 times faster than zlib's level 1 (the output about 15 % larger than at
zlib's level 6, which this package used before); both release the GIL,
so the three volumes of a case can be read concurrently. Without ``isal`` (a platform it has no wheel
for) the standard library's zlib is used at level 1. Either way the output is an ordinary gzip stream,
without time stamp, that every gzip reader (nibabel, the organisers' evaluator) reads.
"""

from __future__ import annotations

import gzip
import zlib

try:  # the fast implementation; a dependency, but the package still works without it
    from isal import igzip as _isal_gzip
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - exercised only where isal has no wheel
    _isal_gzip = None
    _isal_zlib = None

#: Which implementation this process uses (for reports and logs).
IMPLEMENTATION = "isal" if _isal_gzip is not None else "zlib"
#: The output level: isal's 2 (0-3) or zlib's 1 (1-9); chosen by measurement (docs/PERFORMANCE.md).
LEVEL = 2 if _isal_gzip is not None else 1


class GzipError(OSError):
    """A stream that is not gzip, is truncated or is corrupt."""


class GzipSizeError(GzipError):
    """A stream that inflates to more than the caller allows (a damaged file, or a "gzip bomb")."""


def _decompressor() -> object:
    """A decompression object for one gzip member (``wbits=31``: gzip header and trailer, CRC checked)."""
    if _isal_zlib is not None:
        return _isal_zlib.decompressobj(wbits=31)
    return zlib.decompressobj(wbits=31)


def _inflate_errors() -> tuple[type[BaseException], ...]:
    return (zlib.error,) if _isal_zlib is None else (zlib.error, _isal_zlib.error)


def decompress(data: bytes, max_size: int | None = None) -> bytes:
    """Inflate a whole gzip file (all its members), never more than ``max_size`` bytes.

    The stream is inflated member by member with a bound on the output, so that a small file whose
    stream inflates far beyond ``max_size`` (a damaged file, or a "gzip bomb") is refused after at most
    ``max_size + 1`` bytes of output, whatever it would inflate to.

    Args:
        data: The compressed file.
        max_size: The most bytes the stream may inflate to; ``None``: no bound (trusted data only).

    Raises:
        GzipSizeError: the stream inflates to more than ``max_size`` bytes (nothing more is inflated).
        GzipError: ``data`` is not a complete, valid gzip stream; the message says why.
    """
    _require_magic(data)
    members: list[bytes] = []
    produced = 0
    rest = memoryview(data)
    while rest:
        budget = 0 if max_size is None else max_size - produced + 1  # 0: no bound (zlib's convention)
        inflater = _decompressor()
        try:
            out = inflater.decompress(rest, budget)  # type: ignore[attr-defined]
        except _inflate_errors() as exc:
            raise GzipError(f"{type(exc).__name__}: {exc}") from exc
        members.append(out)
        produced += len(out)
        if max_size is not None and produced > max_size:
            raise GzipSizeError(f"the gzip stream inflates to more than {max_size:,} bytes")
        if not inflater.eof:  # type: ignore[attr-defined]
            raise GzipError("EOFError: Compressed file ended before the end-of-stream marker was reached")
        rest = memoryview(inflater.unused_data)  # type: ignore[attr-defined]
        if not bytes(rest).strip(b"\0"):  # the end, or zero padding after the last member
            return b"".join(members)
        if bytes(rest[:2]) != _GZIP_MAGIC:
            raise GzipError("BadGzipFile: data after the last gzip member is not another gzip member")
    return b""


def inflate_prefix(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes (or fewer, if the stream is shorter) that ``data``'s first gzip member
    inflates to; ``data`` may be only the start of a file.

    Raises:
        GzipError: ``data`` does not start with a valid gzip stream.
    """
    _require_magic(data)
    try:
        return _decompressor().decompress(data, size)  # type: ignore[attr-defined]
    except _inflate_errors() as exc:
        raise GzipError(f"{type(exc).__name__}: {exc}") from exc


_GZIP_MAGIC = b"\x1f\x8b"


def _require_magic(data: bytes) -> None:
    """Refuse data that does not start as a gzip stream (empty data passes: it inflates to nothing)."""
    if data and bytes(data[:2]) != _GZIP_MAGIC:
        raise GzipError(f"BadGzipFile: not a gzipped file (it starts with {bytes(data[:2])!r})")


def compress(data: bytes) -> bytes:
    """Deflate ``data`` into one gzip member at :data:`LEVEL`, with no time stamp.

    zlib gives the same bytes for the same data. isal nearly always does, but not always: about once in
    20 runs of the Slurm test (tests/integration/test_slurm.py) one output's stream came out with a few
    bytes different, the same length, inflating to the same data (docs/USAGE.md, "Reproducibility").
    """
    if _isal_gzip is not None:
        return _isal_gzip.compress(data, compresslevel=LEVEL, mtime=0)
    return gzip.compress(data, compresslevel=LEVEL, mtime=0)
