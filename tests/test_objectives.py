"""The training objectives: tumour-weighted MSE and the segmentation-consistency term, against float64
and hand-composed oracles; the label channel of the training data; a training run with both."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cwdm.config import ModelSpec, ReferenceSegmenterSpec
from cwdm.method.wavelets import decode
from cwdm.segmentation.reference import build_network
from cwdm.segmentation.training import SegmenterTrainingConfig, train_segmenter
from cwdm.sequences import CANONICAL_ORDER, MRISequence
from cwdm.training.data import UNLABELLED, TrainingCases
from cwdm.training.objectives import SegmentationConsistency, tumour_blocks, weighted_mse
from cwdm.training.run import train_folder
from cwdm.training.trainer import TrainingConfig

from .segmentation.synthetic import write_case_folder

TINY = ModelSpec(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
SEG_SPEC = ReferenceSegmenterSpec(init_filters=8, blocks_down=(1, 1), blocks_up=(1,), downsample=2)


def _labels(seed: int, shape: tuple[int, ...] = (2, 8, 8, 8)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, shape, generator=generator, dtype=torch.int32)
    labels[labels == 2] = 0  # some background
    return labels


def test_tumour_blocks_are_the_blocks_holding_tumour() -> None:
    labels = _labels(0)
    labels[1] = UNLABELLED
    blocks = tumour_blocks(labels)
    oracle = (labels[0].numpy() > 0).reshape(4, 2, 4, 2, 4, 2).any(axis=(1, 3, 5))
    assert np.array_equal(blocks[0, 0].numpy().astype(bool), oracle)
    assert not blocks[1].any()  # an unlabelled case has no tumour to weigh


@pytest.mark.parametrize("weight", [0.0, 3.0])
def test_weighted_mse_against_float64(weight: float) -> None:
    generator = torch.Generator().manual_seed(1)
    pred, x0 = (
        torch.randn(2, 8, 4, 4, 4, generator=generator),
        torch.randn(2, 8, 4, 4, 4, generator=generator),
    )
    labels = _labels(2)
    got = float(weighted_mse(pred, x0, labels, weight))
    error = (pred.double() - x0.double()).numpy() ** 2
    tumour = (labels.numpy() > 0).reshape(2, 4, 2, 4, 2, 4, 2).any(axis=(2, 4, 6))
    w = 1.0 + weight * tumour[:, None].astype(np.float64) * np.ones((1, 8, 1, 1, 1))
    assert got == pytest.approx(float((w * error).sum() / w.sum()), rel=1e-6)
    assert float(weighted_mse(pred, x0, None, weight)) == pytest.approx(float(error.mean()), rel=1e-6)


def test_the_consistency_term_segments_the_completed_case() -> None:
    torch.manual_seed(0)
    network = build_network(SEG_SPEC)
    target = MRISequence("t1c")
    term = SegmentationConsistency(network, SEG_SPEC.channels, 2, target)
    generator = torch.Generator().manual_seed(4)
    pred = torch.randn(2, 8, 8, 8, 8, generator=generator, requires_grad=True)
    volumes = torch.rand(2, 4, 16, 16, 16, generator=generator)
    labels = _labels(5, (2, 16, 16, 16))
    labels[1] = UNLABELLED  # only the first case counts
    value = term(pred, volumes, labels)
    # The oracle: the first case completed by hand, the network called directly, MONAI's loss plus BCE.
    from monai.losses import DiceLoss

    synthesis = decode(pred[:1].detach()).clamp(0, 1)[:, 0]
    completed = volumes[:1].clone()
    completed[:, CANONICAL_ORDER.index(target)] = synthesis
    wt = (labels[:1] == 1) | (labels[:1] == 2) | (labels[:1] == 3)
    tc = (labels[:1] == 1) | (labels[:1] == 3)
    et = labels[:1] == 3
    regions = F.avg_pool3d(torch.stack([wt, tc, et], 1).float(), 2)
    with torch.no_grad():
        logits = network(F.avg_pool3d(completed, 2))
    expected = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)(logits, regions)
    expected = expected + F.binary_cross_entropy_with_logits(logits, regions)
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-5)
    value.backward()
    assert pred.grad is not None and pred.grad[0].abs().sum() > 0 and pred.grad[1].abs().sum() == 0
    assert all(p.grad is None for p in network.parameters())  # the segmenter stays frozen
    none = term(pred, volumes, torch.full_like(labels, UNLABELLED))
    assert float(none.detach()) == 0.0


def _cases(root: Path, labelled: tuple[bool, ...]) -> Path:
    for index, has_labels in enumerate(labelled):
        case_id = f"BraTS-GLI-{index:05d}-000"
        write_case_folder(
            root, case_id, 7 * index, (32, 32, 16), with_seg=has_labels, seg_convention="brats2021"
        )
    return root


def test_the_label_channel_holds_the_canonical_labels(tmp_path: Path) -> None:
    root = _cases(tmp_path / "cases", (True, False))
    data = TrainingCases.from_folder(root, 16, labels=True)
    plain = TrainingCases.from_folder(root, 16)
    first, second = data.levels(0), data.levels(1)
    assert first.shape[0] == 5 and torch.equal(first[:4], plain.levels(0))
    seg = nib.load(root / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz").get_fdata()
    raw = {0: 0, 1: 1, 2: 2, 4: 3}  # the fixture writes BraTS 2021 labels; canonical ET is 3
    expected = np.vectorize(raw.get)(seg.astype(int))
    assert np.array_equal(first[4].numpy()[:32, :32, :16], expected)
    assert bool((second[4] == UNLABELLED).all())
    assert data._cache_key(0) != plain._cache_key(0)  # a labelled case is cached apart


def test_a_run_with_both_terms_trains_and_resumes(tmp_path: Path) -> None:
    root = _cases(tmp_path / "cases", (True, True, False))
    seg_config = SegmenterTrainingConfig(spec=SEG_SPEC, iterations=1, crop_size=(16, 16, 8), save_every=1)
    segmenter = train_segmenter(root, tmp_path / "segmenter", seg_config).weights_dir
    config = TrainingConfig(
        target="t1c",
        spec=TINY,
        iterations=3,
        crop_size=(16, 16, 16),
        save_every=1,
        log_every=1,
        tumour_weight=4.0,
        segmentation_weight=0.5,
        segmenter=str(segmenter),
    )
    held_out = ("BraTS-GLI-00002-000",)
    straight = train_folder(root, tmp_path / "straight", config, exclude=held_out)
    assert len(straight.data) == 2 and straight.step == 3
    stopped = train_folder(root, tmp_path / "resumed", config, should_stop=lambda: True, exclude=held_out)
    assert stopped.step == 1
    resumed = train_folder(root, tmp_path / "resumed", config, exclude=held_out)
    assert resumed.step == 3
    for key, value in straight.model.state_dict().items():  # bit for bit, both terms included
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    other = TrainingConfig(**{**config.__dict__, "segmentation_weight": 0.0, "iterations": 5})
    with pytest.raises(Exception, match="segmentation_weight"):
        train_folder(root, tmp_path / "resumed", other, exclude=held_out)
    with pytest.raises(Exception, match="segmentation_weight"):
        TrainingConfig(target="t1c", spec=TINY, segmentation_weight=1.0)  # no segmenter named
