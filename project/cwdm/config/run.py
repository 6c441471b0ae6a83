"""``parameters.yaml`` (run parameters), ``model.yaml`` (a weights directory's architecture and sampling
defaults), the merged sampling settings of a run, and sweep grids.

Field names are the YAML keys, defaults are the published configuration. The settings of a run are
merged here, once (:meth:`SamplingSettings.resolve`): command-line options over ``parameters.yaml``
(:func:`override_run_parameters`) over the weights' ``model.yaml`` over the published configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from ..choices import (
    CompileMode,
    DeviceName,
    PostprocessName,
    PrecisionName,
    SamplerName,
    ScheduleName,
    SequenceName,
    TimestepSpacing,
)
from ..errors import ConfigError
from ..method.denoiser import DenoiserConfig
from ..method.schedule import NoiseSchedule
from .reading import MAX_SWEEP_SETTINGS, _read_yaml, _Strict, _validate

log = logging.getLogger(__name__)

#: The published number of diffusion (and sampling) steps.
PUBLISHED_STEPS = 1000
#: The file name of a weights directory's architecture and sampling defaults.
MODEL_SPEC_NAME = "model.yaml"


class RunParameters(_Strict):
    """Run parameters (``parameters.yaml``); every key is optional.

    Attributes:
        sampling_steps: Sampling steps, respaced evenly; ``None`` takes the model's default
            (``model.yaml``), which is the published 1000 unless the weights say otherwise.
        sampler: ``ddpm`` (published) or ``ddim`` (deterministic); ``None`` takes the model's default.
        timestep_spacing: Which timesteps respaced sampling keeps: ``linspace`` (published) or
            ``trailing`` (one or two steps need it); ``None`` takes the model's default.
        samples: Draws per case; with more than one the output is their voxel-wise mean and their
            voxel-wise standard deviation is the uncertainty map (docs/USAGE.md, "QC previews and
            uncertainty").
        seed: Seed of each case's generator: same seed, same device -> same output.
        device: ``auto`` picks CUDA when available.
        precision: Network arithmetic; ``auto`` is bf16 on a GPU that supports it, else fp32.
        batch_size: Cases that need the same target sampled together.
        postprocess: ``brain_mask`` (clamp and zero outside the brain, the published evaluation) or
            ``threshold`` (values <= 0.04 set to 0, the published challenge container).
        fast_path: The fast inference path (:mod:`cwdm.inference.fastpath`): on a GPU cuDNN autotuning (the
            channels-last layout measured slower); on a CPU only what measured faster than plain
            float32. False: eager.
        compile: Wrap the network in ``torch.compile`` (falls back to eager if compilation fails).
        compile_mode: The ``torch.compile`` mode.
        cuda_graphs: Capture the denoiser step as a CUDA graph (GPU only; falls back to eager).
    """

    sampling_steps: StrictInt | None = Field(default=None, ge=1, le=PUBLISHED_STEPS)
    sampler: SamplerName | None = None
    timestep_spacing: TimestepSpacing | None = None
    samples: StrictInt = Field(default=1, ge=1, le=64)
    seed: StrictInt = Field(default=42, ge=0, lt=2**63)
    device: DeviceName = "auto"
    precision: PrecisionName = "auto"
    batch_size: StrictInt = Field(default=1, ge=1, le=64)
    postprocess: PostprocessName = "brain_mask"
    fast_path: StrictBool = True
    compile: StrictBool = False
    compile_mode: CompileMode = "default"
    cuda_graphs: StrictBool = False


#: The architecture keys of ``model.yaml``: the fields of :class:`DenoiserConfig`, its one description.
ARCHITECTURE_KEYS = tuple(f.name for f in dataclasses.fields(DenoiserConfig))


class TargetDefaults(_Strict):
    """What ``model.yaml`` says of one target (its ``targets:`` section): sampling defaults where the
    held-out data say this target differs from the others, and a warning for the users of its synthesis.

    Attributes:
        sampling_steps, sampler, timestep_spacing: This target's defaults (unset: the file's own).
        downstream_warning: Logged once per run that synthesises this target, e.g. that a case completed
            with this synthesis segments worse than with a present sequence copied in (with the numbers).
    """

    sampling_steps: StrictInt | None = Field(default=None, ge=1)
    sampler: SamplerName | None = None
    timestep_spacing: TimestepSpacing | None = None
    downstream_warning: str | None = Field(default=None, max_length=2000)


class ModelSpec(_Strict):
    """A weights directory's ``model.yaml``: architecture, training schedule and sampling defaults.

    The defaults are the published configuration, so a directory of published checkpoints needs no
    ``model.yaml`` at all. The file is flat: its architecture keys (:data:`ARCHITECTURE_KEYS`) are the
    fields of :class:`DenoiserConfig`, which validates them, kept whole in :attr:`architecture`.
    """

    architecture: DenoiserConfig = Field(default_factory=DenoiserConfig)
    diffusion_steps: StrictInt = Field(default=PUBLISHED_STEPS, ge=1)
    noise_schedule: ScheduleName = "linear"
    sampling_steps: StrictInt = Field(default=PUBLISHED_STEPS, ge=1)
    sampler: SamplerName = "ddpm"
    timestep_spacing: TimestepSpacing = "linspace"
    targets: dict[SequenceName, TargetDefaults] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_architecture(cls, data: Any) -> Any:
        """Move the flat architecture keys into one :class:`DenoiserConfig` (its own checks apply)."""
        if not isinstance(data, dict) or not any(key in data for key in ARCHITECTURE_KEYS):
            return data
        if "architecture" in data:
            raise ValueError("give the architecture either as its keys or as 'architecture', not both")
        rest = {key: value for key, value in data.items() if key not in ARCHITECTURE_KEYS}
        if set(rest) - set(cls.model_fields):
            return rest  # unknown keys are reported first, by the field validation
        given = {key: data[key] for key in ARCHITECTURE_KEYS if key in data}
        if isinstance(given.get("channel_mult"), list):
            given["channel_mult"] = tuple(given["channel_mult"])
        try:
            architecture = DenoiserConfig(**given)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return rest | {"architecture": architecture}

    @classmethod
    def file_keys(cls) -> list[str]:
        """The flat keys of ``model.yaml``: the architecture's, then the others."""
        return [*ARCHITECTURE_KEYS, *(name for name in cls.model_fields if name != "architecture")]

    def schedule(self) -> NoiseSchedule:
        """The training noise schedule."""
        return NoiseSchedule.named(self.noise_schedule, self.diffusion_steps)

    def to_yaml(self) -> str:
        """The flat ``model.yaml`` text. ``dropout`` (a training-only setting, 0 published) is written
        only when set, so that files written before it was a key read back byte for byte."""
        architecture = dataclasses.asdict(self.architecture)
        architecture["channel_mult"] = list(architecture["channel_mult"])
        if not architecture["dropout"]:
            del architecture["dropout"]
        rest = self.model_dump(exclude={"architecture", "targets"})
        if self.targets:  # written only when set, as dropout
            rest["targets"] = {
                target: defaults.model_dump(exclude_none=True) for target, defaults in self.targets.items()
            }
        return yaml.safe_dump(architecture | rest, sort_keys=False)


def parse_run_parameters(data: Any, source: str = "parameters") -> RunParameters:
    """Validate an already-parsed mapping as :class:`RunParameters`."""
    return _validate(RunParameters, data, source)


def load_run_parameters(path: Path | None) -> RunParameters:
    """Read ``parameters.yaml``; ``None`` gives the defaults.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown keys, wrong types, out-of-range values.
    """
    if path is None:
        return RunParameters()
    return parse_run_parameters(_read_yaml(path), str(path))


def override_run_parameters(
    params: RunParameters, overrides: Mapping[str, Any], source: str = "command-line options"
) -> RunParameters:
    """``params`` with some keys replaced, validated like a file (keys are the parameters.yaml keys).

    Args:
        params: The parameters read from a file (or the defaults).
        overrides: New values by key; ``None`` values leave the key as it is.
        source: Named in error messages.

    Raises:
        ConfigError: unknown key, wrong type or out-of-range value.
    """
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return params
    return parse_run_parameters({**params.model_dump(), **changes}, source)


def load_model_spec(path: Path) -> ModelSpec:
    """Read a ``model.yaml``; a missing file gives the published configuration.

    Raises:
        ConfigError: as :func:`load_run_parameters`, or an architecture the denoiser rejects.
    """
    path = Path(path)
    if not path.exists():
        return ModelSpec()
    return _validate(ModelSpec, _read_yaml(path), str(path))


@dataclass(frozen=True)
class SamplingSettings:
    """The effective sampling settings of a run: parameters.yaml over model.yaml over the published ones.

    Field names are the ``parameters.yaml`` keys. Every field changes the written voxels except those
    marked ``changes_output=False`` in their metadata; :meth:`output_record` is derived from that, so a
    new setting is compared on reruns and recorded in outputs by being declared here.

    Attributes:
        sampler: ``ddpm`` or ``ddim``.
        sampling_steps: Reverse-diffusion steps, respaced from the training schedule.
        timestep_spacing: Which timesteps the respacing keeps (``linspace`` or ``trailing``).
        samples: Draws per case (their mean is written).
        seed: The run seed (each case's generator derives from it).
        postprocess: The post-processing variant.
        batch_size: Cases of one target sampled together (each draw has its own generator, so the
            outputs do not depend on it).
    """

    sampler: SamplerName
    sampling_steps: int
    timestep_spacing: TimestepSpacing = "linspace"
    samples: int = 1
    seed: int = 42
    postprocess: PostprocessName = "brain_mask"
    batch_size: int = field(default=1, metadata={"changes_output": False})

    @property
    def steps_label(self) -> str:
        """``"1 step"``, ``"10 steps"``: for summaries and logs."""
        return f"{self.sampling_steps} step" + ("" if self.sampling_steps == 1 else "s")

    def label_with(self, per_target: Mapping[Any, SamplingSettings]) -> str:
        """``"ddim 2 steps"``, or with the targets whose ``model.yaml`` defaults differ:
        ``"ddim 2 steps (t2w, t2f: ddim 1 step)"``, so that a log or summary never claims one setting
        for a run that used several."""
        text = f"{self.sampler} {self.steps_label}"
        groups: dict[str, list[str]] = {}
        for target, own in per_target.items():
            if own != self:
                spacing = "" if own.timestep_spacing == self.timestep_spacing else f" {own.timestep_spacing}"
                groups.setdefault(f"{own.sampler} {own.steps_label}{spacing}", []).append(str(target))
        if not groups:
            return text
        return (
            text + " (" + "; ".join(f"{', '.join(names)}: {label}" for label, names in groups.items()) + ")"
        )

    def output_record(self, precision: str) -> dict[str, Any]:
        """The settings that change the written voxels, by their YAML names, and the precision the
        network ran at: what an output's provenance records and a rerun compares."""
        changing = {
            f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("changes_output", True)
        }
        return changing | {"precision": precision}

    @classmethod
    def resolve(
        cls,
        params: RunParameters,
        spec: ModelSpec,
        source: Path | str = MODEL_SPEC_NAME,
        target: str | None = None,
    ) -> SamplingSettings:
        """Fill the unset ``sampling_steps``/``sampler``/``timestep_spacing`` of ``params`` from the
        model's ``spec``: its defaults for ``target`` (``targets:``) where it has them, else its own.

        Args:
            params: The run parameters.
            spec: The weights' ``model.yaml``.
            source: Where ``spec`` came from, for messages.
            target: The target whose defaults apply (``None``: the file's own).

        Raises:
            ConfigError: more sampling steps than the model's diffusion steps.
        """
        own = spec.targets.get(str(target)) if target is not None else None
        default_steps = own.sampling_steps if own and own.sampling_steps else spec.sampling_steps
        default_sampler = own.sampler if own and own.sampler else spec.sampler
        default_spacing = own.timestep_spacing if own and own.timestep_spacing else spec.timestep_spacing
        steps = params.sampling_steps if params.sampling_steps is not None else default_steps
        if steps > spec.diffusion_steps:
            raise ConfigError(
                f"sampling_steps {steps} exceeds the model's {spec.diffusion_steps} diffusion steps "
                f"({source}); use at most {spec.diffusion_steps}"
            )
        spacing = params.timestep_spacing or default_spacing
        if steps == 1 and spacing == "linspace" and spec.diffusion_steps > 1:
            log.warning(
                "one sampling step with the published linspace spacing keeps only t = 0 (the network "
                "sees pure noise as if it were clean); timestep_spacing: trailing keeps t = T - 1"
            )
        return cls(
            sampler=params.sampler or default_sampler,
            sampling_steps=steps,
            timestep_spacing=spacing,
            samples=params.samples,
            seed=params.seed,
            postprocess=params.postprocess,
            batch_size=params.batch_size,
        )


class SweepSetting(_Strict):
    """One setting of a quality-versus-time sweep (``cwdm sweep``): the run parameters that change what
    is sampled or how fast. Field names are the parameters.yaml keys.
    """

    sampler: SamplerName = "ddpm"
    sampling_steps: StrictInt = Field(default=PUBLISHED_STEPS, ge=1, le=PUBLISHED_STEPS)
    timestep_spacing: TimestepSpacing = "linspace"
    postprocess: PostprocessName = "brain_mask"
    precision: PrecisionName = "fp32"
    samples: StrictInt = Field(default=1, ge=1, le=64)

    @property
    def name(self) -> str:
        """A file- and CSV-friendly name: ``ddim-10-trailing-brain_mask-fp32-k1``."""
        return (
            f"{self.sampler}-{self.sampling_steps}-{self.timestep_spacing}-{self.postprocess}-"
            f"{self.precision}-k{self.samples}"
        )

    def run_parameters(self, base: RunParameters) -> RunParameters:
        """``base`` with this setting's keys."""
        return base.model_copy(update=self.model_dump())

    def parameters_yaml(self, comment: str = "") -> str:
        """This setting as a ``parameters.yaml`` (every key is a :class:`RunParameters` key), with
        ``comment`` lines on top."""
        lines = [f"# {line}" for line in comment.splitlines()]
        return "\n".join([*lines, yaml.safe_dump(self.model_dump(), sort_keys=False)])


def expand_sweep_grid(data: Any, source: str = "sweep grid") -> list[SweepSetting]:
    """Expand a grid: a list of entries, each a mapping of :class:`SweepSetting` keys to a value or a
    list of values; every combination of an entry's lists is a setting, entries in order, duplicates
    dropped.

    Raises:
        ConfigError: not a list of mappings, an unknown key, or a value out of range (naming the entry).
    """
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{source}: expected a non-empty list of settings, got {type(data).__name__}")
    settings: dict[str, SweepSetting] = {}
    for number, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: entry {number} is not a mapping of keys to values")
        keys = list(entry)
        choices = [value if isinstance(value, list) else [value] for value in entry.values()]
        combinations = math.prod(len(values) for values in choices)
        if len(settings) + combinations > MAX_SWEEP_SETTINGS:
            raise ConfigError(
                f"{source}: entry {number} expands to {combinations:,} settings; a grid may hold at most "
                f"{MAX_SWEEP_SETTINGS:,}"
            )
        for combination in itertools.product(*choices):
            setting = _validate(
                SweepSetting, dict(zip(keys, combination, strict=True)), f"{source}, entry {number}"
            )
            settings.setdefault(setting.name, setting)
    return list(settings.values())


def load_sweep_grid(path: Path) -> list[SweepSetting]:
    """Read a grid YAML file (:func:`expand_sweep_grid`).

    Raises:
        ConfigError: unreadable file, invalid YAML, or an invalid grid.
    """
    return expand_sweep_grid(_read_yaml(path), str(path))
