"""Training one target's denoiser with the published objective, resumable bit for bit.

The objective (docs/METHOD.md, "Training objective"): x0 = scaled coefficients of the target, condition =
scaled coefficients of the other three sequences, t uniform in 0..T-1, noise drawn in image space and wavelet
transformed (not LLL-scaled), loss = MSE between predicted and true x0. Adam, lr 1e-5, batch 1 by
default. Preprocessing is the inference preprocessing (:mod:`cwdm.cases.volumes`).

Every random draw of the loop comes from seeded generators whose states are saved in each checkpoint,
so a resumed run continues exactly as the uninterrupted one would have. Per step, in this order: the
case picks, the crop offsets (per case and axis), the flips (per case, when enabled) and the timesteps
from one CPU ``torch.Generator``; then the noise, from a generator on the training device (on a CPU, the
same generator), so that a GPU run draws its noise where it is used. Multi-GPU training uses torchrun
+ DistributedDataParallel; each rank draws from its own streams (seeded with ``seed + rank``).

Data path: the cases are read and preprocessed once and kept as 16-bit levels
(:mod:`cwdm.training.data`); on a GPU they are kept on the GPU, where each step's crops, flips, wavelet
transforms and noise are made, so the processor is not what the GPU waits for.
"""

from __future__ import annotations

import copy
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..atomic import write_atomic
from ..config import MODEL_SPEC_NAME, ModelSpec
from ..errors import CheckpointError, ConfigError
from ..method.denoiser import Denoiser
from ..method.schedule import NoiseSchedule
from ..method.wavelets import build_condition, dwt3d, encode
from ..resumable import ResumableRun
from ..runtime import autocast, resolve_precision
from ..sequences import CANONICAL_ORDER, MRISequence, condition_order
from ..weights.checkpoints import check_state_dict, read_state_dict, write_state_dict
from .data import TrainingCases, dequantise, random_crop, random_flip
from .objectives import SegmentationConsistency, weighted_mse

log = logging.getLogger(__name__)

PrecisionName = str  # "fp32" | "bf16" | "fp16"
LrSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a training run; the defaults are the published hyper-parameters.

    Attributes:
        target: The sequence this model synthesises.
        spec: Architecture, schedule and the sampling defaults written to ``model.yaml``.
        iterations: Total optimiser steps (1.2M published).
        lr: Adam learning rate (1e-5 published).
        batch_size: Cases per step and per process (1 published).
        crop_size: Train on random crops of this image-space size (each a multiple of
            ``2 * size_multiple``) instead of whole volumes; ``None`` trains on whole volumes.
        ema_rate: Keep an exponential moving average of the weights at this rate (e.g. 0.9999) and
            export it instead of the raw weights; ``None`` disables it.
        save_every: Write a resumable checkpoint every this many steps (and at the end).
        log_every: Append a row to the CSV log every this many steps.
        seed: Seed of the loop's generator.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (GroupNorm stays float32): ``fp16`` on a
            CUDA GPU, ``bf16`` on a GPU or a CPU with native bf16 (:func:`cwdm.runtime.cpu_has_native_bf16`).
        grad_clip: Clip the gradient norm to this value; ``None`` (published) disables it.
        flip: Mirror each drawn case left-right with probability 1/2 (not published; augments small
            training sets).
        lr_schedule: ``constant`` (published) or ``cosine``: the learning rate decays from ``lr`` to 0
            over ``iterations`` as ``lr * (1 + cos(pi * step / iterations)) / 2``.
        tumour_weight: Weigh the squared error inside the tumour ``1 + tumour_weight`` times
            (:mod:`cwdm.training.objectives`; 0, published: plain MSE).
        segmentation_weight: Add the segmentation-consistency term through ``segmenter`` this many times
            (0, published: none).
        segmenter: The frozen reference segmenter of that term (a folder, or ``builtin``).
    """

    target: MRISequence
    spec: ModelSpec = field(default_factory=ModelSpec)
    iterations: int = 1_200_000
    lr: float = 1e-5
    batch_size: int = 1
    crop_size: tuple[int, int, int] | None = None
    ema_rate: float | None = None
    save_every: int = 100_000
    log_every: int = 100
    seed: int = 0
    precision: PrecisionName = "fp32"
    grad_clip: float | None = None
    flip: bool = False
    lr_schedule: LrSchedule = "constant"
    tumour_weight: float = 0.0
    segmentation_weight: float = 0.0
    segmenter: str | None = None

    @property
    def needs_labels(self) -> bool:
        """Whether the objective reads the cases' tumour labels."""
        return self.tumour_weight > 0 or self.segmentation_weight > 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "target", MRISequence(self.target))
        except ValueError as exc:
            names = ", ".join(str(seq) for seq in CANONICAL_ORDER)
            raise ConfigError(f"unknown target {self.target!r}; expected one of {names}") from exc
        multiple = 2 * self.spec.architecture.size_multiple
        if self.crop_size is not None:
            crop = tuple(self.crop_size)
            if len(crop) != 3 or any(c < multiple or c % multiple for c in crop):
                raise ConfigError(
                    f"crop_size must be three positive multiples of {multiple} (image space), "
                    f"got {self.crop_size}"
                )
            object.__setattr__(self, "crop_size", crop)
        checks = {
            "iterations": self.iterations >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "save_every": self.save_every >= 1,
            "log_every": self.log_every >= 1,
            "precision": self.precision in ("fp32", "bf16", "fp16"),
            "ema_rate": self.ema_rate is None or 0 < self.ema_rate < 1,
            "lr_schedule": self.lr_schedule in ("constant", "cosine"),
            "tumour_weight": self.tumour_weight >= 0,
            "segmentation_weight": self.segmentation_weight >= 0
            and (self.segmentation_weight == 0 or self.segmenter is not None),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"invalid training settings: {', '.join(bad)}")

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that follows ``step`` finished steps."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, self.iterations) / self.iterations))

    def to_record(self) -> dict[str, Any]:
        """A plain-data record of the config (stored in checkpoints, compared on resume)."""
        record = asdict(self)
        record["target"] = str(self.target)
        record["spec"] = self.spec.model_dump(mode="json")
        record["crop_size"] = list(self.crop_size) if self.crop_size else None
        return record


def training_batch(
    volumes: Tensor,
    target: MRISequence,
    schedule: NoiseSchedule,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Build one training example set from ``(B, 4, X, Y, Z)`` canonical-order volumes.

    Args:
        volumes: The cases' values in [0, 1], on the training device.
        target: The sequence to synthesise.
        schedule: The training noise schedule.
        generator: CPU generator of the timesteps (and of the noise when ``noise_generator`` is None).
        noise_generator: Generator on ``volumes``' device for the noise.

    Returns:
        ``(x_in, t, x0)`` on ``volumes``' device: the network input ``(B, 32, ...)`` (noisy target
        coefficients then the condition), timestep values ``(B,)`` and the clean target coefficients
        ``(B, 8, ...)``.
    """
    order = {seq: i for i, seq in enumerate(CANONICAL_ORDER)}
    x0 = encode(volumes[:, order[target]].unsqueeze(1))
    cond = build_condition(volumes[:, [order[s] for s in condition_order(target)]])
    t_index = torch.randint(len(schedule), (volumes.shape[0],), generator=generator)
    noise_source = noise_generator or generator
    noise = torch.randn(volumes[:, :1].shape, generator=noise_source, device=noise_source.device)
    x_t = schedule.q_sample(x0, t_index.to(volumes.device), dwt3d(noise.to(volumes.device)))  # unscaled
    return torch.cat([x_t, cond], dim=1), schedule.timesteps[t_index].to(volumes.device), x0


def ema_decay(rate: float, updates_done: int) -> float:
    """The EMA decay of the next update: ``min(rate, (1 + n) / (10 + n))`` after ``n`` updates.

    Without this warm-up an average that starts at the initial weights keeps ``rate ** n`` of them
    after ``n`` steps: 61 % after 500 steps at rate 0.999, and the initial output convolution is zero,
    so a short run's averaged model predicted intensities far too dark (measured on the demo runs).
    """
    return min(rate, (1.0 + updates_done) / (10.0 + updates_done))


class Trainer(ResumableRun):
    """Owns the model, optimiser, EMA, generators and step; checkpoints and resumes
    (:class:`cwdm.resumable.ResumableRun`).

    Args:
        config: The run's settings.
        data: The training cases.
        out_dir: Where ``checkpoints/``, ``train_log.csv`` and (by default) ``weights/`` go.
        device: Where to train.
        weights_dir: Where to export the inference weights (``<target>.safetensors`` + model.yaml).
    """

    FORMAT = "cwdm-training-checkpoint-v1"

    def __init__(
        self,
        config: TrainingConfig,
        data: TrainingCases,
        out_dir: Path,
        device: torch.device | str = "cpu",
        weights_dir: Path | None = None,
    ) -> None:
        super().__init__(config, out_dir, dist.get_rank() if dist.is_initialized() else 0)
        self.config: TrainingConfig = config
        self.data = data
        self.weights_dir = Path(weights_dir) if weights_dir else self.out_dir / "weights"
        self.device = torch.device(device)
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.schedule = config.spec.schedule()
        if resolve_precision(config.precision, self.device)[0] != config.precision:
            # Unlike inference, no fallback: the precision is part of the run's identity (resume checks it).
            need = "a CUDA GPU" if config.precision == "fp16" else "a GPU or a CPU with AVX512-BF16 or AMX"
            raise ConfigError(f"--precision {config.precision} needs {need}; this run is on {self.device}")

        with torch.random.fork_rng(devices=[]):  # seeded initial weights, identical on every rank
            torch.manual_seed(config.seed)
            self.model = Denoiser(config.spec.architecture).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.ema_rate else None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.generator = torch.Generator().manual_seed(config.seed + self.rank)
        # The noise is drawn where it is used: on a GPU from a generator there, on a CPU from the loop's.
        self.noise_generator = (
            None
            if self.device.type == "cpu"
            else torch.Generator(device=self.device).manual_seed(config.seed + self.rank)
        )
        self.consistency = _consistency(config, self.device)
        # Cases of the next step being read in the background (only for cases not in memory).
        self._prefetched: dict[int, Future[Tensor]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._module: nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.world_size > 1
            else self.model
        )

    # -- data ---------------------------------------------------------------------------------
    def _next_volumes(self) -> tuple[Tensor, Tensor | None]:
        """Draw ``batch_size`` cases (uniformly, from the loop's generator), crop, flip; on the device.

        Returns ``(B, 4, ...)`` values in [0, 1] and, when the objective reads them, ``(B, ...)`` labels."""
        picks = torch.randint(len(self.data), (self.config.batch_size,), generator=self.generator)
        crops = []
        for index in picks:
            crop = random_crop(self._case(int(index)), self.config.crop_size, self.generator).to(self.device)
            # As int32 (exact for 16-bit levels and labels): torch flips no uint16 tensor on a CPU.
            crop = crop.to(torch.int32)
            crops.append(random_flip(crop, self.generator) if self.config.flip else crop)
        for future in self._prefetched.values():  # a guess that did not come true (after a resume)
            future.cancel()
        self._prefetched.clear()
        batch = torch.stack(crops)
        labels = batch[:, 4] if self.config.needs_labels else None
        return dequantise(batch[:, :4]), labels

    def _case(self, index: int) -> Tensor:
        future = self._prefetched.pop(index, None)
        return future.result() if future is not None else self.data.levels(index)

    def _prefetch_next(self) -> None:
        """Start reading the cases the next step will draw, while this step computes.

        The next step's case draw is the generator's next draw; it is made here on a copy of the
        generator, so the loop's own sequence of draws (and so its numerics) does not change.
        """
        peek = torch.Generator()
        peek.set_state(self.generator.get_state())
        picks = torch.randint(len(self.data), (self.config.batch_size,), generator=peek).tolist()
        wanted = [i for i in dict.fromkeys(picks) if not self.data.is_cached(i) and i not in self._prefetched]
        if not wanted:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.batch_size, thread_name_prefix="cwdm-prefetch")
        for index in wanted:
            self._prefetched[index] = self._pool.submit(self.data.levels, index)

    def close(self) -> None:
        """Stop the background reading of cases."""
        for future in self._prefetched.values():
            future.cancel()
        self._prefetched.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- one step -----------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimiser step; returns the batch loss."""
        volumes, labels = self._next_volumes()
        x_in, t, x0 = training_batch(
            volumes, self.config.target, self.schedule, self.generator, self.noise_generator
        )
        self._prefetch_next()  # every draw of this step is made: the next case draw is known
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config.precision):
            pred = self._module(x_in, t)
        loss = weighted_mse(pred, x0, labels, self.config.tumour_weight)
        if self.consistency is not None and labels is not None:
            with autocast(self.device, self.config.precision):
                term = self.consistency(pred, volumes, labels)
            loss = loss + self.config.segmentation_weight * term
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            decay = ema_decay(self.config.ema_rate, self.step)
            with torch.no_grad():
                for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                    ema_p.lerp_(p, 1.0 - decay)
        self.step += 1
        return float(loss.detach())

    def stop_agreed(self, requested: bool) -> bool:
        """True on every rank once any rank is asked to stop: ranks leave the loop at the same step."""
        if self.world_size == 1:
            return requested
        flag = torch.tensor([float(requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -- checkpoints --------------------------------------------------------------------------
    def model_state(self) -> dict[str, Any]:
        """Weights, optimiser, EMA, scaler and generators."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "noise_generator": None if self.noise_generator is None else self.noise_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def changed_settings(self, theirs: dict[str, Any]) -> list[str]:
        """The settings a resumed run must share (``save_every`` and the like may change)."""
        ours = self.config.to_record()
        resumable = (
            "target",
            "spec",
            "lr",
            "batch_size",
            "crop_size",
            "ema_rate",
            "seed",
            "precision",
            "flip",
            "lr_schedule",
            "tumour_weight",
            "segmentation_weight",
            "segmenter",
        )
        return [key for key in resumable if ours[key] != theirs.get(key)]

    def load_model_state(self, state: dict[str, Any], path: Path) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])
        self.generator.set_state(state["generator"])
        if self.noise_generator is not None:
            if state.get("noise_generator") is None:
                raise CheckpointError(
                    f"{path}: written by a run on a CPU; it resumes on a CPU only (or start a new run "
                    "from its exported weights with --init-weights)"
                )
            self.noise_generator.set_state(state["noise_generator"].cpu())
        torch.set_rng_state(state["torch_rng"])

    def export_weights(self) -> Path:
        """Write ``<target>.safetensors`` (EMA weights when enabled) and ``model.yaml``."""
        spec_path = self.weights_dir / MODEL_SPEC_NAME
        spec_text = self.config.spec.to_yaml()
        if spec_path.exists() and spec_path.read_text() != spec_text:
            raise ConfigError(
                f"{spec_path} describes a different model than this run; export to another --weights-dir"
            )
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        source = self.ema if self.ema is not None else self.model
        path = write_state_dict(source.state_dict(), self.weights_file)
        write_atomic(spec_path, spec_text)
        return path

    def load_weights(self, path: Path) -> None:
        """Start from published-layout weights (e.g. to fine-tune on whole volumes after crop training).

        The weights go into the model and, when enabled, the EMA; the optimiser starts fresh.

        Raises:
            CheckpointError: unreadable file or a key/shape mismatch with this run's architecture.
        """
        state = read_state_dict(path)
        check_state_dict(state, self.model, str(path))
        self.model.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state)

    @property
    def weights_file(self) -> Path:
        """The exported inference weights of this target."""
        return self.weights_dir / f"{self.config.target}.safetensors"


def _consistency(config: TrainingConfig, device: torch.device) -> SegmentationConsistency | None:
    """The segmentation-consistency term of ``config`` on ``device`` (``None`` without one)."""
    if config.segmentation_weight <= 0 or config.segmenter is None:
        return None
    from ..segmentation.reference import ReferenceSegmenter

    reference = (
        ReferenceSegmenter.builtin("cpu")
        if config.segmenter == "builtin"
        else ReferenceSegmenter.open(Path(config.segmenter), "cpu")
    )
    spec = reference.spec
    return SegmentationConsistency(reference.network, spec.channels, spec.downsample, config.target).to(
        device
    )
