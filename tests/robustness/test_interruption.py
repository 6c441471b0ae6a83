"""SIGINT and SIGTERM in the middle of a case.

End to end: ``cwdm infer`` and ``project/mlcube.py`` run in a subprocess; the signal is sent while the
second case samples (after the first case's "written" log line; the cases take seconds each). The
process stops cleanly with 128 + the signal number, the output folder holds complete outputs only
(byte-identical to a clean run's) and no temporary file, the report and the summary table name the
unfinished cases, and a rerun completes the rest, identical to the clean run.

In process: a stop arriving inside the sampling loop, inside an output's write (the temporary file
goes) and as a plain KeyboardInterrupt, through the Python API.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cwdm.cases.volumes
from cwdm.cases.discovery import discover_cases
from cwdm.config import RunParameters
from cwdm.errors import Interrupted
from cwdm.inference.synthesizer import Synthesizer
from cwdm.signals import stop_on_signals

from .conftest import (
    ENTRY_POINT,
    GOOD,
    good_names,
    run_infer,
    run_mlcube,
    single_thread,
    snapshot,
)

#: Enough sampling steps for a case to take seconds, so that a signal lands in the middle of one.
STEPS = 24
ORDER = ["BraTS-MEN-00102-000", "BraTS-PED-00103-000", "BraTS-GLI-00101-000"]  # t1n, t2w, t2f: run order


@pytest.fixture(scope="module")
def slow_clean(pristine: Path, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A clean run of the good cases at :data:`STEPS` steps."""
    out = tmp_path_factory.mktemp("robust-slow-clean") / "out"
    run = run_infer(pristine, out, weights, "--steps", str(STEPS))
    assert run.code == 0, run.stderr
    return run.outputs()


def _start(interface: str, data: Path, out: Path, weights: Path, report: Path) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "3000"}
    env["TMPDIR"] = env["HOME"] = str(report.parent)
    if interface == "cwdm infer":
        command = [sys.executable, "-m", "cwdm.cli", "infer", str(data), str(out), "--weights", str(weights)]
        command += ["--device", "cpu", "--steps", str(STEPS), "--report", str(report)]
    else:
        parameters = report.parent / "parameters.yaml"
        parameters.write_text(f"sampling_steps: {STEPS}\ndevice: cpu\n")
        command = [sys.executable, str(ENTRY_POINT), "infer", f"--data_path={data}"]
        command += [f"--parameters_file={parameters}", f"--weights={weights}", f"--output_path={out}"]
        command += [f"--report_path={report}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _interrupt_after_first_case(process: subprocess.Popen, sig: signal.Signals) -> tuple[str, str]:
    """Send ``sig`` while the second case samples; return the process's stdout and stderr."""
    lines: queue.Queue[str | None] = queue.Queue()
    stdout: list[str] = []

    def pump_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    def pump_stdout() -> None:
        assert process.stdout is not None
        stdout.extend(process.stdout)

    readers = [threading.Thread(target=pump, daemon=True) for pump in (pump_stderr, pump_stdout)]
    for reader in readers:
        reader.start()
    stderr: list[str] = []
    while (line := lines.get(timeout=300)) is not None:
        stderr.append(line)
        if f"{ORDER[0]} (t1n): written" in line:
            break
    else:
        pytest.fail("the run ended before the signal:\n" + "".join(stderr))
    time.sleep(0.5)  # the second case is reading its volumes or sampling now
    process.send_signal(sig)
    process.wait(timeout=300)
    for reader in readers:
        reader.join(timeout=60)
    while (line := lines.get(timeout=5)) is not None:
        stderr.append(line)
    return "".join(stdout), "".join(stderr)


@pytest.mark.parametrize(
    ("interface", "sig"),
    [
        ("cwdm infer", signal.SIGINT),
        ("mlcube.py", signal.SIGTERM),
        pytest.param("cwdm infer", signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param("mlcube.py", signal.SIGINT, marks=pytest.mark.slow),
    ],
)
def test_a_signal_mid_case_stops_cleanly_and_a_rerun_completes(
    interface: str,
    sig: signal.Signals,
    data: Path,
    tmp_path: Path,
    weights: Path,
    slow_clean: dict[str, bytes],
) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    before = snapshot(data)
    process = _start(interface, data, out, weights, report)
    stdout, stderr = _interrupt_after_first_case(process, sig)

    assert process.returncode == 128 + sig, stderr
    first = f"{ORDER[0]}-t1n.nii.gz"
    assert sorted(os.listdir(out)) == [first], stderr  # complete outputs only, no temporary file
    assert (out / first).read_bytes() == slow_clean[first]
    record = json.loads(report.read_text())
    assert record["interrupted_by"] == sig.name and record["exit_code"] == 128 + sig
    statuses = {case["case_id"]: case["status"] for case in record["cases"]}
    assert statuses == {ORDER[0]: "written", ORDER[1]: "interrupted", ORDER[2]: "interrupted"}
    unfinished = next(case for case in record["cases"] if case["case_id"] == ORDER[1])
    assert unfinished["error"] == f"not finished: the run was stopped by {sig.name}; a rerun does it"
    assert record["counts"]["interrupted"] == 2
    table = stdout if interface == "cwdm infer" else stderr
    assert any(ORDER[1] in line and "interrupted" in line for line in table.splitlines()), table
    assert "1 written, 0 skipped, 0 failed, 0 ignored, 2 interrupted" in table
    assert f"stopped by {sig.name}" in stderr
    assert snapshot(data) == before

    if interface == "cwdm infer":
        rerun = run_infer(data, out, weights, "--steps", str(STEPS), report=report)
    else:
        rerun = run_mlcube(data, out, weights, tmp_path / "parameters.yaml", report)
    assert rerun.code == 0, rerun.stderr
    assert [rerun.case(c)["status"] for c in ORDER] == ["skipped", "written", "written"]
    assert rerun.outputs() == slow_clean
    assert rerun.names() == good_names()


# -- in process --------------------------------------------------------------------------------------------


def test_stop_on_signals_raises_interrupted_and_restores_the_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as caught, stop_on_signals():
        assert signal.getsignal(signal.SIGTERM) not in before
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
    assert caught.value.signal_name == "SIGTERM" and caught.value.report is None
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert isinstance(caught.value, KeyboardInterrupt)  # so no `except Exception` swallows it


def test_stop_on_signals_outside_the_main_thread_changes_nothing() -> None:
    seen: list[object] = []

    def body() -> None:
        with stop_on_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


def _synth(weights: Path) -> Synthesizer:
    return Synthesizer.from_weights(weights, RunParameters(device="cpu"), ["t1n", "t2w", "t2f"])


@pytest.mark.parametrize("where", ["sampling", "writing", "keyboard"])
def test_a_stop_inside_the_pipeline_leaves_complete_outputs_and_a_partial_report(
    where: str,
    data: Path,
    tmp_path: Path,
    weights: Path,
    clean_outputs: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    stopped: list[str] = []

    def on_step(ids: tuple[str, ...], done: int, total: int) -> None:
        if where == "sampling" and ids == (ORDER[1],) and done == 1:
            stopped.append(f"sampling {ids[0]}")
            raise Interrupted(signal.SIGTERM)

    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if where == "writing" and ORDER[1] in os.readlink(f"/proc/self/fd/{fd}"):
            stopped.append(os.readlink(f"/proc/self/fd/{fd}"))
            raise Interrupted(signal.SIGTERM)  # the temporary file exists, complete, not yet renamed

    def on_case(result: object) -> None:
        if where == "keyboard" and getattr(result, "case_id", None) == ORDER[0]:
            stopped.append("after the first case")
            raise KeyboardInterrupt  # Ctrl-C without the command's handlers: the default exception

    monkeypatch.setattr(cwdm.cases.volumes.os, "fsync", fsync)
    with single_thread(), pytest.raises(Interrupted) as caught:
        _synth(weights).run(discover_cases(data), out, on_case=on_case, on_step=on_step)

    assert stopped
    report = caught.value.report
    signum = signal.SIGINT if where == "keyboard" else signal.SIGTERM
    assert caught.value.signum == signum and report.interrupted_by == signum
    assert report.exit_code == 128 + signum
    assert [report.cases[list(GOOD).index(c)].status for c in ORDER] == [
        "written",
        "interrupted",
        "interrupted",
    ]
    assert sorted(os.listdir(out)) == [f"{ORDER[0]}-t1n.nii.gz"]  # no temporary file of the second case
    assert (out / f"{ORDER[0]}-t1n.nii.gz").read_bytes() == clean_outputs[f"{ORDER[0]}-t1n.nii.gz"]
    assert report.to_dict()["interrupted_by"] == signal.Signals(signum).name
    assert np.isfinite(report.elapsed_s) and torch.get_num_threads() >= 1
