"""The output folder's rules: it never overlaps the inputs, it is created and probed before any case
runs, temporary files of an interrupted run are cleared, and an output already there counts as done
only when it is a complete volume on its case's grid (so a rerun resumes).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from ..atomic import PARTIAL_PREFIX, helper_stem, probe_writable, remove_partial_files
from ..cases.discovery import Case
from ..cases.volumes import VolumeError, read_volume, same_grid
from ..errors import ConfigError, CwdmError

log = logging.getLogger(__name__)


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, symbolic links resolved."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_folder(out_dir: Path, cases: Sequence[Case]) -> None:
    """Refuse an output folder that overlaps the inputs, symbolic links resolved.

    The output folder may not be the data folder, lie inside it or inside a case folder (inputs are
    never modified), nor contain the data folder or a case folder (it must hold predictions only).

    Raises:
        ConfigError: naming both folders.
    """
    out_dir = Path(out_dir)
    data_folders = sorted({case.folder.parent for case in cases})
    for folder in data_folders + [case.folder for case in cases]:
        kind = "data folder" if folder in data_folders else "case folder"
        if is_inside(out_dir, folder):
            raise ConfigError(
                f"output folder {out_dir} is inside the {kind} {folder}; inputs are never modified: "
                "choose an output folder outside it"
            )
        if is_inside(folder, out_dir):
            raise ConfigError(
                f"output folder {out_dir} contains the {kind} {folder}; the output folder must hold "
                "predictions only: choose a separate folder"
            )


def prepare_output_folder(out_dir: Path, cases: Sequence[Case], in_use: Collection[str] = ()) -> None:
    """Check ``out_dir`` against the inputs, create it, clear partial files and probe that it is writable.

    ``in_use`` names outputs that a live process has claimed (:mod:`cwdm.inference.claims`): their
    partial files are another process's writes in progress, and are left alone.

    Raises:
        ConfigError: ``out_dir`` overlaps the inputs (:func:`check_output_folder`).
        CwdmError: ``out_dir`` cannot be created or is not writable (nothing has run).
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir, cases)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CwdmError(f"cannot create the output folder {out_dir} ({exc})") from exc
    stems = {helper_stem(name) for name in in_use}
    for path in remove_partial_files(out_dir, keep=lambda name: _partial_of(name) in stems):
        log.warning("removed %s, left by an interrupted run", path.name)
    try:
        probe_writable(out_dir)
    except OSError as exc:
        raise CwdmError(
            f"the output folder {out_dir} is not writable ({exc.strerror or exc}); nothing was run"
        ) from exc


def _partial_of(name: str) -> str:
    """The output a partial file ``.cwdm-<output>.<random>.part`` belongs to (its
    :func:`cwdm.atomic.helper_stem`)."""
    return name[len(PARTIAL_PREFIX) :].rsplit(".", 2)[0]


def prepare_qc_folder(qc_dir: Path, out_dir: Path, cases: Sequence[Case]) -> None:
    """Check the quality-control folder (previews, uncertainty maps) and create it.

    It may not be the output folder, lie inside it or contain it (the output folder holds predictions
    only), nor lie inside the data folder or a case folder (inputs are never modified).

    Raises:
        ConfigError: naming both folders.
        CwdmError: it cannot be created.
    """
    qc_dir, out_dir = Path(qc_dir), Path(out_dir)
    if is_inside(qc_dir, out_dir) or is_inside(out_dir, qc_dir):
        raise ConfigError(
            f"the QC folder {qc_dir} overlaps the output folder {out_dir}; the output folder must hold "
            "predictions only: choose a separate QC folder"
        )
    for folder in sorted({case.folder.parent for case in cases} | {case.folder for case in cases}):
        if is_inside(qc_dir, folder):
            raise ConfigError(
                f"the QC folder {qc_dir} is inside the input folder {folder}; choose one outside it"
            )
    try:
        qc_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CwdmError(f"cannot create the QC folder {qc_dir} ({exc})") from exc


def output_complete(output: Path, reference_file: Path) -> bool:
    """Whether ``output`` is a readable volume on the grid of ``reference_file`` (a finished output).

    Never raises: what cannot be looked at (a name the file system refuses, an unreadable file) is not
    a finished output, and writing it later reports why.
    """
    try:
        if output.is_symlink() or not output.is_file():
            return False
        written = read_volume(output)
        reference = read_volume(reference_file)
    except (VolumeError, OSError):
        return False
    return same_grid(written, reference)
