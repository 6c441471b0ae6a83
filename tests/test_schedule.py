from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cwdm import ConfigError, NoiseSchedule
from cwdm.method.schedule import evenly_spaced_timesteps
from cwdm.method.wavelets import clip_coeffs

CHAINS = [("full", 1000), ("respaced_100", 100)]


@pytest.mark.parametrize("name, steps", CHAINS)
def test_timestep_map_and_betas_match_reference(diffusion_reference, name, steps):
    ref = diffusion_reference[name]
    schedule = NoiseSchedule.linear(1000).respaced(steps)
    assert schedule.timesteps.tolist() == ref["timestep_map"].tolist()
    assert (schedule.betas - ref["betas"]).abs().max() < 1e-12


@pytest.mark.parametrize("name, steps", CHAINS)
@pytest.mark.parametrize("clip", [True, False])
def test_reverse_steps_match_reference(diffusion_reference, name, steps, clip):
    ref = diffusion_reference[name]
    schedule = NoiseSchedule.linear(1000).respaced(steps)
    suffix = "" if clip else "_noclip"
    for step in ref["steps"]:
        index, x_t = step["t_index"], step["x_t"]
        assert int(schedule.timesteps[index]) == int(step["model_saw_t"])
        x0 = clip_coeffs(step["model_output"]) if clip else step["model_output"]
        torch.testing.assert_close(x0, step["pred_xstart" + suffix], atol=1e-6, rtol=0)
        mean = schedule.posterior_mean(x0, x_t, index)
        torch.testing.assert_close(mean, step["mean" + suffix], atol=1e-6, rtol=0)
        torch.testing.assert_close(
            schedule.variance(index, x_t).expand_as(x_t), step["variance"], atol=0, rtol=1e-6
        )
        torch.testing.assert_close(
            schedule.log_variance(index, x_t).expand_as(x_t), step["log_variance"], atol=1e-6, rtol=0
        )


@pytest.mark.parametrize("name, steps", CHAINS)
def test_q_sample_matches_reference(diffusion_reference, name, steps):
    ref = diffusion_reference[name]["q_sample"]
    schedule = NoiseSchedule.linear(1000).respaced(steps)
    x_t = schedule.q_sample(ref["x_start"], ref["t"], ref["noise"])
    torch.testing.assert_close(x_t, ref["x_t"], atol=1e-6, rtol=0)


def test_linear_schedule_against_numpy():
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    schedule = NoiseSchedule.linear(1000)
    np.testing.assert_allclose(schedule.betas.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-10)


def test_cosine_schedule_alpha_bar():
    schedule = NoiseSchedule.cosine(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 10, 500, 900):
        assert schedule.alphas_cumprod[i].item() == pytest.approx(f((i + 1) / 1000) / f(0), rel=1e-9)
    assert schedule.betas.max() <= 0.999


def test_respacing_keeps_endpoints_and_cumulative_alphas():
    base = NoiseSchedule.linear(1000)
    for count in (1000, 250, 100, 50, 10, 2):
        schedule = base.respaced(count)
        kept = schedule.timesteps
        assert len(schedule) == count and kept[-1] == 999 and kept[0] == 0
        np.testing.assert_allclose(
            schedule.alphas_cumprod.numpy(), base.alphas_cumprod[kept].numpy(), rtol=1e-9
        )
    assert evenly_spaced_timesteps(1000, 100)[:7] == [0, 10, 20, 30, 40, 50, 61]


@pytest.mark.parametrize("count", [0, 1001])
def test_impossible_step_count(count):
    with pytest.raises(ConfigError, match="sampling steps"):
        NoiseSchedule.linear(1000).respaced(count)


def test_unknown_schedule_name():
    with pytest.raises(ConfigError, match="unknown noise schedule 'sigmoid'"):
        NoiseSchedule.named("sigmoid", 1000)  # type: ignore[arg-type]


def test_q_sample_per_batch_indices():
    schedule = NoiseSchedule.linear(1000)
    x0, noise = torch.ones(2, 1, 2, 2, 2), torch.zeros(2, 1, 2, 2, 2)
    out = schedule.q_sample(x0, torch.tensor([0, 999]), noise)
    abar = schedule.alphas_cumprod
    assert out[0].mean().item() == pytest.approx(abar[0].sqrt().item(), rel=1e-6)
    assert out[1].mean().item() == pytest.approx(abar[999].sqrt().item(), rel=1e-6)


def test_trailing_spacing_counts_back_from_the_last_timestep():
    from cwdm.method.schedule import trailing_timesteps

    assert trailing_timesteps(1000, 1) == [999]
    assert trailing_timesteps(1000, 2) == [499, 999]
    assert trailing_timesteps(1000, 10) == [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
    for count in range(1, 1001):  # distinct, increasing, the last always kept
        kept = trailing_timesteps(1000, count)
        assert len(kept) == count and kept[-1] == 999 and kept == sorted(set(kept))
    respaced = NoiseSchedule.linear(1000).respaced(10, "trailing")
    assert respaced.timesteps.tolist() == trailing_timesteps(1000, 10)
    full = NoiseSchedule.linear(1000)
    expected = full.alphas_cumprod[torch.tensor(trailing_timesteps(1000, 10))]
    torch.testing.assert_close(respaced.alphas_cumprod, expected, rtol=1e-12, atol=0)
