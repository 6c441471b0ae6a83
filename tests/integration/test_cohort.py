"""Cohort scale with real processes: parts of a split run side by side on one output folder, a part
killed with SIGKILL and rerun, two processes on the same part, and ``cwdm report merge``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import write_case

CASES = {
    "BraTS-GLI-00001-000": "t2f",
    "BraTS-GLI-00002-000": "t1n",
    "BraTS-MEN-00003-000": "t2w",
    "BraTS-PED-00004-000": "t1c",
    "BraTS-SSA-00005-000": "t2f",
    "BraTS-MET-00006-000": "t1n",
}
CWDM = [sys.executable, "-c", "import sys; from cwdm.cli import app; sys.exit(app())"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "3000"}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for seed, (case_id, missing) in enumerate(CASES.items(), start=1):
        write_case(tmp_path / "data", case_id, missing=missing, seed=seed, shape=(16, 16, 16))
    return tmp_path / "data"


def _start(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CWDM, *map(str, args)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _infer(data: Path, out: Path, weights: Path, report: Path, *extra: str | Path) -> subprocess.Popen:
    return _start("infer", data, out, "--weights", weights, "--device", "cpu", "--report", report, *extra)


def _finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _merge(tmp_path: Path, *reports: Path) -> tuple[int, dict, str]:
    merged = tmp_path / "merged.json"
    code, output = _finish(_start("report", "merge", *reports, "--out", merged))
    return code, json.loads(merged.read_text()), output


@pytest.fixture
def single(data: Path, tmp_path: Path, tiny_weights: Path) -> tuple[dict[str, bytes], dict]:
    code, output = _finish(_infer(data, tmp_path / "single", tiny_weights, tmp_path / "single.json"))
    assert code == 0, output
    return _files(tmp_path / "single"), json.loads((tmp_path / "single.json").read_text())


def test_three_parts_side_by_side_equal_one_run(
    data: Path, tmp_path: Path, tiny_weights: Path, single: tuple[dict[str, bytes], dict]
) -> None:
    out = tmp_path / "out"
    reports = [tmp_path / f"part{i}.json" for i in range(3)]
    running = [
        _infer(data, out, tiny_weights, reports[i], "--num-parts", "3", "--part-id", str(i)) for i in range(3)
    ]
    for process in running:
        code, output = _finish(process)
        assert code == 0, output
    outputs, single_report = single
    assert _files(out) == outputs  # byte for byte, nothing else in the folder (no claim left)
    parts = [json.loads(r.read_text()) for r in reports]
    assert sorted(c["case_id"] for p in parts for c in p["cases"]) == sorted(CASES)  # disjoint, complete
    assert all(p["part"]["cases_total"] == len(CASES) for p in parts)

    code, merged, _ = _merge(tmp_path, *reports)
    assert code == 0 and merged["missing_parts"] == [] and merged["written_twice"] == {}
    assert merged["counts"] == single_report["counts"]
    statuses = {c["case_id"]: c["status"] for c in merged["cases"]}
    assert statuses == {c["case_id"]: c["status"] for c in single_report["cases"]}

    code, merged, output = _merge(tmp_path, reports[0], reports[2])  # a part's report is missing
    assert code == 1 and merged["missing_parts"] == [1] and "missing parts" in output


def test_a_killed_part_is_rerun_and_its_stale_claims_taken_over(
    data: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    out, report = tmp_path / "out", tmp_path / "part0.json"
    args = ("--num-parts", "1", "--part-id", "0", "--steps", "20", "--sampler", "ddim")
    process = _infer(data, out, tiny_weights, report, *args)
    deadline = time.monotonic() + 120
    while not list(out.glob(".cwdm-*.lock")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = sorted(p.name for p in out.glob(".cwdm-*.lock"))
    assert left, "the part was killed before it claimed a case"
    assert not report.exists()  # a killed process writes no report: merge calls the part missing

    code, output = _finish(_infer(data, out, tiny_weights, report, *args))
    assert code == 0, output
    record = json.loads(report.read_text())
    taken = record["claims_taken_over"]
    assert sorted(f".cwdm-{name}.lock" for name in taken) == [
        name for name in left if name[len(".cwdm-") : -len(".lock")] in taken
    ]
    assert taken and all(holder.endswith(f":{process.pid}") for holder in taken.values())
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}-{t}.nii.gz" for c, t in CASES.items())


def test_two_processes_on_one_part_never_write_a_case_twice(
    data: Path, tmp_path: Path, tiny_weights: Path, single: tuple[dict[str, bytes], dict]
) -> None:
    out = tmp_path / "out"
    reports = [tmp_path / "a.json", tmp_path / "b.json"]
    running = [_infer(data, out, tiny_weights, r, "--num-parts", "2", "--part-id", "0") for r in reports]
    results = [_finish(p) for p in running]
    records = [json.loads(r.read_text()) for r in reports]
    writers: dict[str, list[str]] = {}
    for record in records:
        for case in record["cases"]:
            if case["status"] == "written":
                writers.setdefault(case["case_id"], []).append(case["writer"])
    part0 = {c["case_id"] for c in records[0]["cases"]}
    assert set(writers) == part0 and all(len(w) == 1 for w in writers.values()), writers
    assert {w[0] for w in writers.values()} <= {records[0]["process"], records[1]["process"]}
    outputs, _ = single
    assert _files(out) == {name: outputs[name] for name in _files(out)}
    # Whoever found a case claimed says by whom, and the merged report is whole for part 0.
    for (code, output), record in zip(results, records, strict=True):
        claimed = [c for c in record["cases"] if c["status"] == "claimed"]
        assert code == (1 if claimed else 0), output
        assert all("claimed by" in c["error"] and c["writer"] for c in claimed)
    code, merged, _ = _merge(tmp_path, *reports)
    assert merged["written_twice"] == {} and merged["missing_parts"] == [1] and code == 1
