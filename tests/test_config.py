"""config.py: parameters.yaml and model.yaml parsing, defaults, and errors that name file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from cwdm.config import (
    ModelSpec,
    RunParameters,
    load_model_spec,
    load_run_parameters,
    override_run_parameters,
)
from cwdm.errors import ConfigError
from cwdm.method.denoiser import DenoiserConfig

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "parameters.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_published_configuration() -> None:
    params = load_run_parameters(None)
    assert params == RunParameters()
    assert params.sampling_steps is None and params.sampler is None  # taken from model.yaml
    assert (params.device, params.precision, params.batch_size) == ("auto", "auto", 1)
    assert params.postprocess == "brain_mask"
    spec = ModelSpec()
    assert (spec.sampling_steps, spec.sampler, spec.diffusion_steps) == (1000, "ddpm", 1000)
    assert spec.architecture == DenoiserConfig()


def test_full_parameters_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "sampling_steps: 100\nsampler: ddim\nseed: 7\ndevice: cpu\nprecision: fp32\n"
        "batch_size: 2\npostprocess: threshold\n",
    )
    assert load_run_parameters(path) == RunParameters(
        sampling_steps=100,
        sampler="ddim",
        seed=7,
        device="cpu",
        precision="fp32",
        batch_size=2,
        postprocess="threshold",
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "sampler: null\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load_run_parameters(_write(tmp_path, text)) == RunParameters()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sampling_stepz: 10\n", ["unknown key 'sampling_stepz'", "Allowed keys: sampling_steps"]),
        ('sampling_steps: "100"\n', ["key 'sampling_steps'", "'100'", "integer"]),
        ("sampling_steps: 0\n", ["key 'sampling_steps'", "greater than or equal to 1", "got 0"]),
        ("sampling_steps: 5000\n", ["key 'sampling_steps'", "less than or equal to 1000", "5000"]),
        ("sampler: ddpx\n", ["key 'sampler'", "'ddpm' or 'ddim'", "'ddpx'"]),
        ("device: gpu\n", ["key 'device'", "'auto', 'cuda' or 'cpu'", "'gpu'"]),
        ("precision: fp64\n", ["key 'precision'", "'fp64'"]),
        ("batch_size: true\n", ["key 'batch_size'", "True"]),
        ("batch_size: 0\n", ["key 'batch_size'", "got 0"]),
        ("seed: -1\n", ["key 'seed'", "-1"]),
        ("postprocess: clamp\n", ["key 'postprocess'", "'brain_mask' or 'threshold'", "'clamp'"]),
        ("- 1\n- 2\n", ["expected a mapping", "list"]),
        ("sampler: [unclosed\n", ["not valid YAML"]),
    ],
)
def test_bad_parameters_name_file_key_and_value(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_run_parameters(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for word in words:
        assert word in message


def test_missing_or_unreadable_parameters_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_run_parameters(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_run_parameters(tmp_path)


def test_override_validates_and_ignores_none(tmp_path: Path) -> None:
    params = load_run_parameters(_write(tmp_path, "sampler: ddim\nseed: 3\n"))
    assert override_run_parameters(params, {"seed": None, "sampling_steps": None}) is params
    updated = override_run_parameters(params, {"sampling_steps": 10, "device": "cpu"})
    assert (updated.sampling_steps, updated.sampler, updated.seed, updated.device) == (10, "ddim", 3, "cpu")
    with pytest.raises(ConfigError, match="command-line options: key 'sampler'.*'euler'"):
        override_run_parameters(params, {"sampler": "euler"})


def test_model_spec_round_trip_and_list_channel_mult(tmp_path: Path) -> None:
    spec = ModelSpec(model_channels=8, channel_mult=(1, 2), num_groups=8, sampling_steps=10, sampler="ddim")
    path = _write(tmp_path, spec.to_yaml(), "model.yaml")
    assert "channel_mult:\n- 1\n- 2\n" in path.read_text()
    loaded = load_model_spec(path)
    assert loaded == spec
    assert loaded.architecture == DenoiserConfig(model_channels=8, channel_mult=(1, 2), num_groups=8)


def test_missing_model_yaml_is_the_published_model(tmp_path: Path) -> None:
    assert load_model_spec(tmp_path / "model.yaml") == ModelSpec()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model_channels: 12\n", ["model.yaml", "num_groups=32 must divide", "12"]),
        ("noise_schedule: quadratic\n", ["model.yaml", "key 'noise_schedule'", "'quadratic'"]),
        ("channels: 8\n", ["model.yaml", "unknown key 'channels'"]),
        ("sampler: ancestral\n", ["model.yaml", "key 'sampler'", "'ancestral'"]),
    ],
)
def test_bad_model_yaml_names_file_key_and_value(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _write(tmp_path, text, "model.yaml")
    with pytest.raises(ConfigError) as info:
        load_model_spec(path)
    for word in words:
        assert word in str(info.value)


def test_the_mlcube_workspace_parameters_file_is_valid() -> None:
    path = REPO / "mlcube" / "workspace" / "parameters.yaml"
    params = load_run_parameters(path)
    assert params.device == "auto" and params.postprocess == "brain_mask"
    text = path.read_text(encoding="utf-8")
    for key in RunParameters.model_fields:  # every key is documented in the shipped file
        assert f"{key}:" in text


def test_the_steps_label_is_singular_for_one_step() -> None:
    from cwdm.config import SamplingSettings

    def label(steps: int) -> str:
        return SamplingSettings(
            sampling_steps=steps, sampler="ddim", seed=0, batch_size=1, postprocess="brain_mask"
        ).steps_label

    assert (label(1), label(2), label(1000)) == ("1 step", "2 steps", "1000 steps")


def test_the_settings_label_groups_the_targets_whose_own_defaults_differ() -> None:
    from cwdm.config import SamplingSettings

    base = SamplingSettings(sampler="ddim", sampling_steps=2, timestep_spacing="trailing")
    one = SamplingSettings(sampler="ddim", sampling_steps=1, timestep_spacing="trailing")
    spaced = SamplingSettings(sampler="ddim", sampling_steps=1, timestep_spacing="linspace")
    assert base.label_with({"t1n": base, "t1c": base}) == "ddim 2 steps"
    per_target = {"t1n": base, "t2w": one, "t2f": one, "t1c": spaced}
    assert base.label_with(per_target) == "ddim 2 steps (t2w, t2f: ddim 1 step; t1c: ddim 1 step linspace)"
