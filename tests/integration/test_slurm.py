"""examples/slurm under a real Slurm: a one-machine cluster (munged with a temporary key, slurmctld and
slurmd, all in a temporary folder, on free ports) runs the shipped array script over the ten example
cases with the shipped merge step as a dependent job; one array task is cancelled mid-run with scancel,
the merge reports it unfinished, the task is resubmitted alone, and a second merge then gives the report
and the outputs of one plain ``cwdm infer`` run: the same files, headers and provenance, the voxels equal
to float rounding. Files whose bytes differ nonetheless are named in a warning with how they differ
(here, about once in 20 runs: the resubmitted task's first file, a few bytes of its isal gzip stream,
the NIfTI inside identical; docs/USAGE.md, "Reproducibility").

Marker ``slurm`` (left out of the default run; ``.ci/run`` installs slurm-wlm and munge and runs
``pytest -m slurm``). Skipped, with the reason, where Slurm is not installed, where the test does not
run as root (slurmd starts jobs as their user), or where the daemons do not come up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.integration import output_diff

from cwdm.inference.split import part_of

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
ARRAY = ROOT / "examples" / "slurm" / "cwdm-infer-array.sbatch"
MERGE = ROOT / "examples" / "slurm" / "cwdm-merge.sbatch"
DATA = ROOT / "examples" / "pseudo_validation"
WEIGHTS = ROOT / "weights" / "demo"
PARTS = 3
#: The node's size as slurm.conf declares it (slurmd takes it as given: SlurmdParameters=config_overrides);
#: the three tasks and a merge fit at once. Each job overrides the script's GPU, CPU and memory requests.
NODE_CPUS, NODE_MEMORY_MB = 4, 8000
CPU_ONLY = ["--gres=none", "--cpus-per-task=1", "--mem=1G"]
#: `cwdm infer` options after the script's name: one sampling step keeps a case to seconds on a CPU.
INFER_ARGS = ["--sampling-steps", "1", "--device", "cpu"]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "sinfo")
TIMEOUT_S = 900.0
#: Voxels of an output of the array and of the one run may differ by float rounding at most (outputs lie
#: in [0, 1]). Measured on BraTS-GLI-00001-000 (demo weights, 1 step, CPU): sampled in a batch of two
#: instead of alone, at most 7.7e-7 apart; with seed 43 instead of 42, 0.20; with 2 steps instead of 1, 0.13.
VOXEL_TOLERANCE = 1e-4


@dataclass
class Cluster:
    """A running one-machine Slurm: the environment its client commands need."""

    folder: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            list(args), env=env or self.env, cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout.strip()

    def state(self, job: str) -> str:
        """``JobState`` of a job or array task (``123`` or ``123_4``), as scontrol reports it."""
        text = self.run("scontrol", "-o", "show", "job", job)
        return re.search(r"\bJobState=(\S+)", text).group(1)

    def wait(self, job: str, states: set[str], timeout_s: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state(job)
            if state in states:
                return state
            time.sleep(0.5)
        pytest.fail(f"job {job} is {self.state(job)} after {timeout_s:.0f} s; expected one of {states}")

    def log(self, name: str) -> str:
        path = self.folder / "log" / name
        return path.read_text(errors="replace")[-3000:] if path.is_file() else f"({name}: none)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], env: dict[str, str], what: str, folder: Path) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        logs = "".join(p.read_text(errors="replace")[-1500:] for p in sorted((folder / "log").glob("*.log")))
        pytest.skip(f"{what} did not start (exit {done.returncode}): {done.stderr.strip()} {logs}")


def _stop(folder: Path) -> None:
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
        path = folder / pid_file
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the one-machine Slurm needs root: slurmd starts each job as the user who submitted it")
    cwdm = Path(sys.executable).with_name("cwdm")
    if not cwdm.is_file():
        pytest.skip(f"no cwdm command beside {sys.executable} (pip install -e .): the jobs run it from PATH")
    # munged wants a short socket path (AF_UNIX) in a folder every user may traverse, hence /tmp.
    folder = Path(tempfile.mkdtemp(prefix="cwdm-slurm-", dir="/tmp"))
    folder.chmod(0o755)
    for name in ("log", "state", "spool", "key"):
        (folder / name).mkdir()
    (folder / "key").chmod(0o700)
    key = folder / "key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = folder / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=cwdmtest",
                "SlurmctldHost=localhost(127.0.0.1)",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={socket_path}",
                f"StateSaveLocation={folder / 'state'}",
                f"SlurmdSpoolDir={folder / 'spool'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
                f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "JobCompType=jobcomp/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=1",
                "SlurmdParameters=config_overrides",
                "MpiDefault=none",
                "ReturnToService=2",
                "KillWait=30",
                "MinJobAge=3600",
                f"NodeName=cwdmnode NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} "
                f"RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
                "PartitionName=test Nodes=cwdmnode Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        _start(
            [
                "munged",
                f"--key-file={key}",
                f"--socket={socket_path}",
                f"--pid-file={folder / 'munged.pid'}",
                f"--log-file={folder / 'log' / 'munged.log'}",
                f"--seed-file={folder / 'key' / 'munged.seed'}",
            ],
            env,
            "munged",
            folder,
        )
        _start(["slurmctld", "-f", str(conf), "-c"], env, "slurmctld", folder)
        _start(["slurmd", "-f", str(conf), "-N", "cwdmnode"], env, "slurmd", folder)
        cluster = Cluster(folder, env)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"the Slurm node is '{state}', not idle, after 60 s: {cluster.log('slurmd.log')}")
        yield cluster
    finally:
        _stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _statuses(report: dict) -> dict[str, str]:
    return {case["case_id"]: case["status"] for case in report["cases"]}


def test_the_array_script_under_slurm_equals_one_run_and_a_cancelled_task_resumes(
    cluster: Cluster, tmp_path: Path
) -> None:
    before = _checksums(DATA)
    cases = sorted(p.name for p in DATA.iterdir() if p.is_dir())
    by_part = {part: [c for c in cases if part_of(c, PARTS) == part] for part in range(PARTS)}
    victim = max(by_part, key=lambda part: len(by_part[part]))
    assert len(by_part[victim]) >= 2  # it has a case written and one to go when it is cancelled

    out, logs = tmp_path / "synth", tmp_path / "logs"
    logs.mkdir()
    env = cluster.env | {
        "DATA": str(DATA),
        "OUT": str(out),
        "WEIGHTS": str(WEIGHTS),
        "PARTS": str(PARTS),
        # The job inherits the submitting environment: PATH finds cwdm beside this interpreter.
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    # The reference: one plain run of the same settings, side by side with the array.
    single = subprocess.Popen(
        [str(Path(sys.executable).with_name("cwdm")), "infer", str(DATA), str(tmp_path / "single")]
        + ["--weights", str(WEIGHTS), "--report", str(tmp_path / "single.json"), *INFER_ARGS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def sbatch(*args: str) -> str:
        return cluster.run("sbatch", "--parsable", *args, cwd=logs, env=env).split(";")[0]

    array = sbatch(f"--array=0-{PARTS - 1}", *CPU_ONLY, str(ARRAY), *INFER_ARGS)
    first_merge = sbatch(f"--dependency=afterany:{array}", str(MERGE))

    # Cancel the busiest task once it has written a case and is working on the next.
    task = f"{array}_{victim}"
    deadline = time.monotonic() + TIMEOUT_S
    while not any((out / f"{c}").exists() for c in _outputs_of(by_part[victim], out)):
        assert time.monotonic() < deadline, f"task {task} wrote nothing: {(logs / f'cwdm-infer-{task}.log')}"
        assert cluster.state(task) in ("PENDING", "RUNNING"), cluster.state(task)
        time.sleep(0.2)
    cluster.run("scancel", task)
    assert cluster.wait(task, {"CANCELLED", "COMPLETED", "FAILED"}) == "CANCELLED"

    # The first merge runs once the array is over: it sees the cancelled part and fails.
    assert cluster.wait(first_merge, {"COMPLETED", "FAILED"}) == "FAILED"
    reports = out.with_name("synth-reports")
    merged = json.loads((reports / "merged.json").read_text())
    assert merged["exit_code"] == 1
    assert str(victim) in merged["unfinished_parts"] or victim in merged["missing_parts"]
    for part in set(range(PARTS)) - {victim}:
        assert cluster.state(f"{array}_{part}") == "COMPLETED"
    cancelled_log = (logs / f"cwdm-infer-{task}.log").read_text()
    assert "SIGTERM" in cancelled_log, cancelled_log[-2000:]

    # The task alone, with the same PARTS, then the merge again.
    again = sbatch(f"--array={victim}", *CPU_ONLY, str(ARRAY), *INFER_ARGS)
    second_merge = sbatch(f"--dependency=afterany:{again}", str(MERGE))
    assert cluster.wait(second_merge, {"COMPLETED", "FAILED"}) == "COMPLETED", cluster.log("slurmctld.log")
    assert cluster.state(f"{again}_{victim}") == "COMPLETED"

    output, _ = single.communicate(timeout=TIMEOUT_S)
    assert single.returncode == 0, output
    reference = json.loads((tmp_path / "single.json").read_text())
    merged = json.loads((reports / "merged.json").read_text())
    assert merged["exit_code"] == 0 and not merged["unfinished_parts"] and not merged["missing_parts"]
    assert merged["num_parts"] == PARTS and merged["written_twice"] == {} and not merged["problems"]
    assert merged["counts"] == reference["counts"]
    assert {c["case_id"]: c["status"] for c in merged["cases"]} == _statuses(reference)
    assert sorted(p.name for p in reports.glob("part-*.json")) == sorted(
        [f"part-{part}-job{array}.json" for part in range(PARTS)] + [f"part-{victim}-job{again}.json"]
    )
    resumed = _statuses(json.loads((reports / f"part-{victim}-job{again}.json").read_text()))
    assert set(resumed) == set(by_part[victim]) and "skipped" in resumed.values()
    assert "written" in resumed.values()  # the case the cancel interrupted, and any after it

    # The same files and nothing else in the output folder (no claim, no partial file); then their content.
    single_names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert sorted(p.name for p in out.iterdir()) == single_names and len(single_names) == len(cases)
    differences = output_diff.differences(tmp_path / "single", out, single_names, VOXEL_TOLERANCE)
    material = [f"{d.name}: {d.detail}" for d in differences if d.material]
    assert not material, (
        f"the array's outputs are not those of one run ({output_diff.machine()}):\n" + "\n".join(material)
    )
    if differences:  # the same headers, voxels within rounding: said, so that CI's log shows it
        warnings.warn(
            f"the array's outputs equal one run's but not byte for byte ({output_diff.machine()}): "
            + "; ".join(f"{d.name}: {d.detail}" for d in differences),
            stacklevel=1,
        )
    # One log per task and per merge, named as the script says.
    assert {p.name for p in logs.glob("cwdm-infer-*.log")} == {
        *(f"cwdm-infer-{array}_{part}.log" for part in range(PARTS)),
        f"cwdm-infer-{again}_{victim}.log",
    }
    assert {p.name for p in logs.glob("cwdm-merge-*.log")} == {
        f"cwdm-merge-{first_merge}.log",
        f"cwdm-merge-{second_merge}.log",
    }
    assert _checksums(DATA) == before  # the example cases are read only


def _outputs_of(case_ids: list[str], out: Path) -> list[str]:
    """The output file names of ``case_ids``: ``<case>-<missing sequence>.nii.gz``."""
    names = []
    for case_id in case_ids:
        present = {p.name.removeprefix(f"{case_id}-").split(".")[0] for p in (DATA / case_id).iterdir()}
        (missing,) = {"t1n", "t1c", "t2w", "t2f"} - present
        names.append(f"{case_id}-{missing}.nii.gz")
    return names
