"""training/data.py: cases read once and kept as 16-bit levels, the content-keyed cache folder, preloading,
and the GPU data path (a `gpu` test)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cwdm.errors import CwdmError
from cwdm.training import data as data_module
from cwdm.training.data import QUANTISATION_LEVELS, TrainingCases, dequantise, quantise, random_flip
from cwdm.training.trainer import Trainer, TrainingConfig

from .test_training import CASES, MULTIPLE, SHAPE, TINY_SPEC, train_dir  # noqa: F401 (fixture)


def test_quantisation_is_within_half_a_level_and_exact_at_the_ends() -> None:
    values = np.random.default_rng(0).random((5, 6, 7))
    values[0, 0, :2] = (0.0, 1.0)
    levels = quantise(values)
    assert levels.dtype == torch.uint16 and levels[0, 0, 0] == 0 and levels[0, 0, 1] == QUANTISATION_LEVELS
    error = np.abs(dequantise(levels).double().numpy() - values)
    assert error.max() <= 0.5 / QUANTISATION_LEVELS + 1e-9
    assert error.max() > 0.4 / QUANTISATION_LEVELS  # really rounded to levels, not kept as floats


def _no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a case file was read although the cache folder holds it")

    monkeypatch.setattr(data_module, "read_sequences", refuse)


def test_the_cache_folder_serves_later_runs_without_reading_the_files(
    train_dir: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    first = TrainingCases.from_folder(train_dir, MULTIPLE, cache_dir=cache)
    expected = [first.levels(i).clone() for i in range(len(first))]
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob(".*"))  # no partial files left
    _no_reading(monkeypatch)
    again = TrainingCases.from_folder(train_dir, MULTIPLE, cache_dir=cache)
    for index, levels in enumerate(expected):
        assert torch.equal(again.levels(index), levels)


def test_a_changed_file_gets_a_new_cache_entry(train_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    cache = tmp_path / "cache"
    TrainingCases.from_folder(train_dir, MULTIPLE, cache_dir=cache).levels(0)
    path = train_dir / CASES[0] / f"{CASES[0]}-t2w.nii.gz"
    data = nib.load(path).get_fdata() * 2.0 + 5.0  # other values: another key, not the stale entry
    nib.save(nib.Nifti1Image(data.astype(np.float32), nib.load(path).affine), path)
    changed = TrainingCases.from_folder(train_dir, MULTIPLE, cache_dir=cache)
    fresh = TrainingCases.from_folder(train_dir, MULTIPLE)
    assert torch.equal(changed.levels(0), fresh.levels(0))
    assert len(list(cache.glob("*.npy"))) == 2


def test_a_damaged_cache_file_is_only_a_miss(
    train_dir: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    expected = TrainingCases.from_folder(train_dir, MULTIPLE, cache_dir=cache).levels(0).clone()
    for path in cache.glob("*.npy"):
        path.write_bytes(b"\x93NUMPY broken")
    with caplog.at_level(logging.WARNING, logger="cwdm.training.data"):
        assert torch.equal(
            TrainingCases.from_folder(train_dir, MULTIPLE, cache_dir=cache).levels(0), expected
        )
    assert "ignoring the unreadable cache file" in caplog.text


def test_preload_reads_every_case_once_or_says_what_does_not_fit(
    train_dir: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[int] = []
    real = TrainingCases._preprocess

    def counted(self: TrainingCases, index: int) -> torch.Tensor:
        reads.append(index)
        return real(self, index)

    monkeypatch.setattr(TrainingCases, "_preprocess", counted)
    data = TrainingCases.from_folder(train_dir, MULTIPLE)
    data.preload(threads=2)
    assert sorted(reads) == [0, 1] and data.nbytes == 2 * 4 * int(np.prod(SHAPE)) * 2
    data.preload()
    assert sorted(reads) == [0, 1]  # nothing read twice
    small = TrainingCases.from_folder(train_dir, MULTIPLE, cache_bytes=4 * int(np.prod(SHAPE)) * 2)
    with pytest.raises(CwdmError, match=rf"1 of 2 cases do not fit in the memory budget \({CASES[1]}\)"):
        small.preload(threads=1)  # one at a time: the first case fits, the second does not


def test_random_flip_mirrors_the_first_spatial_axis() -> None:
    volumes = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).reshape(2, 4, 3, 2)
    gen = torch.Generator().manual_seed(0)
    outcomes = {torch.equal(random_flip(volumes, gen), volumes.flip(1)) for _ in range(20)}
    assert outcomes == {True, False}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_cases_and_the_batches_stay_there(train_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    data = TrainingCases.from_folder(train_dir, MULTIPLE).to("cuda")
    data.preload()
    assert all(data.levels(i).is_cuda for i in range(len(data)))
    config = TrainingConfig(target="t2f", spec=TINY_SPEC, iterations=2, lr=1e-3, save_every=2, flip=True)
    run = Trainer(config, data, tmp_path / "out", device="cuda")
    seen = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].device.type))
    run.run()
    assert seen == ["cuda", "cuda"] and run.noise_generator is not None
    resumed = Trainer(config, data, tmp_path / "out", device="cuda")
    resumed.load_checkpoint(resumed.latest_checkpoint())
    assert torch.equal(resumed.noise_generator.get_state(), run.noise_generator.get_state())
