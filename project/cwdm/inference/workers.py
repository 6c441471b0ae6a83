"""One worker process per GPU: the batches of a run shared out to the visible GPUs, each worker with its
own synthesizer on its own device, the results merged back into the sequential order
(:func:`cwdm.inference.throughput.run_workers` does the process handling).

A worker builds its synthesizer with the run's worker factory, which must be picklable (workers are
spawned): :meth:`cwdm.inference.synthesizer.Synthesizer.from_weights` makes one that loads the same
weights on the worker's device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from ..errors import ConfigError
from .execution import Batch, BatchStepCallback, CaseSynthesizer, process_batches
from .report import CaseCallback, CaseResult
from .throughput import Throughput, WorkerEvents, run_workers

#: Builds the synthesizer of one worker on its device.
WorkerFactory = Callable[[torch.device], CaseSynthesizer]


def run_sharded(
    factory: WorkerFactory | None,
    batches: Sequence[Batch],
    out_dir: Path,
    record: CaseCallback,
    devices: Sequence[torch.device],
    qc_dir: Path | None = None,
    on_step: BatchStepCallback | None = None,
) -> None:
    """Share ``batches`` out to one worker process per device; record their results in case order. A case
    whose worker died without reporting it fails (``WorkerError``).

    Raises:
        ConfigError: no worker factory was given for a run over several devices.
    """
    if factory is None:
        raise ConfigError("a run over several devices needs a worker factory (Synthesizer.from_weights)")
    targets = {case.case_id: target for target, cases in batches for case in cases}

    def lost(case_id: str, reason: str) -> CaseResult:
        return CaseResult(case_id, "failed", targets[case_id], error=reason, error_type="WorkerError")

    run_workers(
        functools.partial(_run_shard, factory, out_dir, qc_dir),
        batches,
        tuple(devices),
        record=record,
        order=list(targets),
        key=lambda result: result.case_id,
        lost=lost,
        on_step=on_step,
    )


def _run_shard(
    factory: WorkerFactory,
    out_dir: Path,
    qc_dir: Path | None,
    device: torch.device,
    batches: Iterable[Batch],
    events: WorkerEvents,
) -> None:
    """The work of one worker process (see :func:`cwdm.inference.throughput.run_workers`)."""
    synth = factory(device)
    flow = Throughput.for_devices([device], synth.settings.batch_size)
    process_batches(synth, batches, out_dir, events.record, flow, qc_dir, events.on_step)
