"""The reference tumour segmenter we train and ship (``weights/segmenter/``): small, offline, CPU-friendly.

It exists so that the downstream half of the BraSyn score (Dice of WT, TC and ET of the completed case)
can be measured anywhere, in tests and inside the image, without the organisers' models. It is not a
state-of-the-art segmenter; its Dice on the real complete cases is the ceiling a synthesis is read
against (model card: ``weights/segmenter/README.md``).

The network is MONAI's SegResNet (Myronenko 2018, the BraTS 2018 winner's encoder-decoder) predicting
the three regions as independent sigmoid outputs, as region-based BraTS models do. Input layout: the four
sequences in ``spec.channels`` order, each clipped to its 0.1/99.9 percentiles and scaled to [0, 1]
exactly as for synthesis (:func:`cwdm.cases.preprocessing.normalise`), zero-padded after each axis to a
multiple of :func:`grid_multiple` and averaged over ``downsample``-voxel blocks (2 mm on the BraTS grid).
The region probabilities are upsampled trilinearly to the input grid, thresholded, and painted into
labels from the outside in (:func:`cwdm.segmentation.labels.labels_from_regions`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cases.preprocessing import normalise
from ..config import SEGMENTER_SPEC_NAME, ReferenceSegmenterSpec, load_segmenter_spec
from ..errors import CheckpointError, ConfigError
from ..runtime import autocast, resolve_runtime
from ..sequences import MRISequence
from ..weights.checkpoints import check_state_dict, check_values, read_state_dict
from .case import CompleteCase, SegmentationError
from .labels import labels_from_regions

log = logging.getLogger(__name__)

#: The weights file of a reference segmenter folder.
WEIGHTS_NAME = "segmenter.safetensors"
#: The shipped reference segmenter: ``weights/segmenter`` of the checkout, or of the image.
BUILTIN_DIRS = (
    Path(__file__).resolve().parents[3] / "weights" / "segmenter",
    Path("/opt/cwdm/weights/segmenter"),
)


def build_network(spec: ReferenceSegmenterSpec) -> nn.Module:
    """The SegResNet of ``spec`` (randomly initialised; MONAI's constructor validates it)."""
    from monai.networks.nets import SegResNet

    return SegResNet(
        spatial_dims=3,
        init_filters=spec.init_filters,
        in_channels=len(spec.channels),
        out_channels=3,
        blocks_down=spec.blocks_down,
        blocks_up=spec.blocks_up,
    )


def grid_multiple(spec: ReferenceSegmenterSpec) -> int:
    """Input-grid sizes are padded to a multiple of this: the block size times the network's own
    multiple (it halves the grid ``len(blocks_down) - 1`` times)."""
    return spec.downsample * 2 ** (len(spec.blocks_down) - 1)


def to_network_grid(values: Tensor, spec: ReferenceSegmenterSpec) -> Tensor:
    """``(C, X, Y, Z)`` values on the input grid -> ``(C, X', Y', Z')`` block means on the network grid.

    Each axis is zero-padded after its end to a multiple of :func:`grid_multiple`, then averaged over
    blocks of ``spec.downsample`` voxels. Used for the inputs and, in training, for the region masks
    (whose block means are soft targets).
    """
    multiple = grid_multiple(spec)
    pad = [(-n) % multiple for n in values.shape[1:]]
    padded = F.pad(values, (0, pad[2], 0, pad[1], 0, pad[0]))
    if spec.downsample == 1:
        return padded
    return F.avg_pool3d(padded.unsqueeze(0), spec.downsample).squeeze(0)


def network_input(volumes: Sequence[np.ndarray], spec: ReferenceSegmenterSpec) -> Tensor:
    """The ``(C, X', Y', Z')`` float32 network input of one case's volumes (in ``spec.channels`` order)."""
    stacked = np.stack([normalise(np.asarray(volume)) for volume in volumes])
    return to_network_grid(torch.from_numpy(stacked), spec)


def regions_on_grid(logits: Tensor, shape: Sequence[int], spec: ReferenceSegmenterSpec) -> Tensor:
    """``(3, X', Y', Z')`` region logits -> ``(3, *shape)`` probabilities on the input grid."""
    up = logits.unsqueeze(0).float()
    if spec.downsample > 1:
        up = F.interpolate(up, scale_factor=spec.downsample, mode="trilinear", align_corners=False)
    x, y, z = shape
    return torch.sigmoid(up[0, :, :x, :y, :z])


class ReferenceSegmenter:
    """The shipped SegResNet as a :class:`cwdm.segmentation.Segmenter`.

    Args:
        network: The SegResNet, eval mode, on ``device``.
        spec: Its ``segmenter.yaml``.
        device: Where it runs.
        precision: ``fp32`` or ``bf16`` (autocast around the network only).
        source: Where the weights came from (for names and messages).
    """

    def __init__(
        self,
        network: nn.Module,
        spec: ReferenceSegmenterSpec,
        device: torch.device,
        precision: str = "fp32",
        source: Path | None = None,
    ) -> None:
        self.network = network.eval()
        self.spec = spec
        self.device = device
        self.precision = precision
        self.source = source
        self.name = f"reference ({source})" if source else "reference"

    @classmethod
    def open(cls, folder: Path, device: str = "auto", precision: str = "fp32") -> ReferenceSegmenter:
        """Load ``folder/segmenter.safetensors`` with the architecture of ``folder/segmenter.yaml``.

        Raises:
            CheckpointError: no weights there, unreadable weights, keys or shapes that do not match.
            ConfigError: an invalid ``segmenter.yaml``.
        """
        folder = Path(folder)
        spec = load_segmenter_spec(folder / SEGMENTER_SPEC_NAME)
        if not isinstance(spec, ReferenceSegmenterSpec):
            raise ConfigError(f"{folder / SEGMENTER_SPEC_NAME}: not a reference segmenter (kind {spec.kind})")
        runtime = resolve_runtime(device, precision)  # type: ignore[arg-type]
        network = build_network(spec)
        path = folder / WEIGHTS_NAME
        state = {key: value.float() for key, value in read_state_dict(path).items()}  # stored as fp16
        check_state_dict(state, network, str(path))
        check_values(state, str(path))
        network.load_state_dict(state)
        return cls(network.to(runtime.device), spec, runtime.device, runtime.precision, folder)

    @classmethod
    def builtin(cls, device: str = "auto", precision: str = "fp32") -> ReferenceSegmenter:
        """The shipped reference segmenter (``weights/segmenter``).

        Raises:
            CheckpointError: it is not there (a checkout without it, or an image built without it).
        """
        for folder in BUILTIN_DIRS:
            if (folder / WEIGHTS_NAME).is_file():
                return cls.open(folder, device, precision)
        raise CheckpointError(
            "the built-in reference segmenter is missing (looked for "
            + ", ".join(str(folder / WEIGHTS_NAME) for folder in BUILTIN_DIRS)
            + ")"
        )

    @property
    def accepts_absent_sequence(self) -> bool:
        """Trained with sequence dropout: it segments a case with one sequence absent (as zeros)."""
        return self.spec.accepts_absent_sequence

    def probabilities(self, volumes: Sequence[np.ndarray]) -> Tensor:
        """``(3, *grid)`` WT, TC, ET probabilities of one case's volumes (in ``spec.channels`` order)."""
        inputs = network_input(volumes, self.spec).to(self.device).unsqueeze(0)
        with torch.inference_mode(), autocast(self.device, self.precision):
            if self.spec.window is None:
                logits = self.network(inputs)[0]
            else:
                from monai.inferers import sliding_window_inference

                window = self.spec.window
                logits = sliding_window_inference(
                    inputs, window, 1, self.network, overlap=0.5, mode="gaussian"
                )[0]
        return regions_on_grid(logits, np.shape(volumes[0]), self.spec).cpu()

    def segment(self, case: CompleteCase) -> np.ndarray:
        """Canonical labels of ``case`` on its grid (``uint8``, values 0 to 3)."""
        volumes = case.volumes([MRISequence(seq) for seq in self.spec.channels])
        return self.labels_of([v.data for v in volumes])

    def segment_missing(self, case: CompleteCase, absent: MRISequence) -> np.ndarray:
        """Canonical labels of ``case`` with ``absent`` left out (given as zeros, as in training); its
        file is not read.

        Raises:
            SegmentationError: this segmenter was not trained with a sequence absent.
        """
        if not self.accepts_absent_sequence:
            raise SegmentationError(
                case.case_id, f"{self.name} was trained on complete cases only; it cannot leave {absent} out"
            )
        order = [MRISequence(seq) for seq in self.spec.channels]
        kept = [seq for seq in order if seq != absent]
        present = dict(zip(kept, case.volumes(kept), strict=True))
        shape = present[kept[0]].shape
        return self.labels_of(
            [present[s].data if s in present else np.zeros(shape, np.float32) for s in order]
        )

    def labels_of(self, volumes: Sequence[np.ndarray]) -> np.ndarray:
        """Canonical labels of one case's volumes (in ``spec.channels`` order; zeros for one left out)."""
        regions = (self.probabilities(volumes) > self.spec.threshold).numpy()
        return labels_from_regions(regions[0], regions[1], regions[2])
