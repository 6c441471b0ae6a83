from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from cwdm import ConfigError, NoiseSchedule, ShapeError, build_condition, decode, sample

from .conftest import smooth_blobs

PYWT_KEYS = ["aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd"]


def _pywt_clip(coeffs: np.ndarray) -> np.ndarray:
    """The published image-space clip, computed independently with PyWavelets in float64."""
    out = np.empty_like(coeffs)
    for b in range(coeffs.shape[0]):
        bands = {key: coeffs[b, i].astype(np.float64) for i, key in enumerate(PYWT_KEYS)}
        bands["aaa"] = bands["aaa"] * 3
        image = np.clip(pywt.idwtn(bands, "haar"), 0, 1)
        clipped = pywt.dwtn(image, "haar")
        clipped["aaa"] = clipped["aaa"] / 3
        for i, key in enumerate(PYWT_KEYS):
            out[b, i] = clipped[key]
    return out


def _published_ddpm(denoiser, cond, steps, seed):
    """The published p_sample_loop, written out plainly: global RNG seeded once, x_T drawn first,
    one randn_like per step (also at t = 0, masked there), NumPy float64 coefficients."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    frac = (1000 - 1) / (steps - 1)
    kept, cur = [], 0.0
    for _ in range(steps):
        kept.append(round(cur))
        cur += frac
    new_betas, last = [], 1.0
    for i in kept:
        new_betas.append(1 - abar[i] / last)
        last = abar[i]
    b = np.array(new_betas)
    a = np.cumprod(1 - b)
    a_prev = np.append(1.0, a[:-1])
    post_var = b * (1 - a_prev) / (1 - a)
    coef1 = b * np.sqrt(a_prev) / (1 - a)
    coef2 = (1 - a_prev) * np.sqrt(1 - b) / (1 - a)
    log_var = np.log(np.append(post_var[1], b[1:]))

    torch.manual_seed(seed)
    x = torch.randn(cond.shape[0], 8, *cond.shape[2:])
    for i in reversed(range(steps)):
        t = torch.tensor([kept[i]] * cond.shape[0])
        with torch.no_grad():
            out = denoiser(torch.cat([x, cond], 1), t)
        x0 = torch.from_numpy(_pywt_clip(out.numpy())).float()
        mean = float(coef1[i]) * x0 + float(coef2[i]) * x
        noise = torch.randn_like(x)
        x = mean + float(i != 0) * float(np.exp(0.5 * log_var[i])) * noise
    return x


@pytest.fixture
def cond():
    volumes = torch.stack([smooth_blobs((16, 16, 16), seed=s) for s in (1, 2, 3)])[None]
    return build_condition(volumes)  # (1, 24, 8, 8, 8)


@pytest.mark.parametrize("steps", [10, 25])
def test_ddpm_matches_published_sampler_for_same_seed(tiny_denoiser, cond, steps):
    with torch.inference_mode():
        ours = sample(tiny_denoiser, cond, steps=steps, generator=torch.Generator().manual_seed(123))
    oracle = _published_ddpm(tiny_denoiser, cond, steps, seed=123)
    assert ours.shape == (1, 8, 8, 8, 8)
    assert (ours - oracle).abs().max() < 1e-4


def test_network_sees_original_timesteps(cond):
    seen = []

    def spy(x, t):
        seen.append(int(t[0]))
        return torch.zeros(x.shape[0], 8, *x.shape[2:])

    sample(spy, cond, steps=100, generator=torch.Generator().manual_seed(0))
    assert seen == NoiseSchedule.linear(1000).respaced(100).timesteps.flip(0).tolist()
    assert seen[:3] == [999, 989, 979] and seen[-1] == 0


def test_draw_order_is_documented(cond):
    # x_T is the first draw; each step above t = 0 draws one tensor of x_T's shape.
    gen = torch.Generator().manual_seed(7)
    first = torch.randn(1, 8, 8, 8, 8, generator=gen)
    received = []

    def spy(x, t):
        received.append(x[:, :8].clone())
        return torch.zeros(x.shape[0], 8, *x.shape[2:])

    sample(spy, cond, steps=5, generator=torch.Generator().manual_seed(7), clip=False)
    torch.testing.assert_close(received[0], first, atol=0, rtol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_same_seed_same_result_different_seed_different(tiny_denoiser, cond, sampler):
    def run(seed):
        with torch.inference_mode():
            return sample(
                tiny_denoiser, cond, steps=8, sampler=sampler, generator=torch.Generator().manual_seed(seed)
            )

    torch.testing.assert_close(run(1), run(1), atol=0, rtol=0)
    assert (run(1) - run(2)).abs().max() > 1e-3


def test_ddim_matches_float64_recomputation(tiny_denoiser, cond):
    steps = 6
    schedule = NoiseSchedule.linear(1000).respaced(steps)
    abar = schedule.alphas_cumprod.numpy()
    with torch.inference_mode():
        ours = sample(
            tiny_denoiser,
            cond,
            steps=steps,
            sampler="ddim",
            clip=False,
            generator=torch.Generator().manual_seed(5),
        )
        x = torch.randn(1, 8, 8, 8, 8, generator=torch.Generator().manual_seed(5)).double()
        for i in reversed(range(steps)):
            t = torch.tensor([int(schedule.timesteps[i])])
            x0 = tiny_denoiser(torch.cat([x.float(), cond], 1), t).double()
            eps = (x - np.sqrt(abar[i]) * x0) / np.sqrt(1 - abar[i])
            a_prev = abar[i - 1] if i else 1.0
            x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    assert (ours.double() - x).abs().max() < 1e-4


def test_clipped_sample_decodes_into_unit_range(tiny_denoiser, cond):
    with torch.inference_mode():
        out = sample(tiny_denoiser, cond, steps=4, generator=torch.Generator().manual_seed(0))
    # The final step returns the clipped x0 (posterior mean at index 0 equals x0).
    volume = decode(out)
    assert volume.min() > -1e-5 and volume.max() < 1 + 1e-5


def test_progress_callback_and_errors(tiny_denoiser, cond):
    calls = []
    sample(tiny_denoiser, cond, steps=3, on_step=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ConfigError, match="unknown sampler 'euler'"):
        sample(tiny_denoiser, cond, steps=3, sampler="euler")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"\(B, 24, D, H, W\)"):
        sample(tiny_denoiser, cond[:, :16], steps=3)
    with pytest.raises(ConfigError, match="cannot take 0 sampling steps"):
        sample(tiny_denoiser, cond, steps=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_per_case_generators_make_results_independent_of_batching(tiny_denoiser, cond, sampler):
    other = build_condition(torch.stack([smooth_blobs((16, 16, 16), seed=s) for s in (4, 5, 6)])[None])
    with torch.inference_mode():
        alone = sample(
            tiny_denoiser, cond, steps=5, sampler=sampler, generator=[torch.Generator().manual_seed(11)]
        )
        batched = sample(
            tiny_denoiser,
            torch.cat([other, cond]),
            steps=5,
            sampler=sampler,
            generator=[torch.Generator().manual_seed(3), torch.Generator().manual_seed(11)],
        )
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="1 generators for a batch of 2"):
        sample(tiny_denoiser, torch.cat([other, cond]), steps=2, generator=[torch.Generator()])
