"""Training runs end to end, the flow behind ``cwdm train``: read the cases once, then for each target
build the trainer on this process's device, resume from its newest checkpoint (or start from given
weights), train until done, out of time or asked to stop, and export the weights.

Several targets are trained in turn by one process on one copy of the data: a target's run folder is
``OUT/<target>/`` and all of them export into one weights directory (``OUT/weights/`` by default). A
single target keeps the run folder ``OUT/`` itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ConfigError
from ..resumable import StepReport
from ..weights.folder import WeightsDir
from .data import TrainingCases
from .distributed import make_trainer
from .trainer import Trainer, TrainingConfig

log = logging.getLogger(__name__)


def train_targets(
    data_dir: Path,
    out_dir: Path,
    configs: Sequence[TrainingConfig],
    *,
    weights_dir: Path | None = None,
    resume: bool = True,
    init_weights: Path | None = None,
    cache_bytes: int | None = None,
    cache_dir: Path | None = None,
    max_seconds: float | None = None,
    on_log: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    exclude: tuple[str, ...] = (),
) -> list[Trainer]:
    """Train the denoiser of each config's target on the complete cases of ``data_dir``, in turn.

    Args:
        data_dir: One sub-folder per case with all four sequences (others are ignored).
        out_dir: The run folder of a single target, or the parent of one run folder per target.
        configs: One per target, in training order; the targets must differ.
        weights_dir: Where the weights are exported (``<target>.safetensors`` and ``model.yaml``);
            default ``out_dir/weights``.
        resume: Continue each target from the newest checkpoint of its run folder, when there is one (a
            target already at its last step is only re-exported).
        init_weights: Start new runs from these published-layout weights: a file (one target) or a weights
            directory (a checkpoint per target); ignored when resuming.
        cache_bytes: Keep at most this many bytes of preprocessed cases in memory (``None``: all).
        cache_dir: Also keep preprocessed cases on disk there (:class:`TrainingCases`).
        max_seconds: Stop each target's run after this many seconds (checkpointed; a rerun goes on).
        on_log: Called with each logged :class:`StepReport`.
        exclude: Case ids left out of training (the held-out cases).
        should_stop: Asked after every step; once true, the current target checkpoints its step and no
            further target starts.

    Returns:
        The trainers, in ``configs`` order, of the targets that ran; ``trainer.step < iterations`` for
        one that was stopped early.

    Raises:
        CwdmError: no complete case, an unreadable case, a checkpoint of other settings, a diverged loss.
    """
    targets = [config.target for config in configs]
    if len(set(targets)) != len(targets) or not targets:
        raise ConfigError(f"expected one or more different targets, got {[str(t) for t in targets]}")
    multiple = 2 * configs[0].spec.architecture.size_multiple
    labels = any(config.needs_labels for config in configs)
    data = TrainingCases.from_folder(
        data_dir, multiple, cache_bytes=cache_bytes, cache_dir=cache_dir, labels=labels, exclude=exclude
    )
    out_dir = Path(out_dir)
    weights_dir = Path(weights_dir) if weights_dir is not None else out_dir / "weights"
    trainers = []
    for config in configs:
        run_dir = out_dir if len(configs) == 1 else out_dir / str(config.target)
        trainer = make_trainer(config, data, run_dir, weights_dir)
        if trainer.device != data.device and trainer.device.type == "cuda":
            _load_onto(data, trainer)
        if resume and (latest := trainer.latest_checkpoint()) is not None:
            trainer.load_checkpoint(latest)
            log.info("%s: resumed from %s at step %d", config.target, latest, trainer.step)
        elif init_weights is not None:
            source = _init_file(Path(init_weights), config, several=len(configs) > 1)
            trainer.load_weights(source)
            log.info("%s: starting from the weights in %s", config.target, source)
        log.info("training %s on %d cases, %s", config.target, len(data), trainer.device)
        trainer.run(on_log=on_log, should_stop=should_stop, max_seconds=max_seconds)
        trainers.append(trainer)
        if should_stop is not None and should_stop():
            break
    return trainers


def _load_onto(data: TrainingCases, trainer: Trainer) -> None:
    """Keep every case on the trainer's GPU, so that the batches are made there (read once, here)."""
    start = time.perf_counter()
    data.to(trainer.device)
    data.preload()
    log.info(
        "%d cases on %s: %.2f GB, read in %.1f s",
        len(data),
        trainer.device,
        data.nbytes / 1e9,
        time.perf_counter() - start,
    )


def _init_file(path: Path, config: TrainingConfig, several: bool) -> Path:
    if path.is_dir():
        return WeightsDir.open(path).checkpoint(config.target)
    if several:
        raise ConfigError(f"--init-weights {path}: several targets need a weights directory, not one file")
    return path


def train_folder(data_dir: Path, out_dir: Path, config: TrainingConfig, **options: object) -> Trainer:
    """:func:`train_targets` for one target (``out_dir`` is its run folder); returns its trainer."""
    return train_targets(data_dir, out_dir, [config], **options)[0]  # type: ignore[arg-type]
