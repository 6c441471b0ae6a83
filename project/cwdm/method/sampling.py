"""Reverse diffusion: the DDPM and DDIM steps and the sampling loop.

The loop composes a denoiser (any callable ``(x, t) -> x0``), a :class:`NoiseSchedule` and an optional
x0 post-process (the published image-space clip, :func:`cwdm.method.wavelets.clip_coeffs`); it knows
nothing of files or wavelets. Random numbers come only from the ``generator`` argument, in a documented order:
x_T is the first standard-normal draw of shape ``(B, 8, D, H, W)``; then each DDPM step above the last
draws one tensor of that shape, in order. DDIM draws nothing after x_T. With one generator per batch
element instead, each element draws its own ``(1, 8, D, H, W)`` tensors in that order, so its result
does not depend on which other cases share its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..choices import SamplerName, TimestepSpacing
from ..errors import ConfigError, ShapeError
from .schedule import NoiseSchedule
from .wavelets import NUM_BANDS, clip_coeffs

X0Transform = Callable[[Tensor], Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
StepCallback = Callable[[int, int], None]


class DenoiseFn(Protocol):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


def standard_normal(shape: tuple[int, ...], generator: Generators, like: Tensor) -> Tensor:
    """A standard-normal draw of ``shape`` on ``like``'s device and dtype.

    With a sequence of generators, element ``i`` of the batch is drawn from ``generator[i]``.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    if len(generator) != shape[0]:
        raise ConfigError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.cat(
        [torch.randn((1, *shape[1:]), generator=g, device=like.device, dtype=like.dtype) for g in generator]
    )


def predict_x0(
    denoiser: DenoiseFn,
    x_t: Tensor,
    cond: Tensor,
    timestep: int,
    x0_transform: X0Transform | None = None,
) -> Tensor:
    """Run the network on ``[x_t, cond]`` at the original ``timestep`` and post-process its x0.

    Returns:
        ``(B, 8, ...)`` float predicted x0 in ``x_t``'s dtype, after ``x0_transform`` (the clip).
    """
    t = torch.full((x_t.shape[0],), timestep, dtype=torch.long, device=x_t.device)
    x0 = denoiser(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t).to(x_t.dtype)
    return x0_transform(x0) if x0_transform is not None else x0


def ddpm_step(
    schedule: NoiseSchedule,
    index: int,
    x_t: Tensor,
    x0: Tensor,
    generator: Generators = None,
) -> Tensor:
    """One ancestral DDPM step with the fixed-large variance; no noise at index 0.

    Args:
        schedule: The (respaced) schedule.
        index: This step's index in ``schedule`` (not the original timestep value).
        x_t: ``(B, C, ...)`` current sample.
        x0: The (clipped) x0 prediction for ``x_t``.
        generator: Source of the step's one standard-normal draw (skipped at index 0), or one
            generator per batch element.

    Returns:
        x_{t-1}, same shape and dtype as ``x_t``.
    """
    mean = schedule.posterior_mean(x0, x_t, index)
    if index == 0:
        return mean
    noise = standard_normal(tuple(x_t.shape), generator, x_t)
    return mean + torch.exp(0.5 * schedule.log_variance(index, x_t)) * noise


def ddim_step(
    schedule: NoiseSchedule,
    index: int,
    x_t: Tensor,
    x0: Tensor,
    generator: Generators = None,
) -> Tensor:
    """One deterministic DDIM step (eta = 0); ``generator`` is unused, kept for a common signature."""
    del generator
    return schedule.ddim_mean(x0, x_t, index)


#: The available samplers, by the names used in parameters.yaml.
SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm_step, "ddim": ddim_step}


def sample(
    denoiser: DenoiseFn,
    cond: Tensor,
    *,
    steps: int = 1000,
    generator: Generators = None,
    clip: bool = True,
    sampler: SamplerName = "ddpm",
    schedule: NoiseSchedule | None = None,
    spacing: TimestepSpacing = "linspace",
    on_step: StepCallback | None = None,
) -> Tensor:
    """Generate the scaled wavelet coefficients of the missing sequence.

    Args:
        denoiser: ``(x, t) -> x0``, e.g. a :class:`cwdm.Denoiser` in eval mode; ``x`` is
            ``(B, 32, D, H, W)``, ``t`` the original timestep values ``(B,)``.
        cond: ``(B, 24, D, H, W)`` condition from :func:`cwdm.build_condition`; its device and
            dtype (float32 recommended) set those of the sample.
        steps: Number of sampling steps, evenly respaced from the training schedule (1000 = all).
        generator: Seeded generator on ``cond``'s device for reproducible results, or a sequence of
            one generator per batch element (results independent of the batch's other elements).
        clip: Clamp each x0 prediction to [0, 1] in image space, as published.
        sampler: ``"ddpm"`` (published, stochastic) or ``"ddim"`` (deterministic).
        schedule: The training schedule; the published linear 1000-step one by default.
        spacing: Which timesteps ``steps`` keeps: ``linspace`` (published) or ``trailing`` (counted back
            from the last: :func:`cwdm.method.schedule.trailing_timesteps`). One ``linspace`` step keeps
            only t = 0, where the network is asked for x0 of pure noise as if it were nearly clean:
            single-step sampling needs ``trailing``.
        on_step: Called as ``on_step(done, total)`` after every step.

    Returns:
        ``(B, 8, D, H, W)`` final scaled coefficients; :func:`cwdm.decode` gives the volume.

    Raises:
        ConfigError: unknown sampler or spacing, or a step count outside 1..T.
        ShapeError: ``cond`` is not ``(B, 24, D, H, W)``.
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
    if cond.dim() != 5 or cond.shape[1] != 3 * NUM_BANDS:
        raise ShapeError(f"condition must be (B, 24, D, H, W), got {tuple(cond.shape)}")
    step_fn = SAMPLERS[sampler]
    respaced = (schedule or NoiseSchedule.linear(1000)).respaced(steps, spacing)
    x0_transform = clip_coeffs if clip else None

    shape = (cond.shape[0], NUM_BANDS, *cond.shape[2:])
    x = standard_normal(shape, generator, cond)
    total = len(respaced)
    for done, index in enumerate(reversed(range(total)), start=1):
        x0 = predict_x0(denoiser, x, cond, int(respaced.timesteps[index]), x0_transform)
        x = step_fn(respaced, index, x, x0, generator)
        if on_step is not None:
            on_step(done, total)
    return x
