"""Synthesise the missing sequence of every case: models loaded once, one output file per case.

:class:`Synthesizer` owns the models and what happens between cases: which cases need sampling (a rerun
skips complete outputs), batching the cases of one target, the retry at half the batch size when the
device runs out of memory, the isolation of errors, and where the work runs (background threads on a
GPU, one worker process per GPU; :mod:`cwdm.inference.throughput`). What happens to one case before and
after sampling is :mod:`cwdm.inference.casework`'s; the sampling itself is :func:`cwdm.sample`'s.

Isolation: a :class:`cwdm.CaseError` (bad files, grids that differ, no model for the target) fails its
case only; an unexpected exception is caught at one boundary (:meth:`Synthesizer._isolate`), logged with
its traceback, and fails the cases it concerns; the run goes on. Errors in the configuration or the
weights directory stop the run before any case (:class:`cwdm.ConfigError`, :class:`cwdm.CheckpointError`),
as does an output folder that overlaps the inputs or is not writable (:mod:`cwdm.inference.outputs`). A
batch that runs out of device memory is sampled again at half the size, down to one case
(:class:`cwdm.errors.DeviceMemoryError` then). A stop requested by a signal (:mod:`cwdm.signals`) or
Ctrl-C ends the run with :class:`cwdm.errors.Interrupted`, which carries the report so far
(docs/USAGE.md, "Bad inputs and faults").

Results are recorded in the same deterministic order whichever thread or process produced them. The
library never prints: progress is reported through the ``on_case`` and ``on_step`` callbacks.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..cases.discovery import Case
from ..config import RunParameters, SamplingSettings
from ..errors import CaseError, CheckpointError, ConfigError, DeviceMemoryError, Interrupted
from ..method.denoiser import Denoiser
from ..method.sampling import sample
from ..method.schedule import NoiseSchedule
from ..method.wavelets import build_condition, decode
from ..runtime import Runtime, resolve_runtime, sample_generator, worker_devices
from ..sequences import CANONICAL_ORDER, MRISequence, condition_order
from ..weights.folder import WeightsDir
from . import provenance, workers
from .casework import PreparedCase, prepare_case, write_prediction
from .claims import ClaimSet
from .fastpath import FastDenoiser, FastPathOptions, prepare_denoiser
from .outputs import output_complete, prepare_output_folder, prepare_qc_folder
from .report import CaseCallback, CaseResult, CaseStatus, RunReport
from .throughput import BackgroundWriter, OrderedRecorder, Throughput, prefetched

log = logging.getLogger(__name__)

#: Called after every sampling step as ``on_step(case_ids, done, total)`` for the batch being sampled.
BatchStepCallback = Callable[[tuple[str, ...], int, int], None]


class Synthesizer:
    """Holds the loaded models and the run settings; :meth:`run` processes cases.

    Build it with :meth:`from_weights`; the constructor takes already-loaded parts (tests, notebooks).

    Args:
        models: An eval-mode denoiser per target, on ``runtime.device``.
        settings: The effective sampling settings.
        runtime: Device and precision.
        schedule: The models' training noise schedule.
        unavailable: Targets whose model could not be loaded, with the reason; their cases fail.
        checkpoints: The file each model came from (for the report).
        fast_path: The network's fast-path settings; default: :meth:`FastPathOptions.resolve` for
            ``runtime.device`` with its defaults.
        throughput: Background I/O and worker devices; default: :meth:`Throughput.for_devices` of
            every GPU when ``runtime`` is a GPU (sequential on a CPU).
        worker_factory: Builds the synthesizer of one worker device (must be picklable); default:
            copies of ``models`` (:meth:`from_weights` passes one that loads the weights there;
            :mod:`cwdm.inference.workers`).
    """

    def __init__(
        self,
        models: Mapping[MRISequence, Denoiser],
        settings: SamplingSettings,
        runtime: Runtime,
        schedule: NoiseSchedule,
        unavailable: Mapping[MRISequence, str] | None = None,
        checkpoints: Mapping[MRISequence, Path] | None = None,
        *,
        fast_path: FastPathOptions | None = None,
        throughput: Throughput | None = None,
        worker_factory: Callable[[torch.device], Synthesizer] | None = None,
    ) -> None:
        sizes = {model.config.size_multiple for model in models.values()}
        if len(sizes) > 1:
            raise ConfigError(f"the models disagree on their size multiple ({sorted(sizes)})")
        self.models = dict(models)
        self.settings = settings
        self.runtime = runtime
        self.schedule = schedule
        self.unavailable = dict(unavailable or {})
        self.checkpoints = dict(checkpoints or {})
        self.fast_path = fast_path or FastPathOptions.resolve(runtime.device)
        self.throughput = throughput or Throughput.for_devices(
            worker_devices(runtime.device), settings.batch_size
        )
        self.worker_factory = worker_factory
        self._fast: dict[nn.Module, FastDenoiser] = {}
        self._digests = provenance.DigestCache()
        self._settings_record = provenance.run_settings(settings, runtime.precision)
        #: Set after a batch ran out of device memory: the batch size known to be worth trying.
        self._batch_limit: int | None = None
        #: Image-space sizes must divide by this (the wavelet halves them, the U-Net then needs its multiple).
        self.multiple = 2 * (sizes.pop() if sizes else 1)

    @classmethod
    def from_weights(
        cls,
        weights_dir: Path,
        params: RunParameters,
        targets: Iterable[MRISequence | str] | None = None,
        *,
        throughput: Throughput | None = None,
    ) -> Synthesizer:
        """Load the models of ``targets`` (all four when ``None``) from a weights directory, once.

        A target without a usable checkpoint does not stop the others: it is recorded in
        :attr:`unavailable`, and its cases fail with the reason. With several GPUs the models are loaded
        here on the CPU (to check them) and again by each worker.

        Args:
            weights_dir: One checkpoint per target plus an optional ``model.yaml``
                (docs/WEIGHTS.md).
            params: The run parameters (parameters.yaml).
            targets: The targets the cases need (see :func:`cwdm.needed_targets`).
            throughput: Background I/O and worker devices (default: see the constructor).

        Raises:
            CheckpointError: ``weights_dir`` is not a directory, or holds two checkpoints for a target.
            ConfigError: invalid ``model.yaml``, sampling settings, device or precision.
        """
        weights = WeightsDir.open(Path(weights_dir))
        settings = SamplingSettings.resolve(params, weights.spec, weights.spec_path)
        runtime = resolve_runtime(params.device, params.precision)
        fast_path = FastPathOptions.resolve(
            runtime.device,
            fast_path=params.fast_path,
            compile=params.compile,
            compile_mode=params.compile_mode,
            cuda_graphs=params.cuda_graphs,
        )
        throughput = throughput or Throughput.for_devices(worker_devices(runtime.device), settings.batch_size)
        load_device = torch.device("cpu") if throughput.sharded else runtime.device
        log.info("network: %s; cases: %s", fast_path.describe(), throughput.describe())
        wanted = CANONICAL_ORDER if targets is None else tuple(MRISequence(t) for t in targets)
        models: dict[MRISequence, Denoiser] = {}
        unavailable: dict[MRISequence, str] = {}
        checkpoints: dict[MRISequence, Path] = {}
        for target in dict.fromkeys(wanted):
            try:
                models[target] = weights.load(target, load_device)
            except CheckpointError as exc:
                unavailable[target] = str(exc)
                log.error("no model for target %s: %s", target, exc)
                continue
            except torch.OutOfMemoryError as exc:
                path = weights.checkpoint(target)
                unavailable[target] = f"out of {load_device} memory loading {path} ({_first_line(exc)})"
                log.error("no model for target %s: %s", target, unavailable[target])
                continue
            checkpoints[target] = weights.checkpoint(target)
            log.info("loaded the %s model from %s", target, checkpoints[target])
        factory = workers.factory_from_weights(cls, Path(weights_dir), params, tuple(models))
        return cls(
            models,
            settings,
            runtime,
            weights.schedule(),
            unavailable,
            checkpoints,
            fast_path=fast_path,
            throughput=throughput,
            worker_factory=factory,
        )

    # -- the run ------------------------------------------------------------------------------
    def run(
        self,
        cases: Sequence[Case],
        out_dir: Path,
        *,
        qc_dir: Path | None = None,
        on_case: CaseCallback | None = None,
        on_step: BatchStepCallback | None = None,
        overwrite: bool = False,
        claims: ClaimSet | None = None,
    ) -> RunReport:
        """Synthesise the missing sequence of every case into ``out_dir``.

        Each case is claimed before it is sampled (:mod:`cwdm.inference.claims`), so that processes
        sharing ``out_dir`` never do one case twice; a finished output whose header records other
        settings than this run's is kept and reported ``mismatched`` (replaced with ``overwrite``).

        Args:
            cases: From :func:`cwdm.cases.discovery.discover_cases`.
            out_dir: The output folder (created if needed); it must not lie inside the data folder.
            qc_dir: Where each written case also gets its preview (``<case>-<target>.png``) and, with
                ``samples`` > 1, its uncertainty map (``<case>-<target>-std.nii.gz``); never the output
                folder (:func:`cwdm.inference.outputs.prepare_qc_folder`).
            on_case: Called with each case's :class:`CaseResult` as soon as it is known.
            on_step: Called after every sampling step, see :data:`BatchStepCallback`.
            overwrite: Resample the cases whose finished output was made with other settings.
            claims: The claim set to use (tests: its heartbeat and staleness); default: a new one.

        Returns:
            The :class:`RunReport`, cases in the given order.

        Raises:
            ConfigError: ``out_dir`` overlaps the inputs (:func:`cwdm.inference.outputs.check_output_folder`).
            CwdmError: ``out_dir`` cannot be created or is not writable (checked before any case).
            Interrupted: a signal stopped the run (:mod:`cwdm.signals`); its ``report`` holds the
                results so far, the unfinished cases marked ``interrupted``.
        """
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        start = time.perf_counter()
        out_dir = Path(out_dir)
        with claims or ClaimSet() as held:
            return self._run_claimed(
                cases, out_dir, held, started_at, start, qc_dir, on_case, on_step, overwrite
            )

    def _run_claimed(
        self,
        cases: Sequence[Case],
        out_dir: Path,
        claims: ClaimSet,
        started_at: str,
        start: float,
        qc_dir: Path | None,
        on_case: CaseCallback | None,
        on_step: BatchStepCallback | None,
        overwrite: bool,
    ) -> RunReport:
        """:meth:`run`, with the claims of this process held in ``claims``."""
        in_use = {path.name for path in claims.live_claims(out_dir)} if out_dir.is_dir() else set()
        prepare_output_folder(out_dir, cases, in_use=in_use)
        if qc_dir is not None:
            prepare_qc_folder(qc_dir, out_dir, cases)

        results: dict[str, CaseResult] = {}
        claimed: dict[str, Path] = {}

        def record(result: CaseResult) -> None:
            if result.case_id in claimed:
                claims.release(claimed.pop(result.case_id))
            if result.status == "written":
                result = replace(result, writer=claims.me.label)
            results[result.case_id] = result
            _log_result(result)
            if on_case is not None:
                on_case(result)

        def report(interrupted_by: int | None = None) -> RunReport:
            if interrupted_by is None:
                done = tuple(results[case.case_id] for case in cases)
            else:
                done = tuple(results.get(case.case_id) or _unfinished(case, interrupted_by) for case in cases)
            return RunReport(
                cases=done,
                out_dir=out_dir,
                settings=self.settings,
                runtime=self.runtime,
                models=self.checkpoints,
                unavailable=self.unavailable,
                started_at=started_at,
                elapsed_s=time.perf_counter() - start,
                interrupted_by=interrupted_by,
                process=claims.me.label,
                taken_over={
                    output.name: holder.label if holder else "an unreadable claim"
                    for output, holder in claims.taken_over
                },
            )

        try:
            pending: dict[MRISequence, list[Case]] = {seq: [] for seq in CANONICAL_ORDER}
            for case in cases:
                target = self._triage(case, out_dir, record, claims, claimed, overwrite)
                if target is not None:
                    pending[target].append(case)
            batches: list[tuple[MRISequence, list[Case]]] = []
            size = self.settings.batch_size
            for target, todo in pending.items():
                if todo and target not in self.models:
                    self._fail_unavailable(target, todo, record)
                    continue
                batches += [(target, todo[first : first + size]) for first in range(0, len(todo), size)]
            if self.throughput.sharded and batches:
                workers.run_sharded(self, batches, out_dir, record, on_step, qc_dir)
            else:
                self.process(batches, out_dir, record, on_step, qc_dir)
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

    def _triage(
        self,
        case: Case,
        out_dir: Path,
        record: CaseCallback,
        claims: ClaimSet,
        claimed: dict[str, Path],
        overwrite: bool,
    ) -> MRISequence | None:
        """The case's target if it still needs sampling (and is now claimed by this process); otherwise
        record why not and return None."""
        try:
            target = case.target()
        except CaseError as exc:
            status: CaseStatus = "failed" if case.expects_synthesis or case.problems else "ignored"
            record(CaseResult(case.case_id, status, error=exc.detail, error_type=type(exc).__name__))
            return None
        output = out_dir / case.output_name(target)
        reference = case.files[condition_order(target)[0]]
        if output_complete(output, reference):
            verdict = self._judge_existing(case, target, output, overwrite)
            if verdict is not None:
                record(verdict)
                return None
        other = claims.claim(output)
        if other is not None:
            holder = other.holder.label if other.holder is not None else None
            message = f"{other.detail}; that process writes it (a rerun after it ends skips or redoes it)"
            record(CaseResult(case.case_id, "claimed", target, output, error=message, writer=holder))
            return None
        claimed[case.case_id] = output
        if output_complete(output, reference):  # finished by another process since the first look
            verdict = self._judge_existing(case, target, output, overwrite)
            if verdict is not None:
                record(verdict)
                return None
        elif output.exists() or output.is_symlink():
            log.warning(
                "%s: %s exists but is incomplete, not a regular file or not on the case's grid; "
                "replacing it (a symbolic link is replaced, never written through)",
                case.case_id,
                output,
            )
        return target

    def _judge_existing(
        self, case: Case, target: MRISequence, output: Path, overwrite: bool
    ) -> CaseResult | None:
        """The result of a case whose output is complete: ``skipped`` when its recorded settings are this
        run's (or it has no record), ``mismatched`` when they differ; ``None`` to redo it (``overwrite``)."""
        recorded = provenance.read_record(output)
        checkpoint = self.checkpoints.get(target)
        model_sha = self._digests(checkpoint) if checkpoint is not None else None
        mismatch = provenance.settings_mismatch(recorded, self._settings_record, model_sha)
        if not mismatch:
            return CaseResult(case.case_id, "skipped", target, output, provenance=recorded)
        if overwrite:
            log.warning(
                "%s: %s was made with other settings (%s); replacing it",
                case.case_id,
                output.name,
                "; ".join(mismatch),
            )
            return None
        message = (
            f"{output.name} was made with other settings ({'; '.join(mismatch)}); kept, not replaced: "
            "rerun with --overwrite to resample it with this run's settings"
        )
        return CaseResult(
            case.case_id, "mismatched", target, output, error=message, provenance=recorded, mismatch=mismatch
        )

    def _fail_unavailable(self, target: MRISequence, cases: Sequence[Case], record: CaseCallback) -> None:
        """Fail the cases of a target that has no model, naming them all in one log line."""
        reason = self.unavailable.get(target, "the synthesizer was built without this target")
        log.error(
            "no model for target %s (%s); affected cases: %s",
            target,
            reason,
            ", ".join(case.case_id for case in cases),
        )
        for case in cases:
            message = f"no model for target {target}: {reason}"
            record(CaseResult(case.case_id, "failed", target, error=message, error_type="CheckpointError"))

    @contextmanager
    def _isolate(self, cases: Sequence[Case], target: MRISequence, record: CaseCallback) -> Iterator[None]:
        """The one boundary where errors of a case (or of a batch) are caught and recorded.

        A :class:`CaseError` fails the case it names; any other exception, logged with its traceback,
        fails every case of ``cases``. KeyboardInterrupt and SystemExit pass through.
        """
        try:
            yield
        except CaseError as exc:
            record(CaseResult(exc.case_id, "failed", target, error=exc.detail, error_type=type(exc).__name__))
        except Exception as exc:  # the per-case isolation boundary (STYLE.md section 5)
            ids = ", ".join(case.case_id for case in cases)
            log.exception("unexpected error while processing %s", ids)
            for case in cases:
                message = f"unexpected {type(exc).__name__}: {exc}"
                record(
                    CaseResult(case.case_id, "failed", target, error=message, error_type=type(exc).__name__)
                )

    def process(
        self,
        batches: Iterable[tuple[MRISequence, Sequence[Case]]],
        out_dir: Path,
        record: CaseCallback,
        on_step: BatchStepCallback | None,
        qc_dir: Path | None = None,
    ) -> None:
        """Prepare, sample and write ``batches`` in this process (background I/O per :attr:`throughput`);
        also the work of one worker process (:mod:`cwdm.inference.workers`).

        Results reach ``record`` in the order of the sequential run: each batch's preparation failures,
        then its cases as they are written (or fail), batch after batch.
        """
        flow = self.throughput
        recorder: OrderedRecorder[CaseResult] = OrderedRecorder(record)

        def stepped(ids: tuple[str, ...], done: int, total: int) -> None:
            recorder.flush()  # hand over the cases the writer has finished meanwhile
            if on_step is not None:
                on_step(ids, done, total)

        try:
            with (
                BackgroundWriter(flow.max_pending_writes, flow.background_io) as writer,
                _sequence_pool(flow.prepare_workers) as pool,
            ):

                def write(item: PreparedCase, volumes: np.ndarray, elapsed_s: float) -> None:
                    recorder.add_future(writer.submit(self._write_isolated, item, volumes, elapsed_s, qc_dir))

                stream = prefetched(
                    batches,
                    lambda batch: self._prepare_batch(batch[0], batch[1], out_dir, pool),
                    flow.prefetch_batches,
                    flow.background_io,
                )
                with closing(stream):
                    for (target, _), (prepared, failures) in stream:
                        recorder.extend(failures)
                        self._run_batch(target, prepared, recorder.add, stepped, write)
        finally:
            # Also when stopped: the cases written before the writer shut down are recorded as written
            # (the writes that had not started were cancelled and stay unrecorded).
            recorder.flush(wait=True)

    def _prepare_batch(
        self, target: MRISequence, cases: Sequence[Case], out_dir: Path, pool: Executor | None = None
    ) -> tuple[list[PreparedCase], list[CaseResult]]:
        """Prepare each case (on the background thread when there is one); failures are returned."""
        prepared: list[PreparedCase] = []
        failures: list[CaseResult] = []
        for case in cases:
            with self._isolate([case], target, failures.append):
                prepared.append(
                    prepare_case(case, target, out_dir, self.multiple, self.settings.postprocess, pool)
                )
        return prepared, failures

    def _run_batch(
        self,
        target: MRISequence,
        prepared: Sequence[PreparedCase],
        record: CaseCallback,
        on_step: BatchStepCallback | None,
        write: Callable[[PreparedCase, np.ndarray, float], None],
    ) -> None:
        """Sample the prepared cases of one target, by network shape; each volume goes to ``write``."""
        by_shape: dict[tuple[int, int, int], list[PreparedCase]] = {}
        for item in prepared:
            by_shape.setdefault(item.layout.network_shape, []).append(item)
        for group in by_shape.values():
            self._sample_group(target, group, record, on_step, write)

    def _sample_group(
        self,
        target: MRISequence,
        group: Sequence[PreparedCase],
        record: CaseCallback,
        on_step: BatchStepCallback | None,
        write: Callable[[PreparedCase, np.ndarray, float], None],
    ) -> None:
        """Sample the ``samples`` draws of each of these same-shaped cases; hand each case's
        ``(samples, *network_shape)`` volumes to ``write`` once all its draws are done."""
        samples = self.settings.samples
        pending = {item.case.case_id: _Draws(item, samples) for item in group}
        failed: set[str] = set()

        def fail(result: CaseResult) -> None:
            failed.add(result.case_id)
            record(result)

        draws = [(item, index) for item in group for index in range(samples)]
        self._sample_draws(target, draws, pending, failed, fail, on_step, write)

    def _sample_draws(
        self,
        target: MRISequence,
        draws: Sequence[tuple[PreparedCase, int]],
        pending: dict[str, _Draws],
        failed: set[str],
        fail: CaseCallback,
        on_step: BatchStepCallback | None,
        write: Callable[[PreparedCase, np.ndarray, float], None],
    ) -> None:
        """Sample draws together; on running out of device memory, retry in halves.

        A batch that does not fit in the accelerator's memory is sampled again at half the size, down
        to one draw at a time, and the smaller size is kept for the rest of the run. A draw that does
        not fit even alone fails its case with :class:`DeviceMemoryError`; never silently. Each retry
        starts its draws' generators afresh, so the outputs are those of a run at the smaller batch size.
        """
        draws = [draw for draw in draws if draw[0].case.case_id not in failed]
        limit = self._batch_limit or len(draws)
        if len(draws) > limit:
            for first in range(0, len(draws), limit):
                self._sample_draws(
                    target, draws[first : first + limit], pending, failed, fail, on_step, write
                )
            return
        if not draws:
            return
        cases = list({item.case.case_id: item.case for item, _ in draws}.values())
        out_of_memory = ""
        with self._isolate(cases, target, fail):
            start = time.perf_counter()
            try:
                volumes = self._synthesise(target, draws, on_step)
            except torch.OutOfMemoryError as exc:
                if len(draws) == 1:
                    raise DeviceMemoryError(
                        cases[0].case_id,
                        f"out of {self.runtime.device} memory sampling {target} even alone (batch size 1): "
                        f"{_first_line(exc)}; use a larger GPU, or precision bf16/fp16",
                        cases[0].folder,
                    ) from exc
                out_of_memory = _first_line(exc)
            else:
                share = (time.perf_counter() - start) / len(draws)
                for (item, index), volume in zip(draws, volumes, strict=True):
                    done = pending[item.case.case_id]
                    if done.add(index, volume, share):
                        write(item, done.stacked(), item.elapsed_s + done.elapsed_s)
        if out_of_memory:  # retried here, outside the handler, whose traceback held the batch's tensors
            self._batch_limit = len(draws) // 2
            log.warning(
                "out of %s memory sampling %d %s together (%s; %s); retrying %d at a time",
                self.runtime.device,
                len(draws),
                "cases" if self.settings.samples == 1 else "draws",
                ", ".join(case.case_id for case in cases),
                out_of_memory,
                self._batch_limit,
            )
            self.runtime.release_cached_memory()
            self._sample_draws(target, draws, pending, failed, fail, on_step, write)

    def _write_isolated(
        self, item: PreparedCase, volumes: np.ndarray, elapsed_s: float, qc_dir: Path | None
    ) -> list[CaseResult]:
        """:func:`write_prediction` inside the isolation boundary (on the writer thread when there is one)."""
        results: list[CaseResult] = []
        with self._isolate([item.case], item.target, results.append):
            checkpoint = self.checkpoints.get(item.target)
            try:
                record = provenance.case_record(
                    item.case, item.target, self._settings_record, checkpoint, self._digests
                )
            except OSError as exc:
                raise CaseError(item.case.case_id, f"cannot hash an input for provenance ({exc})") from exc
            header = provenance.stamp(item.reference.header, record)
            network_s = elapsed_s - item.elapsed_s  # the case's share of its batches' sampling
            result = write_prediction(
                item,
                volumes,
                elapsed_s,
                self.settings.postprocess,
                checkpoint,
                qc_dir,
                network_s,
                header=header,
            )
            results.append(replace(result, provenance=record))
        return results

    def _network(self, denoiser: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        """The denoiser's fast-path call (:mod:`cwdm.inference.fastpath`), prepared once per model: autocast
        around the network only (the sampler stays float32), inference mode, float32 output."""
        fast = self._fast.get(denoiser)
        if fast is None:
            fast = self._fast[denoiser] = prepare_denoiser(denoiser, self.runtime, self.fast_path)
        return fast

    def _synthesise(
        self,
        target: MRISequence,
        draws: Sequence[tuple[PreparedCase, int]],
        on_step: BatchStepCallback | None,
    ) -> np.ndarray:
        """Sample one batch of draws; returns ``(B, *network_shape)`` float32 image-space volumes (not
        clamped). Each draw has its own generator (:func:`cwdm.runtime.sample_generator`), so its result
        depends on neither the batch nor the order."""
        device = self.runtime.device
        ids = tuple(dict.fromkeys(item.case.case_id for item, _ in draws))
        step_callback = None if on_step is None else (lambda done, total: on_step(ids, done, total))
        with torch.inference_mode():
            cond = build_condition(torch.from_numpy(np.stack([item.cond for item, _ in draws])).to(device))
            coeffs = sample(
                self._network(self.models[target]),
                cond,
                steps=self.settings.sampling_steps,
                generator=[
                    sample_generator(self.settings.seed, item.case.case_id, index, device)
                    for item, index in draws
                ],
                clip=True,
                sampler=self.settings.sampler,
                schedule=self.schedule,
                spacing=self.settings.timestep_spacing,
                on_step=step_callback,
            )
            return decode(coeffs)[:, 0].float().cpu().numpy()


class _Draws:
    """The sampled volumes of one case, collected draw by draw (a batch may hold only some of them)."""

    def __init__(self, item: PreparedCase, count: int) -> None:
        self.item = item
        self.volumes: list[np.ndarray | None] = [None] * count
        self.elapsed_s = 0.0

    def add(self, index: int, volume: np.ndarray, elapsed_s: float) -> bool:
        """Keep draw ``index``; whether every draw of the case is now done."""
        self.volumes[index] = volume
        self.elapsed_s += elapsed_s
        return all(v is not None for v in self.volumes)

    def stacked(self) -> np.ndarray:
        """``(samples, *network_shape)``, in draw order."""
        return np.stack(self.volumes)  # type: ignore[arg-type]


@contextmanager
def _sequence_pool(workers: int) -> Iterator[Executor | None]:
    """Threads that read and preprocess the sequences of a case concurrently; none for one worker."""
    if workers <= 1:
        yield None
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cwdm-read") as pool:
        yield pool


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
        log.error("%s%s: failed: %s", result.case_id, target, result.error)


def _unfinished(case: Case, signum: int) -> CaseResult:
    """The result of a case that a signal stopped before it was finished."""
    target = case.missing[0] if case.expects_synthesis and not case.problems else None
    return CaseResult.interrupted(case.case_id, target, signum)


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
