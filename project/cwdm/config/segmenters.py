"""The descriptions of segmenters (``cwdm evaluate --segmenter``): the shipped reference network's
``segmenter.yaml``, an nnU-Net model folder, a command."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from ..choices import (
    DeviceName,
    LabelConventionName,
    SequenceName,
    StructureName,
)
from ..errors import ConfigError
from .reading import _read_yaml, _Strict, _validate, shown

log = logging.getLogger(__name__)

# -- segmenters (``cwdm evaluate --segmenter``) ------------------------------------------------------
#: The file name of a reference segmenter's architecture, beside its weights.
SEGMENTER_SPEC_NAME = "segmenter.yaml"


def _four_sequences(value: Any) -> Any:
    value = tuple(value) if isinstance(value, list) else value
    if isinstance(value, tuple) and sorted(value) != sorted(("t1n", "t1c", "t2w", "t2f")):
        raise ValueError("must name each of t1n, t1c, t2w, t2f once, in the model's channel order")
    return value


class ReferenceSegmenterSpec(_Strict):
    """``segmenter.yaml`` of the reference segmenter we train and ship (``weights/segmenter/``).

    A MONAI SegResNet that sees the four sequences, each clipped and scaled as for synthesis, averaged
    down by ``downsample`` on every axis, and predicts the three BraTS regions (WT, TC, ET) as
    independent sigmoid outputs.
    """

    kind: Literal["reference"] = "reference"
    channels: tuple[SequenceName, ...] = ("t1n", "t1c", "t2w", "t2f")
    init_filters: StrictInt = Field(default=16, ge=1)
    blocks_down: tuple[StrictInt, ...] = (1, 2, 2, 4)
    blocks_up: tuple[StrictInt, ...] = (1, 1, 1)
    downsample: StrictInt = Field(default=2, ge=1, le=4)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: Trained with one sequence zeroed at random (sequence dropout), so that it also segments a case
    #: with that sequence absent, given as zeros: the skip-synthesis baseline of ``cwdm evaluate``.
    accepts_absent_sequence: StrictBool = False
    #: Segment in windows of this size (network-grid voxels: the training crop), 50 % overlap, blended with
    #: Gaussian weights; ``None``: the whole volume at once. A network trained on crops and normalised
    #: per input (GroupNorm) sees other statistics on a whole head, mostly background: on held-out cases
    #: the whole-volume pass over-segmented the whole tumour several times over.
    window: tuple[StrictInt, StrictInt, StrictInt] | None = None

    @field_validator("channels", mode="before")
    @classmethod
    def _check_channels(cls, value: Any) -> Any:
        return _four_sequences(value)

    @field_validator("blocks_down", "blocks_up", "window", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        for key in ("window", "accepts_absent_sequence"):  # written only when set: older files read back
            if not data[key]:
                del data[key]
        return yaml.safe_dump(data, sort_keys=False)


class NnUNetSegmenterSpec(_Strict):
    """A trained nnU-Net v2 model folder, run through nnU-Net's own predictor.

    The channel order and the meaning of the model's labels are declared, never guessed: an nnU-Net
    BraTS model may number its inputs and labels in any order (nnU-Net's BraTS 2021 conversion, for one,
    feeds T1, T1ce, T2, FLAIR and labels oedema 1, necrosis 2, enhancing 3).
    """

    kind: Literal["nnunet"]
    model_folder: Path
    channels: tuple[SequenceName, ...]
    labels: dict[StrictInt, StructureName]
    folds: tuple[StrictInt, ...] | Literal["all"] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    device: DeviceName = "auto"
    tile_step_size: float = Field(default=0.5, gt=0, le=1)
    use_mirroring: StrictBool = True

    @field_validator("channels", mode="before")
    @classmethod
    def _check_channels(cls, value: Any) -> Any:
        return _four_sequences(value)

    @field_validator("folds", mode="before")
    @classmethod
    def _folds_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class CommandSegmenterSpec(_Strict):
    """Any segmenter that runs as a command, one case at a time, on BraTS-named files.

    The command is an argument list (or one string, split like a shell would, without running a shell)
    in which ``{input}`` is a folder holding one case folder ``<case>/<case>-<seq>.nii.gz`` (the BraTS
    input naming), ``{output}`` an empty folder for the result and ``{case}`` the case id. The label
    volume is then read from ``output`` (``{output}/{case}.nii.gz`` by default, the BraTS segmentation
    challenge's output naming).
    """

    kind: Literal["command"]
    command: list[str] | str
    output: str = "{output}/{case}.nii.gz"
    labels: LabelConventionName | dict[StrictInt, StructureName] = "brats2023"
    timeout_s: float = Field(default=3600.0, gt=0)
    environment: dict[str, str] = Field(default_factory=dict)


SegmenterSpec = ReferenceSegmenterSpec | NnUNetSegmenterSpec | CommandSegmenterSpec
_SEGMENTER_KINDS: Mapping[str, type[_Strict]] = {
    "reference": ReferenceSegmenterSpec,
    "nnunet": NnUNetSegmenterSpec,
    "command": CommandSegmenterSpec,
}


def load_segmenter_spec(path: Path) -> SegmenterSpec:
    """Read a segmenter description (``kind: nnunet``, ``command`` or ``reference``).

    Relative paths in it (``model_folder``) are taken from the file's folder.

    Raises:
        ConfigError: unreadable file, invalid YAML, an unknown ``kind``, unknown keys or bad values.
    """
    path = Path(path)
    data = _read_yaml(path)
    kind = data.get("kind", "reference") if isinstance(data, dict) else None
    if kind not in _SEGMENTER_KINDS:
        raise ConfigError(
            f"{path}: key 'kind': expected one of {', '.join(_SEGMENTER_KINDS)}, got {shown(kind)}"
        )
    spec = _validate(_SEGMENTER_KINDS[kind], data, str(path))
    if isinstance(spec, NnUNetSegmenterSpec) and not spec.model_folder.is_absolute():
        spec = spec.model_copy(update={"model_folder": (path.parent / spec.model_folder).resolve()})
    return spec
