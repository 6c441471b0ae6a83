"""One worker process per GPU: the batches of a run shared out to the visible GPUs, each worker with its
own synthesizer on its own device, the results merged back into the sequential order
(:func:`cwdm.inference.throughput.run_workers` does the process handling).

A worker builds its synthesizer from a factory that must be picklable (workers are spawned): from the
weights directory (what :meth:`Synthesizer.from_weights` arranges), or from in-memory copies of the models
(a synthesizer built from loaded parts). The synthesizer class is passed in, not imported, so that this
module and :mod:`cwdm.inference.synthesizer` do not import each other.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..cases.discovery import Case
from ..config import RunParameters, SamplingSettings
from ..method.denoiser import Denoiser
from ..method.schedule import NoiseSchedule
from ..runtime import Runtime
from ..sequences import MRISequence
from .fastpath import FastPathOptions
from .report import CaseCallback, CaseResult
from .throughput import Throughput, WorkerEvents, run_workers

if TYPE_CHECKING:
    from .synthesizer import BatchStepCallback, Synthesizer

#: Builds the synthesizer of one worker on its device.
WorkerFactory = Callable[[torch.device], "Synthesizer"]


def factory_from_weights(
    cls: type[Synthesizer], weights_dir: Path, params: RunParameters, targets: tuple[MRISequence, ...]
) -> WorkerFactory:
    """Workers that load the same weights with the same parameters, each on its own device."""
    return functools.partial(_from_weights, cls, weights_dir, params, targets)


def run_sharded(
    synth: Synthesizer,
    batches: Sequence[tuple[MRISequence, Sequence[Case]]],
    out_dir: Path,
    record: CaseCallback,
    on_step: BatchStepCallback | None,
    qc_dir: Path | None = None,
) -> None:
    """Share ``batches`` out to one worker process per device of ``synth.throughput``; record their
    results in case order. A case whose worker died without reporting it fails (``WorkerError``)."""
    targets = {case.case_id: target for target, cases in batches for case in cases}
    factory = synth.worker_factory or functools.partial(
        _from_parts,
        type(synth),
        {target: copy.deepcopy(model).cpu() for target, model in synth.models.items()},
        synth.settings,
        synth.runtime.precision,
        synth.schedule,
        synth.fast_path,
    )

    def lost(case_id: str, reason: str) -> CaseResult:
        return CaseResult(case_id, "failed", targets[case_id], error=reason, error_type="WorkerError")

    run_workers(
        functools.partial(_run_shard, factory, out_dir, qc_dir),
        batches,
        synth.throughput.devices,
        record=record,
        order=list(targets),
        key=lambda result: result.case_id,
        lost=lost,
        on_step=on_step,
    )


def _from_weights(
    cls: type[Synthesizer],
    weights_dir: Path,
    params: RunParameters,
    targets: tuple[MRISequence, ...],
    device: torch.device,
) -> Synthesizer:
    """A worker's synthesizer: the same weights and parameters, on ``device`` only."""
    worker = params.model_copy(update={"device": device.type})
    return cls.from_weights(
        weights_dir, worker, targets, throughput=Throughput.for_devices([device], params.batch_size)
    )


def _from_parts(
    cls: type[Synthesizer],
    models: Mapping[MRISequence, Denoiser],
    settings: SamplingSettings,
    precision: str,
    schedule: NoiseSchedule,
    fast_path: FastPathOptions,
    device: torch.device,
) -> Synthesizer:
    """A worker's synthesizer from in-memory models (copied to ``device``)."""
    return cls(
        {target: model.to(device) for target, model in models.items()},
        settings,
        Runtime(device, precision),
        schedule,
        fast_path=fast_path,
        throughput=Throughput.for_devices([device], settings.batch_size),
    )


def _run_shard(
    factory: WorkerFactory,
    out_dir: Path,
    qc_dir: Path | None,
    device: torch.device,
    batches: Iterable[tuple[MRISequence, Sequence[Case]]],
    events: WorkerEvents,
) -> None:
    """The work of one worker process (see :func:`cwdm.inference.throughput.run_workers`)."""
    factory(device).process(batches, out_dir, events.record, events.on_step, qc_dir)
