"""Pseudo-validation folders: drop one sequence per case exactly as the organisers' script does.

The organisers' assignment (docs/METHOD.md, "Pseudo-validation"): sort the case folder names, seed NumPy's
legacy generator with 123456, draw ``randint(0, 4, size=n_cases)`` and index ``['t1c', 't1n', 't2f', 't2w']``
(not the canonical order). Every file of a case whose name does not contain the dropped tag is copied.
We draw from a private ``np.random.RandomState(123456)``, which yields the same numbers as seeding the
global legacy generator, without touching the global state.

Where the organisers' script is undefined or unsafe we decide:

- Case folders are the non-hidden sub-folders of SRC. Plain files (a README, ``.DS_Store``) would make
  their script fail, and hidden folders are not cases; both are skipped and reported, so the draw
  matches the one the organisers make on a clean folder.
- SRC is never written: DST may not be SRC, lie inside it or contain it.
- Every copy goes to a hidden temporary file in the destination folder and is renamed into place, so
  DST never holds a partial file under a final name.
- A non-empty DST is accepted only when it is an unfinished or finished drop of the same SRC: every
  entry must be a planned case folder, every file in it a planned file with the same bytes as in SRC.
  Anything else is refused before a single file is written; the drop then copies what is missing.
"""

from __future__ import annotations

import filecmp
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import PARTIAL_PREFIX, PARTIAL_SUFFIX, replacing
from ..errors import CwdmError
from ..sequences import MRISequence

log = logging.getLogger(__name__)

#: The organisers' seed of NumPy's legacy generator.
DROP_SEED = 123456
#: The organisers' list of tags, indexed by the draw (their order, not the canonical one).
DROP_TAGS: tuple[MRISequence, ...] = (MRISequence.T1C, MRISequence.T1N, MRISequence.T2F, MRISequence.T2W)


def drop_assignment(case_names: Sequence[str]) -> dict[str, MRISequence]:
    """The sequence the organisers' script drops from each case.

    Args:
        case_names: The case folder names (any order; they are sorted as the script sorts them).

    Returns:
        The dropped sequence by case name, in sorted order.
    """
    names = sorted(case_names)
    draws = np.random.RandomState(DROP_SEED).randint(0, len(DROP_TAGS), size=len(names))
    return {name: DROP_TAGS[int(i)] for name, i in zip(names, draws, strict=True)}


@dataclass(frozen=True)
class DroppedCase:
    """What the drop did to one case.

    Attributes:
        case_id: The case folder name.
        dropped: The sequence dropped.
        dropped_files: Names of the files left out (those containing the tag; normally one).
        copied: Names of the files copied by this run.
        kept: Names of the files already present and identical in DST (a resumed drop).
    """

    case_id: str
    dropped: MRISequence
    dropped_files: tuple[str, ...]
    copied: tuple[str, ...]
    kept: tuple[str, ...]


@dataclass(frozen=True)
class DropReport:
    """The result of :func:`drop_sequences`.

    Attributes:
        cases: One record per case, in sorted order.
        ignored: Entries of SRC (or of its case folders) that were not copied because they are not
            cases (plain files, hidden folders) or not files (folders inside a case).
    """

    cases: tuple[DroppedCase, ...]
    ignored: tuple[Path, ...]


@dataclass(frozen=True)
class _PlannedCase:
    case_id: str
    dropped: MRISequence
    files: tuple[Path, ...]
    dropped_files: tuple[str, ...]


def _plan(src: Path) -> tuple[list[_PlannedCase], list[Path]]:
    ignored = [p for p in src.iterdir() if p.name.startswith(".") or not p.is_dir()]
    names = [p.name for p in src.iterdir() if p not in ignored]
    if not names:
        raise CwdmError(f"{src} holds no case folders; expected one sub-folder per case")
    plan = []
    for case_id, dropped in drop_assignment(names).items():
        files, left_out = [], []
        for path in sorted((src / case_id).iterdir()):
            if not path.is_file():
                ignored.append(path)
            elif str(dropped) in path.name:  # the organisers' test: the tag anywhere in the name
                left_out.append(path.name)
            else:
                files.append(path)
        if not left_out:
            log.warning(
                "%s: no file name contains %s, so nothing is dropped from this case", case_id, dropped
            )
        plan.append(_PlannedCase(case_id, dropped, tuple(files), tuple(left_out)))
    return plan, sorted(ignored)


def _check_places(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise CwdmError(f"source folder {src} does not exist or is not a folder")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or dst_real.is_relative_to(src_real):
        raise CwdmError(f"destination {dst} is inside the source folder {src}; choose a folder outside it")
    if src_real.is_relative_to(dst_real):
        raise CwdmError(f"destination {dst} contains the source folder {src}; choose another folder")
    if dst.exists() and not dst.is_dir():
        raise CwdmError(f"destination {dst} exists and is not a folder")


def _check_resumable(plan: list[_PlannedCase], dst: Path) -> None:
    """Refuse a DST that holds anything but (part of) this very drop; remove our own partial files."""
    planned = {case.case_id: {p.name: p for p in case.files} for case in plan}
    partial = []
    for entry in sorted(dst.iterdir()):
        files = planned.get(entry.name)
        if files is None or not entry.is_dir():
            raise CwdmError(
                f"destination {dst} is not empty and {entry.name} is not a case folder of this drop; "
                "use an empty or new destination"
            )
        for path in sorted(entry.iterdir()):
            if path.name.startswith(PARTIAL_PREFIX) and path.name.endswith(PARTIAL_SUFFIX):
                partial.append(path)  # an interrupted copy of ours; it is copied again
                continue
            source = files.get(path.name)
            if source is None:
                raise CwdmError(
                    f"destination {dst} is not empty and {entry.name}/{path.name} is not a file this drop "
                    "copies (another seed, source or tool?); use an empty or new destination"
                )
            if not path.is_file() or not filecmp.cmp(source, path, shallow=False):
                raise CwdmError(
                    f"destination file {path} differs from {source}; the destination is not a drop of "
                    "this source, use an empty or new destination"
                )
    for path in partial:
        path.unlink()


def _copy_atomic(source: Path, destination: Path) -> None:
    with replacing(destination) as tmp:
        shutil.copyfile(source, tmp)


def drop_sequences(
    src: Path, dst: Path, *, on_case: Callable[[DroppedCase], None] | None = None
) -> DropReport:
    """Build a pseudo-validation folder from complete cases, as the organisers' script does.

    Args:
        src: Folder of case folders (read only).
        dst: Destination folder: new, empty, or a previous (possibly interrupted) drop of ``src``.
        on_case: Called with each case's record after its files are copied.

    Returns:
        The :class:`DropReport`.

    Raises:
        CwdmError: ``src`` is missing or holds no case folder, ``dst`` is or is inside (or contains)
            ``src``, or ``dst`` holds anything that is not part of this drop.
        OSError: a file cannot be read or written.
    """
    src, dst = Path(src), Path(dst)
    _check_places(src, dst)
    plan, ignored = _plan(src)
    for path in ignored:
        log.debug("skipped %s: not a case folder or not a file", path)
    if dst.is_dir():
        _check_resumable(plan, dst)
    dst.mkdir(parents=True, exist_ok=True)
    results = []
    for case in plan:
        folder = dst / case.case_id
        folder.mkdir(exist_ok=True)
        copied, kept = [], []
        for source in case.files:
            target = folder / source.name
            if target.exists():  # checked identical by _check_resumable
                kept.append(source.name)
                continue
            _copy_atomic(source, target)
            copied.append(source.name)
        record = DroppedCase(case.case_id, case.dropped, case.dropped_files, tuple(copied), tuple(kept))
        results.append(record)
        if on_case is not None:
            on_case(record)
    return DropReport(cases=tuple(results), ignored=tuple(ignored))
