"""A weights directory: one checkpoint per target sequence plus an optional ``model.yaml``.

Layout (README, "Weights"): each checkpoint's file name contains its target's tag (``t1n``, ``t1c``,
``t2w``, ``t2f``), for example the published ``brats_t2f_1200000.pt`` or our ``t2f.safetensors``;
``model.yaml`` holds the architecture and sampling defaults (the published configuration when absent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoints import CHECKPOINT_SUFFIXES
from .config import ModelSpec, load_model_spec
from .errors import CheckpointError
from .sequences import CANONICAL_ORDER, MRISequence

MODEL_SPEC_NAME = "model.yaml"


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
        found: dict[MRISequence, list[Path]] = {seq: [] for seq in CANONICAL_ORDER}
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or path.suffix not in CHECKPOINT_SUFFIXES or not path.is_file():
                continue
            tags = [seq for seq in CANONICAL_ORDER if str(seq) in path.name.lower()]
            if len(tags) == 1:
                found[tags[0]].append(path)
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
