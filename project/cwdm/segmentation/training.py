"""Training the reference segmenter (``cwdm segmenter train``), resumable like ``cwdm train``.

Data: every complete case of a folder that has a ``-seg`` file (ids in ``exclude`` left out), read and
laid out once (:func:`cwdm.segmentation.reference.network_input`; the region masks' block means are the
soft targets) and kept in memory: 7 channels of about 1.2 million float32 voxels a BraTS case at 2 mm.

Each step draws, from one seeded CPU generator in this order: the cases of the batch, per case the crop
offsets (three axes), the flips (three axes, probability 1/2 each), the intensity jitter (per
channel, a scale ``1 + u`` and a shift ``u`` inside the brain, ``u`` uniform in +-``intensity_jitter``)
and, with ``sequence_dropout`` above 0, whether the crop loses a sequence and then which one (uniform):
its channel is zeroed, as a case with that sequence absent is given to the segmenter.
Loss: soft Dice (MONAI ``DiceLoss`` on the sigmoid outputs) plus binary cross-entropy, per region.
AdamW, linear warm-up then cosine decay to 0. Every ``save_every`` steps a checkpoint (network,
optimiser, generator, step) is written atomically, and the weights are exported as float16 safetensors
with ``segmenter.yaml``; a rerun resumes bit for bit from the newest checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import write_atomic
from ..cases.discovery import discover_cases
from ..cases.reader import read_segmentation, read_sequences
from ..config import SEGMENTER_SPEC_NAME, ReferenceSegmenterSpec
from ..errors import ConfigError, CwdmError
from ..resumable import ResumableRun, StepReport
from ..runtime import autocast, resolve_precision
from ..sequences import MRISequence
from ..weights.checkpoints import read_state_dict, write_state_dict
from .labels import convention_mapping, detect_convention, region_masks, to_canonical
from .reference import WEIGHTS_NAME, build_network, grid_multiple, network_input, to_network_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmenterTrainingConfig:
    """Everything that defines a reference-segmenter training run.

    Attributes:
        spec: The network and its input layout.
        iterations: Optimiser steps.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup: Steps of linear warm-up before the cosine decay.
        batch_size: Crops per step.
        crop_size: Crop of the network grid (voxels of ``spec.downsample`` mm), each a multiple of the
            network's own multiple; larger than a case's axis means the whole axis (zero-padded).
        intensity_jitter: Half-width of the per-channel scale and shift augmentation.
        save_every: Checkpoint (and export) every this many steps, and at the end.
        log_every: A CSV row every this many steps.
        seed: Seed of the initial weights and of the loop's generator.
        precision: ``fp32`` or ``bf16`` (autocast around the network).
        exclude: Case ids left out of training (held-out cases).
        sequence_dropout: Probability that a crop has one sequence (chosen uniformly) zeroed, so that the
            segmenter also learns cases with a sequence absent; above 0 requires
            ``spec.accepts_absent_sequence`` (what the exported ``segmenter.yaml`` then declares).
    """

    spec: ReferenceSegmenterSpec = field(default_factory=ReferenceSegmenterSpec)
    iterations: int = 4000
    lr: float = 5e-4
    weight_decay: float = 1e-5
    warmup: int = 100
    batch_size: int = 1
    crop_size: tuple[int, int, int] = (96, 96, 64)
    intensity_jitter: float = 0.1
    save_every: int = 100
    log_every: int = 20
    seed: int = 0
    precision: str = "fp32"
    exclude: tuple[str, ...] = ()
    sequence_dropout: float = 0.0

    def __post_init__(self) -> None:
        multiple = 2 ** (len(self.spec.blocks_down) - 1)
        checks = {
            "iterations": self.iterations >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "crop_size": len(self.crop_size) == 3
            and all(c > 0 and c % multiple == 0 for c in self.crop_size),
            "intensity_jitter": 0 <= self.intensity_jitter < 1,
            "save_every": self.save_every >= 1,
            "log_every": self.log_every >= 1,
            "precision": self.precision in ("fp32", "bf16"),
            "sequence_dropout": 0 <= self.sequence_dropout < 1
            and (self.sequence_dropout > 0) == self.spec.accepts_absent_sequence,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid segmenter training settings: {', '.join(bad)}")

    def lr_at(self, step: int) -> float:
        """The learning rate of the update after ``step`` finished steps."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.iterations - self.warmup)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["spec"] = self.spec.model_dump(mode="json")
        record["crop_size"] = list(self.crop_size)
        record["exclude"] = list(self.exclude)
        return record


@dataclass
class SegmentationCases:
    """Training cases on the network grid: ``images`` ``(C, X', Y', Z')`` and ``targets`` ``(3, ...)``."""

    case_ids: list[str]
    images: list[Tensor]
    targets: list[Tensor]

    @classmethod
    def from_folder(
        cls, data_dir: Path, spec: ReferenceSegmenterSpec, exclude: Sequence[str] = ()
    ) -> SegmentationCases:
        """Read every complete case with a segmentation (any BraTS label convention).

        Raises:
            CwdmError: no such case, or an unreadable one (naming it).
        """
        ids, images, targets = [], [], []
        order = [MRISequence(seq) for seq in spec.channels]
        for case in discover_cases(Path(data_dir)):
            if not case.is_complete or case.case_id in exclude:
                continue
            seg = read_segmentation(case)
            if seg is None:
                continue
            volumes = read_sequences(case, order)
            labels = to_canonical(seg, convention_mapping(detect_convention(seg)), f"{case.case_id}-seg")
            masks = region_masks(labels)
            ids.append(case.case_id)
            images.append(network_input([v.data for v in volumes], spec))
            regions = torch.from_numpy(np.stack([masks[r] for r in ("wt", "tc", "et")]).astype(np.float32))
            targets.append(to_network_grid(regions, spec))
            log.info("read %s (%d of its voxels are tumour)", case.case_id, int(masks["wt"].sum()))
        if not ids:
            raise CwdmError(f"no complete case with a -seg file in {data_dir} (excluded: {list(exclude)})")
        return cls(ids, images, targets)

    def __len__(self) -> int:
        return len(self.case_ids)


def _crop_bounds(size: int, crop: int, generator: torch.Generator) -> slice:
    if crop >= size:
        return slice(0, size)
    start = int(torch.randint(size - crop + 1, (1,), generator=generator))
    return slice(start, start + crop)


def augmented_crop(
    image: Tensor, target: Tensor, config: SegmenterTrainingConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One random crop of a case, flipped and intensity-jittered (draws in the module's documented order).

    Returns ``(image, target)`` of the crop size (zero-padded where the case is smaller).
    """
    window = tuple(
        _crop_bounds(n, c, generator) for n, c in zip(image.shape[1:], config.crop_size, strict=True)
    )
    image, target = image[(slice(None), *window)], target[(slice(None), *window)]
    flips = [axis + 1 for axis in range(3) if bool(torch.rand(1, generator=generator) < 0.5)]
    if flips:
        image, target = image.flip(flips), target.flip(flips)
    jitter = config.intensity_jitter
    channels = image.shape[0]
    scale = 1 + (torch.rand(channels, generator=generator) * 2 - 1) * jitter
    shift = (torch.rand(channels, generator=generator) * 2 - 1) * jitter
    brain = image > 0
    image = image * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1) * brain
    if config.sequence_dropout > 0 and bool(torch.rand(1, generator=generator) < config.sequence_dropout):
        absent = int(torch.randint(channels, (1,), generator=generator))
        image = image.clone()
        image[absent] = 0
    pad = [c - n for n, c in zip(image.shape[1:], config.crop_size, strict=True)]
    if any(pad):
        padding = (0, max(0, pad[2]), 0, max(0, pad[1]), 0, max(0, pad[0]))
        image, target = torch.nn.functional.pad(image, padding), torch.nn.functional.pad(target, padding)
    return image, target


class SegmenterTrainer(ResumableRun):
    """Owns the network, optimiser, generator and step; checkpoints and resumes
    (:class:`cwdm.resumable.ResumableRun`, keeping the newest three checkpoints).

    Args:
        config: The run's settings.
        data: The training cases.
        out_dir: Receives ``checkpoints/``, ``train_log.csv`` and ``weights/`` (the exported segmenter).
        device: Where to train.
    """

    FORMAT = "cwdm-segmenter-checkpoint-v1"
    KEEP = 3

    def __init__(
        self,
        config: SegmenterTrainingConfig,
        data: SegmentationCases,
        out_dir: Path,
        device: torch.device | str = "cpu",
    ) -> None:
        from monai.losses import DiceLoss

        super().__init__(config, out_dir)
        self.config: SegmenterTrainingConfig = config
        self.data = data
        self.device = torch.device(device)
        if resolve_precision(config.precision, self.device)[0] != config.precision:  # type: ignore[arg-type]
            raise ConfigError(f"--precision {config.precision} is not available on {self.device}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.network = build_network(config.spec).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.dice_loss = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)

    @property
    def weights_dir(self) -> Path:
        return self.out_dir / "weights"

    @property
    def weights_file(self) -> Path:
        return self.weights_dir / WEIGHTS_NAME

    def batch(self) -> tuple[Tensor, Tensor]:
        """The next step's ``(images, targets)``, ``(B, C, *crop)`` and ``(B, 3, *crop)``."""
        picks = torch.randint(len(self.data), (self.config.batch_size,), generator=self.generator)
        pairs = [
            augmented_crop(self.data.images[i], self.data.targets[i], self.config, self.generator)
            for i in picks.tolist()
        ]
        images = torch.stack([p[0] for p in pairs]).to(self.device)
        targets = torch.stack([p[1] for p in pairs]).to(self.device)
        return images, targets

    def train_step(self) -> float:
        images, targets = self.batch()
        self.network.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config.precision):
            logits = self.network(images)
        logits = logits.float()
        loss = self.dice_loss(logits, targets) + torch.nn.functional.binary_cross_entropy_with_logits(
            logits, targets
        )
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def model_state(self) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_model_state(self, state: dict[str, Any], path: Path) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def export_weights(self) -> Path:
        """``weights/segmenter.safetensors`` (float16, half the size) and ``segmenter.yaml``."""
        return self.export_to(self.weights_dir)

    def export_to(self, folder: Path) -> Path:
        """The exported segmenter in ``folder`` (float16 weights and ``segmenter.yaml``)."""
        folder = Path(folder)
        state = {key: value.detach().half() for key, value in self.network.state_dict().items()}
        path = write_state_dict(state, folder / WEIGHTS_NAME)
        # It segments in windows of the size it was trained on (see ReferenceSegmenterSpec.window).
        spec = self.config.spec.model_copy(update={"window": tuple(self.config.crop_size)})
        write_atomic(folder / SEGMENTER_SPEC_NAME, spec.to_yaml())
        return path

    def load_weights(self, path: Path) -> None:
        """Start from exported weights (``segmenter.safetensors``); the optimiser starts afresh."""
        state = {key: value.float() for key, value in read_state_dict(path).items()}
        self.network.load_state_dict(state)


def train_segmenter(
    data_dir: Path,
    out_dir: Path,
    config: SegmenterTrainingConfig,
    *,
    resume: bool = True,
    init_weights: Path | None = None,
    device: str = "cpu",
    max_seconds: float | None = None,
    on_log: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SegmenterTrainer:
    """Train the reference segmenter on ``data_dir``'s segmented complete cases; the flow of the command.

    Resumes from the newest checkpoint of ``out_dir`` (unless ``resume`` is false), else starts from
    ``init_weights`` when given. Returns the trainer (its ``step`` says where it stopped).
    """
    grid_multiple(config.spec)  # validates the spec's layout before the (slow) reading
    data = SegmentationCases.from_folder(data_dir, config.spec, config.exclude)
    log.info("%d training cases: %s", len(data), ", ".join(data.case_ids))
    trainer = SegmenterTrainer(config, data, out_dir, device)
    latest = trainer.latest_checkpoint() if resume else None
    if latest is not None:
        trainer.load_checkpoint(latest)
        log.info("resumed from %s (step %d)", latest, trainer.step)
    elif init_weights is not None:
        trainer.load_weights(Path(init_weights))
        log.info("started from the weights %s", init_weights)
    if trainer.step >= config.iterations:
        trainer.export_weights()
        return trainer
    trainer.run(on_log=on_log, should_stop=should_stop, max_seconds=max_seconds)
    return trainer
