"""What a denoiser's training minimises: the published MSE, optionally weighted inside the tumour, plus
optionally a segmentation-consistency term.

- **MSE** (published): the mean squared error between the predicted and the true clean coefficients
  (docs/METHOD.md, "Training objective").
- **Tumour weighting** (``tumour_weight`` w > 0): each coefficient's squared error is weighted 1 + w where
  its 2 x 2 x 2 block of the image holds tumour (the case's whole-tumour labels), 1 elsewhere, and the sum
  is divided by the sum of the weights: the same scale as the MSE, with the tumour counting (1 + w) times.
  Cases without labels count with weight 1 everywhere.
- **Segmentation consistency** (``segmentation_weight`` s > 0): the predicted clean volume, decoded to
  image space and clamped to [0, 1], takes the target's place beside the case's three real sequences,
  a frozen reference segmenter (:mod:`cwdm.segmentation.reference`) segments that completed case, and its
  soft Dice plus binary cross-entropy against the case's expert regions (WT, TC, ET) is added, times s.
  The gradient reaches the denoiser through the segmenter, whose weights stay fixed. As the 2024 BraSyn
  winner trained its refiner with a Dice term (Cho et al., BraSyn 2024), so that the synthesis keeps what
  a segmenter reads. Only labelled cases of a batch contribute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..method.wavelets import decode
from ..segmentation.labels import CANONICAL, CONVENTIONS, REGIONS
from ..sequences import CANONICAL_ORDER, MRISequence
from .data import UNLABELLED


def tumour_blocks(labels: Tensor) -> Tensor:
    """``(B, X, Y, Z)`` canonical labels -> ``(B, 1, X/2, Y/2, Z/2)``: 1 where a 2-voxel block holds
    tumour (any of the whole tumour's labels), else 0; an unlabelled case (:data:`UNLABELLED`) is 0."""
    whole = _region(labels, "wt") & (labels != UNLABELLED)
    return F.max_pool3d(whole.unsqueeze(1).float(), 2)


def weighted_mse(pred: Tensor, x0: Tensor, labels: Tensor | None, tumour_weight: float) -> Tensor:
    """The MSE of ``pred`` against ``x0`` (``(B, 8, ...)`` coefficients), each coefficient weighted 1 +
    ``tumour_weight`` inside the tumour blocks (:func:`tumour_blocks`), normalised by the weights' sum."""
    error = (pred.float() - x0) ** 2
    if tumour_weight <= 0 or labels is None:
        return error.mean()
    weight = 1.0 + tumour_weight * tumour_blocks(labels)
    return (weight * error).sum() / (weight.sum() * error.shape[1])


class SegmentationConsistency(nn.Module):
    """The segmentation-consistency term (see the module): a frozen reference segmenter on the completed
    case, soft Dice plus binary cross-entropy against the expert regions.

    Args:
        network: The reference segmenter's network (frozen here: eval mode, no gradients of its own).
        channels: Its input sequences, in order.
        downsample: Its block-averaging factor (its network sees a ``downsample`` mm grid).
        target: The sequence the denoiser synthesises.
    """

    def __init__(self, network: nn.Module, channels: Sequence[str], downsample: int, target: MRISequence):
        super().__init__()
        from monai.losses import DiceLoss

        self.network = network.eval().requires_grad_(False)
        self.order = [CANONICAL_ORDER.index(MRISequence(seq)) for seq in channels]
        self.target_index = CANONICAL_ORDER.index(MRISequence(target))
        self.downsample = downsample
        self.dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, pred: Tensor, volumes: Tensor, labels: Tensor) -> Tensor:
        """The term for the labelled cases of a batch (0 when none is).

        Args:
            pred: ``(B, 8, ...)`` predicted clean coefficients (LLL scaled as the network sees it).
            volumes: ``(B, 4, X, Y, Z)`` the cases' real sequences in [0, 1], canonical order.
            labels: ``(B, X, Y, Z)`` canonical labels, :data:`UNLABELLED` for a case without them.
        """
        labelled = (labels != UNLABELLED).flatten(1).all(1)
        if not bool(labelled.any()):
            return pred.sum() * 0.0
        pred, volumes, labels = pred[labelled], volumes[labelled], labels[labelled]
        synthesis = decode(pred.float()).clamp(0.0, 1.0)[:, 0]
        channels = [
            synthesis.unsqueeze(1) if index == self.target_index else volumes[:, index : index + 1]
            for index in self.order
        ]
        completed = torch.cat(channels, dim=1)
        regions = torch.stack([_region(labels, region) for region in ("wt", "tc", "et")], dim=1).float()
        if self.downsample > 1:
            completed = F.avg_pool3d(completed, self.downsample)
            regions = F.avg_pool3d(regions, self.downsample)  # soft targets, as the segmenter was trained
        logits = self.network(completed).float()
        return self.dice(logits, regions) + F.binary_cross_entropy_with_logits(logits, regions)


def _region(labels: Tensor, region: str) -> Tensor:
    """The boolean mask of a BraTS region (WT, TC, ET) of canonical labels."""
    values = [CONVENTIONS[CANONICAL][structure] for structure in REGIONS[region]]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    for value in values:
        mask |= labels == value
    return mask
