"""Synthesise the missing sequence of every case: models loaded once, one output file per case.

Per case (README, "Running inference"): find the target (the one absent sequence); read the three
present sequences in :func:`cwdm.condition_order`; check that they share one grid; preprocess them as
in training (:func:`cwdm.cases.volumes.normalise`, :class:`cwdm.cases.volumes.NetworkLayout`); build
the wavelet condition; sample the target's coefficients; decode; post-process (brain mask by default, or the
challenge container's threshold; REFERENCE.md section 6); put the result back on the input grid; and
write ``<case>-<target>.nii.gz`` (float32, header of the first condition sequence) atomically into the
output folder. Cases with the same target are sampled together, ``batch_size`` at a time.

Isolation: a :class:`cwdm.CaseError` (bad files, grids that differ, no model for the target) fails its
case only; an unexpected exception is caught at one boundary (:meth:`Synthesizer._isolate`), logged with
its traceback, and fails the cases it concerns; the run goes on. Errors in the configuration or the
weights directory stop the run before any case (:class:`cwdm.ConfigError`, :class:`cwdm.CheckpointError`),
as does an output folder that overlaps the inputs or is not writable. A batch that runs out of device
memory is sampled again at half the size, down to one case (:class:`cwdm.errors.DeviceMemoryError`
then). A stop requested by a signal (:mod:`cwdm.signals`) or Ctrl-C ends the run with
:class:`cwdm.errors.Interrupted`, which carries the report so far (README, "Bad inputs and faults").

Outputs that are already complete are skipped, so a rerun resumes. The output folder receives
predictions only; the run report (:class:`RunReport`, JSON) is written elsewhere by the caller.

Speed: the network runs through :mod:`cwdm.inference.fastpath` (prepared once per model). On a GPU the
next batch is read and preprocessed, and finished cases are written, on background threads
(:mod:`cwdm.inference.throughput`), and with several GPUs the batches are shared out to one worker process
per GPU; results are recorded in the same deterministic order either way. On a CPU the run is sequential.
The library never prints: progress is reported through the ``on_case`` and ``on_step`` callbacks.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..cases.discovery import Case
from ..cases.volumes import (
    POSTPROCESSES,
    NetworkLayout,
    Volume,
    VolumeError,
    describe_grid,
    normalise,
    probe_writable,
    read_volume,
    remove_partial_files,
    same_grid,
    write_volume_atomic,
)
from ..config import PostprocessName, RunParameters, SamplerName
from ..errors import (
    CaseError,
    CheckpointError,
    ConfigError,
    CwdmError,
    DeviceMemoryError,
    GeometryError,
    Interrupted,
    VolumeReadError,
)
from ..method.denoiser import Denoiser
from ..method.sampling import sample
from ..method.schedule import NoiseSchedule
from ..method.wavelets import build_condition, decode
from ..runtime import Runtime, case_generator, resolve_runtime, worker_devices
from ..sequences import CANONICAL_ORDER, MRISequence, condition_order
from ..weights.checkpoints import load_denoiser
from ..weights.folder import WeightsDir
from .fastpath import FastDenoiser, FastPathOptions, ensure_writable_caches, prepare_denoiser
from .throughput import BackgroundWriter, OrderedRecorder, Throughput, WorkerEvents, prefetched, run_workers

log = logging.getLogger(__name__)

CaseStatus = Literal["written", "skipped", "failed", "ignored", "interrupted"]
#: Every status, in the order reports list them.
CASE_STATUSES: tuple[CaseStatus, ...] = ("written", "skipped", "failed", "ignored", "interrupted")
#: Called after each case with its result.
CaseCallback = Callable[["CaseResult"], None]
#: Called after every sampling step as ``on_step(case_ids, done, total)`` for the batch being sampled.
StepCallback = Callable[[tuple[str, ...], int, int], None]


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case.

    Attributes:
        case_id: The case folder name.
        status: ``written`` (output synthesised now), ``skipped`` (a complete output was already
            there), ``failed`` (the case needed an output and did not get one), ``ignored`` (not a
            case with exactly one missing sequence, e.g. a complete training case) or
            ``interrupted`` (the run was stopped by a signal before the case was finished; a rerun
            does it).
        target: The synthesised sequence, when known.
        output: The output file (written or skipped cases).
        elapsed_s: Wall time spent on the case; a batch's sampling time is shared equally.
        error: Why the case failed, was ignored or was interrupted.
        error_type: The exception's class name, for failed cases.
        warnings: Remarks on a case that was written all the same (e.g. a constant input volume).
    """

    case_id: str
    status: CaseStatus
    target: MRISequence | None = None
    output: Path | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    error_type: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The case has its output (written now or before)."""
        return self.status in ("written", "skipped")

    def to_record(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "status": self.status,
            "target": None if self.target is None else str(self.target),
            "output": None if self.output is None else str(self.output),
            "elapsed_s": round(self.elapsed_s, 3),
            "error": self.error,
            "error_type": self.error_type,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class SamplingSettings:
    """The effective sampling settings of a run: parameters.yaml over model.yaml over the published ones."""

    steps: int
    sampler: SamplerName
    seed: int
    batch_size: int
    postprocess: PostprocessName

    @classmethod
    def resolve(cls, params: RunParameters, weights: WeightsDir) -> SamplingSettings:
        """Fill the unset ``sampling_steps``/``sampler`` from the weights' ``model.yaml``.

        Raises:
            ConfigError: more sampling steps than the model's diffusion steps.
        """
        spec = weights.spec
        steps = params.sampling_steps if params.sampling_steps is not None else spec.sampling_steps
        if steps > spec.diffusion_steps:
            raise ConfigError(
                f"sampling_steps {steps} exceeds the model's {spec.diffusion_steps} diffusion steps "
                f"({weights.root / 'model.yaml'}); use at most {spec.diffusion_steps}"
            )
        return cls(
            steps=steps,
            sampler=params.sampler or spec.sampler,
            seed=params.seed,
            batch_size=params.batch_size,
            postprocess=params.postprocess,
        )


@dataclass(frozen=True)
class RunReport:
    """The outcome of :meth:`Synthesizer.run`; :func:`write_report` saves it as JSON.

    Attributes:
        cases: One result per case, in the order the cases were given.
        out_dir: The output folder.
        settings: The effective sampling settings.
        runtime: Device and precision used.
        models: The checkpoint used for each loaded target.
        unavailable: Targets whose model could not be loaded, with the reason.
        started_at: UTC start time, ISO 8601.
        elapsed_s: Wall time of the run.
        interrupted_by: The number of the signal that stopped the run early, if one did.
    """

    cases: tuple[CaseResult, ...]
    out_dir: Path
    settings: SamplingSettings
    runtime: Runtime
    models: Mapping[MRISequence, Path] = field(default_factory=dict)
    unavailable: Mapping[MRISequence, str] = field(default_factory=dict)
    started_at: str = ""
    elapsed_s: float = 0.0
    interrupted_by: int | None = None

    def count(self, status: CaseStatus) -> int:
        return sum(result.status == status for result in self.cases)

    def counts_text(self) -> str:
        """``3 written, 0 skipped, 1 failed, 0 ignored`` (plus ``, 2 interrupted`` when there are any)."""
        shown = [s for s in CASE_STATUSES if s != "interrupted" or self.count(s)]
        return ", ".join(f"{self.count(status)} {status}" for status in shown)

    @property
    def expected(self) -> tuple[CaseResult, ...]:
        """The cases that needed an output (all but the ignored ones)."""
        return tuple(result for result in self.cases if result.status != "ignored")

    @property
    def exit_code(self) -> int:
        """0 when there was at least one case to synthesise and every such case has its output; 128 +
        the signal number when a signal stopped the run (130 for SIGINT, 143 for SIGTERM); else 1."""
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by
        expected = self.expected
        return 0 if expected and all(result.ok for result in expected) else 1

    def to_dict(self) -> dict[str, Any]:
        from .. import __version__  # at call time: the package is fully imported by then

        return {
            "cwdm_version": __version__,
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 3),
            "exit_code": self.exit_code,
            "interrupted_by": (
                None if self.interrupted_by is None else Interrupted(self.interrupted_by).signal_name
            ),
            "out_dir": str(self.out_dir),
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
            "runtime_notes": list(self.runtime.notes),
            "settings": {
                "sampling_steps": self.settings.steps,
                "sampler": self.settings.sampler,
                "seed": self.settings.seed,
                "batch_size": self.settings.batch_size,
                "postprocess": self.settings.postprocess,
            },
            "models": {str(seq): str(path) for seq, path in self.models.items()},
            "unavailable_models": {str(seq): reason for seq, reason in self.unavailable.items()},
            "counts": {status: self.count(status) for status in CASE_STATUSES},
            "cases": [result.to_record() for result in self.cases],
        }


def needed_targets(cases: Iterable[Case]) -> list[MRISequence]:
    """The targets of the cases that have exactly one missing sequence, in canonical order."""
    wanted = {case.missing[0] for case in cases if case.expects_synthesis and not case.problems}
    return [seq for seq in CANONICAL_ORDER if seq in wanted]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_report_path(report_path: Path, out_dir: Path) -> None:
    """Refuse a report location inside the output folder (the evaluator reads every file there).

    Raises:
        ConfigError: ``report_path`` is inside ``out_dir``.
    """
    if _inside(Path(report_path).parent, Path(out_dir)):
        raise ConfigError(
            f"report file {report_path} is inside the output folder {out_dir}; the output folder must "
            "hold predictions only: put the report elsewhere"
        )


def check_output_folder(out_dir: Path, cases: Sequence[Case]) -> None:
    """Refuse an output folder that overlaps the inputs, symbolic links resolved.

    The output folder may not be the data folder, lie inside it or inside a case folder (inputs are
    never modified), nor contain the data folder or a case folder (it must hold predictions only).

    Raises:
        ConfigError: naming both folders.
    """
    out_dir = Path(out_dir)
    data_folders = sorted({case.folder.parent for case in cases})
    for folder in data_folders + [case.folder for case in cases]:
        kind = "data folder" if folder in data_folders else "case folder"
        if _inside(out_dir, folder):
            raise ConfigError(
                f"output folder {out_dir} is inside the {kind} {folder}; inputs are never modified: "
                "choose an output folder outside it"
            )
        if _inside(folder, out_dir):
            raise ConfigError(
                f"output folder {out_dir} contains the {kind} {folder}; the output folder must hold "
                "predictions only: choose a separate folder"
            )


def write_report(report: RunReport, path: Path) -> Path:
    """Write ``report`` as JSON to ``path``, atomically (never inside the output folder).

    Raises:
        ConfigError: ``path`` is inside the run's output folder.
        CwdmError: the file cannot be written.
    """
    path = Path(path)
    check_report_path(path, report.out_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(report.to_dict(), handle, indent=2)
                handle.write("\n")
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    except OSError as exc:
        raise CwdmError(f"cannot write the run report {path} ({exc})") from exc
    return path


def save_report(report: RunReport, path: Path) -> Path | None:
    """:func:`write_report` for the commands: a report that cannot be written is logged, not raised.

    The outputs stand and the log and summary hold every case's outcome, so the run goes on to its
    summary (the exit status still follows the cases).

    Returns:
        ``path``, or None when the report was not written.
    """
    try:
        return write_report(report, path)
    except CwdmError as exc:
        log.error("%s", exc)
        return None


@dataclass
class _Prepared:
    """A case ready for sampling: condition volumes in network layout and where its output goes."""

    case: Case
    target: MRISequence
    cond: np.ndarray  # (3, *layout.network_shape) float32 in [0, 1], condition order
    layout: NetworkLayout
    reference: Volume  # the first condition sequence: its header goes on the output
    output: Path
    elapsed_s: float = 0.0
    warnings: tuple[str, ...] = ()


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
            copies of ``models`` (:meth:`from_weights` passes one that loads the weights there).
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
        :attr:`unavailable`, and its cases fail with the reason. Unset or unwritable compiler caches
        are pointed at temporary folders first (:func:`cwdm.inference.fastpath.ensure_writable_caches`). With
        several GPUs the models are loaded here on the CPU (to check them) and again by each worker.

        Args:
            weights_dir: One checkpoint per target plus an optional ``model.yaml`` (README, "Weights").
            params: The run parameters (parameters.yaml).
            targets: The targets the cases need (see :func:`needed_targets`).
            throughput: Background I/O and worker devices (default: see the constructor).

        Raises:
            CheckpointError: ``weights_dir`` is not a directory, or holds two checkpoints for a target.
            ConfigError: invalid ``model.yaml``, sampling settings, device or precision.
        """
        ensure_writable_caches()  # before the first CUDA call: the driver reads CUDA_CACHE_PATH then
        weights = WeightsDir.open(Path(weights_dir))
        settings = SamplingSettings.resolve(params, weights)
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
                path = weights.checkpoint(target)
                models[target] = load_denoiser(path, weights.spec.denoiser_config()).to(load_device)
            except CheckpointError as exc:
                unavailable[target] = str(exc)
                log.error("no model for target %s: %s", target, exc)
                continue
            except torch.OutOfMemoryError as exc:
                unavailable[target] = f"out of {load_device} memory loading {path} ({_first_line(exc)})"
                log.error("no model for target %s: %s", target, unavailable[target])
                continue
            checkpoints[target] = path
            log.info("loaded the %s model from %s", target, path)
        factory = functools.partial(_worker_from_weights, Path(weights_dir), params, tuple(models))
        return cls(
            models,
            settings,
            runtime,
            weights.spec.schedule(),
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
        on_case: CaseCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> RunReport:
        """Synthesise the missing sequence of every case into ``out_dir``.

        Args:
            cases: From :func:`cwdm.cases.discovery.discover_cases`.
            out_dir: The output folder (created if needed); it must not lie inside the data folder.
            on_case: Called with each case's :class:`CaseResult` as soon as it is known.
            on_step: Called after every sampling step, see :data:`StepCallback`.

        Returns:
            The :class:`RunReport`, cases in the given order.

        Raises:
            ConfigError: ``out_dir`` overlaps the inputs (see :func:`check_output_folder`).
            CwdmError: ``out_dir`` cannot be created or is not writable (checked before any case).
            Interrupted: a signal stopped the run (:mod:`cwdm.signals`); its ``report`` holds the
                results so far, the unfinished cases marked ``interrupted``.
        """
        started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        start = time.perf_counter()
        out_dir = Path(out_dir)
        check_output_folder(out_dir, cases)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CwdmError(f"cannot create the output folder {out_dir} ({exc})") from exc
        for path in remove_partial_files(out_dir):
            log.warning("removed %s, left by an interrupted run", path.name)
        try:
            probe_writable(out_dir)
        except OSError as exc:
            raise CwdmError(
                f"the output folder {out_dir} is not writable ({exc.strerror or exc}); nothing was run"
            ) from exc

        results: dict[str, CaseResult] = {}

        def record(result: CaseResult) -> None:
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
            )

        try:
            pending: dict[MRISequence, list[Case]] = {seq: [] for seq in CANONICAL_ORDER}
            for case in cases:
                target = self._triage(case, out_dir, record)
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
                self._process_sharded(batches, out_dir, record, on_step)
            else:
                self._process_local(batches, out_dir, record, on_step)
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

    def _triage(self, case: Case, out_dir: Path, record: CaseCallback) -> MRISequence | None:
        """The case's target if it still needs sampling; otherwise record why not and return None."""
        try:
            target = case.target()
        except CaseError as exc:
            status: CaseStatus = "failed" if case.expects_synthesis or case.problems else "ignored"
            record(CaseResult(case.case_id, status, error=exc.detail, error_type=type(exc).__name__))
            return None
        output = out_dir / case.output_name(target)
        if _output_complete(output, case.files[condition_order(target)[0]]):
            record(CaseResult(case.case_id, "skipped", target, output))
            return None
        if output.exists() or output.is_symlink():
            log.warning(
                "%s: %s exists but is incomplete, not a regular file or not on the case's grid; "
                "replacing it (a symbolic link is replaced, never written through)",
                case.case_id,
                output,
            )
        return target

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

    def _process_local(
        self,
        batches: Iterable[tuple[MRISequence, Sequence[Case]]],
        out_dir: Path,
        record: CaseCallback,
        on_step: StepCallback | None,
    ) -> None:
        """Prepare, sample and write ``batches`` in this process (background I/O per :attr:`throughput`).

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
            with BackgroundWriter(flow.max_pending_writes, flow.background_io) as writer:

                def write(item: _Prepared, volume: np.ndarray, elapsed_s: float) -> None:
                    recorder.add_future(writer.submit(self._write_isolated, item, volume, elapsed_s))

                stream = prefetched(
                    batches,
                    lambda batch: self._prepare_batch(batch[0], batch[1], out_dir),
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

    def _process_sharded(
        self,
        batches: Sequence[tuple[MRISequence, Sequence[Case]]],
        out_dir: Path,
        record: CaseCallback,
        on_step: StepCallback | None,
    ) -> None:
        """Share ``batches`` out to one worker process per device; record their results in case order."""
        targets = {case.case_id: target for target, cases in batches for case in cases}
        factory = self.worker_factory or functools.partial(
            _worker_from_parts,
            {target: copy.deepcopy(model).cpu() for target, model in self.models.items()},
            self.settings,
            self.runtime.precision,
            self.schedule,
            self.fast_path,
        )

        def lost(case_id: str, reason: str) -> CaseResult:
            return CaseResult(case_id, "failed", targets[case_id], error=reason, error_type="WorkerError")

        run_workers(
            functools.partial(_run_shard, factory, out_dir),
            batches,
            self.throughput.devices,
            record=record,
            order=list(targets),
            key=lambda result: result.case_id,
            lost=lost,
            on_step=on_step,
        )

    def _prepare_batch(
        self, target: MRISequence, cases: Sequence[Case], out_dir: Path
    ) -> tuple[list[_Prepared], list[CaseResult]]:
        """Prepare each case (on the background thread when there is one); failures are returned."""
        prepared: list[_Prepared] = []
        failures: list[CaseResult] = []
        for case in cases:
            with self._isolate([case], target, failures.append):
                prepared.append(self._prepare(case, target, out_dir))
        return prepared, failures

    def _run_batch(
        self,
        target: MRISequence,
        prepared: Sequence[_Prepared],
        record: CaseCallback,
        on_step: StepCallback | None,
        write: Callable[[_Prepared, np.ndarray, float], None],
    ) -> None:
        """Sample the prepared cases of one target, by network shape; each volume goes to ``write``."""
        by_shape: dict[tuple[int, int, int], list[_Prepared]] = {}
        for item in prepared:
            by_shape.setdefault(item.layout.network_shape, []).append(item)
        for group in by_shape.values():
            self._sample_group(target, group, record, on_step, write)

    def _sample_group(
        self,
        target: MRISequence,
        group: Sequence[_Prepared],
        record: CaseCallback,
        on_step: StepCallback | None,
        write: Callable[[_Prepared, np.ndarray, float], None],
    ) -> None:
        """Sample same-shaped cases together; on running out of device memory, retry in halves.

        A batch that does not fit in the accelerator's memory is sampled again at half the size, down
        to one case at a time, and the smaller size is kept for the rest of the run. A case that does
        not fit even alone fails with :class:`DeviceMemoryError`; never silently. Each retry starts
        its cases' generators afresh, so the outputs are those of a run at the smaller batch size.
        """
        limit = self._batch_limit or len(group)
        if len(group) > limit:
            for first in range(0, len(group), limit):
                self._sample_group(target, group[first : first + limit], record, on_step, write)
            return
        out_of_memory = ""
        with self._isolate([item.case for item in group], target, record):
            start = time.perf_counter()
            try:
                volumes = self._synthesise(target, group, on_step)
            except torch.OutOfMemoryError as exc:
                if len(group) == 1:
                    raise DeviceMemoryError(
                        group[0].case.case_id,
                        f"out of {self.runtime.device} memory sampling {target} even alone (batch size 1): "
                        f"{_first_line(exc)}; use a larger GPU, or precision bf16/fp16",
                        group[0].case.folder,
                    ) from exc
                out_of_memory = _first_line(exc)
            else:
                share = (time.perf_counter() - start) / len(group)
                for item, volume in zip(group, volumes, strict=True):
                    write(item, volume, item.elapsed_s + share)
        if out_of_memory:  # retried here, outside the handler, whose traceback held the batch's tensors
            self._batch_limit = len(group) // 2
            log.warning(
                "out of %s memory sampling %d cases together (%s; %s); retrying %d at a time",
                self.runtime.device,
                len(group),
                ", ".join(item.case.case_id for item in group),
                out_of_memory,
                self._batch_limit,
            )
            self.runtime.release_cached_memory()
            self._sample_group(target, group, record, on_step, write)

    def _write_isolated(self, item: _Prepared, volume: np.ndarray, elapsed_s: float) -> list[CaseResult]:
        """:meth:`_write` inside the isolation boundary (on the writer thread when there is one)."""
        results: list[CaseResult] = []
        with self._isolate([item.case], item.target, results.append):
            results.append(self._write(item, volume, elapsed_s))
        return results

    def _prepare(self, case: Case, target: MRISequence, out_dir: Path) -> _Prepared:
        """Read, check and preprocess the three present sequences of ``case``.

        Raises:
            VolumeReadError: a present sequence cannot be read.
            GeometryError: the present sequences do not share one grid.
        """
        start = time.perf_counter()
        order = condition_order(target)
        volumes = [_read(case, seq) for seq in order]
        reference = volumes[0]
        for seq, volume in zip(order[1:], volumes[1:], strict=True):
            if not same_grid(reference, volume):
                raise GeometryError(
                    case.case_id,
                    f"{seq} grid differs from {order[0]} ({volume.path.name}: {describe_grid(volume)}; "
                    f"{reference.path.name}: {describe_grid(reference)}{_affine_note(reference, volume)}); "
                    "present sequences must share one grid",
                    volume.path,
                )
        layout = NetworkLayout.for_shape(reference.shape, self.multiple)
        normalised = [normalise(volume.data) for volume in volumes]
        cond = np.stack([layout.to_network(volume) for volume in normalised])
        return _Prepared(
            case=case,
            target=target,
            cond=cond,
            layout=layout,
            reference=reference,
            output=out_dir / case.output_name(target),
            elapsed_s=time.perf_counter() - start,
            warnings=self._blank_inputs(case, order, volumes, normalised),
        )

    def _blank_inputs(
        self,
        case: Case,
        order: Sequence[MRISequence],
        volumes: Sequence[Volume],
        normalised: Sequence[np.ndarray],
    ) -> tuple[str, ...]:
        """Warnings for present sequences that are all zeros after preprocessing (constant volumes:
        nothing to scale, so no division by zero either); the case is still synthesised."""
        notes = []
        for index, (seq, volume, values) in enumerate(zip(order, volumes, normalised, strict=True)):
            if values.any():
                continue
            note = (
                f"the {seq} volume {volume.path.name} is constant between its 0.1 and 99.9 percentiles: "
                "it enters the network as all zeros"
            )
            if index == 0 and self.settings.postprocess == "brain_mask":
                note += "; as the first condition it defines the brain mask, so the output is all zeros"
            log.warning("%s: %s", case.case_id, note)
            notes.append(note)
        return tuple(notes)

    def _network(self, denoiser: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        """The denoiser's fast-path call (:mod:`cwdm.inference.fastpath`), prepared once per model: autocast
        around the network only (the sampler stays float32), inference mode, float32 output."""
        fast = self._fast.get(denoiser)
        if fast is None:
            fast = self._fast[denoiser] = prepare_denoiser(denoiser, self.runtime, self.fast_path)
        return fast

    def _synthesise(
        self, target: MRISequence, group: Sequence[_Prepared], on_step: StepCallback | None
    ) -> np.ndarray:
        """Sample one batch; returns ``(B, *network_shape)`` float32 image-space volumes (not clamped)."""
        device = self.runtime.device
        ids = tuple(item.case.case_id for item in group)
        step_callback = None if on_step is None else (lambda done, total: on_step(ids, done, total))
        with torch.inference_mode():
            cond = build_condition(torch.from_numpy(np.stack([item.cond for item in group])).to(device))
            coeffs = sample(
                self._network(self.models[target]),
                cond,
                steps=self.settings.steps,
                generator=[case_generator(self.settings.seed, case_id, device) for case_id in ids],
                clip=True,
                sampler=self.settings.sampler,
                schedule=self.schedule,
                on_step=step_callback,
            )
            return decode(coeffs)[:, 0].float().cpu().numpy()

    def _write(self, item: _Prepared, volume: np.ndarray, elapsed_s: float) -> CaseResult:
        """Post-process one sampled volume, put it on the input grid and write it atomically.

        Raises:
            CaseError: the sampled volume has NaN or infinite values, or the output file cannot be
                written (no partial file remains).
        """
        start = time.perf_counter()
        finite = np.isfinite(volume)
        if not finite.all():
            raise CaseError(
                item.case.case_id,
                f"the {item.target} model produced {int(finite.size - finite.sum()):,} NaN or infinite "
                "voxels; nothing was written (check the checkpoint, or use precision fp32)",
                self.checkpoints.get(item.target),
            )
        postprocess = POSTPROCESSES[self.settings.postprocess]
        result = item.layout.to_grid(postprocess(volume, item.cond[0]))
        try:
            write_volume_atomic(result, item.reference.header, item.output)
        except OSError as exc:
            raise CaseError(item.case.case_id, f"cannot write the output ({exc})", item.output) from exc
        elapsed_s += time.perf_counter() - start
        return CaseResult(
            item.case.case_id, "written", item.target, item.output, elapsed_s, warnings=item.warnings
        )


def _worker_from_weights(
    weights_dir: Path, params: RunParameters, targets: tuple[MRISequence, ...], device: torch.device
) -> Synthesizer:
    """A worker's synthesizer: the same weights and parameters, on ``device`` only."""
    worker = params.model_copy(update={"device": device.type})
    return Synthesizer.from_weights(
        weights_dir, worker, targets, throughput=Throughput.for_devices([device], params.batch_size)
    )


def _worker_from_parts(
    models: Mapping[MRISequence, Denoiser],
    settings: SamplingSettings,
    precision: str,
    schedule: NoiseSchedule,
    fast_path: FastPathOptions,
    device: torch.device,
) -> Synthesizer:
    """A worker's synthesizer from in-memory models (copied to ``device``)."""
    return Synthesizer(
        {target: model.to(device) for target, model in models.items()},
        settings,
        Runtime(device, precision),
        schedule,
        fast_path=fast_path,
        throughput=Throughput.for_devices([device], settings.batch_size),
    )


def _run_shard(
    factory: Callable[[torch.device], Synthesizer],
    out_dir: Path,
    device: torch.device,
    batches: Iterable[tuple[MRISequence, Sequence[Case]]],
    events: WorkerEvents,
) -> None:
    """The work of one worker process (see :func:`cwdm.inference.throughput.run_workers`)."""
    factory(device)._process_local(batches, out_dir, events.record, events.on_step)


def _log_result(result: CaseResult) -> None:
    target = f" ({result.target})" if result.target else ""
    if result.status == "written":
        log.info("%s%s: written in %.1f s", result.case_id, target, result.elapsed_s)
    elif result.status == "skipped":
        log.info("%s%s: skipped, %s is already complete", result.case_id, target, result.output)
    elif result.status == "ignored":
        log.warning("%s: ignored: %s", result.case_id, result.error)
    else:
        log.error("%s%s: failed: %s", result.case_id, target, result.error)


def _unfinished(case: Case, signum: int) -> CaseResult:
    """The result of a case that a signal stopped before it was finished."""
    target = case.missing[0] if case.expects_synthesis and not case.problems else None
    return CaseResult(
        case.case_id,
        "interrupted",
        target,
        error=f"not finished: the run was stopped by {Interrupted(signum).signal_name}; a rerun does it",
        error_type="Interrupted",
    )


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _read(case: Case, seq: MRISequence) -> Volume:
    path = case.files[seq]
    try:
        return read_volume(path)
    except VolumeError as exc:
        raise VolumeReadError(case.case_id, f"cannot use the {seq} volume {path.name}: {exc}", path) from exc


def _affine_note(a: Volume, b: Volume) -> str:
    if a.shape != b.shape:
        return ""
    offset = float(np.abs(a.affine - b.affine).max())
    return f"; same shape but the affines differ by up to {offset:.3g} mm"


def _output_complete(output: Path, reference_file: Path) -> bool:
    """Whether ``output`` is a readable volume on the grid of ``reference_file`` (a finished output)."""
    if output.is_symlink() or not output.is_file():
        return False
    try:
        written = read_volume(output)
        reference = read_volume(reference_file)
    except VolumeError:
        return False
    return same_grid(written, reference)
