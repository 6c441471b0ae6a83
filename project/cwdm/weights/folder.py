"""A weights directory: one checkpoint per target sequence plus an optional ``model.yaml``.

Layout (weights/README.md): each checkpoint's file name contains its target's tag (``t1n``, ``t1c``,
``t2w``, ``t2f``), for example ``brats_t2f_1200000.pt`` or our ``t2f.safetensors``; ``model.yaml`` holds
the architecture and sampling defaults (the published configuration when absent).

This module answers everything about such a directory at run time: whether it holds checkpoints
(:meth:`WeightsDir.holds_checkpoints`), which file serves a target, the model of a target loaded with its
noise schedule (:meth:`WeightsDir.load`), and a full check (:func:`check_weights`: every target present,
keys and shapes as ``model.yaml`` describes, finite floating-point values). Filling a directory with
the published checkpoints at image build time is :mod:`cwdm.weights.hub`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelSpec, load_model_spec
from ..errors import CheckpointError
from ..method.denoiser import Denoiser
from ..method.schedule import NoiseSchedule
from ..sequences import CANONICAL_ORDER, MRISequence
from .checkpoints import (
    CHECKPOINT_SUFFIXES,
    check_state_dict,
    check_values,
    expected_bytes,
    load_denoiser,
    read_state_dict,
)

MODEL_SPEC_NAME = "model.yaml"


def target_tags(name: str) -> list[MRISequence]:
    """The target tags a file name or repository path contains (case-insensitive)."""
    return [seq for seq in CANONICAL_ORDER if str(seq) in name.lower()]


def scan_checkpoints(root: Path) -> tuple[dict[MRISequence, list[Path]], list[Path]]:
    """Checkpoint files of ``root`` by the one target their name names, and those naming none or several."""
    found: dict[MRISequence, list[Path]] = {seq: [] for seq in CANONICAL_ORDER}
    unassigned = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.suffix not in CHECKPOINT_SUFFIXES or not path.is_file():
            continue
        tags = target_tags(path.name)
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
        found, _ = scan_checkpoints(root)
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

    @property
    def spec_path(self) -> Path:
        """Where ``model.yaml`` is (or would be); named in messages about its values."""
        return self.root / MODEL_SPEC_NAME

    def load(self, target: MRISequence, device: torch.device | str = "cpu") -> Denoiser:
        """The eval-mode denoiser of ``target`` on ``device``, loaded strictly as ``model.yaml`` says.

        Its noise schedule is :meth:`schedule` (one for the whole directory).

        Raises:
            CheckpointError: no checkpoint names ``target``, or it is unreadable, mis-shaped or damaged.
        """
        return load_denoiser(self.checkpoint(target), self.spec.architecture).to(device)

    def schedule(self) -> NoiseSchedule:
        """The training noise schedule of the directory's models."""
        return self.spec.schedule()

    @staticmethod
    def holds_checkpoints(folder: Path) -> bool:
        """Whether ``folder`` is a directory with at least one checkpoint file (.pt, .pth, .safetensors),
        whatever target its name names (an empty mounted weights folder holds none)."""
        folder = Path(folder)
        if not folder.is_dir():
            return False
        return any(
            path.suffix in CHECKPOINT_SUFFIXES and not path.name.startswith(".") and path.is_file()
            for path in folder.iterdir()
        )


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
        arch = self.spec.architecture
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
    state_dict = read_state_dict(path, max_bytes=expected_bytes(reference))
    check_state_dict(state_dict, reference, str(path))
    check_values(state_dict, str(path))
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
        reference = Denoiser(spec.architecture)
    found, unassigned = scan_checkpoints(root)
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
