"""Faults while sampling: out of GPU memory, and a model that produces NaN.

Out of memory is injected by a stand-in denoiser that wraps the real tiny model and raises
``torch.OutOfMemoryError`` (the class CUDA raises; ``torch.cuda.OutOfMemoryError`` is the same class)
for batches above a size, at a chosen step, or for one oversized case. The batch is retried at half
the size down to 1, with fresh generators, so the outputs equal a clean run at the smaller batch
size byte for byte; a case that does not fit alone fails with DeviceMemoryError, never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cwdm.cases.discovery import discover_cases
from cwdm.config import RunParameters
from cwdm.inference.report import RunReport
from cwdm.inference.synthesizer import Synthesizer
from cwdm.sequences import MRISequence

from .conftest import single_thread, write_good_case

#: Four cases with one target on one grid: one batch of four.
CASES = [f"BraTS-GLI-0070{n}-000" for n in range(1, 5)]
BIG = "BraTS-GLI-00799-000"  # on a larger grid: its own batch


class FlakyMemory(nn.Module):
    """The real denoiser, except that ``fails(batch, call)`` decides when to run out of memory."""

    def __init__(self, inner: nn.Module, fails: Callable[[Tensor, int], bool]) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.fails = fails
        self.calls: list[tuple[int, bool]] = []  # (batch size, ran out of memory)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        failed = self.fails(x, len(self.calls))
        self.calls.append((x.shape[0], failed))
        if failed:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB total capacity)"
            )
        return self.inner(x, t)


@pytest.fixture
def cases_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for seed, case_id in enumerate(CASES, start=20):
        write_good_case(data, case_id, "t2f", seed=seed)
    return data


def _run(
    weights: Path, data: Path, out: Path, batch_size: int, fails: Callable[[Tensor, int], bool] | None = None
) -> tuple[RunReport, FlakyMemory | None]:
    synth = Synthesizer.from_weights(weights, RunParameters(device="cpu", batch_size=batch_size), ["t2f"])
    flaky = None
    if fails is not None:
        flaky = FlakyMemory(synth.models[MRISequence.T2F], fails)
        synth.models[MRISequence.T2F] = flaky  # type: ignore[assignment]
    with single_thread():
        return synth.run(discover_cases(data), out), flaky


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_batch_out_of_memory_is_retried_at_half_size(
    cases_dir: Path, tmp_path: Path, weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clean, _ = _run(weights, cases_dir, tmp_path / "clean", batch_size=2)
    with caplog.at_level(logging.WARNING, logger="cwdm.inference.synthesizer"):
        report, flaky = _run(weights, cases_dir, tmp_path / "out", 4, fails=lambda x, call: x.shape[0] > 2)
    assert flaky is not None
    assert flaky.calls == [(4, True), (2, False), (2, False), (2, False), (2, False)]  # 2 steps per batch
    assert report.exit_code == 0 and [r.status for r in report.cases] == ["written"] * 4
    assert _bytes(tmp_path / "out") == _bytes(tmp_path / "clean")
    assert "out of cpu memory sampling 4 cases together" in caplog.text
    assert "CUDA out of memory. Tried to allocate 20.00 GiB" in caplog.text
    assert "retrying 2 at a time" in caplog.text
    assert clean.exit_code == 0


def test_running_out_mid_sampling_retries_down_to_one_with_fresh_generators(
    cases_dir: Path, tmp_path: Path, weights: Path
) -> None:
    _run(weights, cases_dir, tmp_path / "clean", batch_size=1)
    # batches above 1 fail at their second step, after the generators have drawn noise once
    calls_per_batch: dict[int, int] = {}

    def fails(x: Tensor, call: int) -> bool:
        size = x.shape[0]
        calls_per_batch[size] = calls_per_batch.get(size, 0) + 1
        return size > 1 and calls_per_batch[size] == 2

    report, flaky = _run(weights, cases_dir, tmp_path / "out", 4, fails=fails)
    assert flaky is not None
    assert [size for size, _ in flaky.calls] == [4, 4, 2, 2] + [1] * 8
    assert report.exit_code == 0
    assert _bytes(tmp_path / "out") == _bytes(tmp_path / "clean")


def test_a_case_that_does_not_fit_even_alone_fails_and_the_others_are_written(
    cases_dir: Path, tmp_path: Path, weights: Path
) -> None:
    write_good_case(cases_dir, BIG, "t2f", seed=30, shape=(64, 32, 42))
    clean_dir = tmp_path / "clean-data"
    for case_id in CASES:
        write_good_case(clean_dir, case_id, "t2f", seed=20 + CASES.index(case_id))
    _run(weights, clean_dir, tmp_path / "clean", batch_size=2)  # the same batches: [701, 702], [703, 704]

    report, flaky = _run(weights, cases_dir, tmp_path / "out", 2, fails=lambda x, call: x.shape[2] > 20)
    assert flaky is not None
    results = {r.case_id: r for r in report.cases}
    big = results[BIG]
    assert (big.status, big.error_type) == ("failed", "DeviceMemoryError")
    assert big.error is not None and "out of cpu memory sampling t2f even alone (batch size 1)" in big.error
    assert "CUDA out of memory" in big.error
    assert all(results[c].status == "written" for c in CASES)
    assert report.exit_code == 1
    assert _bytes(tmp_path / "out") == _bytes(tmp_path / "clean")  # nothing for the big case
    assert [size for size, failed in flaky.calls if failed] == [1]  # alone in its own batch (another grid)


class NaNModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.config = inner.config

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x[:, :8], float("nan"))


def test_a_model_that_produces_nan_writes_nothing(cases_dir: Path, tmp_path: Path, weights: Path) -> None:
    synth = Synthesizer.from_weights(weights, RunParameters(device="cpu"), ["t2f"])
    synth.models[MRISequence.T2F] = NaNModel(synth.models[MRISequence.T2F])  # type: ignore[assignment]
    with single_thread():
        report = synth.run(discover_cases(cases_dir), tmp_path / "out")
    assert report.exit_code == 1
    for result in report.cases:
        assert (result.status, result.error_type) == ("failed", "CaseError")
        assert result.error is not None
        assert "the t2f model produced" in result.error and "NaN or infinite voxels; nothing was written" in (
            result.error
        )
    assert list((tmp_path / "out").iterdir()) == []
