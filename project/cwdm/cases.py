"""Case discovery: every sub-folder of the data folder is a case; find its sequences and the one
that is missing (REFERENCE.md section 7).

A case folder ``BraTS-GLI-01666-000`` holds ``BraTS-GLI-01666-000-<seq>.nii.gz`` for three of the four
sequences. Other files (a ``-seg`` file, hidden files, notes) are ignored. Problems found here are kept
on the :class:`Case` and raised as :class:`cwdm.CaseError` when its target is asked for, so that one bad
folder never stops the discovery of the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CaseError, CwdmError
from .sequences import CANONICAL_ORDER, MRISequence

_VOLUME_NAME = re.compile(r"^(?P<prefix>.+)-(?P<seq>t1n|t1c|t2w|t2f)\.nii(?:\.gz)?$")


@dataclass(frozen=True)
class Case:
    """One case folder.

    Attributes:
        case_id: The folder name, e.g. ``BraTS-GLI-01666-000``.
        folder: The folder.
        files: The volume file of each present sequence.
        problems: What makes the folder unusable (conflicting or foreign files), if anything.
    """

    case_id: str
    folder: Path
    files: dict[MRISequence, Path] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

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
            CaseError: the folder has conflicting files, or not exactly one sequence is missing.
        """
        if self.problems:
            raise CaseError(self.case_id, "; ".join(self.problems), self.folder)
        missing = self.missing
        if len(missing) == 1:
            return missing[0]
        if not self.files:
            raise CaseError(
                self.case_id,
                "no sequence files found; expected three of "
                + ", ".join(f"{self.case_id}-{seq}.nii.gz" for seq in CANONICAL_ORDER),
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


def read_case(folder: Path) -> Case:
    """Build the :class:`Case` of one folder; never raises for the folder's content."""
    folder = Path(folder)
    case_id = folder.name
    files: dict[MRISequence, Path] = {}
    problems: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        return Case(case_id, folder, problems=(f"cannot list the folder ({exc.strerror or exc})",))
    for path in entries:
        match = _VOLUME_NAME.match(path.name)
        if path.name.startswith(".") or match is None or path.is_dir():
            continue  # hidden files, -seg files, notes, sub-folders: not ours to judge
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
    return Case(case_id=case_id, folder=folder, files=files, problems=tuple(problems))


def discover_cases(data_dir: Path) -> list[Case]:
    """List the cases of ``data_dir``: every non-hidden sub-folder, sorted by name.

    Args:
        data_dir: The input folder (one sub-folder per case).

    Returns:
        The cases in name order; inspect :meth:`Case.target` for each.

    Raises:
        CwdmError: ``data_dir`` does not exist or is not a folder.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CwdmError(f"data folder {data_dir} does not exist or is not a folder")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [read_case(folder) for folder in folders]
