"""A training run end to end, the flow behind ``cwdm train``: read the cases, build the trainer on this
process's device, resume from the newest checkpoint (or start from given weights), train until done or
asked to stop, export the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .data import TrainingCases
from .distributed import make_trainer
from .trainer import StepReport, Trainer, TrainingConfig

log = logging.getLogger(__name__)


def train_folder(
    data_dir: Path,
    out_dir: Path,
    config: TrainingConfig,
    *,
    weights_dir: Path | None = None,
    resume: bool = True,
    init_weights: Path | None = None,
    cache_bytes: int | None = None,
    on_log: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Trainer:
    """Train ``config.target``'s denoiser on the complete cases of ``data_dir``.

    Args:
        data_dir: One sub-folder per case with all four sequences (others are ignored).
        out_dir: ``checkpoints/``, ``train_log.csv`` and, by default, ``weights/``.
        config: The run's settings.
        weights_dir: Where to export ``<target>.safetensors`` and ``model.yaml`` (default
            ``out_dir/weights``).
        resume: Continue from the newest checkpoint in ``out_dir/checkpoints`` when there is one.
        init_weights: Start a new run from these published-layout weights (ignored when resuming).
        cache_bytes: Keep at most this many bytes of preprocessed cases in memory (``None``: all).
        on_log: Called with each logged :class:`StepReport`.
        should_stop: Asked after every step; once true, the run checkpoints the step and returns.

    Returns:
        The trainer after the run: ``trainer.step < config.iterations`` when it was stopped early.

    Raises:
        CwdmError: no complete case, an unreadable case, a checkpoint of other settings, a diverged loss.
    """
    data = TrainingCases.from_folder(
        data_dir, 2 * config.spec.denoiser_config().size_multiple, cache_bytes=cache_bytes
    )
    trainer = make_trainer(config, data, out_dir, weights_dir)
    if resume and (latest := trainer.latest_checkpoint()) is not None:
        trainer.load_checkpoint(latest)
        log.info("resumed from %s at step %d", latest, trainer.step)
    elif init_weights is not None:
        trainer.load_weights(init_weights)
        log.info("starting from the weights in %s", init_weights)
    log.info("training %s on %d cases, %s", config.target, len(data), trainer.device)
    trainer.run(on_log=on_log, should_stop=should_stop)
    return trainer
