"""The work of one process on its batches: prepare each case, sample its draws, write its output.

A batch is a list of planned cases of one target. Each is prepared (:func:`casework.prepare_case`: its
three sequences read and preprocessed, on a pool of threads), its same-shaped cases sampled together
through a :class:`~cwdm.inference.ledger.DrawLedger`, and each finished case written with its
provenance stamped into the header (:func:`casework.write_prediction`). With background I/O
(:class:`~cwdm.inference.throughput.Throughput`) the next batch is prepared and finished cases are written
on threads while the device samples.

This is also the one isolation boundary of the work (:func:`failure_results`): a
:class:`cwdm.CaseError` fails the case it names; any other exception, logged with its traceback, fails
the cases it concerns; KeyboardInterrupt and SystemExit pass. Results reach ``record`` in the order of
the sequential run, whichever thread produced them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..cases.discovery import Case
from ..config import SamplingSettings
from ..errors import CaseError
from ..sequences import MRISequence
from . import provenance
from .casework import PreparedCase, prepare_case, write_prediction
from .ledger import BatchFailed, DrawLedger, DrawSampler
from .report import CaseCallback, CaseResult
from .throughput import BackgroundWriter, OrderedRecorder, Throughput, prefetched

log = logging.getLogger(__name__)

#: Called after every sampling step as ``on_step(case_ids, done, total)`` for the batch being sampled.
BatchStepCallback = Callable[[tuple[str, ...], int, int], None]
#: A batch of the run: cases of one target.
Batch = tuple[MRISequence, Sequence[Case]]


class CaseSynthesizer(DrawSampler, Protocol):
    """What the work needs of a synthesizer (:class:`cwdm.inference.synthesizer.Synthesizer`)."""

    settings: SamplingSettings
    checkpoints: Mapping[MRISequence, Path]
    multiple: int

    def output_record(self, target: MRISequence | None = None) -> dict[str, Any]: ...


def process_batches(
    synth: CaseSynthesizer,
    batches: Iterable[Batch],
    out_dir: Path,
    record: CaseCallback,
    flow: Throughput,
    qc_dir: Path | None = None,
    on_step: BatchStepCallback | None = None,
) -> None:
    """Prepare, sample and write ``batches`` in this process (see the module).

    Results reach ``record`` in the order of the sequential run: each batch's preparation failures,
    then its cases as they are written (or fail), batch after batch. Also the work of one worker
    process of a sharded run (:mod:`cwdm.inference.workers`).
    """
    recorder: OrderedRecorder[CaseResult] = OrderedRecorder(record)
    write = _Writer(synth, out_dir, qc_dir)
    stepped = _flushing(recorder, on_step)
    try:
        with (
            BackgroundWriter(flow.max_pending_writes, flow.background_io) as writer,
            _sequence_pool(flow.prepare_workers) as pool,
        ):
            stream = prefetched(
                batches,
                lambda batch: _prepare(synth, batch, out_dir, pool),
                flow.prefetch_batches,
                flow.background_io,
            )
            with closing(stream):
                for (target, _), (prepared, failures) in stream:
                    recorder.extend(failures)
                    for group in _by_shape(prepared):
                        ledger = DrawLedger(target, group, synth.settings.samples)
                        for outcome in ledger.outcomes(synth, stepped):
                            if isinstance(outcome, BatchFailed):
                                recorder.extend(failure_results(outcome.error, outcome.cases, target))
                                continue
                            job = writer.submit(write, outcome.item, outcome.volumes, outcome.network_s)
                            recorder.add_future(job)
    finally:
        # Also when stopped: the cases written before the writer shut down are recorded as written
        # (the writes that had not started were cancelled and stay unrecorded).
        recorder.flush(wait=True)


def failure_results(error: Exception, cases: Sequence[Case], target: MRISequence | None) -> list[CaseResult]:
    """The results of ``cases`` after ``error``: a :class:`CaseError` fails the case it names; anything
    else, logged with its traceback, fails every case of ``cases``."""
    if isinstance(error, CaseError):
        return [
            CaseResult(error.case_id, "failed", target, error=error.detail, error_type=type(error).__name__)
        ]
    ids = ", ".join(case.case_id for case in cases)
    log.error("unexpected error while processing %s", ids, exc_info=error)
    message = f"unexpected {type(error).__name__}: {error}"
    return [
        CaseResult(case.case_id, "failed", target, error=message, error_type=type(error).__name__)
        for case in cases
    ]


@contextmanager
def isolated(cases: Sequence[Case], target: MRISequence | None, record: CaseCallback) -> Iterator[None]:
    """Run the block inside the isolation boundary: its failure becomes ``cases``' results."""
    try:
        yield
    except Exception as exc:  # the per-case isolation boundary (see the module)
        for result in failure_results(exc, cases, target):
            record(result)


def _prepare(
    synth: CaseSynthesizer, batch: Batch, out_dir: Path, pool: Executor | None
) -> tuple[list[PreparedCase], list[CaseResult]]:
    """Prepare each case of a batch (on the background thread when there is one); failures returned."""
    target, cases = batch
    prepared: list[PreparedCase] = []
    failures: list[CaseResult] = []
    for case in cases:
        with isolated([case], target, failures.append):
            prepared.append(
                prepare_case(case, target, out_dir, synth.multiple, synth.settings.postprocess, pool)
            )
    return prepared, failures


def _by_shape(prepared: Sequence[PreparedCase]) -> list[list[PreparedCase]]:
    """The prepared cases grouped by network shape (only same-shaped cases are sampled together)."""
    groups: dict[tuple[int, int, int], list[PreparedCase]] = {}
    for item in prepared:
        groups.setdefault(item.layout.network_shape, []).append(item)
    return list(groups.values())


class _Writer:
    """Writes a finished case with its provenance, inside the isolation boundary (on the writer thread
    when there is one); returns its results."""

    def __init__(self, synth: CaseSynthesizer, out_dir: Path, qc_dir: Path | None) -> None:
        self.synth = synth
        self.qc_dir = qc_dir
        self.digests = provenance.DigestCache()

    def __call__(self, item: PreparedCase, volumes: np.ndarray, network_s: float) -> list[CaseResult]:
        results: list[CaseResult] = []
        with isolated([item.case], item.target, results.append):
            checkpoint = self.synth.checkpoints.get(item.target)
            try:
                settings = self.synth.output_record(item.target)
                record = provenance.case_record(item.case, item.target, settings, checkpoint, self.digests)
            except OSError as exc:
                raise CaseError(item.case.case_id, f"cannot hash an input for provenance ({exc})") from exc
            result = write_prediction(
                item,
                volumes,
                item.elapsed_s + network_s,
                self.synth.settings.postprocess,
                checkpoint,
                self.qc_dir,
                network_s,
                header=provenance.stamp(item.reference.header, record),
            )
            results.append(replace(result, provenance=record))
        return results


def _flushing(recorder: OrderedRecorder[CaseResult], on_step: BatchStepCallback | None) -> BatchStepCallback:
    """``on_step`` that first hands over the cases the writer has finished meanwhile."""

    def stepped(ids: tuple[str, ...], done: int, total: int) -> None:
        recorder.flush()
        if on_step is not None:
            on_step(ids, done, total)

    return stepped


@contextmanager
def _sequence_pool(workers: int) -> Iterator[Executor | None]:
    """Threads that read and preprocess the sequences of a case concurrently; none for one worker."""
    if workers <= 1:
        yield None
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cwdm-read") as pool:
        yield pool
