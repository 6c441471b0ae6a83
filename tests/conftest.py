"""Shared fixtures: reference vectors, tiny models and synthetic volumes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cwdm.config import ModelSpec
from cwdm.method.denoiser import Denoiser, DenoiserConfig
from cwdm.runtime import CACHE_VARIABLES
from cwdm.sequences import CANONICAL_ORDER
from cwdm.weights.checkpoints import write_state_dict

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "tests" / "reference"
EXAMPLES_DIR = REPO / "examples"

#: The tiny configuration used throughout the suite (docs/ARCHITECTURE.md, "Conventions").
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


# -- synthetic cases and weights directories (pipeline, CLI and MLCube tests) -------------------------

#: A non-identity voxel-to-world affine (rotation about z, anisotropic voxels, x flipped, offset origin).
#: Rigid rotation times zooms, so that the qform can hold it exactly, like the sform.
_ANGLE = np.deg2rad(10.0)
AFFINE = np.array(
    [
        [-1.2 * np.cos(_ANGLE), -0.9 * np.sin(_ANGLE), 0.0, 91.5],
        [-1.2 * np.sin(_ANGLE), 0.9 * np.cos(_ANGLE), 0.0, -17.25],
        [0.0, 0.0, 2.0, -40.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Save ``data`` as NIfTI with ``affine`` in both sform (code 1) and qform (code 1)."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    nib.save(image, path)
    return path


def write_case(
    root: Path,
    case_id: str,
    missing: str | None = "t2f",
    shape: tuple[int, int, int] = (26, 20, 14),
    seed: int = 0,
    affine: np.ndarray = AFFINE,
) -> Path:
    """A case folder of seeded blob volumes (intensities 0..1000) with ``missing`` left out."""
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for index, seq in enumerate(CANONICAL_ORDER):
        if seq == missing:
            continue
        volume = smooth_blobs(shape, seed=100 * seed + index).numpy() * 1000.0
        write_volume(folder / f"{case_id}-{seq}.nii.gz", volume, affine)
    return folder


#: model.yaml of the tiny test models: two levels, two sampling steps.
TINY_SPEC = ModelSpec(
    model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8, sampling_steps=2, sampler="ddpm"
)


def write_tiny_weights(
    folder: Path,
    targets: tuple[str, ...] = tuple(str(seq) for seq in CANONICAL_ORDER),
    spec: ModelSpec = TINY_SPEC,
) -> Path:
    """A weights directory: model.yaml plus ``<target>.safetensors`` of randomised tiny denoisers."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    for index, target in enumerate(targets):
        model = randomised(Denoiser(spec.architecture), seed=index, scale=0.05)
        write_state_dict(model.state_dict(), folder / f"{target}.safetensors")
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention weights directory with all four tiny models."""
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def tree_checksums(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path (to show that inputs are untouched)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(autouse=True, scope="session")
def _compiler_caches_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The commands point unset compiler caches at temporary folders (cwdm.runtime.configure_process);
    during the tests those go under pytest's temporary folder, and the environment is restored after.
    (The general caches under $HOME are left alone while $HOME is writable, as in these tests.)"""
    names = list(CACHE_VARIABLES)
    saved = {name: os.environ.get(name) for name in names}
    root = tmp_path_factory.mktemp("caches")
    for name in names:
        if not saved[name]:
            os.environ[name] = str(root / name.lower())
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
