"""One run over a list of cases: the output folder checked, the plan made and claimed, the batches
worked (here, or by one worker process per GPU), and the report of every case.

The synthesizer samples; this module orchestrates. Errors of a case fail that case only
(:mod:`cwdm.inference.plan` and :mod:`cwdm.inference.execution` hold the isolation boundaries); an output
folder that overlaps the inputs or is not writable stops the run before any case; a stop requested by
a signal (:mod:`cwdm.signals`) or Ctrl-C ends it with :class:`cwdm.errors.Interrupted`, which carries
the report so far (docs/USAGE.md, "Bad inputs and faults").
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from ..cases.discovery import Case
from ..config import SamplingSettings
from ..errors import Interrupted
from ..runtime import Runtime
from ..sequences import CANONICAL_ORDER, MRISequence
from . import provenance, workers
from .claims import ClaimSet
from .execution import Batch, BatchStepCallback, CaseSynthesizer, process_batches
from .outputs import prepare_output_folder, prepare_qc_folder
from .plan import ExistingOutputs, Planned, plan_cases
from .report import CaseCallback, CaseResult, RunReport
from .throughput import Throughput

log = logging.getLogger(__name__)


class RunSynthesizer(CaseSynthesizer, Protocol):
    """What a run needs of a synthesizer beyond its work on batches."""

    runtime: Runtime
    unavailable: Mapping[MRISequence, str]
    target_warnings: Mapping[MRISequence, str]
    target_settings: Mapping[MRISequence, SamplingSettings]

    @property
    def targets(self) -> tuple[MRISequence, ...]: ...


@dataclass(frozen=True)
class RunOptions:
    """How a run over cases goes, beyond the synthesizer.

    Attributes:
        flow: Background I/O and worker devices (:class:`Throughput`).
        worker_factory: Builds the synthesizer of a worker device (must be picklable); needed when
            ``flow`` has several devices.
        qc_dir: Where each written case also gets its preview (and with several draws its uncertainty
            map); never the output folder.
        overwrite: Resample the cases whose finished output was made otherwise.
        on_case: Called with each case's result as soon as it is known.
        on_step: Called after every sampling step of a batch.
        claims: The claim set (tests: its heartbeat and staleness); default: a new one.
    """

    flow: Throughput = Throughput()
    worker_factory: Callable[[torch.device], CaseSynthesizer] | None = None
    qc_dir: Path | None = None
    overwrite: bool = False
    on_case: CaseCallback | None = None
    on_step: BatchStepCallback | None = None
    claims: ClaimSet | None = None


def run_cases(synth: RunSynthesizer, cases: Sequence[Case], out_dir: Path, options: RunOptions) -> RunReport:
    """Synthesise the missing sequence of every case into ``out_dir`` (see the module).

    Returns:
        The :class:`RunReport`, cases in the given order.

    Raises:
        ConfigError: ``out_dir`` overlaps the inputs.
        CwdmError: ``out_dir`` cannot be created or is not writable (checked before any case).
        Interrupted: a signal stopped the run; its ``report`` holds the results so far, the unfinished
            cases marked ``interrupted``.
    """
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    with options.claims or ClaimSet() as claims:
        in_use = {path.name for path in claims.live_claims(out_dir)} if out_dir.is_dir() else set()
        prepare_output_folder(out_dir, cases, in_use=in_use)
        if options.qc_dir is not None:
            prepare_qc_folder(options.qc_dir, out_dir, cases)
        results: dict[str, CaseResult] = {}
        claimed: dict[str, Path] = {}

        def record(result: CaseResult) -> None:
            if result.case_id in claimed:
                claims.release(claimed.pop(result.case_id))
            if result.status == "written":
                result = replace(result, writer=claims.me.label)
            results[result.case_id] = result
            _log_result(result)
            if options.on_case is not None:
                options.on_case(result)

        def report(interrupted_by: int | None = None) -> RunReport:
            if interrupted_by is None:
                done = tuple(results[case.case_id] for case in cases)
            else:
                done = tuple(results.get(case.case_id) or _unfinished(case, interrupted_by) for case in cases)
            return RunReport(
                cases=done,
                out_dir=out_dir,
                settings=synth.settings,
                runtime=synth.runtime,
                models=synth.checkpoints,
                unavailable=synth.unavailable,
                started_at=started_at,
                elapsed_s=time.perf_counter() - start,
                interrupted_by=interrupted_by,
                process=claims.me.label,
                taken_over={
                    output.name: holder.label if holder else "an unreadable claim"
                    for output, holder in claims.taken_over
                },
                target_settings=synth.target_settings,
            )

        try:
            planned = plan_cases(cases, out_dir, claims, _judge(synth, options.overwrite), record)
            claimed.update((item.case.case_id, item.output) for item in planned)
            batches = _batches(synth, planned, record)
            for target in dict.fromkeys(target for target, _ in batches):
                if target in synth.target_warnings:  # once per run, before the cases it concerns
                    log.warning("%s: %s", target, synth.target_warnings[target])
            if options.flow.sharded and batches:
                flow = options.flow
                workers.run_sharded(
                    options.worker_factory,
                    batches,
                    out_dir,
                    record,
                    flow.devices,
                    options.qc_dir,
                    options.on_step,
                )
            else:
                process_batches(
                    synth, batches, out_dir, record, options.flow, options.qc_dir, options.on_step
                )
        except KeyboardInterrupt as exc:  # a signal (cwdm.signals) or Ctrl-C: report what was done
            stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
            stop.report = report(stop.signum)
            log.warning(
                "stopped by %s: %d of %d cases unfinished; outputs are complete or absent, and a rerun "
                "does the rest",
                stop.signal_name,
                stop.report.count("interrupted"),
                len(cases),
            )
            if stop is exc:
                raise
            raise stop from exc
        return report()


def _judge(synth: RunSynthesizer, overwrite: bool) -> ExistingOutputs:
    """The judge of finished outputs for this synthesizer's settings and models."""
    digests = provenance.DigestCache()

    def model_sha256(target: MRISequence) -> str | None:
        checkpoint = synth.checkpoints.get(target)
        return digests(checkpoint) if checkpoint is not None else None

    return ExistingOutputs(synth.output_record, model_sha256, digests, overwrite)


def _batches(synth: RunSynthesizer, planned: Sequence[Planned], record: CaseCallback) -> list[Batch]:
    """The planned cases as batches of one target, ``batch_size`` cases each; the cases of a target
    without a model fail, all named in one log line."""
    by_target: dict[MRISequence, list[Case]] = {}
    for item in planned:
        by_target.setdefault(item.target, []).append(item.case)
    size = synth.settings.batch_size
    batches: list[Batch] = []
    for target in CANONICAL_ORDER:
        todo = by_target.get(target, [])
        if todo and target not in synth.targets:
            reason = synth.unavailable.get(target, "the synthesizer was built without this target")
            log.error(
                "no model for target %s (%s); affected cases: %s",
                target,
                reason,
                ", ".join(case.case_id for case in todo),
            )
            for case in todo:
                message = f"no model for target {target}: {reason}"
                record(
                    CaseResult(case.case_id, "failed", target, error=message, error_type="CheckpointError")
                )
            continue
        batches += [(target, todo[first : first + size]) for first in range(0, len(todo), size)]
    return batches


def _log_result(result: CaseResult) -> None:
    target = f" ({result.target})" if result.target else ""
    if result.status == "written":
        slowest = result.slowest_stage
        log.info(
            "%s%s: written in %.1f s%s",
            result.case_id,
            target,
            result.elapsed_s,
            "" if slowest is None else f" (slowest stage: {slowest}, {result.stages_s[slowest]:.2f} s)",
        )
    elif result.status == "skipped":
        log.info("%s%s: skipped, %s is already complete", result.case_id, target, result.output)
    elif result.status == "ignored":
        log.warning("%s: ignored: %s", result.case_id, result.error)
    else:
        log.error("%s%s: %s: %s", result.case_id, target, result.status, result.error)


def _unfinished(case: Case, signum: int) -> CaseResult:
    """The result of a case that a signal stopped before it was finished."""
    target = case.missing[0] if case.expects_synthesis and not case.problems else None
    return CaseResult.interrupted(case.case_id, target, signum)
