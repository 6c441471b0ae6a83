"""Typed, validated configuration: ``parameters.yaml`` (run parameters) and ``model.yaml`` (a weights
directory's architecture and sampling defaults).

Only this module reads YAML. Field names are the YAML keys, defaults are the published configuration,
and a bad file raises :class:`cwdm.ConfigError` naming the file, the key, the value and what is allowed,
before any case runs. Validation uses pydantic (strict types: ``"100"`` is not an integer here).

Every YAML file is read within bounds, so that a small hostile file is refused at once instead of
exhausting time or memory: at most :data:`MAX_YAML_BYTES`, collections nested at most
:data:`MAX_YAML_DEPTH` deep, at most :data:`MAX_YAML_VALUES` values once aliases are expanded, and a
sweep grid of at most :data:`MAX_SWEEP_SETTINGS` settings; a value quoted in a message is cut short
(:func:`shown`).

The settings of a run are merged here too, once (:meth:`SamplingSettings.resolve`): command-line
options over ``parameters.yaml`` (:func:`override_run_parameters`) over the weights' ``model.yaml`` over
the published configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .choices import (
    CompileMode,
    DeviceName,
    LabelConventionName,
    PostprocessName,
    PrecisionName,
    SamplerName,
    ScheduleName,
    SequenceName,
    StructureName,
    TimestepSpacing,
)
from .errors import ConfigError
from .method.denoiser import DenoiserConfig
from .method.schedule import NoiseSchedule

log = logging.getLogger(__name__)


#: The published number of diffusion (and sampling) steps.
PUBLISHED_STEPS = 1000
#: The file name of a weights directory's architecture and sampling defaults.
MODEL_SPEC_NAME = "model.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        return yaml.safe_dump(architecture | self.model_dump(exclude={"architecture"}), sort_keys=False)


#: The largest YAML file read (parameters files take a few hundred bytes, sweep grids a few kilobytes).
MAX_YAML_BYTES = 2**18
#: How deep collections may nest in a YAML file (the deepest we write is two).
MAX_YAML_DEPTH = 32
#: How many values a YAML file may hold once its aliases (``*name``) are expanded: a few hundred bytes
#: of nested aliases would otherwise stand for billions of values ("billion laughs").
MAX_YAML_VALUES = 10_000
#: The most settings a sweep grid may expand to.
MAX_SWEEP_SETTINGS = 10_000
#: How many validation errors a message lists, and how long a value quoted from a file may be.
_SHOWN_ERRORS = 8
_SHOWN_CHARS = 80
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple = 2, 4, 4, 4
_REPR.maxset, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 4, _SHOWN_CHARS, _SHOWN_CHARS, 40


def shown(value: Any) -> str:
    """A value read from a file, quoted for a message: its ``repr``, bounded in depth, items and length
    (a value from a file may be megabytes long, or a structure of shared parts far larger unrolled)."""
    return _clip_text(_REPR.repr(value))


def _clip_text(text: str, limit: int = 2 * _SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_errors(source: str, exc: ValidationError) -> str:
    errors = exc.errors()
    lines = []
    for error in errors[:_SHOWN_ERRORS]:
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        key = _clip_text(key, _SHOWN_CHARS)
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif not error["loc"] and error["type"] == "value_error":  # a whole-file check names its keys
            lines.append(str(error["msg"]).removeprefix("Value error, "))
        else:
            # a validator's message may quote the value too (``got ...``): both are cut short
            lines.append(f"key {key!r}: {_clip_text(error['msg'])} (got {shown(error.get('input'))})")
    if len(errors) > _SHOWN_ERRORS:
        lines.append(f"and {len(errors) - _SHOWN_ERRORS} more")
    return f"{source}: " + "; ".join(lines)


def _validate(model: type[_Strict], data: Any, source: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        names = [name for name in model.model_fields if name != "architecture"]
        allowed = ", ".join([*ARCHITECTURE_KEYS, *names] if model is ModelSpec else names)
        raise ConfigError(_format_errors(source, exc) + f". Allowed keys: {allowed}") from exc


class _YamlTooLarge(yaml.YAMLError):
    """A YAML document nested too deep, or one whose aliases expand to too many values."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two bounds checked while the document is composed, before any value
    is built: how deep collections nest (:data:`MAX_YAML_DEPTH`; the composer recurses, and 50,000
    nested brackets would exhaust Python's stack), and how many values the document holds with its
    aliases expanded (:data:`MAX_YAML_VALUES`; PyYAML shares an aliased value instead of copying it, but
    validating or quoting the result walks every copy). An alias of a collection still being composed
    (a recursive structure) is refused too."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values: dict[int, int] = {}  # id(node) -> its values with aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._values:
                raise _YamlTooLarge(
                    f"the alias *{event.anchor[:_SHOWN_CHARS]} refers to a collection that contains it "
                    f"(a recursive structure){event.start_mark}"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _YamlTooLarge(
                f"collections nest more than {MAX_YAML_DEPTH} deep{self.peek_event().start_mark}"
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        values = 1
        if isinstance(node, yaml.SequenceNode):
            values += sum(self._values[id(item)] for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            values += sum(self._values[id(k)] + self._values[id(v)] for k, v in node.value)
        if values > MAX_YAML_VALUES:
            raise _YamlTooLarge(
                f"the document holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are "
                f"expanded{node.start_mark}"
            )
        self._values[id(node)] = values
        return node


def _read_yaml(path: Path) -> Any:
    """The content of a YAML file, read within the bounds above.

    Raises:
        ConfigError: a missing, unreadable, too large or non-UTF-8 file; not YAML; nested too deep or
            expanding to too many values through its aliases.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_YAML_BYTES:,} bytes; a configuration file takes a few hundred"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({_clipped(exc)})") from exc
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except _YamlTooLarge as exc:
        raise ConfigError(f"{path}: refused: {_clipped(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_clipped(exc)})") from exc
    except ValueError as exc:  # a value Python refuses to build (an integer of thousands of digits)
        raise ConfigError(f"{path}: refused: {_clipped(exc)}") from exc
    except RecursionError as exc:  # a structure the bounds above let through but Python cannot hold
        raise ConfigError(f"{path}: refused: nested too deep") from exc
    finally:
        loader.dispose()


def _clipped(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (YAML's quote a line of the file)."""
    return _clip_text(" ".join(line.strip() for line in str(exc).splitlines() if line.strip()), limit)


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

    def output_record(self, precision: str) -> dict[str, Any]:
        """The settings that change the written voxels, by their YAML names, and the precision the
        network ran at: what an output's provenance records and a rerun compares."""
        changing = {
            f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("changes_output", True)
        }
        return changing | {"precision": precision}

    @classmethod
    def resolve(
        cls, params: RunParameters, spec: ModelSpec, source: Path | str = MODEL_SPEC_NAME
    ) -> SamplingSettings:
        """Fill the unset ``sampling_steps``/``sampler`` of ``params`` from the model's ``spec``.

        Args:
            params: The run parameters.
            spec: The weights' ``model.yaml``.
            source: Where ``spec`` came from, for messages.

        Raises:
            ConfigError: more sampling steps than the model's diffusion steps.
        """
        steps = params.sampling_steps if params.sampling_steps is not None else spec.sampling_steps
        if steps > spec.diffusion_steps:
            raise ConfigError(
                f"sampling_steps {steps} exceeds the model's {spec.diffusion_steps} diffusion steps "
                f"({source}); use at most {spec.diffusion_steps}"
            )
        spacing = params.timestep_spacing or spec.timestep_spacing
        if steps == 1 and spacing == "linspace" and spec.diffusion_steps > 1:
            log.warning(
                "one sampling step with the published linspace spacing keeps only t = 0 (the network "
                "sees pure noise as if it were clean); timestep_spacing: trailing keeps t = T - 1"
            )
        return cls(
            sampler=params.sampler or spec.sampler,
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


# -- segmenters (``cwdm evaluate --segmenter``) ------------------------------------------------------
#: The file name of a reference segmenter's architecture, beside its weights.
SEGMENTER_SPEC_NAME = "segmenter.yaml"


def _four_sequences(value: Any) -> Any:
    value = tuple(value) if isinstance(value, list) else value
    if isinstance(value, tuple) and sorted(value) != sorted(("t1n", "t1c", "t2w", "t2f")):
        raise ValueError("must name each of t1n, t1c, t2w, t2f once, in the model's channel order")
    return value


class ReferenceSegmenterSpec(_Strict):
    """``segmenter.yaml`` of the reference segmenter we train and ship (``weights/segmenter/``).

    A MONAI SegResNet that sees the four sequences, each clipped and scaled as for synthesis, averaged
    down by ``downsample`` on every axis, and predicts the three BraTS regions (WT, TC, ET) as
    independent sigmoid outputs.
    """

    kind: Literal["reference"] = "reference"
    channels: tuple[SequenceName, ...] = ("t1n", "t1c", "t2w", "t2f")
    init_filters: StrictInt = Field(default=16, ge=1)
    blocks_down: tuple[StrictInt, ...] = (1, 2, 2, 4)
    blocks_up: tuple[StrictInt, ...] = (1, 1, 1)
    downsample: StrictInt = Field(default=2, ge=1, le=4)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: Trained with one sequence zeroed at random (sequence dropout), so that it also segments a case
    #: with that sequence absent, given as zeros: the skip-synthesis baseline of ``cwdm evaluate``.
    accepts_absent_sequence: StrictBool = False

    @field_validator("channels", mode="before")
    @classmethod
    def _check_channels(cls, value: Any) -> Any:
        return _four_sequences(value)

    @field_validator("blocks_down", "blocks_up", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False)


class NnUNetSegmenterSpec(_Strict):
    """A trained nnU-Net v2 model folder, run through nnU-Net's own predictor.

    The channel order and the meaning of the model's labels are declared, never guessed: an nnU-Net
    BraTS model may number its inputs and labels in any order (nnU-Net's BraTS 2021 conversion, for one,
    feeds T1, T1ce, T2, FLAIR and labels oedema 1, necrosis 2, enhancing 3).
    """

    kind: Literal["nnunet"]
    model_folder: Path
    channels: tuple[SequenceName, ...]
    labels: dict[StrictInt, StructureName]
    folds: tuple[StrictInt, ...] | Literal["all"] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    device: DeviceName = "auto"
    tile_step_size: float = Field(default=0.5, gt=0, le=1)
    use_mirroring: StrictBool = True

    @field_validator("channels", mode="before")
    @classmethod
    def _check_channels(cls, value: Any) -> Any:
        return _four_sequences(value)

    @field_validator("folds", mode="before")
    @classmethod
    def _folds_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class CommandSegmenterSpec(_Strict):
    """Any segmenter that runs as a command, one case at a time, on BraTS-named files.

    The command is an argument list (or one string, split like a shell would, without running a shell)
    in which ``{input}`` is a folder holding one case folder ``<case>/<case>-<seq>.nii.gz`` (the BraTS
    input naming), ``{output}`` an empty folder for the result and ``{case}`` the case id. The label
    volume is then read from ``output`` (``{output}/{case}.nii.gz`` by default, the BraTS segmentation
    challenge's output naming).
    """

    kind: Literal["command"]
    command: list[str] | str
    output: str = "{output}/{case}.nii.gz"
    labels: LabelConventionName | dict[StrictInt, StructureName] = "brats2023"
    timeout_s: float = Field(default=3600.0, gt=0)
    environment: dict[str, str] = Field(default_factory=dict)


SegmenterSpec = ReferenceSegmenterSpec | NnUNetSegmenterSpec | CommandSegmenterSpec
_SEGMENTER_KINDS: Mapping[str, type[_Strict]] = {
    "reference": ReferenceSegmenterSpec,
    "nnunet": NnUNetSegmenterSpec,
    "command": CommandSegmenterSpec,
}


def load_segmenter_spec(path: Path) -> SegmenterSpec:
    """Read a segmenter description (``kind: nnunet``, ``command`` or ``reference``).

    Relative paths in it (``model_folder``) are taken from the file's folder.

    Raises:
        ConfigError: unreadable file, invalid YAML, an unknown ``kind``, unknown keys or bad values.
    """
    path = Path(path)
    data = _read_yaml(path)
    kind = data.get("kind", "reference") if isinstance(data, dict) else None
    if kind not in _SEGMENTER_KINDS:
        raise ConfigError(
            f"{path}: key 'kind': expected one of {', '.join(_SEGMENTER_KINDS)}, got {shown(kind)}"
        )
    spec = _validate(_SEGMENTER_KINDS[kind], data, str(path))
    if isinstance(spec, NnUNetSegmenterSpec) and not spec.model_folder.is_absolute():
        spec = spec.model_copy(update={"model_folder": (path.parent / spec.model_folder).resolve()})
    return spec
