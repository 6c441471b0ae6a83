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


def decompress(data: bytes) -> bytes:
    """Inflate a whole gzip file (all its members).

    Raises:
        GzipError: ``data`` is not a complete, valid gzip stream; the message says why.
    """
    errors: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)
    if _isal_gzip is not None:
        try:
            return _isal_gzip.decompress(data)
        except (*errors, _isal_zlib.error) as exc:
            raise GzipError(f"{type(exc).__name__}: {exc}") from exc
    try:
        return gzip.decompress(data)
    except errors as exc:
        raise GzipError(f"{type(exc).__name__}: {exc}") from exc


def compress(data: bytes) -> bytes:
    """Deflate ``data`` into one gzip member at :data:`LEVEL`, with no time stamp (same data, same bytes
    with the same implementation)."""
    if _isal_gzip is not None:
        return _isal_gzip.compress(data, compresslevel=LEVEL, mtime=0)
    return gzip.compress(data, compresslevel=LEVEL, mtime=0)
