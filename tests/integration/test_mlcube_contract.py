"""The MLCube and MedPerf contract, without a container engine.

mlcube.yaml: the mlcube package's own code builds the configuration exactly as ``mlcube run
--mlcube=mlcube --platform=docker --task=infer data_path=... output_path=...`` does
(``mlcube.cli.parse_cli_args``, which calls ``MLCubeConfig.create_mlcube_config``), then its docker
runner (``mlcube_docker.docker_run.DockerRun.run``) produces the ``docker run`` command line, which we
capture instead of executing. The entry point is then run with exactly the task arguments of that
command, each container mount path mapped back to its host folder.

container_config.yaml: checked against the schema rules of MedPerf's container parser, then its mounts
and ``run_args.command`` are mapped the same way.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.conftest import REPO, tree_checksums, write_case, write_tiny_weights

ENTRY_POINT = REPO / "project" / "mlcube.py"
MLCUBE_DIR = REPO / "mlcube"
CASES = {"BraTS-GLI-00001-000": "t2f", "BraTS-MEN-00002-000": "t1n"}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "host" / "data"
    for seed, (case_id, missing) in enumerate(CASES.items()):
        write_case(root, case_id, missing=missing, seed=seed)
    return root


def _run_entry_point(
    args: list[str],
    tmp_path: Path,
    default_weights: Path | None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run project/mlcube.py as the image would: as a script, /tmp standing in for the container's."""
    tmpdir = tmp_path / "container-tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmpdir), "HOME": str(tmpdir), **(extra_env or {})}
    if default_weights is not None:
        env["CWDM_DEFAULT_WEIGHTS"] = str(default_weights)
    return subprocess.run(
        [sys.executable, str(ENTRY_POINT), *args],
        cwd=tmpdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _to_host(arg: str, mounts: dict[str, str]) -> str:
    """``--name=<container path>`` -> ``--name=<host path>`` by the longest matching mount."""
    name, value = arg.split("=", 1)
    for container in sorted(mounts, key=len, reverse=True):
        if value == container or value.startswith(container.rstrip("/") + "/"):
            return f"{name}={mounts[container]}{value[len(container) :]}"
    raise AssertionError(f"{arg} is not under any mount ({mounts})")


def _check_outputs(out: Path, report_dir: Path, result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c}-{m}.nii.gz" for c, m in CASES.items())
    reports = sorted(report_dir.glob("cwdm-*-report.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".log").is_file()
    record = json.loads(reports[0].read_text())
    assert record["counts"]["written"] == len(CASES) and record["exit_code"] == 0
    assert "written" in result.stderr  # logs go to stderr
    assert result.stdout == ""
    return record


def _mlcube_docker_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, task_args: list[str]
) -> tuple[list[str], str]:
    """The docker command line that `mlcube run --platform=docker --task=infer <task_args>` would run."""
    mlcube_pkg = pytest.importorskip("mlcube")
    if Path(str(mlcube_pkg.__file__)) == ENTRY_POINT:  # project/ is on sys.path in editable installs
        pytest.skip("the mlcube package is not installed (it is in the test extra; needs pip<24.1)")
    from mlcube.cli import parse_cli_args
    from mlcube.shell import Shell
    from mlcube.system_settings import SystemSettings
    from mlcube_docker.docker_run import DockerRun

    monkeypatch.setenv("MLCUBE_SYSTEM_SETTINGS", str(tmp_path / "mlcube-system-settings.yaml"))
    SystemSettings().update_installed_runners()  # what the `mlcube` command does first
    runner_cls, config = parse_cli_args(
        unparsed_args=task_args,
        parsed_args={
            "mlcube": str(MLCUBE_DIR),
            "platform": "docker",
            "workspace": str(tmp_path / "workspace"),
        },
        resolve=True,
    )
    assert runner_cls is DockerRun
    commands: list[str] = []

    def capture(cmd: str | list, on_error: str = "raise") -> int:
        commands.append(" ".join(cmd) if isinstance(cmd, list) else cmd)
        return 0  # also answers `docker inspect`: the image "exists", so nothing is built or pulled

    monkeypatch.setattr(Shell, "run", staticmethod(capture))
    DockerRun(config, task="infer").run()
    runs = [shlex.split(cmd) for cmd in commands if shlex.split(cmd)[1:2] == ["run"]]
    assert len(runs) == 1, commands
    return runs[0], config.docker.image


def _split_docker_run(
    command: list[str], image: str
) -> tuple[dict[str, str], dict[str, str], list[str], list[str]]:
    """(container path -> host path, container path -> mount options, run options, task arguments)."""
    at = command.index(image)
    options, task = command[2:at], command[at + 1 :]
    mounts, opts = {}, {}
    for flag, value in zip(options, options[1:], strict=False):
        if flag == "--volume":
            host, container, *mode = value.split(":")
            mounts[container] = host
            opts[container] = mode[0] if mode else "rw"
    return mounts, opts, options, task


@pytest.mark.parametrize("weights_source", ["image default", "weights argument"])
def test_mlcube_yaml_docker_runner_arguments_drive_the_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: Path, tiny_weights: Path, weights_source: str
) -> None:
    out = tmp_path / "host" / "predictions"
    task_args = [f"data_path={data}", f"output_path={out}"]
    if weights_source == "weights argument":
        task_args.append(f"weights={tiny_weights}")
    before = tree_checksums(data)

    command, image = _mlcube_docker_command(monkeypatch, tmp_path, task_args)
    mounts, opts, options, task = _split_docker_run(command, image)

    assert image == "cwdm-brasyn:0.1.0"
    assert "--gpus=all" in options  # platform.accelerator_count 1 -> gpu_args
    assert "--rm" in options  # the runner would otherwise leave every stopped container behind
    assert task[0] == "infer"
    names = [arg.split("=", 1)[0] for arg in task[1:]]
    assert names == ["--data_path", "--parameters_file", "--weights", "--output_path"]
    by_name = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in task[1:]}
    assert mounts[by_name["--data_path"]] == str(data) and opts[by_name["--data_path"]] == "ro"
    assert mounts[by_name["--output_path"]] == str(out) and opts[by_name["--output_path"]] == "rw"
    assert by_name["--parameters_file"].endswith("/parameters.yaml")
    weights_host = Path(_to_host(f"w={by_name['--weights']}", mounts).split("=", 1)[1])
    if weights_source == "weights argument":
        assert weights_host == tiny_weights
    else:  # mlcube copied the shipped workspace: parameters.yaml and the (checkpoint-free) weights folder
        assert weights_host == tmp_path / "workspace" / "additional_files" / "weights"
        assert sorted(p.name for p in weights_host.iterdir()) == ["README.md"]

    host_args = [task[0]] + [_to_host(arg, mounts) for arg in task[1:]]
    result = _run_entry_point(host_args, tmp_path, default_weights=tiny_weights)

    record = _check_outputs(out, tmp_path / "container-tmp", result)
    fallback_warned = "holds no checkpoint: using the weights built into the image" in result.stderr
    assert fallback_warned is (weights_source == "image default")
    assert record["settings"]["sampling_steps"] == 2  # parameters.yaml leaves it to model.yaml
    assert tree_checksums(data) == before


def _medperf_schema_check(config: dict) -> None:
    """The rules of MedPerf's SimpleContainerParser.check_schema and runners.utils.check_allowed_run_args."""
    assert config["container_type"] == "DockerImage"
    assert "image" in config and "tasks" in config
    for task in config["tasks"].values():
        for volume in {**task.get("input_volumes", {}), **task.get("output_volumes", {})}.values():
            assert set(volume) >= {"type", "mount_path"}
            assert volume["type"] in ("file", "directory")
        assert set(task.get("run_args", {})) <= {"shm_size", "gpus", "command", "entrypoint", "environment"}


@pytest.mark.parametrize("additional_files", ["with weights", "empty"])
def test_container_config_mounts_and_command_drive_the_entry_point(
    tmp_path: Path, data: Path, tiny_weights: Path, additional_files: str
) -> None:
    config = yaml.safe_load((MLCUBE_DIR / "container_config.yaml").read_text())
    _medperf_schema_check(config)
    assert config["image"] == yaml.safe_load((MLCUBE_DIR / "mlcube.yaml").read_text())["docker"]["image"]
    task = config["tasks"]["infer"]
    assert set(task["input_volumes"]) == {"data_path", "parameters_file", "additional_files"}
    assert set(task["output_volumes"]) == {"output_path"}
    assert task["run_args"]["gpus"] == "all"

    extra = tmp_path / "host" / "additional_files"
    extra.mkdir(parents=True)
    if additional_files == "with weights":  # MedPerf unpacks the additional-files tarball here
        write_tiny_weights(extra / "weights")
    out = tmp_path / "host" / "predictions"
    out.mkdir()
    host = {  # what MedPerf mounts for each volume label
        "data_path": data,
        "parameters_file": MLCUBE_DIR / "workspace" / "parameters.yaml",
        "additional_files": extra,
        "output_path": out,
    }
    volumes = {**task["input_volumes"], **task["output_volumes"]}
    mounts = {volume["mount_path"]: str(host[label]) for label, volume in volumes.items()}
    assert all(Path(path).is_absolute() for path in mounts) and len(set(mounts)) == 4
    assert "/tmp" not in mounts  # MedPerf mounts its own folder there

    command = shlex.split(task["run_args"]["command"])
    assert command[0] == "infer"
    assert [arg.split("=", 1)[0] for arg in command[1:]] == [
        "--data_path",
        "--parameters_file",
        "--weights",
        "--output_path",
    ]
    before = tree_checksums(data)
    default_weights = tiny_weights if additional_files == "empty" else tmp_path / "no-default"
    result = _run_entry_point(
        [command[0]] + [_to_host(a, mounts) for a in command[1:]], tmp_path, default_weights
    )
    _check_outputs(out, tmp_path / "container-tmp", result)
    assert ("using the weights built into the image" in result.stderr) is (additional_files == "empty")
    assert tree_checksums(data) == before


def test_entry_point_without_any_weights_fails_before_any_case(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "predictions"
    empty = tmp_path / "weights"
    empty.mkdir()
    args = [
        "infer",
        f"--data_path={data}",
        f"--parameters_file={MLCUBE_DIR / 'workspace' / 'parameters.yaml'}",
        f"--weights={empty}",
        f"--output_path={out}",
    ]
    result = _run_entry_point(args, tmp_path, default_weights=None)
    assert result.returncode == 2
    assert f"the weights folder {empty} holds no checkpoint" in result.stderr
    assert "CWDM_DEFAULT_WEIGHTS=(unset)" in result.stderr
    assert not out.exists()


def test_entry_point_bad_parameters_name_the_key(tmp_path: Path, data: Path, tiny_weights: Path) -> None:
    params = tmp_path / "parameters.yaml"
    params.write_text("sampler: euler\n")
    args = [
        "infer",
        f"--data_path={data}",
        f"--parameters_file={params}",
        f"--weights={tiny_weights}",
        f"--output_path={tmp_path / 'out'}",
    ]
    result = _run_entry_point(args, tmp_path, default_weights=None)
    assert result.returncode == 2
    assert "key 'sampler'" in result.stderr and "'euler'" in result.stderr


def test_entry_point_report_inside_the_output_folder_is_refused(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "predictions"
    args = [
        "infer",
        f"--data_path={data}",
        f"--parameters_file={MLCUBE_DIR / 'workspace' / 'parameters.yaml'}",
        f"--weights={tmp_path}",
        f"--output_path={out}",
        f"--report_path={out / 'report.json'}",
    ]
    result = _run_entry_point(args, tmp_path, default_weights=None)
    assert result.returncode == 2 and "inside the output folder" in result.stderr
    assert not out.exists()


def test_entry_point_keeps_typer_multi_command(tmp_path: Path) -> None:
    result = _run_entry_point(["hotfix"], tmp_path, default_weights=None)
    assert result.returncode == 0 and result.stdout == ""
    result = _run_entry_point(["--help"], tmp_path, default_weights=None)
    assert "infer" in result.stdout and "hotfix" in result.stdout


def _checkout_command() -> list[str]:
    """The entry point's command for a checkout, as docs/DEPLOYMENT.md gives it."""
    text = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    (command,) = re.findall(
        r"^(python project/mlcube\.py infer .*?)\n```", text, flags=re.MULTILINE | re.DOTALL
    )
    return shlex.split(command.replace("\\\n", " "))


def test_the_documented_checkout_command_runs_outside_the_image(tmp_path: Path) -> None:
    """From the repository's root, with no image variables: the doc's command runs the demo weights (each
    output's record names a demo checkpoint and its SHA-256); without --weights the error says what to
    pass."""
    data = tmp_path / "data"
    write_case(data, "BraTS-GLI-00001-000", missing="t2f", seed=1, shape=(32, 32, 32))
    out = tmp_path / "predictions"
    python, script, *args = _checkout_command()
    assert (python, script) == ("python", "project/mlcube.py") and "--weights=weights/demo" in args
    values = {"--data_path": str(data), "--output_path": str(out)}
    args = [f"{a.split('=')[0]}={values[a.split('=')[0]]}" if a.split("=")[0] in values else a for a in args]
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}  # no CWDM_* variables
    run = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    from cwdm.inference.provenance import read_record, sha256_file

    record = read_record(out / "BraTS-GLI-00001-000-t2f.nii.gz")
    assert record is not None and record["model"]["file"] == "t2f.safetensors"
    assert record["model"]["sha256"] == sha256_file(REPO / "weights" / "demo" / "t2f.safetensors")
    assert list(tmp_path.glob("cwdm-*-report.json"))  # the report under $TMPDIR

    without = [a for a in args if not a.startswith("--weights")]
    run = subprocess.run(
        [sys.executable, script, *without], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 2 and "--weights=weights/demo" in run.stderr
