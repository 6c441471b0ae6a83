"""The synthesizer: the loaded models of a run, its settings, and the sampling of a batch of draws.

:class:`Synthesizer` holds one denoiser per target with the run's sampling settings, device, precision
and prepared network call (:mod:`cwdm.inference.fastpath`), and samples a batch of draws
(:meth:`Synthesizer.sample_draws`). Build it with :meth:`Synthesizer.from_weights` (loads a weights
directory) or :meth:`Synthesizer.from_loaded` (models already in memory, as the sweep keeps them); only
these factories look at the machine (devices, GPUs). :meth:`Synthesizer.run` is a run over cases
(:func:`cwdm.inference.runner.run_cases`: the plan, claims, batches, isolation and report).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..cases.discovery import Case
from ..config import RunParameters, SamplingSettings
from ..errors import CheckpointError, ConfigError
from ..method.denoiser import Denoiser
from ..method.sampling import sample
from ..method.schedule import NoiseSchedule
from ..method.wavelets import build_condition, decode
from ..runtime import Runtime, resolve_runtime, sample_generator, worker_devices
from ..sequences import CANONICAL_ORDER, MRISequence
from ..weights.folder import WeightsDir
from .claims import ClaimSet
from .execution import BatchStepCallback
from .fastpath import FastPathOptions, prepare_denoiser
from .ledger import Draw
from .report import CaseCallback, RunReport
from .runner import RunOptions, run_cases
from .throughput import Throughput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModels:
    """The denoisers of a weights directory, loaded once.

    Attributes:
        weights: The directory (its ``model.yaml`` and schedule).
        models: An eval-mode denoiser per loaded target.
        checkpoints: The file each model came from.
        unavailable: Targets whose model could not be loaded, with the reason.
    """

    weights: WeightsDir
    models: Mapping[MRISequence, Denoiser]
    checkpoints: Mapping[MRISequence, Path]
    unavailable: Mapping[MRISequence, str]

    @classmethod
    def load(
        cls, weights_dir: Path, targets: Iterable[MRISequence | str] | None, device: torch.device
    ) -> LoadedModels:
        """Load the models of ``targets`` (all four when ``None``) onto ``device``.

        A target without a usable checkpoint does not stop the others: it is recorded in
        :attr:`unavailable`, and its cases fail with the reason.

        Raises:
            CheckpointError: ``weights_dir`` is not a directory, or holds two checkpoints for a target.
            ConfigError: invalid ``model.yaml``.
        """
        weights = WeightsDir.open(Path(weights_dir))
        wanted = CANONICAL_ORDER if targets is None else tuple(MRISequence(t) for t in targets)
        models: dict[MRISequence, Denoiser] = {}
        unavailable: dict[MRISequence, str] = {}
        checkpoints: dict[MRISequence, Path] = {}
        for target in dict.fromkeys(wanted):
            try:
                models[target] = weights.load(target, device)
            except CheckpointError as exc:
                unavailable[target] = str(exc)
            except torch.OutOfMemoryError as exc:
                unavailable[target] = f"out of {device} memory loading {weights.checkpoint(target)} ({exc})"
            else:
                checkpoints[target] = weights.checkpoint(target)
                log.info("loaded the %s model from %s", target, checkpoints[target])
                continue
            log.error("no model for target %s: %s", target, unavailable[target])
        return cls(weights, models, checkpoints, unavailable)


class Synthesizer:
    """The loaded models and the run settings; samples batches of draws, runs over cases.

    Build it with :meth:`from_weights` or :meth:`from_loaded`; the constructor takes already-made parts
    and looks at nothing else (tests, notebooks).

    Args:
        models: An eval-mode denoiser per target, on ``runtime.device``.
        settings: The effective sampling settings.
        runtime: Device and precision.
        schedule: The models' training noise schedule.
        unavailable: Targets whose model could not be loaded, with the reason; their cases fail.
        checkpoints: The file each model came from (for the report and the outputs' provenance).
        fast_path: The network's fast-path settings (default: :meth:`FastPathOptions.resolve` for
            ``runtime.device`` with its defaults).
        throughput: How :meth:`run` moves cases (default: sequential, in this process).
        worker_factory: Builds the synthesizer of a worker device, for a ``throughput`` over several
            devices (must be picklable; default: copies of ``models``).
        target_settings: The settings of a target whose ``model.yaml`` defaults differ from the file's
            own (``targets:``); the others use ``settings``.
        target_warnings: What ``model.yaml`` says users of a target's synthesis must know (logged once
            per run that synthesises it).
    """

    def __init__(
        self,
        models: Mapping[MRISequence | str, Denoiser],
        settings: SamplingSettings,
        runtime: Runtime,
        schedule: NoiseSchedule,
        unavailable: Mapping[MRISequence, str] | None = None,
        checkpoints: Mapping[MRISequence, Path] | None = None,
        *,
        fast_path: FastPathOptions | None = None,
        throughput: Throughput | None = None,
        worker_factory: Callable[[torch.device], Synthesizer] | None = None,
        target_settings: Mapping[MRISequence, SamplingSettings] | None = None,
        target_warnings: Mapping[MRISequence, str] | None = None,
    ) -> None:
        sizes = {model.config.size_multiple for model in models.values()}
        if len(sizes) > 1:
            raise ConfigError(f"the models disagree on their size multiple ({sorted(sizes)})")
        self.models = {MRISequence(target): model for target, model in models.items()}
        self.settings = settings
        self.runtime = runtime
        self.schedule = schedule
        self.unavailable = dict(unavailable or {})
        self.checkpoints = dict(checkpoints or {})
        self.fast_path = fast_path or FastPathOptions.resolve(runtime.device)
        self.throughput = throughput or Throughput()
        self.worker_factory = worker_factory
        self.target_settings = {
            MRISequence(t): s for t, s in (target_settings or {}).items() if s != settings
        }
        self.target_warnings = {MRISequence(t): text for t, text in (target_warnings or {}).items()}
        #: The most draws sampled together; set after a batch ran out of device memory.
        self.draw_limit: int | None = None
        #: Image-space sizes must divide by this (the wavelet halves them, the U-Net then needs its multiple).
        self.multiple = 2 * (sizes.pop() if sizes else 1)
        self._networks: dict[MRISequence, Callable[[Tensor, Tensor], Tensor]] = {}

    # -- factories: the only places that look at the machine -----------------------------------
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

        Without ``throughput``: background I/O on a GPU, and one worker process per visible GPU when
        there are several (the models are then loaded here on the CPU, to check them, and again by
        each worker).

        Args:
            weights_dir: One checkpoint per target plus an optional ``model.yaml`` (docs/WEIGHTS.md).
            params: The run parameters (parameters.yaml).
            targets: The targets the cases need (see :func:`cwdm.needed_targets`).
            throughput: How :meth:`run` moves cases.

        Raises:
            CheckpointError: ``weights_dir`` is not a directory, or holds two checkpoints for a target.
            ConfigError: invalid ``model.yaml``, sampling settings, device or precision.
        """
        runtime = resolve_runtime(params.device, params.precision)
        throughput = throughput or Throughput.for_devices(worker_devices(runtime.device), params.batch_size)
        wanted = None if targets is None else tuple(MRISequence(t) for t in targets)
        loaded = LoadedModels.load(
            weights_dir, wanted, torch.device("cpu") if throughput.sharded else runtime.device
        )
        factory = functools.partial(_worker_from_weights, Path(weights_dir), params, tuple(loaded.models))
        return cls.from_loaded(loaded, params, throughput=throughput, worker_factory=factory)

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModels,
        params: RunParameters,
        *,
        throughput: Throughput | None = None,
        worker_factory: Callable[[torch.device], Synthesizer] | None = None,
    ) -> Synthesizer:
        """A synthesizer of models already loaded, with every setting of ``params`` resolved as
        :meth:`from_weights` resolves them (sampling settings over ``model.yaml``, device, precision,
        the fast path with ``compile`` and ``cuda_graphs``).

        Raises:
            ConfigError: invalid sampling settings, device or precision.
        """
        weights = loaded.weights
        settings = SamplingSettings.resolve(params, weights.spec, weights.spec_path)
        own = {
            target: SamplingSettings.resolve(params, weights.spec, weights.spec_path, str(target))
            for target in loaded.models
        }
        warnings = {
            MRISequence(target): defaults.downstream_warning
            for target, defaults in weights.spec.targets.items()
            if defaults.downstream_warning
        }
        runtime = resolve_runtime(params.device, params.precision)
        fast_path = FastPathOptions.resolve(
            runtime.device,
            fast_path=params.fast_path,
            compile=params.compile,
            compile_mode=params.compile_mode,
            cuda_graphs=params.cuda_graphs,
        )
        flow = throughput or Throughput.for_devices([runtime.device], params.batch_size)
        log.info("network: %s; cases: %s", fast_path.describe(), flow.describe())
        device = torch.device("cpu") if flow.sharded else runtime.device
        return cls(
            {target: model.to(device) for target, model in loaded.models.items()},
            settings,
            runtime,
            weights.schedule(),
            loaded.unavailable,
            loaded.checkpoints,
            fast_path=fast_path,
            throughput=flow,
            worker_factory=worker_factory,
            target_settings=own,
            target_warnings=warnings,
        )

    # -- what the run asks of it -------------------------------------------------------------------
    @property
    def targets(self) -> tuple[MRISequence, ...]:
        """The targets this synthesizer has a model for."""
        return tuple(self.models)

    @property
    def device_label(self) -> str:
        return str(self.runtime.device)

    def settings_for(self, target: MRISequence | str | None) -> SamplingSettings:
        """The sampling settings of ``target`` (``model.yaml`` may give a target its own defaults)."""
        return self.target_settings.get(MRISequence(target), self.settings) if target else self.settings

    def output_record(self, target: MRISequence | str | None = None) -> dict[str, object]:
        """The settings of ``target``'s outputs that change the written voxels
        (:meth:`SamplingSettings.output_record`)."""
        return self.settings_for(target).output_record(self.runtime.precision)

    def release_cached_memory(self) -> None:
        self.runtime.release_cached_memory()

    def sample_draws(
        self, target: MRISequence, draws: Sequence[Draw], on_step: BatchStepCallback | None = None
    ) -> np.ndarray:
        """Sample one batch of draws; returns ``(B, *network_shape)`` float32 image-space volumes (not
        clamped). Each draw has its own generator (:func:`cwdm.runtime.sample_generator`), so its result
        depends on neither the batch nor the order."""
        device = self.runtime.device
        settings = self.settings_for(target)
        ids = tuple(dict.fromkeys(draw.item.case.case_id for draw in draws))
        step_callback = None if on_step is None else (lambda done, total: on_step(ids, done, total))
        with torch.inference_mode():
            cond = build_condition(torch.from_numpy(np.stack([draw.item.cond for draw in draws])).to(device))
            coeffs = sample(
                self._network(target),
                cond,
                steps=settings.sampling_steps,
                generator=[
                    sample_generator(settings.seed, draw.item.case.case_id, draw.index, device)
                    for draw in draws
                ],
                clip=True,
                sampler=settings.sampler,
                schedule=self.schedule,
                spacing=settings.timestep_spacing,
                on_step=step_callback,
            )
            return decode(coeffs)[:, 0].float().cpu().numpy()

    def _network(self, target: MRISequence) -> Callable[[Tensor, Tensor], Tensor]:
        """The denoiser's fast-path call, prepared once per model: autocast around the network only (the
        sampler stays float32), inference mode, float32 output."""
        if target not in self._networks:
            self._networks[target] = prepare_denoiser(self.models[target], self.runtime, self.fast_path)
        return self._networks[target]

    # -- a run over cases ----------------------------------------------------------------------------
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
        """Synthesise the missing sequence of every case into ``out_dir``
        (:func:`cwdm.inference.runner.run_cases`, with this synthesizer's throughput).

        Args:
            cases: From :func:`cwdm.cases.discovery.discover_cases`.
            out_dir: The output folder (created if needed); it must not lie inside the data folder.
            qc_dir: Where each written case also gets its preview (``<case>-<target>.png``) and, with
                ``samples`` > 1, its uncertainty map (``<case>-<target>-std.nii.gz``); never ``out_dir``.
            on_case: Called with each case's result as soon as it is known.
            on_step: Called after every sampling step as ``on_step(case_ids, done, total)``.
            overwrite: Resample the cases whose finished output was made with other settings or inputs.
            claims: The claim set to use (tests: its heartbeat and staleness); default: a new one.

        Returns:
            The report, cases in the given order.

        Raises:
            ConfigError: ``out_dir`` overlaps the inputs.
            CwdmError: ``out_dir`` cannot be created or is not writable.
            Interrupted: a signal stopped the run; its ``report`` holds the results so far.
        """
        options = self.run_options(qc_dir=qc_dir, overwrite=overwrite, on_case=on_case, on_step=on_step)
        return run_cases(self, cases, out_dir, replace(options, claims=claims))

    def run_options(
        self,
        *,
        qc_dir: Path | None = None,
        overwrite: bool = False,
        on_case: CaseCallback | None = None,
        on_step: BatchStepCallback | None = None,
    ) -> RunOptions:
        """How a run over cases goes with this synthesizer: its throughput and worker factory, and the
        run's own choices (:func:`cwdm.inference.runner.run_cases`)."""
        return RunOptions(
            flow=self.throughput,
            worker_factory=self.worker_factory or self._copies_factory(),
            qc_dir=qc_dir,
            overwrite=overwrite,
            on_case=on_case,
            on_step=on_step,
        )

    def _copies_factory(self) -> Callable[[torch.device], Synthesizer] | None:
        """Workers with copies of the in-memory models (a synthesizer built by hand over several devices)."""
        if not self.throughput.sharded:
            return None
        models = {target: _cpu_copy(model) for target, model in self.models.items()}
        parts = (self.settings, self.runtime.precision, self.schedule, self.fast_path, self.target_settings)
        return functools.partial(_worker_from_parts, models, *parts)


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu()


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
    target_settings: Mapping[MRISequence, SamplingSettings],
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
        target_settings=target_settings,
    )
