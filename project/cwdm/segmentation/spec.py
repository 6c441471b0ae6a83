"""From a ``--segmenter`` value to a loaded :class:`cwdm.segmentation.Segmenter`.

The value is ``builtin`` (the shipped reference segmenter), a folder holding a reference segmenter
(``segmenter.yaml`` + ``segmenter.safetensors``, e.g. a ``cwdm segmenter train`` run's ``weights/``), or a
YAML file describing an nnU-Net model folder (``kind: nnunet``) or a command (``kind: command``); see
:mod:`cwdm.config` for their keys and README "Evaluation" for examples.
"""

from __future__ import annotations

from pathlib import Path

from ..config import (
    SEGMENTER_SPEC_NAME,
    CommandSegmenterSpec,
    NnUNetSegmenterSpec,
    load_segmenter_spec,
)
from ..errors import ConfigError
from .case import Segmenter

#: The ``--segmenter`` value of the shipped reference segmenter.
BUILTIN = "builtin"


def open_segmenter(value: str | Path, *, device: str = "auto") -> Segmenter:
    """Load the segmenter ``value`` names (once; it then segments any number of cases).

    Args:
        value: ``builtin``, a reference segmenter folder, or a segmenter description file.
        device: Where the reference segmenter runs (``auto``, ``cpu``, ``cuda``); an nnU-Net
            description names its own.

    Raises:
        ConfigError: a path that does not exist, a folder without ``segmenter.yaml`` (an nnU-Net model
            folder needs a description that declares its channels and labels), an invalid description.
        CheckpointError: missing or unreadable weights.
    """
    from .reference import ReferenceSegmenter

    if str(value) == BUILTIN:
        return ReferenceSegmenter.builtin(device)
    path = Path(value)
    if path.is_dir():
        if (path / SEGMENTER_SPEC_NAME).is_file():
            return ReferenceSegmenter.open(path, device)
        hint = (
            " It looks like an nnU-Net model folder: describe it in a YAML file (kind: nnunet, model_folder, "
            "channels, labels) and pass that file."
            if (path / "plans.json").is_file()
            else ""
        )
        raise ConfigError(f"--segmenter {path}: a folder without {SEGMENTER_SPEC_NAME}.{hint}")
    if not path.is_file():
        raise ConfigError(f"--segmenter {value}: neither 'builtin' nor an existing folder or file")
    spec = load_segmenter_spec(path)
    if isinstance(spec, NnUNetSegmenterSpec):
        from .nnunet import NnUNetSegmenter

        return NnUNetSegmenter(spec)
    if isinstance(spec, CommandSegmenterSpec):
        from .command import CommandSegmenter

        return CommandSegmenter(spec)
    return ReferenceSegmenter.open(path.parent, device)  # kind: reference, beside its weights
