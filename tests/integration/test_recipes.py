"""examples/slurm and examples/kubernetes: the Slurm array script runs (its tasks side by side, as Slurm
starts them) and its merge script merges them, and the indexed Job manifest is a valid Job that splits as
it says. tests/integration/test_slurm.py runs the Slurm scripts under a real Slurm."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import write_case

from cwdm.version import __version__

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "examples" / "slurm" / "cwdm-infer-array.sbatch"
MERGE = ROOT / "examples" / "slurm" / "cwdm-merge.sbatch"
MANIFEST = ROOT / "examples" / "kubernetes" / "cwdm-infer-job.yaml"


def test_the_slurm_array_script_runs_and_its_reports_merge(tmp_path: Path, tiny_weights: Path) -> None:
    """The tasks side by side with Slurm's variables set, then the merge script (tests/integration/
    test_slurm.py runs both under a real Slurm)."""
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
    assert subprocess.run(["bash", "-n", str(MERGE)]).returncode == 0
    text = SBATCH.read_text()
    tasks = int(re.search(r"^#SBATCH --array=0-(\d+)$", text, re.M).group(1)) + 1
    assert "--gres=gpu:1" in text
    data = tmp_path / "cases"
    for seed, case_id in enumerate(["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-MEN-00003-000"]):
        write_case(data, case_id, missing="t2f", seed=seed, shape=(16, 16, 16))
    out = tmp_path / "synth"
    env = {**os.environ, "DATA": str(data), "OUT": f"{out}/", "WEIGHTS": str(tiny_weights)}
    env |= {"PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "OMP_NUM_THREADS": "1"}
    env |= {"PARTS": str(tasks), "SLURM_ARRAY_JOB_ID": "41"}
    running = [
        subprocess.Popen(
            ["bash", str(SBATCH), "--device", "cpu"],
            env=env | {"SLURM_ARRAY_TASK_ID": str(task)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for task in range(tasks)
    ]
    for process in running:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    reports = tmp_path / "synth-reports"  # beside OUT, also when OUT ends with a slash
    names = sorted(p.name for p in reports.glob("part-*.json"))
    assert names == [f"part-{i}-job41.json" for i in range(tasks)]
    merged = subprocess.run(["bash", str(MERGE)], env=env, capture_output=True, text=True)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert f"3 of 3 cases from {tasks} part(s): 3 written" in merged.stdout
    assert json.loads((reports / "merged.json").read_text())["counts"]["written"] == 3
    assert sum(len(json.loads(r.read_text())["cases"]) for r in reports.glob("part-*.json")) == 3


def test_the_slurm_scripts_say_what_is_missing(tmp_path: Path) -> None:
    env = {**os.environ, "DATA": str(tmp_path), "OUT": str(tmp_path / "out"), "WEIGHTS": str(tmp_path)}
    env |= {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7"}
    no_parts = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert no_parts.returncode != 0 and "PARTS" in no_parts.stderr
    env |= {"PARTS": "2", "CWDM": "cwdm-not-installed-here"}
    for script in (SBATCH, MERGE):
        result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert "cwdm-not-installed-here' is not on PATH inside the job" in result.stderr
    env.pop("CWDM")
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    nothing = subprocess.run(["bash", str(MERGE)], env=env, capture_output=True, text=True)
    assert nothing.returncode == 1 and "no part report" in nothing.stderr


def _job() -> dict:
    (job,) = list(yaml.safe_load_all(MANIFEST.read_text()))
    return job


def test_the_kubernetes_manifest_is_an_indexed_job_that_splits_as_it_says() -> None:
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    (container,) = spec["template"]["spec"]["containers"]
    command = " ".join(container["command"] + container["args"])
    parts = int(re.search(r"--num-parts (\d+)", command).group(1))
    assert spec["completions"] == parts  # one pod per part, each index once
    assert "$JOB_COMPLETION_INDEX" in command and "--part-id" not in command  # the index from Kubernetes
    assert container["image"] == f"cwdm-brasyn:{__version__}"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] is True and "/output" in mounts and "/reports" in mounts
    assert re.search(r"cwdm infer /data /output .*--report \"/reports/", command)
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_the_kubernetes_manifest_passes_the_schema() -> None:
    """Against the Kubernetes OpenAPI schemas, offline and strict (unknown fields refused);
    ``kubectl --dry-run=client`` needs an API server, so it is not used here."""
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (the test extra has it)")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(_job(), version, strict=True)
    broken = _job()
    broken["spec"]["completionMode"] = {"indexed": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
