from __future__ import annotations

import pytest
import torch

from cwdm import CheckpointError, ConfigError, Denoiser, load_denoiser, read_state_dict, write_state_dict

from .conftest import TINY, randomised

TINY_KW = {"model_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "num_groups": 8}


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_round_trip_gives_identical_outputs(tmp_path, suffix):
    model = randomised(Denoiser(TINY)).eval()
    path = write_state_dict(model.state_dict(), tmp_path / f"t2f{suffix}")
    loaded = load_denoiser(path, **TINY_KW)
    assert not loaded.training
    x, t = torch.randn(1, 32, 4, 4, 4), torch.tensor([42])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), atol=0, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == [f"t2f{suffix}"]  # no temporary file left


def test_loads_an_in_memory_state_dict(unet_tiny_reference):
    ref = unet_tiny_reference
    model = load_denoiser(ref["state_dict"], model_channels=8, num_groups=8)
    with torch.no_grad():
        assert (model(ref["x"], ref["t"]) - ref["y"]).abs().max() < 1e-5


def test_mismatch_names_missing_unexpected_and_misshaped_keys():
    state = randomised(Denoiser(TINY)).state_dict()
    state.pop("out.2.bias")
    state["extra.weight"] = torch.zeros(1)
    state["time_embed.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as info:
        load_denoiser(state, **TINY_KW)
    message = str(info.value)
    assert "1 missing keys (out.2.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "time_embed.0.weight (3, 3) vs (32, 8)" in message


def test_published_checkpoint_into_tiny_model_lists_counts(unet_tiny_reference):
    # A width-8, five-level state dict loaded as the two-level tiny model: many unexpected keys.
    with pytest.raises(CheckpointError, match=r"unexpected keys \(.*\.\.\. \(\d+ more\)\)"):
        load_denoiser(unet_tiny_reference["state_dict"], **TINY_KW)


class Payload:
    """Stands for any object whose unpickling would run code of the checkpoint author's choosing."""


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load: the file needs code execution"):
        read_state_dict(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.pt", b"not a checkpoint at all", "cannot read checkpoint"),
        ("bad.safetensors", b"\x00\x01garbage", "cannot read checkpoint"),
        ("weights.bin", b"", "unsupported checkpoint type"),
    ],
)
def test_unreadable_files_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = write_state_dict(randomised(Denoiser(TINY)).state_dict(), tmp_path / "t1n.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="t1n.pt: cannot read checkpoint"):
        read_state_dict(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "absent.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="flat state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_bad_architecture_keyword():
    with pytest.raises(CheckpointError, match="unknown architecture keyword"):
        load_denoiser({}, width=3)
    with pytest.raises(ConfigError, match="num_groups"):
        load_denoiser({}, model_channels=8)  # 8 channels cannot hold the published 32 groups
