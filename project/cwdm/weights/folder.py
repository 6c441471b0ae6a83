"""A weights directory: one checkpoint per target sequence plus an optional ``model.yaml``.

Layout (weights/README.md): each checkpoint's file name contains its target's tag (``t1n``, ``t1c``,
``t2w``, ``t2f``), for example ``brats_t2f_1200000.pt`` or our ``t2f.safetensors``; ``model.yaml`` holds
the architecture and sampling defaults (the published configuration when absent).

Besides opening a directory (:class:`WeightsDir`, used by the pipeline), this module verifies one
(:func:`check_weights`: every target present, keys and shapes as ``model.yaml`` describes, finite
floating-point values) and fills one with the published checkpoints at image build time
(:func:`fetch_weights`, HuggingFace ``pfriedri/cwdm`` through ``huggingface_hub``; nothing here is
called at run time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import torch

from ..config import ModelSpec, load_model_spec
from ..errors import CheckpointError, CwdmError
from ..method.denoiser import Denoiser
from ..sequences import CANONICAL_ORDER, MRISequence
from .checkpoints import CHECKPOINT_SUFFIXES, check_state_dict, read_state_dict

log = logging.getLogger(__name__)

MODEL_SPEC_NAME = "model.yaml"
#: The HuggingFace repository of the published checkpoints (the authors' README, "Pre-trained model weights").
PUBLISHED_REPO = "pfriedri/cwdm"
#: Written by :func:`fetch_weights` next to the checkpoints: where they came from, with SHA-256 sums.
FETCH_RECORD_NAME = "fetched.json"


def _tags(name: str) -> list[MRISequence]:
    """The target tags a file name or repository path contains (case-insensitive)."""
    return [seq for seq in CANONICAL_ORDER if str(seq) in name.lower()]


def _scan(root: Path) -> tuple[dict[MRISequence, list[Path]], list[Path]]:
    """Checkpoint files of ``root`` by the one target their name names, and those naming none or several."""
    found: dict[MRISequence, list[Path]] = {seq: [] for seq in CANONICAL_ORDER}
    unassigned = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.suffix not in CHECKPOINT_SUFFIXES or not path.is_file():
            continue
        tags = _tags(path.name)
        if len(tags) == 1:
            found[tags[0]].append(path)
        else:
            unassigned.append(path)
    return found, unassigned


@dataclass(frozen=True)
class WeightsDir:
    """What a weights directory offers.

    Attributes:
        root: The directory.
        spec: Its ``model.yaml`` (or the published defaults).
        checkpoints: The checkpoint file of each target found there.
    """

    root: Path
    spec: ModelSpec
    checkpoints: dict[MRISequence, Path]

    @classmethod
    def open(cls, root: Path) -> WeightsDir:
        """Scan ``root`` for checkpoints and read its ``model.yaml``.

        Raises:
            CheckpointError: ``root`` is not a directory, or two files claim the same target.
            ConfigError: invalid ``model.yaml``.
        """
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"weights directory {root} does not exist or is not a directory")
        spec = load_model_spec(root / MODEL_SPEC_NAME)
        found, _ = _scan(root)
        for seq, paths in found.items():
            if len(paths) > 1:
                names = ", ".join(p.name for p in paths)
                raise CheckpointError(
                    f"{root}: several checkpoints for target {seq} ({names}); keep exactly one per target"
                )
        checkpoints = {seq: paths[0] for seq, paths in found.items() if paths}
        return cls(root=root, spec=spec, checkpoints=checkpoints)

    def checkpoint(self, target: MRISequence) -> Path:
        """The checkpoint for ``target``.

        Raises:
            CheckpointError: no file in the directory names ``target``.
        """
        if target not in self.checkpoints:
            raise CheckpointError(
                f"{self.root}: no checkpoint for target {target} (expected a .pt, .pth or .safetensors "
                f"file whose name contains '{target}')"
            )
        return self.checkpoints[target]


# -- checking a directory ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetCheck:
    """The verdict on one target's checkpoint.

    Attributes:
        target: The target sequence.
        path: The checkpoint checked (``None`` when none or several were found).
        ok: Whether it loads strictly into the architecture of ``model.yaml``.
        message: The parameter count when ``ok``, else what is wrong.
    """

    target: MRISequence
    path: Path | None
    ok: bool
    message: str


@dataclass(frozen=True)
class WeightsCheck:
    """The result of :func:`check_weights`.

    Attributes:
        root: The directory.
        spec: The architecture checked against.
        spec_source: ``model.yaml``, or a note that the published configuration was assumed.
        targets: One verdict per target, in canonical order.
        unassigned: Checkpoint files whose name contains no target tag, or several (never loaded).
    """

    root: Path
    spec: ModelSpec
    spec_source: str
    targets: tuple[TargetCheck, ...]
    unassigned: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.targets)

    def lines(self) -> list[str]:
        """A plain-text report: the directory and architecture, then one line per target."""
        arch = self.spec
        lines = [
            f"weights directory {self.root}",
            f"architecture from {self.spec_source}: model_channels {arch.model_channels}, channel_mult "
            f"{list(arch.channel_mult)}, num_res_blocks {arch.num_res_blocks}, num_groups {arch.num_groups}",
        ]
        for check in self.targets:
            name = check.path.name if check.path is not None else "-"
            lines.append(f"  {check.target}  {'ok  ' if check.ok else 'FAIL'}  {name}: {check.message}")
        lines += [f"  ignored {p.name}: its name names no target or several" for p in self.unassigned]
        return lines


def _check_target(path: Path, reference: torch.nn.Module) -> str:
    """Return the parameter count of a sound checkpoint; raise :class:`CheckpointError` otherwise."""
    state_dict = read_state_dict(path)
    check_state_dict(state_dict, reference, str(path))
    not_float = [key for key, value in state_dict.items() if not value.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{path}: non-floating-point tensors ({', '.join(not_float[:5])})")
    not_finite = [key for key, value in state_dict.items() if not torch.isfinite(value).all()]
    if not_finite:
        raise CheckpointError(
            f"{path}: NaN or infinite values in {len(not_finite)} tensors ({not_finite[0]}, ...)"
        )
    return f"{sum(value.numel() for value in state_dict.values()):,} parameters"


def check_weights(root: Path) -> WeightsCheck:
    """Verify a weights directory: a checkpoint per target that loads strictly as ``model.yaml`` says.

    For each of the four targets: exactly one checkpoint file names it, the file reads without code
    execution, its keys and shapes are exactly those of the architecture (a missing ``model.yaml`` means
    the published one) and its values are finite floating-point numbers. Checkpoints are read one at a
    time and compared with a network built on the ``meta`` device, so no weights are allocated twice.

    Args:
        root: The weights directory.

    Returns:
        The :class:`WeightsCheck`; ``ok`` is false when any target failed.

    Raises:
        CheckpointError: ``root`` is not a directory.
        ConfigError: ``model.yaml`` is invalid (nothing can be checked against it).
    """
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"weights directory {root} does not exist or is not a directory")
    spec_path = root / MODEL_SPEC_NAME
    spec = load_model_spec(spec_path)
    spec_source = str(spec_path) if spec_path.exists() else "the published configuration (no model.yaml)"
    with torch.device("meta"):  # keys and shapes only: nothing is allocated
        reference = Denoiser(spec.denoiser_config())
    found, unassigned = _scan(root)
    checks = []
    for target, paths in found.items():
        if len(paths) != 1:
            problem = (
                f"no .pt, .pth or .safetensors file whose name contains '{target}'"
                if not paths
                else f"several checkpoints name {target} ({', '.join(p.name for p in paths)}); keep one"
            )
            checks.append(TargetCheck(target, None, False, problem))
            continue
        try:
            checks.append(TargetCheck(target, paths[0], True, _check_target(paths[0], reference)))
        except CheckpointError as exc:
            checks.append(TargetCheck(target, paths[0], False, str(exc)))
    return WeightsCheck(root, spec, spec_source, tuple(checks), tuple(unassigned))


# -- fetching the published checkpoints (image build time only) -----------------------------------------
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
                "fetching weights needs the huggingface_hub package: pip install 'cwdm-brasyn[hub]'"
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
        tags = _tags(name)
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
    return name if _tags(name) == [target] else f"{target}_{name}"


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
    found, _ = _scan(dest)
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
        staged = Path(tmp) / FETCH_RECORD_NAME
        staged.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(staged, dest / FETCH_RECORD_NAME)
    return check_weights(dest)
