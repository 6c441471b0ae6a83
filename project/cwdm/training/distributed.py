"""Where training runs: one process per GPU under torchrun, or a single process.

Kept apart from :mod:`cwdm.training.trainer` so that the loop itself never asks what hardware exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from .data import TrainingCases
from .trainer import Trainer, TrainingConfig


def _init_distributed() -> torch.device:
    """Join the torchrun process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def make_trainer(
    config: TrainingConfig, data: TrainingCases, out_dir: Path, weights_dir: Path | None = None
) -> Trainer:
    """A :class:`Trainer` on this process's device, inside the torchrun group when there is one."""
    return Trainer(config, data, out_dir, device=_init_distributed(), weights_dir=weights_dir)
