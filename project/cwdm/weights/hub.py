"""Filling a weights directory with the published checkpoints, at image build time only.

:func:`fetch_weights` downloads one checkpoint per target from HuggingFace (``pfriedri/cwdm``, the
authors' README, "Pre-trained model weights") through ``huggingface_hub`` (the optional ``hub`` extra)
and checks the directory. Nothing at run time imports this module: the pipeline never downloads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from ..atomic import write_atomic
from ..errors import CheckpointError, CwdmError
from ..sequences import CANONICAL_ORDER, MRISequence
from .checkpoints import CHECKPOINT_SUFFIXES
from .folder import WeightsCheck, check_weights, scan_checkpoints, target_tags

log = logging.getLogger(__name__)

#: The HuggingFace repository of the published checkpoints (the authors' README, "Pre-trained model weights").
PUBLISHED_REPO = "pfriedri/cwdm"
#: Written by :func:`fetch_weights` next to the checkpoints: where they came from, with SHA-256 sums.
FETCH_RECORD_NAME = "fetched.json"


class HubClient(Protocol):
    """The two hub operations :func:`fetch_weights` needs (tests inject a fake)."""

    def list_files(self, repo_id: str, revision: str | None) -> list[str]:
        """Every file path of the repository at ``revision``."""
        ...

    def download(self, repo_id: str, filename: str, revision: str | None, local_dir: Path) -> Path:
        """Download one file into ``local_dir`` and return its local path."""
        ...


class HuggingFaceHub:
    """:class:`HubClient` over ``huggingface_hub`` (the optional ``hub`` extra of this package)."""

    def __init__(self) -> None:
        try:
            import huggingface_hub
        except ImportError as exc:
            raise CwdmError(
                "fetching weights needs the huggingface_hub package: pip install huggingface_hub (or, "
                "in a source checkout, pip install -e '.[hub]')"
            ) from exc
        self._hub = huggingface_hub

    def list_files(self, repo_id: str, revision: str | None) -> list[str]:
        return list(self._hub.list_repo_files(repo_id, revision=revision))

    def download(self, repo_id: str, filename: str, revision: str | None, local_dir: Path) -> Path:
        return Path(self._hub.hf_hub_download(repo_id, filename, revision=revision, local_dir=local_dir))


def select_checkpoints(repo_files: Iterable[str]) -> dict[MRISequence, str]:
    """Pick one checkpoint per target among a repository's files, by the target tag in its path.

    Args:
        repo_files: Repository file paths (``a/b/brats_t1n_1200000.pt``).

    Returns:
        The repository path of each target's checkpoint, in canonical order.

    Raises:
        CheckpointError: a target has no checkpoint, or several (pass the wanted files explicitly).
    """
    candidates: dict[MRISequence, list[str]] = {seq: [] for seq in CANONICAL_ORDER}
    for name in repo_files:
        tags = target_tags(name)
        if PurePosixPath(name).suffix in CHECKPOINT_SUFFIXES and len(tags) == 1:
            candidates[tags[0]].append(name)
    missing = [str(seq) for seq, names in candidates.items() if not names]
    several = {seq: names for seq, names in candidates.items() if len(names) > 1}
    if missing or several:
        problems = [f"no checkpoint names {', '.join(missing)}"] if missing else []
        problems += [f"several name {seq} ({', '.join(names)})" for seq, names in several.items()]
        raise CheckpointError(
            "cannot pick one checkpoint per target: " + "; ".join(problems) + ". Name the files explicitly."
        )
    return {seq: names[0] for seq, names in candidates.items()}


def _local_name(target: MRISequence, repo_path: str) -> str:
    """Keep the file name when it names its target; else prefix the tag (it may sit in a folder name)."""
    name = PurePosixPath(repo_path).name
    return name if target_tags(name) == [target] else f"{target}_{name}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_weights(
    dest: Path,
    repo_id: str = PUBLISHED_REPO,
    revision: str | None = None,
    files: Sequence[str] | None = None,
    hub: HubClient | None = None,
) -> WeightsCheck:
    """Download one checkpoint per target from a model hub into ``dest``, then check the directory.

    Meant for image builds (the Dockerfile's weights stage); the pipeline never downloads. Files are
    downloaded into a hidden temporary folder inside ``dest`` and renamed into place, and
    ``fetched.json`` records the repository, revision, file names and SHA-256 sums.

    Args:
        dest: The weights directory to fill (created if needed).
        repo_id: The hub repository (the published checkpoints by default).
        revision: Branch, tag or commit; pin a commit for reproducible images.
        files: Repository paths to fetch, one per target; by default picked by
            :func:`select_checkpoints`.
        hub: The hub client; :class:`HuggingFaceHub` by default.

    Returns:
        :func:`check_weights` of ``dest`` after the download.

    Raises:
        CheckpointError: the repository does not offer one checkpoint per target, or ``dest`` already
            holds a different checkpoint for a target.
        CwdmError: ``huggingface_hub`` is not installed.
        Exception: whatever the hub client raises for network or authorisation errors.
    """
    dest = Path(dest)
    if files is not None and len(files) != len(CANONICAL_ORDER):
        raise CheckpointError(
            f"expected one file per target ({len(CANONICAL_ORDER)} files), got {len(files)}"
        )
    client = hub if hub is not None else HuggingFaceHub()
    selected = select_checkpoints(files if files is not None else client.list_files(repo_id, revision))
    local_names = {target: _local_name(target, path) for target, path in selected.items()}
    dest.mkdir(parents=True, exist_ok=True)
    found, _ = scan_checkpoints(dest)
    clashes = [p.name for seq, paths in found.items() for p in paths if p.name != local_names[seq]]
    if clashes:
        raise CheckpointError(
            f"{dest} already holds other checkpoints for these targets ({', '.join(clashes)}); "
            "fetch into an empty directory"
        )
    fetched: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix=".cwdm-fetch-", dir=dest) as tmp:
        for target, repo_path in selected.items():
            log.info("downloading %s from %s (revision %s)", repo_path, repo_id, revision or "default")
            downloaded = client.download(repo_id, repo_path, revision, Path(tmp))
            checksum = _sha256(downloaded)
            os.replace(downloaded, dest / local_names[target])
            fetched[local_names[target]] = {"target": str(target), "source": repo_path, "sha256": checksum}
            log.info("%s -> %s (sha256 %s)", repo_path, dest / local_names[target], checksum)
        record = {"repo_id": repo_id, "revision": revision, "files": fetched}
    write_atomic(dest / FETCH_RECORD_NAME, json.dumps(record, indent=2) + "\n")
    return check_weights(dest)
