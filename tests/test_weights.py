"""Weights directories: opening, checking (`cwdm weights check`) and build-time fetching (fake hub)."""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cwdm import CheckpointError, ConfigError, CwdmError, Denoiser, DenoiserConfig, write_state_dict
from cwdm.cli import app
from cwdm.config import ModelSpec
from cwdm.sequences import MRISequence
from cwdm.weights.folder import WeightsDir, check_weights
from cwdm.weights.hub import FETCH_RECORD_NAME, HuggingFaceHub, fetch_weights, select_checkpoints

from .conftest import TINY, randomised

TINY_SPEC = ModelSpec(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
PUBLISHED_NAMES = {seq: f"brats_{seq}_1200000.pt" for seq in MRISequence}


def tiny_state(seed: int, config: DenoiserConfig = TINY) -> dict[str, torch.Tensor]:
    return randomised(Denoiser(config), seed=seed).state_dict()


def make_weights(root: Path, spec: bool = True) -> Path:
    """Four tiny checkpoints, .pt and .safetensors mixed, with the tiny model.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    for i, seq in enumerate(MRISequence):
        name = PUBLISHED_NAMES[seq] if i % 2 else f"{seq}.safetensors"
        write_state_dict(tiny_state(i), root / name)
    if spec:
        (root / "model.yaml").write_text(TINY_SPEC.to_yaml())
    return root


def test_a_sound_directory_passes(tmp_path):
    root = make_weights(tmp_path / "w")
    (root / "notes.pt").write_bytes(b"names no target: ignored, never loaded")
    report = check_weights(root)
    assert report.ok
    assert [c.target for c in report.targets] == list(MRISequence)
    count = sum(p.numel() for p in Denoiser(TINY).parameters())  # no buffers in the denoiser
    assert all(c.message == f"{count:,} parameters" for c in report.targets)
    assert [p.name for p in report.unassigned] == ["notes.pt"]
    text = "\n".join(report.lines())
    assert "model_channels 8" in text and "t2f  ok" in text and "ignored notes.pt" in text


def spoil_missing(root):
    (root / PUBLISHED_NAMES[MRISequence.T1C]).unlink()


def spoil_shape(root):
    wide = DenoiserConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
    write_state_dict(tiny_state(0, wide), root / PUBLISHED_NAMES[MRISequence.T1C])


def spoil_nan(root):
    state = tiny_state(0)
    state["out.2.bias"][0] = float("nan")
    write_state_dict(state, root / PUBLISHED_NAMES[MRISequence.T1C])


def spoil_duplicate(root):
    write_state_dict(tiny_state(0), root / "t1c_copy.safetensors")


def spoil_corrupt(root):
    (root / PUBLISHED_NAMES[MRISequence.T1C]).write_bytes(b"\x00garbage")


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (spoil_missing, "no .pt, .pth or .safetensors file whose name contains 't1c'"),
        (spoil_shape, "mis-shaped keys"),
        (spoil_nan, "NaN or infinite values in 1 tensors"),
        (spoil_duplicate, "several checkpoints name t1c"),
        (spoil_corrupt, "cannot read checkpoint"),
    ],
    ids=["missing", "shape", "nan", "duplicate", "corrupt"],
)
def test_a_bad_target_fails_alone(tmp_path, spoil, match):
    root = make_weights(tmp_path / "w")
    spoil(root)
    report = check_weights(root)
    assert not report.ok
    verdicts = {c.target: c for c in report.targets}
    assert not verdicts[MRISequence.T1C].ok and match in verdicts[MRISequence.T1C].message
    assert all(c.ok for seq, c in verdicts.items() if seq != MRISequence.T1C)


def test_without_model_yaml_the_published_architecture_is_assumed(tmp_path):
    root = make_weights(tmp_path / "w", spec=False)
    report = check_weights(root)
    assert report.spec == ModelSpec() and "published configuration" in report.spec_source
    assert not report.ok and "unexpected keys" in report.targets[0].message


def test_invalid_model_yaml_and_missing_directory_raise(tmp_path):
    root = make_weights(tmp_path / "w")
    (root / "model.yaml").write_text("model_channels: 8\nwidth: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'width'"):
        check_weights(root)
    with pytest.raises(CheckpointError, match="does not exist"):
        check_weights(tmp_path / "nowhere")


def test_weights_dir_open_still_finds_one_checkpoint_per_target(tmp_path):
    root = make_weights(tmp_path / "w")
    weights = WeightsDir.open(root)
    assert weights.spec == TINY_SPEC
    assert weights.checkpoint(MRISequence.T1C).name == PUBLISHED_NAMES[MRISequence.T1C]
    spoil_duplicate(root)
    with pytest.raises(CheckpointError, match="several checkpoints for target t1c"):
        WeightsDir.open(root)


def test_cli_weights_check_exit_codes(tmp_path):
    root = make_weights(tmp_path / "w")
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert result.output.count(" ok ") == 4
    spoil_missing(root)
    result = runner.invoke(app, ["weights", "check", str(root)])
    assert result.exit_code == 1 and "t1c  FAIL" in result.output
    result = runner.invoke(app, ["weights", "check", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output


# -- fetching -----------------------------------------------------------------------------------------
class FakeHub:
    """Serves tiny checkpoints under the given repository paths and records every call."""

    def __init__(self, tmp: Path, paths: list[str]) -> None:
        self.paths = paths
        self.calls: list[tuple] = []
        self.blobs: dict[str, bytes] = {}
        for i, path in enumerate(paths):
            if path.endswith(".pt"):
                source = write_state_dict(tiny_state(i), tmp / f"blob{i}.pt")
                self.blobs[path] = source.read_bytes()

    def list_files(self, repo_id, revision):
        self.calls.append(("list", repo_id, revision))
        return [".gitattributes", "README.md", *self.paths]

    def download(self, repo_id, filename, revision, local_dir):
        self.calls.append(("download", repo_id, filename, revision))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.blobs[filename])
        return target


REPO_PATHS = ["brats_t1n_1200000.pt", "brats_t1c_1200000.pt", "t2w/model_1200000.pt", "brats_t2f_1200000.pt"]


def test_fetch_places_one_checkpoint_per_target_and_checks_them(tmp_path):
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "model.yaml").write_text(TINY_SPEC.to_yaml())  # the fake serves tiny models
    hub = FakeHub(tmp_path, REPO_PATHS)

    report = fetch_weights(dest, "someone/cwdm", "abc123", hub=hub)

    assert report.ok
    assert hub.calls[0] == ("list", "someone/cwdm", "abc123")
    assert sorted(c[2] for c in hub.calls[1:]) == sorted(REPO_PATHS)
    assert all(c[3] == "abc123" for c in hub.calls[1:])
    names = {c.target: c.path.name for c in report.targets}
    assert names[MRISequence.T2W] == "t2w_model_1200000.pt"  # tag only in the folder: prefixed
    assert names[MRISequence.T1N] == "brats_t1n_1200000.pt"
    record = json.loads((dest / FETCH_RECORD_NAME).read_text())
    assert record["repo_id"] == "someone/cwdm" and record["revision"] == "abc123"
    for local, entry in record["files"].items():
        assert entry["sha256"] == hashlib.sha256(hub.blobs[entry["source"]]).hexdigest()
        assert (dest / local).read_bytes() == hub.blobs[entry["source"]]
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*names.values(), "model.yaml", FETCH_RECORD_NAME]
    )


def test_fetch_again_replaces_the_same_files(tmp_path):
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "model.yaml").write_text(TINY_SPEC.to_yaml())
    fetch_weights(dest, hub=FakeHub(tmp_path, REPO_PATHS))
    assert fetch_weights(dest, hub=FakeHub(tmp_path, REPO_PATHS)).ok


def test_fetch_refuses_a_directory_with_other_checkpoints(tmp_path):
    dest = make_weights(tmp_path / "w")
    with pytest.raises(CheckpointError, match="already holds other checkpoints"):
        fetch_weights(dest, hub=FakeHub(tmp_path, REPO_PATHS))


def test_fetch_with_explicit_files_resolves_ambiguity(tmp_path):
    paths = [*REPO_PATHS, "old/brats_t1n_600000.pt"]
    with pytest.raises(CheckpointError, match=r"several name t1n \(brats_t1n_1200000.pt, old/brats_t1n"):
        select_checkpoints(paths)
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "model.yaml").write_text(TINY_SPEC.to_yaml())
    hub = FakeHub(tmp_path, paths)
    files = ["old/brats_t1n_600000.pt", *REPO_PATHS[1:]]
    report = fetch_weights(dest, files=files, hub=hub)
    assert report.ok and report.targets[0].path.name == "brats_t1n_600000.pt"
    assert not any(c[0] == "list" for c in hub.calls)
    with pytest.raises(CheckpointError, match="one file per target"):
        fetch_weights(dest, files=files[:3], hub=hub)


def test_select_reports_missing_targets():
    with pytest.raises(CheckpointError, match="no checkpoint names t2w, t2f"):
        select_checkpoints(["brats_t1n.pt", "brats_t1c.pt", "brats_t2w.txt", "README.md"])


def test_hub_adapter_calls_huggingface_hub(tmp_path, monkeypatch):
    calls = []

    def list_repo_files(repo_id, *, revision=None):
        calls.append(("list", repo_id, revision))
        return ["brats_t1n_1200000.pt"]

    def hf_hub_download(repo_id, filename, *, revision=None, local_dir=None):
        calls.append(("download", repo_id, filename, revision, local_dir))
        return str(Path(local_dir) / filename)

    fake = types.SimpleNamespace(list_repo_files=list_repo_files, hf_hub_download=hf_hub_download)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    hub = HuggingFaceHub()
    assert hub.list_files("pfriedri/cwdm", "main") == ["brats_t1n_1200000.pt"]
    assert hub.download("pfriedri/cwdm", "a.pt", None, tmp_path) == tmp_path / "a.pt"
    assert calls == [("list", "pfriedri/cwdm", "main"), ("download", "pfriedri/cwdm", "a.pt", None, tmp_path)]


def test_hub_adapter_without_huggingface_hub_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(CwdmError, match=r"pip install huggingface_hub .*pip install -e '\.\[hub\]'"):
        HuggingFaceHub()


def test_hub_adapter_matches_the_installed_library_signatures():
    hub = pytest.importorskip("huggingface_hub")
    inspect.signature(hub.list_repo_files).bind("pfriedri/cwdm", revision="main")
    inspect.signature(hub.hf_hub_download).bind("pfriedri/cwdm", "a.pt", revision=None, local_dir="/tmp")


def test_cli_weights_fetch_uses_the_hub_and_reports(tmp_path, monkeypatch):
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "model.yaml").write_text(TINY_SPEC.to_yaml())
    hub = FakeHub(tmp_path, REPO_PATHS)
    monkeypatch.setattr("cwdm.weights.hub.HuggingFaceHub", lambda: hub)
    result = CliRunner().invoke(app, ["weights", "fetch", str(dest), "--revision", "abc123"])
    assert result.exit_code == 0, result.output
    assert hub.calls[0] == ("list", "pfriedri/cwdm", "abc123")
    assert result.output.count(" ok ") == 4
