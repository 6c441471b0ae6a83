"""Case discovery: every sub-folder of the data folder is a case; find its sequences and the one
that is missing (docs/METHOD.md, "Cases and file names").

A case folder ``BraTS-GLI-01666-000`` holds ``BraTS-GLI-01666-000-<seq>.nii.gz`` (or ``.nii``) for three
of the four sequences. Other entries (a ``-seg`` file, hidden files, notes, sub-folders) are ignored.
Problems found here are kept on the :class:`Case` and raised as :class:`cwdm.CaseError` when its target
is asked for, so that one bad folder never stops the discovery of the others. Problems (docs/USAGE.md, "Bad
inputs and faults"): a sequence file of another case (its prefix differs from the folder name), two
files for one sequence, a sequence name that is not a regular file (a directory, a FIFO, a broken or
looping symbolic link), a case folder that cannot be listed, and a symbolic link in the data folder
whose target is gone (typically a link to a folder outside a mounted data folder).

Symbolic links are followed: a case folder or a sequence file may be a link to one elsewhere.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import NAME_MAX_BYTES, name_bytes
from ..errors import CaseError, CwdmError
from ..sequences import CANONICAL_ORDER, MRISequence
from .volumes import describe_file_type

log = logging.getLogger(__name__)

_VOLUME_NAME = re.compile(r"^(?P<prefix>.+)-(?P<seq>t1n|t1c|t2w|t2f)\.nii(?:\.gz)?$")


@dataclass(frozen=True)
class Case:
    """One case folder.

    Attributes:
        case_id: The folder name, e.g. ``BraTS-GLI-01666-000``.
        folder: The folder.
        files: The volume file of each present sequence.
        problems: What makes the folder unusable (conflicting or foreign files), if anything.
        subfolders: Names of the sub-folders it holds (ignored; named when the folder has no sequence
            file, since cases nested one level too deep are a common layout mistake).
    """

    case_id: str
    folder: Path
    files: dict[MRISequence, Path] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    subfolders: tuple[str, ...] = ()

    @property
    def missing(self) -> tuple[MRISequence, ...]:
        """The absent sequences, in canonical order."""
        return tuple(seq for seq in CANONICAL_ORDER if seq not in self.files)

    @property
    def expects_synthesis(self) -> bool:
        """Exactly one sequence is absent: a case the challenge expects an output for (even when a
        problem with its files stops it from getting one)."""
        return len(self.missing) == 1

    @property
    def is_complete(self) -> bool:
        """All four sequences are present (a training case; nothing to synthesise)."""
        return not self.missing and not self.problems

    def target(self) -> MRISequence:
        """The one missing sequence, which the pipeline synthesises.

        Raises:
            CaseError: the folder has conflicting files, not exactly one sequence is missing, or the
                output's name (:meth:`output_name`) would be longer than a file name may be.
        """
        if self.problems:
            raise CaseError(self.case_id, "; ".join(self.problems), self.folder)
        missing = self.missing
        if len(missing) == 1:
            output = self.output_name(missing[0])
            if name_bytes(output) > NAME_MAX_BYTES:
                raise CaseError(
                    self.case_id,
                    f"the output's name {output[:40]}... would take {name_bytes(output)} bytes, more than "
                    f"the {NAME_MAX_BYTES} a file name may have; shorten the case folder's name",
                    self.folder,
                )
            return missing[0]
        if not self.files:
            nested = ""
            if self.subfolders:
                shown = ", ".join(self.subfolders[:3]) + (", ..." if len(self.subfolders) > 3 else "")
                nested = (
                    f"; it holds {len(self.subfolders)} sub-folder(s) ({shown}): case folders must be "
                    "direct sub-folders of the data folder"
                )
            raise CaseError(
                self.case_id,
                "no sequence files found; expected three of "
                + ", ".join(f"{self.case_id}-{seq}.nii.gz" for seq in CANONICAL_ORDER)
                + nested,
                self.folder,
            )
        if not missing:
            raise CaseError(
                self.case_id, "all four sequences are present: nothing to synthesise", self.folder
            )
        names = ", ".join(str(seq) for seq in missing)
        raise CaseError(
            self.case_id,
            f"{len(missing)} sequences are missing ({names}); exactly one may be missing",
            self.folder,
        )

    def output_name(self, target: MRISequence) -> str:
        """The file name the evaluator expects: ``<case>-<seq>.nii.gz``."""
        return f"{self.case_id}-{target}.nii.gz"


def _not_a_file(path: Path) -> str | None:
    """Why a sequence-named entry cannot be read as a file, or ``None`` for a regular file (or a link
    to one)."""
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except OSError as exc:
        if path.is_symlink():
            return (
                f"{path.name} is a symbolic link to {os.readlink(path)!r}, which cannot be followed "
                f"({exc.strerror or exc})"
            )
        return f"{path.name} cannot be accessed ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    return f"{path.name} is {describe_file_type(mode)}, not a volume file"


def read_case(folder: Path) -> Case:
    """Build the :class:`Case` of one folder; never raises for the folder's content."""
    folder = Path(folder)
    case_id = folder.name
    files: dict[MRISequence, Path] = {}
    problems: list[str] = []
    subfolders: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return Case(case_id, folder, problems=(f"cannot list the folder ({exc.strerror or exc})",))
    for path in entries:
        if path.name.startswith("."):
            continue  # hidden files and folders (.DS_Store, ._* resource forks): not ours to judge
        match = _VOLUME_NAME.match(path.name)
        if match is None:
            if path.is_dir():
                subfolders.append(path.name)
            continue  # -seg files, notes, sub-folders: not ours to judge
        reason = _not_a_file(path)
        if reason is not None:  # a directory or FIFO named like a volume is not silently "absent"
            problems.append(reason)
            continue
        seq = MRISequence(match["seq"])
        if match["prefix"] != case_id:
            problems.append(
                f"file {path.name} does not belong to this case (its prefix {match['prefix']!r} "
                f"differs from the folder name {case_id!r})"
            )
            continue
        if seq in files:
            problems.append(f"two files for {seq}: {files[seq].name} and {path.name}")
            continue
        files[seq] = path
    return Case(
        case_id=case_id,
        folder=folder,
        files=files,
        problems=tuple(problems),
        subfolders=tuple(subfolders),
    )


def discover_cases(data_dir: Path) -> list[Case]:
    """List the cases of ``data_dir``: every non-hidden sub-folder, sorted by name.

    Symbolic links to folders count as case folders. A non-hidden symbolic link whose target is gone
    (or loops) becomes a case with a problem, so that it fails visibly instead of vanishing: it is most
    likely a case folder linked from outside a folder that was mounted into a container. Loose files
    are not cases; they are logged and left alone.

    Args:
        data_dir: The input folder (one sub-folder per case).

    Returns:
        The cases in name order; inspect :meth:`Case.target` for each.

    Raises:
        CwdmError: ``data_dir`` does not exist, is not a folder or cannot be listed, or is itself a case
            folder (it holds sequence files and no sub-folder): the message says to pass its parent.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CwdmError(f"data folder {data_dir} does not exist or is not a folder")
    try:
        entries = sorted(p for p in data_dir.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise CwdmError(f"cannot list the data folder {data_dir} ({exc.strerror or exc})") from exc
    cases = []
    for entry in entries:
        if entry.is_dir():
            cases.append(read_case(entry))
        elif entry.is_symlink() and not entry.exists():
            problem = (
                f"the case folder is a symbolic link to {os.readlink(entry)!r}, which does not exist here "
                "(links to places outside a folder mounted into a container do not survive the mount)"
            )
            cases.append(Case(entry.name, entry, problems=(problem,)))
        else:
            log.info("ignored %s in the data folder: not a case folder", entry.name)
    if not cases and any(_looks_like_sequence_file(entry) for entry in entries):
        raise CwdmError(
            f"data folder {data_dir} holds sequence files but no case folder: it looks like a single case; "
            f"pass the folder above it ({data_dir.resolve().parent}), which holds one folder per case"
        )
    return cases


def _looks_like_sequence_file(path: Path) -> bool:
    """``<anything>-<seq>.nii.gz`` (or ``.nii``): what a case folder holds."""
    name = path.name
    stem = name.removesuffix(".gz").removesuffix(".nii")
    return stem != name and stem.rsplit("-", 1)[-1] in {str(seq) for seq in CANONICAL_ORDER}


def needed_targets(cases: Iterable[Case]) -> list[MRISequence]:
    """The targets of the cases that have exactly one missing sequence, in canonical order."""
    wanted = {case.missing[0] for case in cases if case.expects_synthesis and not case.problems}
    return [seq for seq in CANONICAL_ORDER if seq in wanted]
