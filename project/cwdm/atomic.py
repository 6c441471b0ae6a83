"""Atomic file writes: a file is written under a hidden temporary name beside its destination, flushed
to disk and renamed over it, so that a reader never sees a partial file and an existing symbolic link
at the destination is replaced, never written through.

Every file this package writes goes through :func:`replacing` (predictions, run reports, checkpoints,
exported weights, CSV tables, copied case files). Temporary files are named
``.cwdm-<name>.<random>.part``: hidden, and not ending in ``.nii.gz``, so that neither the organisers'
evaluator nor a rerun mistakes one for an output. Only a killed process can leave one behind;
:func:`remove_partial_files` clears them.

A file name may not exceed :data:`NAME_MAX_BYTES` (255 bytes on ext4, XFS, Btrfs, tmpfs, NFS). The names
of the helper files made beside a file (temporary files here, claim files in
:mod:`cwdm.inference.claims`) hold :func:`helper_stem` of its name: the name itself, or, when the name is
so long that a helper's would pass the limit, its start and a hash of the whole.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

#: Hidden prefix and suffix of the temporary files that atomic writes leave while in progress.
PARTIAL_PREFIX = ".cwdm-"
PARTIAL_SUFFIX = ".part"
#: The longest file name (in bytes) of the file systems outputs go to.
NAME_MAX_BYTES = 255
#: Bytes a helper file's name may add to :func:`helper_stem` besides :data:`PARTIAL_PREFIX`: the longest
#: is a stale claim renamed away, ``.lock.<8 hex>.part``; a temporary file adds ``.<8 random>.part``.
_HELPER_EXTRA_BYTES = 32
#: Files are left readable by every user: a container runs under an arbitrary uid, and ``mkstemp``'s
#: 0600 would hide what one user wrote from the next.
FILE_MODE = 0o644


def name_bytes(name: str) -> int:
    """The length of a file name in bytes, as the file system counts it."""
    return len(os.fsencode(name))


def helper_stem(name: str) -> str:
    """What the names of the helper files of ``name`` (``.cwdm-<stem>.<random>.part``, ``.cwdm-<stem>.lock``)
    hold: ``name`` itself when they fit :data:`NAME_MAX_BYTES`, else a readable start of ``name``, ``~``
    and 16 hexadecimal digits of its SHA-256 (distinct names give distinct stems)."""
    room = NAME_MAX_BYTES - name_bytes(PARTIAL_PREFIX) - _HELPER_EXTRA_BYTES
    if name_bytes(name) <= room:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    start = name
    while name_bytes(start) > room - 17:
        start = start[: -max(1, (name_bytes(start) - room + 17) // 4)]
    return f"{start}~{digest}"


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
        OSError: the folder is not writable, the disk is full, the name is longer than the file system
            takes, ...; no temporary file remains.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f"{PARTIAL_PREFIX}{helper_stem(path.name)}.", suffix=PARTIAL_SUFFIX, dir=path.parent
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
