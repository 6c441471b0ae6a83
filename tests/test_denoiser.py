from __future__ import annotations

import pytest
import torch

from cwdm import ConfigError, Denoiser, DenoiserConfig, ShapeError
from cwdm.method.denoiser import GroupNorm32, timestep_embedding

from .conftest import REFERENCE_DIR, TINY


def _reference_layout() -> dict[str, tuple[int, ...]]:
    rows = (REFERENCE_DIR / "cwdm_unet_c64_state_dict.tsv").read_text().splitlines()[1:]
    layout = {}
    for row in rows:
        key, shape = row.split("\t")
        layout[key] = tuple(int(n) for n in shape.strip("[]").split(","))
    return layout


def test_published_state_dict_layout_exactly():
    layout = _reference_layout()
    model = Denoiser()  # published default configuration
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(layout)  # same keys, same order
    assert ours == layout
    # the published architecture's parameter count (docs/METHOD.md, "The denoiser")
    assert sum(p.numel() for p in model.parameters()) == 81_511_048


def test_tiny_reference_network_output(unet_tiny_reference):
    ref = unet_tiny_reference
    model = Denoiser(DenoiserConfig(**ref["config"]))
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        y = model.eval()(ref["x"], ref["t"])
    assert y.dtype == torch.float32
    assert (y - ref["y"]).abs().max() < 1e-5


def test_timestep_embedding_formula():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([10000 ** (-k / 4) for k in range(4)], dtype=torch.float64)
    args = t[:, None].double() * freqs
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1).float()
    torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-5)


def test_fresh_model_predicts_zero_from_zero_initialised_output():
    model = Denoiser(TINY).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 32, 4, 4, 4), torch.tensor([10]))
    assert y.shape == (1, 8, 4, 4, 4)
    assert y.abs().max() == 0


def test_group_norm_computes_in_float32_for_low_precision_inputs():
    norm = GroupNorm32(2, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(1, 4, 6, 6, 6, generator=torch.Generator().manual_seed(0)) * 50 + 300).bfloat16()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = torch.nn.functional.group_norm(x.float(), 2, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y, expected.bfloat16(), atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model_channels": 12, "num_groups": 8}, "num_groups=8 must divide"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_invalid_configuration_is_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        DenoiserConfig(**{**TINY.__dict__, **overrides})


def test_spatial_size_must_be_divisible(tiny_denoiser):
    with pytest.raises(ShapeError, match=r"multiples of 2.*\(4, 4, 5\)"):
        tiny_denoiser(torch.zeros(1, 32, 4, 4, 5), torch.tensor([0]))
    with pytest.raises(ShapeError, match=r"\(B, 32, D, H, W\)"):
        tiny_denoiser(torch.zeros(1, 31, 4, 4, 4), torch.tensor([0]))
