"""throughput.py and its use by the Synthesizer: background loading and writing, ordered reporting,
per-case isolation and atomic outputs with threads on, and worker processes (two CPU "devices" here,
standing in for GPUs).

Oracle: the sequential run (background I/O off, one process) of the same cases: the threaded and
sharded runs must write the same files and report the same results in the same order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import Tensor

import cwdm.cases.reader as reader
import cwdm.inference.casework as casework
from cwdm.cases.discovery import discover_cases
from cwdm.config import RunParameters
from cwdm.inference.report import CaseResult, RunReport
from cwdm.inference.synthesizer import Synthesizer
from cwdm.inference.throughput import BackgroundWriter, OrderedRecorder, Throughput, prefetched
from cwdm.method.schedule import NoiseSchedule
from cwdm.runtime import Runtime, worker_devices
from cwdm.sequences import MRISequence

from .conftest import write_case
from .test_pipeline import CopyCondition, _settings

CPU = torch.device("cpu")
SEQUENTIAL = Throughput()
THREADED = Throughput(background_io=True, max_pending_writes=2)
WAIT_S = 20.0  # generous: the machine running the suite may be busy


# -- OrderedRecorder -----------------------------------------------------------------------------------


def test_recorder_keeps_the_order_of_addition_whatever_finishes_first() -> None:
    seen: list[str] = []
    recorder: OrderedRecorder[str] = OrderedRecorder(seen.append)
    first: Future[list[str]] = Future()
    second: Future[list[str]] = Future()
    recorder.add("a")
    recorder.add_future(first)
    recorder.add("b")
    recorder.add_future(second)
    second.set_result(["d"])
    recorder.flush()
    assert seen == ["a"]  # "b" waits behind the pending first future
    first.set_result(["c1", "c2"])
    recorder.flush()
    assert seen == ["a", "c1", "c2", "b", "d"] and len(recorder) == 0


def test_recorder_stops_at_cancelled_work() -> None:
    seen: list[str] = []
    recorder: OrderedRecorder[str] = OrderedRecorder(seen.append)
    done: Future[list[str]] = Future()
    done.set_result(["written"])
    cancelled: Future[list[str]] = Future()
    cancelled.cancel()
    recorder.add_future(done)
    recorder.add_future(cancelled)
    recorder.add("after")
    recorder.flush(wait=True)
    assert seen == ["written"] and len(recorder) == 2


def test_recorder_flush_can_wait() -> None:
    seen: list[str] = []
    recorder: OrderedRecorder[str] = OrderedRecorder(seen.append)
    future: Future[list[str]] = Future()
    recorder.add_future(future)
    threading.Timer(0.05, lambda: future.set_result(["late"])).start()
    recorder.flush(wait=True)
    assert seen == ["late"]


# -- prefetched -------------------------------------------------------------------------------------------


def test_prefetch_prepares_ahead_in_order_on_a_bounded_queue() -> None:
    started: list[int] = []
    threads: set[str] = set()
    moved = threading.Condition()

    def prepare(batch: int) -> int:
        with moved:
            started.append(batch)
            threads.add(threading.current_thread().name)
            moved.notify_all()
        return batch * 10

    stream = prefetched(range(10), prepare, depth=1)
    assert next(stream) == (0, 0)
    with moved:  # batch 1 waits in the queue, batch 2 is prepared and blocks on the full queue
        assert moved.wait_for(lambda: len(started) == 3, timeout=WAIT_S)
    time.sleep(0.2)
    assert started == [0, 1, 2]  # bounded: nothing further
    assert [item for item in stream] == [(b, b * 10) for b in range(1, 10)]
    assert threads == {"cwdm-prefetch"}


def test_prefetch_reraises_and_stops_early() -> None:
    def prepare(batch: int) -> int:
        if batch == 2:
            raise KeyError("bug in prepare")
        return batch

    stream = prefetched(range(5), prepare)
    assert [next(stream), next(stream)] == [(0, 0), (1, 1)]
    with pytest.raises(KeyError, match="bug in prepare"):
        next(stream)
    before = {t.name for t in threading.enumerate()}
    stream = prefetched(range(1000), lambda b: b)
    next(stream)
    stream.close()  # stops the thread, which was blocked on the full queue
    assert "cwdm-prefetch" not in {t.name for t in threading.enumerate()} - before


def test_prefetch_without_background_prepares_on_demand_in_the_caller() -> None:
    calls: list[tuple[int, str]] = []
    stream = prefetched(
        range(3), lambda b: calls.append((b, threading.current_thread().name)), background=False
    )
    next(stream)
    assert calls == [(0, threading.current_thread().name)]


# -- BackgroundWriter ---------------------------------------------------------------------------------------


def test_writer_bounds_the_pending_jobs_and_finishes_them_on_exit() -> None:
    release = threading.Event()
    done: list[int] = []

    def job(value: int) -> int:
        release.wait(WAIT_S)
        done.append(value)
        return value

    with BackgroundWriter(max_pending=2) as writer:
        futures = [writer.submit(job, 0), writer.submit(job, 1)]
        blocked = threading.Thread(target=lambda: futures.append(writer.submit(job, 2)))
        blocked.start()
        blocked.join(0.3)
        assert blocked.is_alive()  # the third submission waits for a free slot
        release.set()
        blocked.join(WAIT_S)
    assert done == [0, 1, 2] and [f.result() for f in futures] == [0, 1, 2]


def test_writer_finishes_every_job_when_the_run_fails() -> None:
    release = threading.Event()
    done: list[int] = []

    def job(value: int) -> None:
        release.wait(WAIT_S)
        done.append(value)

    with pytest.raises(RuntimeError, match="sampling failed"), BackgroundWriter(max_pending=4) as writer:
        futures = [writer.submit(job, v) for v in range(3)]
        threading.Timer(0.2, release.set).start()
        raise RuntimeError("sampling failed")
    assert done == [0, 1, 2] and all(f.done() and not f.cancelled() for f in futures)


# -- the pipeline with background I/O ------------------------------------------------------------------------


def _run(data: Path, out: Path, throughput: Throughput, models: dict, **settings: object) -> tuple:
    synth = Synthesizer(
        models, _settings(**settings), Runtime(CPU, "fp32"), NoiseSchedule.linear(1000), throughput=throughput
    )
    order: list[str] = []
    report = synth.run(discover_cases(data), out, on_case=lambda r: order.append(r.case_id))
    return report, order


def _mixed_cases(data: Path) -> None:
    """Good cases of two targets and shapes, plus a corrupt one and a complete (ignored) one."""
    for number, missing in [(1, "t2f"), (2, "t1n"), (3, "t2f"), (4, "t2f"), (6, "t2f"), (7, "t1n")]:
        write_case(data, f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    write_case(data, "BraTS-GLI-00008-000", missing="t2f", shape=(20, 20, 14), seed=8)
    corrupt = (
        write_case(data, "BraTS-GLI-00005-000", missing="t2f", seed=5) / "BraTS-GLI-00005-000-t1c.nii.gz"
    )
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    write_case(data, "BraTS-GLI-00009-000", missing=None)


def test_background_io_writes_the_same_files_and_reports_in_the_same_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _mixed_cases(data)
    models = {MRISequence.T2F: CopyCondition(1), MRISequence.T1N: CopyCondition(2)}
    sequential, seq_order = _run(data, tmp_path / "seq", SEQUENTIAL, models, batch_size=2)
    threaded, thr_order = _run(data, tmp_path / "thr", THREADED, models, batch_size=2)
    assert thr_order == seq_order and len(seq_order) == 9
    timings = {"elapsed_s": 0, "output": None, "stages_s": None, "slowest_stage": None}
    assert [r.to_record() | timings for r in threaded.cases] == [
        r.to_record() | timings for r in sequential.cases
    ]
    assert (threaded.count("written"), threaded.count("failed"), threaded.count("ignored")) == (7, 1, 1)
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "thr").iterdir()) and len(names) == 7
    for name in names:
        np.testing.assert_array_equal(
            nib.load(tmp_path / "thr" / name).get_fdata(), nib.load(tmp_path / "seq" / name).get_fdata()
        )


def test_reads_and_writes_happen_on_the_background_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    threads: dict[str, set[str]] = {"read": set(), "write": set()}

    def spy(kind: str, function):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            threads[kind].add(threading.current_thread().name)
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(reader, "read_volume", spy("read", reader.read_volume))
    monkeypatch.setattr(casework, "write_volume_atomic", spy("write", casework.write_volume_atomic))
    report, _ = _run(data, tmp_path / "out", THREADED, {MRISequence.T2F: CopyCondition()})
    assert report.exit_code == 0
    assert threads["write"] and all(name.startswith("cwdm-writer") for name in threads["write"])
    main = threading.current_thread().name
    # the skip check of finished outputs reads on the main thread; case inputs on the prefetch thread's
    # pool of sequence readers (or the prefetch thread itself with one worker)
    case_reads = threads["read"] - {main}
    assert case_reads and all(name.startswith(("cwdm-prefetch", "cwdm-read")) for name in case_reads)


class _WaitFor(CopyCondition):
    """Blocks its first forward of each batch until ``condition()`` holds (or fails after WAIT_S)."""

    def __init__(self, conditions: dict[int, Callable[[], bool]], wait_s: float = WAIT_S) -> None:
        super().__init__(0)
        self.conditions = conditions
        self.wait_s = wait_s
        self.batches = 0
        self.timed_out: list[int] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if len(self.seen) % 3 == 0:  # first of the three steps of a batch
            self.batches += 1
            condition = self.conditions.get(self.batches)
            deadline = time.monotonic() + self.wait_s
            while condition is not None and not condition():
                if time.monotonic() > deadline:
                    self.timed_out.append(self.batches)
                    break
                time.sleep(0.01)
        return super().forward(x, t)


def test_the_next_case_is_read_and_the_last_one_written_while_sampling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    read: set[str] = set()
    original = reader.read_volume

    def spy(path: Path):  # type: ignore[no-untyped-def]
        volume = original(path)
        read.add(Path(path).name.split("-t")[0])
        return volume

    monkeypatch.setattr(reader, "read_volume", spy)
    model = _WaitFor(
        {
            1: lambda: "BraTS-GLI-00002-000" in read,  # case 2 is read while case 1 samples
            2: lambda: (out / "BraTS-GLI-00001-000-t2f.nii.gz").exists(),  # case 1 written meanwhile
        }
    )
    report, _ = _run(data, out, THREADED, {MRISequence.T2F: model})
    assert report.exit_code == 0 and model.timed_out == []
    sequential = _WaitFor({1: lambda: "BraTS-GLI-00002-000" in read}, wait_s=1.0)
    read.clear()
    _run(data, tmp_path / "seq", SEQUENTIAL, {MRISequence.T2F: sequential})
    assert sequential.timed_out == [1]  # the oracle: without prefetching, case 2 is not read meanwhile


class _StopAtBatch(CopyCondition):
    """Raises KeyboardInterrupt (as a signal handler would) on the first step of batch ``stop``."""

    def __init__(self, stop: int) -> None:
        super().__init__(0)
        self.stop = stop

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if len(self.seen) == 3 * (self.stop - 1):
            raise KeyboardInterrupt
        return super().forward(x, t)


def test_a_stopped_run_records_the_cases_already_written(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    seen: list[CaseResult] = []
    synth = Synthesizer(
        {MRISequence.T2F: _StopAtBatch(3)},
        _settings(),
        Runtime(CPU, "fp32"),
        NoiseSchedule.linear(1000),
        throughput=THREADED,
    )
    with pytest.raises(KeyboardInterrupt):
        synth.run(discover_cases(data), out, on_case=seen.append)
    assert [(r.case_id, r.status) for r in seen] == [
        ("BraTS-GLI-00001-000", "written"),
        ("BraTS-GLI-00002-000", "written"),
    ]
    assert sorted(p.name for p in out.iterdir()) == [f"BraTS-GLI-0000{n}-000-t2f.nii.gz" for n in (1, 2)]
    assert threading.active_count() == 1 or all(
        not t.name.startswith(("cwdm-prefetch", "cwdm-writer")) for t in threading.enumerate()
    )


def test_failed_writes_stay_isolated_and_leave_no_partial_file(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    (out / "BraTS-GLI-00002-000-t2f.nii.gz").mkdir(parents=True)  # cannot be replaced by a file
    report, order = _run(data, out, THREADED, {MRISequence.T2F: CopyCondition()})
    assert [r.status for r in report.cases] == ["written", "failed", "written"]
    assert order == [f"BraTS-GLI-0000{n}-000" for n in (1, 2, 3)]
    assert "cannot write the output" in report.cases[1].error
    assert sorted(p.name for p in out.iterdir()) == [f"BraTS-GLI-0000{n}-000-t2f.nii.gz" for n in (1, 2, 3)]
    assert (out / "BraTS-GLI-00002-000-t2f.nii.gz").is_dir()


def test_default_throughput_is_sequential_on_a_cpu() -> None:
    assert Throughput.for_devices([CPU]) == Throughput(max_pending_writes=4)
    gpu = Throughput.for_devices([torch.device("cuda", 0)], batch_size=4)
    assert gpu.background_io and not gpu.sharded and gpu.max_pending_writes == 8
    two = Throughput.for_devices([torch.device("cuda", 0), torch.device("cuda", 1)])
    assert two.sharded and two.background_io
    assert two.describe() == "one worker process per device (cuda:0, cuda:1)"
    assert gpu.describe() == "read and written on background threads"
    assert Throughput.for_devices([CPU]).describe() == "sequential"


def test_every_visible_gpu_gets_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert worker_devices(torch.device("cuda", 0)) == tuple(torch.device("cuda", i) for i in range(3))
    assert worker_devices(CPU) == (CPU,)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert worker_devices(torch.device("cuda", 0)) == (torch.device("cuda", 0),)


# -- worker processes (two CPU workers standing in for two GPUs) ------------------------------------------


def test_sharded_run_matches_the_single_process_run(
    tmp_path: Path, tiny_weights: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    for number, missing in [(1, "t2w"), (2, "t2f"), (3, "t2w"), (4, "t2w"), (5, "t1c")]:
        write_case(data, f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    corrupt = (
        write_case(data, "BraTS-GLI-00006-000", missing="t2w", seed=6) / "BraTS-GLI-00006-000-t1n.nii.gz"
    )
    corrupt.write_bytes(b"not a volume")
    cases = discover_cases(data)
    params = RunParameters(device="cpu", sampling_steps=2, seed=3)
    single = Synthesizer.from_weights(tiny_weights, params, ["t2w", "t2f", "t1c"], throughput=SEQUENTIAL)
    expected_order: list[str] = []
    expected = single.run(cases, tmp_path / "single", on_case=lambda r: expected_order.append(r.case_id))

    sharded = Throughput(devices=(CPU, CPU))
    synth = Synthesizer.from_weights(tiny_weights, params, ["t2w", "t2f", "t1c"], throughput=sharded)
    caplog.clear()
    order: list[str] = []
    steps: list[tuple[tuple[str, ...], int, int]] = []
    with caplog.at_level(logging.INFO):
        report = synth.run(
            cases,
            tmp_path / "sharded",
            on_case=lambda r: order.append(r.case_id),
            on_step=lambda *a: steps.append(a),
        )

    assert [r.status for r in report.cases] == [r.status for r in expected.cases]
    assert report.count("written") == 5 and report.cases[5].error_type == "VolumeReadError"
    assert order == expected_order  # the sequential run's order: t1c, t2w, t2f batches
    assert order == [c.case_id for t in ("t1c", "t2w", "t2f") for c in cases if c.case_id in _ids(report, t)]
    assert len(steps) == 2 * 5  # every written case's two steps reached the parent
    assert "sharing 6 batches over 2 workers: cpu, cpu" in caplog.text
    loaded = [r for r in caplog.records if r.getMessage().startswith("loaded the t2w model")]
    assert len(loaded) == 2 and {r.processName for r in loaded} == {"cwdm-worker-cpu"}  # workers' logs
    for result in expected.cases:
        if result.status == "written":
            a = nib.load(result.output).get_fdata()
            b = nib.load(tmp_path / "sharded" / result.output.name).get_fdata()
            np.testing.assert_allclose(b, a, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )


def _ids(report: RunReport, target: str) -> set[str]:
    return {r.case_id for r in report.cases if r.target is not None and str(r.target) == target}


class ExitInForward(CopyCondition):
    """A network whose process dies in the middle of sampling (as after a fatal GPU error)."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        os._exit(3)


def test_cases_of_a_dead_worker_fail_and_the_run_still_reports(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    write_case(data, "BraTS-GLI-00004-000", missing=None)
    synth = Synthesizer(
        {MRISequence.T2F: ExitInForward()},
        _settings(),
        Runtime(CPU, "fp32"),
        NoiseSchedule.linear(1000),
        throughput=Throughput(devices=(CPU, CPU)),
    )
    seen: list[CaseResult] = []
    report = synth.run(discover_cases(data), tmp_path / "out", on_case=seen.append)
    assert [r.status for r in report.cases] == ["failed", "failed", "failed", "ignored"]
    for result in report.cases[:3]:
        assert result.error_type == "WorkerError" and "exited with code 3" in result.error
    assert [r.case_id for r in seen] == ["BraTS-GLI-00004-000"] + [
        f"BraTS-GLI-0000{n}-000" for n in (1, 2, 3)
    ]
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("workers", [1, 3])
def test_the_sequences_of_a_case_are_read_concurrently_with_several_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    data = tmp_path / "data"
    write_case(data, "BraTS-GLI-00001-000", missing="t2f", seed=1)
    inside: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3, timeout=WAIT_S)  # three readers meet only if they run together
    original = reader.read_volume

    def read(path: Path):  # type: ignore[no-untyped-def]
        with lock:
            inside.append(threading.get_ident())
        if workers > 1:
            barrier.wait()
        return original(path)

    monkeypatch.setattr(reader, "read_volume", read)
    flow = Throughput(prepare_workers=workers)
    report, _ = _run(data, tmp_path / "out", flow, {MRISequence.T2F: CopyCondition()})
    assert report.exit_code == 0
    assert len(set(inside)) == (3 if workers > 1 else 1)


def test_stage_times_are_reported_and_the_log_names_the_slowest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_case(data, "BraTS-GLI-00001-000", missing="t2f", seed=1)
    original = casework.write_volume_atomic

    def slow_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(casework, "write_volume_atomic", slow_write)
    with caplog.at_level(logging.INFO, logger="cwdm"):
        report, _ = _run(data, tmp_path / "out", SEQUENTIAL, {MRISequence.T2F: CopyCondition()})
    record = report.to_dict()["cases"][0]
    assert list(record["stages_s"]) == ["read", "preprocess", "network", "postprocess", "write"]
    assert record["stages_s"]["write"] >= 0.3 and record["slowest_stage"] == "write"
    assert all(seconds >= 0 for seconds in record["stages_s"].values())
    assert sum(record["stages_s"].values()) <= record["elapsed_s"] + 0.01  # sequential: no overlap
    assert "slowest stage: write" in caplog.text
