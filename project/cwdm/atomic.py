"""Atomic file writes: a file is written under a hidden temporary name beside its destination, flushed
to disk and renamed over it, so that a reader never sees a partial file and an existing symbolic link
at the destination is replaced, never written through.

Every file this package writes goes through :func:`replacing` (predictions, run reports, checkpoints,
exported weights, CSV tables, copied case files). Temporary files are named
``.cwdm-<name>.<random>.part``: hidden, and not ending in ``.nii.gz``, so that neither the organisers'
evaluator nor a rerun mistakes one for an output. Only a killed process can leave one behind;
:func:`remove_partial_files` clears them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Hidden prefix and suffix of the temporary files that atomic writes leave while in progress.
PARTIAL_PREFIX = ".cwdm-"
PARTIAL_SUFFIX = ".part"
#: Files are left readable by every user: a container runs under an arbitrary uid, and ``mkstemp``'s
#: 0600 would hide what one user wrote from the next.
FILE_MODE = 0o644


@contextmanager
def replacing(path: Path, *, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``.

    The temporary file lies in ``path``'s folder (a rename never crosses file systems). When the block
    ends normally the file is flushed to disk, given ``mode`` and renamed over ``path``; when it raises,
    the temporary file is removed and ``path`` is left as it was.

    Args:
        path: The destination; its folder must exist.
        mode: Permission bits of the written file.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; no temporary file remains.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{PARTIAL_PREFIX}{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _sync(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes | str, *, mode: int = FILE_MODE) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns ``path``.

    Raises:
        OSError: as :func:`replacing`.
    """
    with replacing(path, mode=mode) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _sync(path: Path) -> None:
    """Flush ``path``'s data to disk, so that a crash after the rename cannot leave an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def probe_writable(folder: Path) -> None:
    """Check that ``folder`` takes a new file: create, write, sync and delete a hidden temporary one.

    The probe is named like a write in progress (``.cwdm-probe.<random>.part``), so that a process
    killed in between leaves only what :func:`remove_partial_files` clears.

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


def remove_partial_files(folder: Path, keep: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete the temporary files that an interrupted write left in ``folder``.

    Only hidden files named ``.cwdm-*.part`` are touched: nothing else in the folder is ours to delete;
    of those, the ones whose name ``keep`` accepts are left (another live process's writes).

    Returns:
        The files removed.
    """
    removed = []
    for path in sorted(Path(folder).glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}")):
        if path.is_file() and not path.is_symlink() and not (keep is not None and keep(path.name)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
