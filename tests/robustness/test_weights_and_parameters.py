"""Bad weights and bad parameters files.

A missing or unusable checkpoint fails the cases of its target only, naming them, while the other
targets run (and a damaged checkpoint of a target no case needs is never read). A bad weights
directory or ``model.yaml``, and any bad parameters file, stop the run before any case, with exit
status 2 and a message naming the file, the key and the value; the output folder is not even created.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from .conftest import (
    GOOD,
    assert_good_cases_identical,
    assert_reported,
    good_names,
    run_infer,
    run_mlcube,
)

TARGET, CASE = "t1n", "BraTS-MEN-00102-000"  # the one good case whose target is t1n
OTHERS = ["BraTS-GLI-00101-000", "BraTS-PED-00103-000"]


class _Payload:
    """Unpickling this would run a shell command (``torch.load`` without ``weights_only`` would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _missing(w: Path) -> None:
    (w / "t1n.safetensors").unlink()


def _truncated(w: Path) -> None:
    path = w / "t1n.safetensors"
    path.write_bytes(path.read_bytes()[:5000])


def _garbage(w: Path) -> None:
    (w / "t1n.safetensors").unlink()
    (w / "t1n.pt").write_bytes(b"PK\x03\x04 not really a zip archive" * 10)


def _code_execution(w: Path) -> None:
    (w / "t1n.safetensors").unlink()
    torch.save({"weight": _Payload(w.parent / "pwned")}, w / "t1n.pt")


def _other_architecture(w: Path) -> None:
    tensors = load_file(w / "t1n.safetensors")
    tensors["out.2.weight"] = torch.zeros(3, 3)
    save_file(tensors, w / "t1n.safetensors")


def _nan_weights(w: Path) -> None:
    tensors = load_file(w / "t1n.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, w / "t1n.safetensors")


def _inflating(w: Path) -> None:
    """The checkpoint as a torch archive whose first tensor's entry is a deflated GiB of zeros (torch
    reads deflated entries): about 5 MB on disk."""
    path = w / "t1n.pt"
    torch.save(load_file(w / "t1n.safetensors"), path)
    (w / "t1n.safetensors").unlink()
    original = zipfile.ZipFile(path)
    entries = [(info.filename, original.read(info)) for info in original.infolist()]
    original.close()
    chunk = bytes(16 * 2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, content in entries:
            if name.endswith("/data/0"):
                with archive.open(name, "w", force_zip64=True) as entry:
                    for _ in range(64):
                        entry.write(chunk)
            else:
                archive.writestr(name, content)


def _folder(w: Path) -> None:
    (w / "t1n.safetensors").unlink()
    (w / "t1n.safetensors").mkdir()


CHECKPOINTS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "missing": (_missing, ("no model for target t1n", "no checkpoint for target t1n")),
    "truncated": (_truncated, ("no model for target t1n", "t1n.safetensors: cannot read checkpoint")),
    "not a checkpoint": (_garbage, ("no model for target t1n", "t1n.pt: cannot read checkpoint")),
    "needs code execution": (_code_execution, ("no model for target t1n", "t1n.pt: refused to load")),
    "another architecture": (
        _other_architecture,
        ("no model for target t1n", "t1n.safetensors does not match the denoiser architecture"),
    ),
    "NaN weights": (_nan_weights, ("no model for target t1n", "NaN or infinite values in 1 tensors")),
    "a folder": (_folder, ("no model for target t1n", "no checkpoint for target t1n")),
    "an archive inflating to a GiB": (
        _inflating,
        ("no model for target t1n", "t1n.pt", "1,074,256,971 bytes, more than the", "exhaust memory"),
    ),
}


@pytest.fixture
def own_weights(weights: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "weights"
    shutil.copytree(weights, copy)
    return copy


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_an_unusable_checkpoint_fails_its_target_s_cases_only(
    name: str, data: Path, tmp_path: Path, own_weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    damage, words = CHECKPOINTS[name]
    damage(own_weights)
    run = run_infer(data, tmp_path / "out", own_weights)
    assert run.code == 1
    assert_reported(run, CASE, "failed", *words, error_type="CheckpointError")
    assert f"affected cases: {CASE}" in run.stderr
    assert_good_cases_identical(run, clean_outputs, OTHERS)
    assert run.names() == good_names(OTHERS)
    assert run.report is not None and TARGET in run.report["unavailable_models"]
    assert not (tmp_path / "pwned").exists()  # the pickled command never ran


def test_a_damaged_checkpoint_of_a_target_no_case_needs_is_never_read(
    data: Path, tmp_path: Path, own_weights: Path, clean_outputs: dict[str, bytes]
) -> None:
    (own_weights / "t1c.safetensors").write_bytes(b"damaged")
    run = run_infer(data, tmp_path / "out", own_weights)
    assert run.code == 0, run.stderr
    assert run.outputs() == clean_outputs
    assert run.report is not None and sorted(run.report["models"]) == ["t1n", "t2f", "t2w"]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("no weights folder", ["weights directory", "does not exist"]),
        ("two checkpoints for a target", ["several checkpoints for target t1n", "t1n.pt", "t1n.safetensors"]),
        ("model.yaml with an unknown key", ["model.yaml", "unknown key 'channels'"]),
        ("model.yaml with a wrong type", ["model.yaml", "model_channels must be a positive integer", "'8'"]),
        ("model.yaml that is not YAML", ["model.yaml", "not valid YAML"]),
        ("model.yaml with an impossible architecture", ["model.yaml", "num_groups"]),
        ("model.yaml of nested aliases (billion laughs)", ["model.yaml", "more than 10,000 values"]),
    ],
)
def test_a_bad_weights_folder_stops_before_any_case(
    name: str, words: list[str], data: Path, tmp_path: Path, own_weights: Path
) -> None:
    spec = own_weights / "model.yaml"
    weights = own_weights
    if name == "no weights folder":
        weights = tmp_path / "nowhere"
    elif name == "two checkpoints for a target":
        shutil.copy(own_weights / "t1n.safetensors", own_weights / "t1n.pt")
    elif name == "model.yaml with an unknown key":
        spec.write_text(spec.read_text() + "channels: 8\n")
    elif name == "model.yaml with a wrong type":
        spec.write_text(spec.read_text().replace("model_channels: 8", "model_channels: '8'"))
    elif name == "model.yaml that is not YAML":
        spec.write_text("model_channels: [8\n")
    elif name.startswith("model.yaml of nested aliases"):
        spec.write_text(BILLION_LAUGHS.replace("sampling_steps", "channel_mult"))
    else:
        spec.write_text(spec.read_text().replace("num_groups: 8", "num_groups: 3"))
    run = run_infer(data, tmp_path / "out", weights)
    assert run.code == 2
    for word in words:
        assert word in run.stderr, (word, run.stderr)
    assert run.report is None and not run.out.exists()


# -- parameters.yaml ---------------------------------------------------------------------------------------

#: A few hundred bytes that stand for a billion strings once the aliases are expanded.
BILLION_LAUGHS = (
    'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    + "sampling_steps: *a9\n"
)
NESTED_BRACKETS = "sampling_steps: " + "[" * 50_000 + "]" * 50_000 + "\n"

PARAMETERS = {
    "unknown key": ("sampling_step: 10\n", ["unknown key 'sampling_step'", "Allowed keys: sampling_steps"]),
    "string for an integer": ("sampling_steps: '100'\n", ["key 'sampling_steps'", "'100'"]),
    "float for an integer": ("batch_size: 2.0\n", ["key 'batch_size'", "2.0"]),
    "boolean for an integer": ("seed: true\n", ["key 'seed'", "True"]),
    "zero steps": ("sampling_steps: 0\n", ["key 'sampling_steps'", "greater than or equal to 1", "got 0"]),
    "too many steps": ("sampling_steps: 1001\n", ["key 'sampling_steps'", "got 1001"]),
    "zero batch": ("batch_size: 0\n", ["key 'batch_size'", "got 0"]),
    "huge batch": ("batch_size: 65\n", ["key 'batch_size'", "got 65"]),
    "negative seed": ("seed: -1\n", ["key 'seed'", "got -1"]),
    "unknown sampler": ("sampler: euler\n", ["key 'sampler'", "'euler'"]),
    "unknown device": ("device: tpu\n", ["key 'device'", "'tpu'"]),
    "unknown precision": ("precision: fp64\n", ["key 'precision'", "'fp64'"]),
    "unknown post-processing": ("postprocess: gaussian\n", ["key 'postprocess'", "'gaussian'"]),
    "a list, not a mapping": ("- sampling_steps\n- 10\n", ["expected a mapping", "got list"]),
    "not YAML": ("sampling_steps: [10\n", ["not valid YAML"]),
    "not text": (b"\xff\xfe\x00\x81binary", ["cannot read"]),
    "no such file": (None, ["file not found"]),
    "a folder": ("folder", ["cannot read"]),
    "more steps than the model was trained with": ("sampling_steps: 100\n", ["exceeds the model's 50"]),
    "nested aliases (billion laughs)": (BILLION_LAUGHS, ["refused", "more than 10,000 values", "aliases"]),
    "50,000 nested brackets": (NESTED_BRACKETS, ["refused", "nest more than 32 deep"]),
    "an alias inside its own anchor": ("sampling_steps: &x [1, *x]\n", ["refused", "recursive structure"]),
    "an integer of 5,000 digits": ("seed: " + "9" * 5000 + "\n", ["refused", "5000 digits"]),
    "a file of a megabyte": ("# padding\n" * 100_000 + "seed: 1\n", ["larger than 262,144 bytes"]),
    "a value of 100,000 characters": ("sampler: " + "x" * 100_000 + "\n", ["key 'sampler'", "'xxxx"]),
}


@pytest.mark.parametrize("interface", ["cwdm infer", "mlcube.py"])
@pytest.mark.parametrize("name", list(PARAMETERS))
def test_a_bad_parameters_file_stops_before_any_case(
    name: str, interface: str, data: Path, tmp_path: Path, own_weights: Path
) -> None:
    content, words = PARAMETERS[name]
    parameters = tmp_path / "parameters.yaml"
    if content == "folder":
        parameters.mkdir()
    elif isinstance(content, bytes):
        parameters.write_bytes(content)
    elif content is not None:
        parameters.write_text(content)
    if name.startswith("more steps"):
        spec = own_weights / "model.yaml"
        spec.write_text(spec.read_text().replace("diffusion_steps: 1000", "diffusion_steps: 50"))
    out, report = tmp_path / "out", tmp_path / "report.json"
    if interface == "cwdm infer":
        run = run_infer(data, out, own_weights, "--parameters", parameters, report=report)
    else:
        run = run_mlcube(data, out, own_weights, parameters, report)
    assert run.code == 2
    assert str(parameters if not name.startswith("more steps") else own_weights) in run.stderr
    for word in words:
        assert word in run.stderr, (word, run.stderr)
    assert run.report is None and not out.exists()
    assert len(run.stderr) < 5_000  # no value of the file is quoted unbounded
    assert set(GOOD)  # the good cases were there to be run
