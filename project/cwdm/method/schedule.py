"""The noise schedule: betas, cumulative products, respacing, forward noising and posterior terms.

Pure tensor math, computed in float64 and cast to the data's dtype where used, as the published code
does (its coefficients are float64 NumPy arrays cast to float32 on extraction); docs/METHOD.md, "Diffusion".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..choices import ScheduleName, TimestepSpacing
from ..errors import ConfigError

#: How respaced sampling picks its timesteps: ``linspace`` (published: first and last included) or
#: ``trailing`` (counted back from the last, Lin et al. 2024; the one that works down to one step).


def _linear_betas(num_steps: int) -> Tensor:
    # Ho et al.'s 1e-4 .. 0.02, rescaled so that other step counts keep the same total noise.
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def _cosine_betas(num_steps: int, max_beta: float = 0.999) -> Tensor:
    # Nichol & Dhariwal's cosine alpha-bar with offset s = 0.008, betas capped at 0.999.
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def evenly_spaced_timesteps(num_steps: int, count: int) -> list[int]:
    """Pick ``count`` timesteps of ``0..num_steps-1``, evenly strided, first and last included.

    Reproduces the published respacing: stride ``(num_steps - 1) / (count - 1)`` accumulated in
    floating point and rounded half-to-even (Python ``round``); 100 of 1000 gives 0, 10, 20, ...,
    989, 999 (docs/METHOD.md, "Respacing").
    """
    if not 1 <= count <= num_steps:
        raise ConfigError(f"cannot take {count} sampling steps from a {num_steps}-step schedule")
    stride = (num_steps - 1) / (count - 1) if count > 1 else 1.0
    position, taken = 0.0, []
    for _ in range(count):
        taken.append(round(position))
        position += stride
    return taken


def trailing_timesteps(num_steps: int, count: int) -> list[int]:
    """Pick ``count`` timesteps of ``0..num_steps-1`` counted back from the last: ``round(num_steps - k *
    num_steps / count) - 1`` for k = count-1, ..., 0, in increasing order.

    The last timestep is always kept, so the first reverse step starts from (almost) pure noise, and the
    smallest is ``num_steps / count - 1``: one step gives ``[999]`` of 1000, ten give 99, 199, ..., 999
    ("trailing" spacing of Lin et al., 2024, "Common diffusion noise schedules and sample steps are
    flawed"). The published spacing (:func:`evenly_spaced_timesteps`) keeps 0 instead, so one step of it
    would start from pure noise at t = 0.
    """
    if not 1 <= count <= num_steps:
        raise ConfigError(f"cannot take {count} sampling steps from a {num_steps}-step schedule")
    return sorted({round(num_steps - k * num_steps / count) - 1 for k in range(count)})


#: The spacing rules by their parameter name.
TIMESTEP_SPACINGS = {"linspace": evenly_spaced_timesteps, "trailing": trailing_timesteps}


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete diffusion schedule, possibly a respaced subset of a longer one.

    Index ``i`` (0..len-1) addresses this schedule's own steps; ``timesteps[i]`` is the original
    timestep value the network was trained with and must see.

    Attributes:
        betas: ``(N,)`` float64 betas of this (possibly respaced) schedule.
        timesteps: ``(N,)`` int64 original timestep value of each step.
    """

    betas: Tensor
    timesteps: Tensor

    def __post_init__(self) -> None:
        if self.betas.dim() != 1 or self.betas.shape != self.timesteps.shape:
            raise ConfigError("betas and timesteps must be 1-D tensors of equal length")
        if not bool(((self.betas > 0) & (self.betas <= 1)).all()):
            raise ConfigError("betas must lie in (0, 1]")
        alphas_cumprod = torch.cumprod(1.0 - self.betas.double(), dim=0)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)
        object.__setattr__(
            self, "alphas_cumprod_prev", torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        )

    alphas_cumprod: Tensor = field(init=False, repr=False)
    alphas_cumprod_prev: Tensor = field(init=False, repr=False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        betas = betas.to(torch.float64)
        return cls(betas=betas, timesteps=torch.arange(len(betas), dtype=torch.int64))

    @classmethod
    def linear(cls, num_steps: int = 1000) -> NoiseSchedule:
        """The published schedule: ``num_steps`` linear betas from 1e-4 to 0.02 (for T = 1000)."""
        return cls.from_betas(_linear_betas(num_steps))

    @classmethod
    def cosine(cls, num_steps: int = 1000) -> NoiseSchedule:
        """The cosine schedule of Nichol & Dhariwal (2021)."""
        return cls.from_betas(_cosine_betas(num_steps))

    @classmethod
    def named(cls, name: ScheduleName, num_steps: int = 1000) -> NoiseSchedule:
        """Build the schedule called ``name`` (``"linear"`` or ``"cosine"``)."""
        builders = {"linear": cls.linear, "cosine": cls.cosine}
        if name not in builders:
            raise ConfigError(f"unknown noise schedule {name!r}; expected one of {sorted(builders)}")
        return builders[name](num_steps)

    def respaced(self, count: int, spacing: TimestepSpacing = "linspace") -> NoiseSchedule:
        """Keep ``count`` evenly strided steps; betas are rebuilt from the kept cumulative alphas.

        Args:
            count: Number of sampling steps, 1..len(self).
            spacing: ``linspace`` (published: :func:`evenly_spaced_timesteps`) or ``trailing``
                (:func:`trailing_timesteps`).

        Returns:
            A schedule whose ``timesteps`` hold the original values (100 of 1000: 0, 10, ..., 999).

        Raises:
            ConfigError: an impossible count or an unknown spacing.
        """
        if spacing not in TIMESTEP_SPACINGS:
            raise ConfigError(
                f"unknown timestep spacing {spacing!r}; expected one of {sorted(TIMESTEP_SPACINGS)}"
            )
        if count == len(self):
            return self
        kept = TIMESTEP_SPACINGS[spacing](len(self), count)
        previous = 1.0
        betas = []
        for index in kept:
            current = float(self.alphas_cumprod[index])
            betas.append(1.0 - current / previous)
            previous = current
        return NoiseSchedule(
            betas=torch.tensor(betas, dtype=torch.float64),
            timesteps=self.timesteps[torch.tensor(kept)],
        )

    def __len__(self) -> int:
        return int(self.betas.shape[0])

    # -- coefficients -------------------------------------------------------------------------
    def _coef(self, values: Tensor, index: int | Tensor, like: Tensor) -> Tensor:
        """``values[index]`` cast to ``like``'s dtype/device, shaped to broadcast over ``like``."""
        picked = values.to(like.device)[torch.as_tensor(index, device=like.device)]
        picked = picked.to(like.dtype)
        return picked.reshape(-1, *([1] * (like.dim() - 1))) if picked.dim() else picked

    def q_sample(self, x0: Tensor, index: int | Tensor, noise: Tensor) -> Tensor:
        """Forward noising: ``sqrt(abar) x0 + sqrt(1 - abar) noise`` at step ``index``.

        Args:
            x0: ``(B, C, ...)`` clean scaled coefficients.
            index: A step index, or a ``(B,)`` tensor of indices (one per batch element).
            noise: Standard normal noise of ``x0``'s shape.
        """
        abar = self.alphas_cumprod
        return self._coef(abar.sqrt(), index, x0) * x0 + self._coef((1 - abar).sqrt(), index, x0) * noise

    def posterior_mean(self, x0: Tensor, x_t: Tensor, index: int) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x0), the standard DDPM posterior (Ho et al., Eq. 7)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        coef_x0 = self.betas * abar_prev.sqrt() / (1.0 - abar)
        coef_xt = (1.0 - abar_prev) * (1.0 - self.betas).sqrt() / (1.0 - abar)
        return self._coef(coef_x0, index, x_t) * x0 + self._coef(coef_xt, index, x_t) * x_t

    @property
    def posterior_variance(self) -> Tensor:
        """``(N,)`` float64 variance of q(x_{t-1} | x_t, x0); zero at the first step."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def sampling_variance(self) -> Tensor:
        """``(N,)`` float64 "fixed large" variance: beta_t, except the posterior variance at index 1
        for the first step (docs/METHOD.md, "Sampling"; what the published numbers use)."""
        if len(self) < 2:
            return self.betas.clone()
        return torch.cat([self.posterior_variance[1:2], self.betas[1:]])

    def variance(self, index: int, like: Tensor) -> Tensor:
        """The fixed-large sampling variance at ``index``, cast and shaped like ``like``."""
        return self._coef(self.sampling_variance, index, like)

    def log_variance(self, index: int, like: Tensor) -> Tensor:
        """Log of :meth:`variance`, computed in float64 before the cast."""
        return self._coef(self.sampling_variance.log(), index, like)

    def ddim_mean(self, x0: Tensor, x_t: Tensor, index: int) -> Tensor:
        """Deterministic DDIM update (eta = 0): move to step ``index - 1`` along the predicted noise."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        eps = (self._coef(abar.rsqrt(), index, x_t) * x_t - x0) / self._coef(
            (1.0 / abar - 1.0).sqrt(), index, x_t
        )
        return (
            self._coef(abar_prev.sqrt(), index, x_t) * x0
            + self._coef((1.0 - abar_prev).sqrt(), index, x_t) * eps
        )
