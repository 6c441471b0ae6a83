"""The command line's conventions: -h, --version, completion, choices and defaults in --help, the YAML
key spelled as the option (the short names kept as aliases), errors naming the option typed, ISO time
stamps, and the shipped weights when --weights is left out."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cwdm import cli
from cwdm.errors import ConfigError
from cwdm.version import __version__
from cwdm.weights import shipped

runner = CliRunner()


def _help(*command: str) -> str:
    result = runner.invoke(cli.app, [*command, "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # wrapped lines joined


def test_version_prints_the_package_version() -> None:
    for flag in ("--version", "-V"):
        result = runner.invoke(cli.app, [flag])
        assert result.exit_code == 0
        assert result.output.strip() == f"cwdm {__version__}"


def test_command_lists_fit_80_columns_without_cut_descriptions() -> None:
    """Every group's command list at 80 columns: each command on one line, its description whole (no "...",
    which click adds where it shortens a docstring)."""
    import typer.main

    def groups(command: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
        if not hasattr(command, "commands"):  # a command, not a group
            return []
        found = [(path, command)]
        for name, sub in command.commands.items():
            found += groups(sub, (*path, name))
        return found

    listed = groups(typer.main.get_command(cli.app))
    assert [path for path, _ in listed] == [(), ("weights",), ("report",), ("segmenter",)]
    for path, group in listed:
        result = runner.invoke(cli.app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        commands = result.output.split("Commands:\n", 1)[1].splitlines()
        names = [line.split()[0] for line in commands if line.strip()]
        assert sorted(names) == sorted(group.commands), (path, commands)  # one line each: nothing wrapped
        for line in commands:
            assert len(line) <= 80 and "..." not in line, (path, line)
            assert line.rstrip().endswith("."), (path, line)  # a whole sentence


def test_short_help_and_completion_exist() -> None:
    text = _help()
    assert "--install-completion" in text and "--show-completion" in text
    for command in ("infer", "evaluate", "sweep", "qc", "train", "drop-sequence"):
        assert "Usage: cwdm " + command in _help(command)


def test_infer_help_lists_choices_defaults_and_the_yaml_names() -> None:
    text = _help("infer")
    assert "<ddpm|ddim>" in text
    assert "<linspace|trailing>" in text
    assert "<auto|cuda|cpu>" in text
    assert "<auto|fp32|bf16|fp16>" in text
    assert "<brain_mask|threshold>" in text
    assert "--sampling-steps, --steps" in text
    assert "--timestep-spacing, --spacing" in text
    assert "[default: (42); x>=0]" in text
    assert "-v, --verbose Log debug messages too." in text and "Log debug messages too." in text
    assert "<bool>" not in text
    assert "{DATA} {OUT}" in text
    assert "the shipped demo weights" in text


def test_sweep_and_evaluate_help_list_choices_and_defaults() -> None:
    assert "--device <auto|cuda|cpu>" in _help("sweep")
    assert "[default: auto]" in _help("sweep")
    assert "<brats2021|brats2023|brats2024>" in _help("evaluate")
    assert "<constant|cosine>" in _help("train")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sampler", "euler"], "'--sampler'"),
        (["--steps", "0"], "'--sampling-steps' / '--steps'"),
        (["--sampling-steps", "5000"], "'--sampling-steps' / '--steps'"),
        (["--timestep-spacing", "leading"], "'--timestep-spacing' / '--spacing'"),
    ],
)
def test_a_bad_value_is_reported_under_the_option_typed(tmp_path: Path, args: list[str], named: str) -> None:
    result = runner.invoke(cli.app, ["infer", str(tmp_path), str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert named in result.output
    assert "Allowed keys" not in result.output  # not the YAML loader's message
    assert not (tmp_path / "out").exists()


def test_the_shipped_weights_are_the_repository_demo_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shipped.DEFAULT_WEIGHTS_ENV, raising=False)
    assert shipped.shipped_weights() == Path(__file__).resolve().parents[1] / "weights" / "demo"
    assert (shipped.shipped_weights() / "t1n.safetensors").is_file()


def test_the_image_variable_wins_and_a_missing_folder_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(shipped.DEFAULT_WEIGHTS_ENV, str(tmp_path))
    assert shipped.shipped_weights() == tmp_path
    monkeypatch.setenv(shipped.DEFAULT_WEIGHTS_ENV, str(tmp_path / "gone"))
    with pytest.raises(shipped.CheckpointError, match="pass --weights DIR"):
        shipped.shipped_weights()


def test_infer_without_weights_logs_which_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(shipped.DEFAULT_WEIGHTS_ENV, raising=False)
    seen: dict[str, Path] = {}

    def fake_run_request(request, **kwargs):  # noqa: ANN001, ANN202
        seen["weights"] = request.weights_dir
        raise ConfigError("stop here")

    monkeypatch.setattr("cwdm.inference.run.run_request", fake_run_request)
    result = runner.invoke(cli.app, ["infer", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert seen["weights"] == shipped.REPOSITORY_DEMO_WEIGHTS
    assert "shipped demo weights" in " ".join(result.output.split())


def test_evaluate_help_says_what_it_computes() -> None:
    text = _help("evaluate")
    for what in ("centre crop", "MSE, PSNR and SSIM", "BraSyn SSIM", "Dice of WT, TC and ET", "dummy"):
        assert what in text


def test_evaluate_logs_its_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "pseudo_validation"
    case = "BraTS-GLI-99909-000"
    truth = tmp_path / "truth" / case
    shutil.copytree(example / case, truth)
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(truth / f"{case}-t2w.nii.gz", truth / f"{case}-t1c.nii.gz")  # a stand-in ground truth
    shutil.copy(truth / f"{case}-t2f.nii.gz", pred / f"{case}-t1c.nii.gz")
    with caplog.at_level(logging.INFO, logger="cwdm"):
        result = runner.invoke(cli.app, ["evaluate", str(pred), str(tmp_path / "truth")])
    assert result.exit_code == 0, result.output
    assert "scoring 1 predictions" in caplog.text
    assert f"1 of 1: {case} (t1c) scored" in caplog.text
