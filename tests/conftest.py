"""Shared fixtures: reference vectors, tiny models and synthetic volumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cwdm.denoiser import Denoiser, DenoiserConfig

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "tests" / "reference"
EXAMPLES_DIR = REPO / "examples"

#: The tiny configuration used throughout the suite (STYLE.md section 6).
TINY = DenoiserConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)


def randomised(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter random values: a fresh denoiser's zero-initialised output convs would
    make it predict zeros and hide wiring bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return model


@pytest.fixture
def tiny_denoiser() -> Denoiser:
    return randomised(Denoiser(TINY)).eval()


@pytest.fixture(scope="session")
def unet_tiny_reference() -> dict:
    return torch.load(REFERENCE_DIR / "unet_tiny_c8.pt", weights_only=True)


@pytest.fixture(scope="session")
def diffusion_reference() -> dict:
    return torch.load(REFERENCE_DIR / "diffusion_i2i.pt", weights_only=True)


def smooth_blobs(shape: tuple[int, ...], seed: int, count: int = 3) -> torch.Tensor:
    """A seeded volume of smooth Gaussian blobs on a zero background, values in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    volume = torch.zeros(shape, dtype=torch.float64)
    for _ in range(count):
        centre = [float(torch.rand(1, generator=gen)) * n * 0.6 + n * 0.2 for n in shape]
        width = float(torch.rand(1, generator=gen)) * min(shape) * 0.15 + min(shape) * 0.08
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
        volume += torch.exp(-dist2 / (2 * width**2))
    volume[volume < 0.05] = 0.0
    return (volume / volume.max()).float()
