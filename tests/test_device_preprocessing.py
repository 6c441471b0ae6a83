"""The device preprocessing against the CPU path (itself checked against np.quantile), on CPU tensors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from cwdm.cases.preprocessing import clip_percentiles, normalise
from cwdm.inference.device_preprocessing import clip_percentiles_on_device, normalise_on_device

from .test_preprocessing import SHIPPED


@pytest.mark.parametrize("path", SHIPPED[:3], ids=lambda p: p.name)
def test_shipped_volumes_match_the_cpu_path_bit_for_bit(path) -> None:
    data = nib.load(path).get_fdata(dtype=np.float64)
    tensor = torch.from_numpy(data)
    assert clip_percentiles_on_device(tensor) == clip_percentiles(data)
    assert normalise_on_device(tensor).numpy().tobytes() == normalise(data).tobytes()


@pytest.mark.parametrize("size", [1, 2, 1001, 4096])
def test_small_and_tied_volumes(size: int) -> None:
    rng = np.random.default_rng(size)
    for data in (rng.normal(size=size), rng.integers(0, 3, size=size).astype(np.float64), np.zeros(size)):
        tensor = torch.from_numpy(data)
        assert clip_percentiles_on_device(tensor) == clip_percentiles(data)
        assert normalise_on_device(tensor).numpy().tobytes() == normalise(data).tobytes()
