"""The real image, built from this checkout and run the way the organisers run it: as current MedPerf
does (`--rm -u <uid>:<gid> --network none`, inputs read-only, the mounts of container_config.yaml) and
through `mlcube run --task=infer` with mlcube's own docker runner. Left out of the default run and of
CI; select with `pytest -m container` (about 15 minutes on two CPU cores, most of it the first build).

The runs use few sampling steps (a parameters file of this test) so that the demo model finishes on a
CPU in minutes; the outputs are checked as the end-to-end test does.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from cwdm.sequences import condition_order

from .conftest import REPO, BuiltImage, Engine

pytestmark = pytest.mark.container

EXAMPLES = REPO / "examples" / "pseudo_validation"
SEQUENCES = ("t1n", "t1c", "t2w", "t2f")
#: A non-root user and group that exist neither in the image nor (usually) on the host.
USER = (12345, 12345)
#: Short runs on a CPU; everything else as shipped in mlcube/workspace/parameters.yaml.
FAST_PARAMETERS = {"sampling_steps": 2, "sampler": "ddim", "seed": 0, "device": "cpu", "batch_size": 1}


def _missing(case: Path) -> str:
    (missing,) = [s for s in SEQUENCES if not (case / f"{case.name}-{s}.nii.gz").exists()]
    return missing


def _copy_cases(dest: Path, per_target: int | None = None) -> list[Path]:
    """Copy the example cases (all, or the first ``per_target`` per missing sequence) to ``dest``."""
    dest.mkdir(parents=True)
    counts: dict[str, int] = {}
    copied = []
    for case in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        target = _missing(case)
        counts[target] = counts.get(target, 0) + 1
        if per_target is None or counts[target] <= per_target:
            copied.append(Path(shutil.copytree(case, dest / case.name)))
    return copied


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _writable_by_user(path: Path) -> Path:
    """Make ``path`` (created if needed) a folder that USER owns, as MedPerf's folders belong to its user."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, *USER)
    else:
        path.chmod(0o777)
    return path


def _write_parameters(path: Path) -> Path:
    path.write_text(yaml.safe_dump(FAST_PARAMETERS, sort_keys=False))
    return path


def check_outputs(out_dir: Path, cases: list[Path]) -> None:
    """As tests/integration/test_real_cases.py: one `<case>-<missing>.nii.gz` per case and nothing
    else; 240x240x155 float32 in [0, 1], not all zero; the grid (affine, sform, qform, voxel size) of
    every present sequence and the sform/qform codes of the first condition; readable by others."""
    expected = sorted(f"{case.name}-{_missing(case)}.nii.gz" for case in cases)
    assert sorted(p.name for p in out_dir.iterdir()) == expected
    for case in cases:
        target = _missing(case)
        path = out_dir / f"{case.name}-{target}.nii.gz"
        out = nib.load(path)
        assert out.shape == (240, 240, 155)
        assert out.get_data_dtype() == np.float32
        data = np.asarray(out.dataobj)
        assert data.dtype == np.float32
        assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1.0 and data.max() > 0.0
        inputs = [nib.load(case / f"{case.name}-{seq}.nii.gz") for seq in condition_order(target)]
        for ref in inputs:
            np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
            np.testing.assert_allclose(out.header.get_sform(), ref.header.get_sform(), atol=1e-6)
            np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform(), atol=1e-5)
            assert out.header.get_zooms() == ref.header.get_zooms()
        for code in ("sform_code", "qform_code"):
            assert int(out.header[code]) == int(inputs[0].header[code]), (case.name, code)
        stat = path.stat()
        if os.geteuid() == 0:
            assert (stat.st_uid, stat.st_gid) == USER, "outputs belong to the user the container ran as"
        assert stat.st_mode & 0o044 == 0o044, "outputs must be readable by the evaluator"


def _docker_like(engine: Engine) -> list[str]:
    """podman adds an /etc/passwd entry for a `-u` user the image lacks; docker, which MedPerf calls,
    does not. Turn that off so that the user is as unknown as under docker."""
    return ["--passwd=false"] if engine.is_podman else []


def _log(message: str) -> None:
    print(f"[container tests] {message}", file=sys.stderr, flush=True)


def _run_logged(command: list[str], env: dict[str, str] | None = None, timeout: float = 3000) -> str:
    _log("$ " + shlex.join(command))
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    output = result.stdout + result.stderr
    _log(f"exit {result.returncode} after {time.monotonic() - start:.0f} s; output tail:\n{output[-4000:]}")
    assert result.returncode == 0, output[-6000:]
    return output


def test_image_is_lean_and_works_for_any_user(engine: Engine, image: BuiltImage) -> None:
    """No test data, caches, pip or compilers in the image; the entry point, weights and cache
    variables are where the MLCube/MedPerf contract expects them, for a user the image does not know."""
    config = yaml.safe_load(engine.run("image", "inspect", "--format", "{{json .Config}}", image.tag).stdout)
    assert config["Entrypoint"] == ["python3", "/opt/cwdm/project/mlcube.py"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CWDM_DEFAULT_WEIGHTS"] == "/opt/cwdm/weights/demo"
    cache_vars = ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                  "MPLCONFIGDIR")  # fmt: skip
    for name in cache_vars:
        assert env[name].startswith("/tmp"), (name, env[name])
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"

    probe = r"""
set -u
id -u
getent passwd "$(id -u)" || echo no-passwd-entry
for tool in gcc cc g++ make git curl wget; do command -v "$tool" >/dev/null && echo "FOUND tool $tool"; done
for pip in /opt/cwdm/venv/bin/pip /opt/cwdm/venv/bin/pip3; do test -e "$pip" && echo "FOUND $pip"; done
ls /opt/cwdm /opt/cwdm/weights/demo
find /opt/cwdm -path '*/site-packages' -prune -o \( -name tests -o -name examples -o -name conftest.py \
  -o -name .git -o -name '*.nii.gz' \) -print | sed 's/^/FOUND /'
find / -xdev -path /proc -prune -o -name '*.nii.gz' -not -path '*/site-packages/*' -print | sed 's/^/FOUND /'
find /root/.cache /tmp -mindepth 1 -maxdepth 1 2>/dev/null | sed 's/^/FOUND /'
python3 -c 'import cwdm, torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__)'
touch "$HOME/probe" && mkdir -p "$TORCH_HOME" "$TRITON_CACHE_DIR" "$MPLCONFIGDIR" && echo caches-writable
"""
    run = engine.run(
        "run", "--rm", "-u", f"{USER[0]}:{USER[1]}", *_docker_like(engine), "--network", "none",
        "--entrypoint", "sh", image.tag, "-c", probe,
    )  # fmt: skip
    lines = run.stdout.splitlines()
    _log("image probe:\n" + run.stdout)
    assert lines[0] == str(USER[0])
    assert "no-passwd-entry" in lines, "the test user must be unknown to the image"
    assert not [line for line in lines if line.startswith("FOUND ")], "build tools, test data or caches"
    for name in ("model.yaml", "t1n.safetensors", "t1c.safetensors", "t2w.safetensors", "t2f.safetensors"):
        assert name in lines, f"weights/demo/{name} is not baked in"
    assert "caches-writable" in lines


def test_medperf_style_infer(engine: Engine, image: BuiltImage, tmp_path: Path) -> None:
    """The infer task exactly as current MedPerf issues it (cli/medperf/containers/runners:
    `--name`, `--rm`, `-u uid:gid`, inputs `:ro`, outputs `:rw`, its tmp folder on /tmp, `--network none`,
    then container_config.yaml's run_args), on all shipped example cases; the weights come from the
    image (additional_files as shipped holds no checkpoint)."""
    config = yaml.safe_load((REPO / "mlcube" / "container_config.yaml").read_text())
    assert config["image"] == image.tag, "container_config.yaml and mlcube.yaml must name the same image"
    task = config["tasks"]["infer"]
    cases = _copy_cases(tmp_path / "data")
    before = _checksums(tmp_path / "data")
    host = {
        "data_path": tmp_path / "data",
        "parameters_file": _write_parameters(tmp_path / "parameters.yaml"),
        "additional_files": Path(
            shutil.copytree(REPO / "mlcube" / "workspace" / "additional_files", tmp_path / "additional_files")
        ),
        "output_path": _writable_by_user(tmp_path / "predictions"),
    }
    medperf_tmp = _writable_by_user(tmp_path / "medperf_tmp")
    command = [engine.exe, "run", "--name", f"medperf-infer-{uuid.uuid4().hex[:16]}", "--rm"]
    command += ["-u", f"{USER[0]}:{USER[1]}", *_docker_like(engine)]
    for key, volume in task["input_volumes"].items():
        command += ["--volume", f"{host[key]}:{volume['mount_path']}:ro"]
    for key, volume in task["output_volumes"].items():
        command += ["--volume", f"{host[key]}:{volume['mount_path']}:rw"]
    command += ["--volume", f"{medperf_tmp}:/tmp:rw", "--network", "none"]
    run_args = task.get("run_args", {})
    # gpus: this machine has none, as a MedPerf user would say with --gpus=0.
    if "shm_size" in run_args:
        command += ["--shm-size", str(run_args["shm_size"])]
    for key, value in (run_args.get("environment") or {}).items():
        command += ["--env", f"{key}={value}"]
    if "entrypoint" in run_args:
        command += ["--entrypoint", str(run_args["entrypoint"])]
    extra = run_args.get("command", [])
    command += [config["image"], *(shlex.split(extra) if isinstance(extra, str) else extra)]

    _run_logged(command)
    check_outputs(host["output_path"], cases)
    assert _checksums(tmp_path / "data") == before, "inputs were modified"


def _mlcube_exe() -> str | None:
    beside = Path(sys.executable).with_name("mlcube")
    return str(beside) if beside.is_file() else shutil.which("mlcube")


def test_mlcube_run_infer(image: BuiltImage, docker_cli, tmp_path: Path) -> None:
    """`mlcube run --task=infer` with mlcube's docker runner on a workspace of one case per target,
    as a non-root user (-u through cpu_args) with no network; the weights are read from the mounted
    additional_files/weights (a copy of weights/demo), not from the image."""
    mlcube = _mlcube_exe()
    if mlcube is None:
        pytest.skip("mlcube is not installed (pip install 'pip<24.1' && pip install mlcube mlcube-docker)")
    docker, env = docker_cli
    if shutil.which(Path(docker).name, path=env.get("PATH")) == docker:
        docker = Path(docker).name  # a path could hold an 'h' (below)
    spec = yaml.safe_load((REPO / "mlcube" / "mlcube.yaml").read_text())
    params = spec["tasks"]["infer"]["parameters"]
    workspace = tmp_path / "workspace"
    paths = {name: workspace / p["default"] for name, p in {**params["inputs"], **params["outputs"]}.items()}
    cases = _copy_cases(paths["data_path"], per_target=1)
    _write_parameters(paths["parameters_file"])
    shutil.copytree(REPO / "weights" / "demo", paths["weights"])
    for path in paths["weights"].iterdir():
        path.chmod(0o644)  # as a checkout gives them; a freshly exported checkpoint is owner-only
    out_dir = _writable_by_user(paths["output_path"])

    # mlcube.yaml's cpu_args carry --rm (mlcube's runner leaves the stopped container behind otherwise).
    assert "--rm" in spec["docker"]["cpu_args"].split()
    cpu_args = " ".join(filter(None, [spec["docker"]["cpu_args"], f"-u {USER[0]}:{USER[1]}"]))
    command = [
        mlcube, "--log-level=info", "run", f"--mlcube={REPO / 'mlcube'}", "--task=infer", "--platform=docker",
        f"--workspace={workspace}", "--network=none",
        f"-Pdocker.docker={docker}", f"-Pdocker.cpu_args={cpu_args}", "-Pplatform.accelerator_count=0",
    ]  # fmt: skip
    for arg in command:
        if arg.startswith("-P"):
            assert "h" not in arg[2:], f"mlcube run mangles -P values that contain an 'h': {arg}"
    output = _run_logged(command, env=env)
    ran = [line for line in output.splitlines() if "docker run" in line or f"{docker} run" in line]
    assert ran and f"-u {USER[0]}:{USER[1]}" in ran[-1] and "--network=none" in ran[-1], output[-3000:]
    check_outputs(out_dir, cases)
