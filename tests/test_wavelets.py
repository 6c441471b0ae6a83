from __future__ import annotations

import re

import numpy as np
import pytest
import pywt
import torch

from cwdm import ShapeError, build_condition, decode, dwt3d, encode, idwt3d
from cwdm.method.wavelets import clip_coeffs

# PyWavelets' key for each band, in the published order (docs/METHOD.md, "Wavelets").
PYWT_KEYS = ["aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd"]


@pytest.mark.parametrize("shape", [(2, 2, 2), (6, 4, 8), (16, 10, 12)])
def test_dwt3d_matches_pywavelets(shape):
    gen = torch.Generator().manual_seed(1)
    volume = torch.rand((2, 1, *shape), generator=gen, dtype=torch.float64)
    bands = dwt3d(volume)
    assert bands.shape == (2, 8, *(n // 2 for n in shape))
    for b in range(2):
        oracle = pywt.dwtn(volume[b, 0].numpy(), "haar")
        for channel, key in enumerate(PYWT_KEYS):
            np.testing.assert_allclose(bands[b, channel].numpy(), oracle[key], atol=1e-12)


def test_idwt3d_matches_pywavelets():
    gen = torch.Generator().manual_seed(2)
    bands = torch.randn((1, 8, 3, 5, 4), generator=gen, dtype=torch.float64)
    oracle = pywt.idwtn({key: bands[0, i].numpy() for i, key in enumerate(PYWT_KEYS)}, "haar")
    np.testing.assert_allclose(idwt3d(bands)[0, 0].numpy(), oracle, atol=1e-12)


def test_multichannel_groups_bands_per_channel():
    gen = torch.Generator().manual_seed(3)
    volumes = torch.rand((1, 3, 4, 6, 8), generator=gen)
    stacked = dwt3d(volumes)
    assert stacked.shape == (1, 24, 2, 3, 4)
    for c in range(3):
        torch.testing.assert_close(stacked[:, 8 * c : 8 * c + 8], dwt3d(volumes[:, c : c + 1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_perfect_reconstruction(dtype):
    gen = torch.Generator().manual_seed(4)
    volume = torch.rand((2, 2, 8, 12, 6), generator=gen).to(dtype)
    atol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(idwt3d(dwt3d(volume)), volume, atol=atol, rtol=0)
    torch.testing.assert_close(decode(encode(volume)), volume, atol=atol, rtol=0)


def test_encode_divides_only_lll_by_three():
    gen = torch.Generator().manual_seed(5)
    volume = torch.rand((1, 2, 4, 4, 4), generator=gen, dtype=torch.float64)
    raw, scaled = dwt3d(volume), encode(volume)
    for c in range(2):
        torch.testing.assert_close(scaled[:, 8 * c], raw[:, 8 * c] / 3)
        torch.testing.assert_close(scaled[:, 8 * c + 1 : 8 * c + 8], raw[:, 8 * c + 1 : 8 * c + 8])


def test_constant_volume_lll_energy():
    # A constant volume c has LLL = c * 2^(3/2) (orthonormal filters) and zero detail bands.
    bands = dwt3d(torch.full((1, 1, 4, 4, 4), 0.5, dtype=torch.float64))
    torch.testing.assert_close(bands[:, 0], torch.full((1, 2, 2, 2), 0.5 * 2**1.5, dtype=torch.float64))
    assert bands[:, 1:].abs().max() == 0


def test_clip_coeffs_clamps_in_image_space():
    gen = torch.Generator().manual_seed(6)
    volume = torch.randn((1, 1, 6, 6, 6), generator=gen, dtype=torch.float64) * 2
    clipped = decode(clip_coeffs(encode(volume)))
    torch.testing.assert_close(clipped, volume.clamp(0, 1), atol=1e-12, rtol=0)


def test_build_condition_is_encode_of_three_sequences():
    volumes = torch.rand((2, 3, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(build_condition(volumes), encode(volumes))
    with pytest.raises(ShapeError, match=r"three present sequences"):
        build_condition(volumes[:, :2])


@pytest.mark.parametrize("shape", [(1, 1, 5, 4, 4), (1, 1, 4, 4, 155)])
def test_odd_size_is_a_clear_error(shape):
    with pytest.raises(ShapeError, match=r"even spatial sizes.*" + re.escape(str(shape[2:]))):
        dwt3d(torch.zeros(shape))


def test_bad_band_count_is_an_error():
    with pytest.raises(ShapeError, match=r"8\*C"):
        idwt3d(torch.zeros(1, 7, 2, 2, 2))
