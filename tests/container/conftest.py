"""Fixtures of the container tests (`pytest -m container`): a container engine, a local base image, an
offline wheelhouse and the image built from this checkout.

Environment variables (all optional):
    CWDM_CONTAINER_ENGINE    podman or docker (default: podman where installed, else docker).
    CWDM_TEST_BASE_IMAGE     base image to build on (default: a Debian bookworm base with Python 3.11 that
                             the tests make once with debootstrap, `localhost/cwdm-test-base:bookworm`).
    CWDM_TEST_DEBIAN_MIRROR  mirror for debootstrap (default: the one apt uses here, else deb.debian.org).
    CWDM_TEST_WHEELHOUSE     folder for the wheels of the offline build (default: ~/.cache/cwdm-brasyn).
    CWDM_TEST_TORCH_INDEX    extra index for torch when the base lacks it, e.g. PyTorch's CPU index.

With podman the build reaches no package index: pip installs from a wheelhouse that the host's pip fills
and the build mounts read-only (docs/IMAGE.md, "Building and testing the image"). With docker the build uses
the network.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BASE = "localhost/cwdm-test-base:bookworm"
_PLATFORMS = ("manylinux_2_28", "manylinux_2_17", "manylinux2014")


@dataclass(frozen=True)
class Engine:
    """A container engine command line (podman or docker)."""

    exe: str

    @property
    def is_podman(self) -> bool:
        return Path(self.exe).name.startswith("podman")

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.exe, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.exe} {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
            )
        return result

    def has_image(self, image: str) -> bool:
        return self.run("image", "inspect", image, check=False).returncode == 0


def _log(message: str) -> None:
    print(f"[container tests] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The container engine; skips the container tests where none can run a container."""
    name = os.environ.get("CWDM_CONTAINER_ENGINE")
    candidates = [name] if name else ["podman", "docker"]
    found = [shutil.which(c) for c in candidates if shutil.which(c)]
    if not found:
        pytest.skip(f"no container engine ({' or '.join(candidates)}) on PATH")
    eng = Engine(found[0])
    info = eng.run("info", check=False, timeout=120)
    if info.returncode != 0:
        pytest.skip(f"{eng.exe} cannot reach a container runtime: {info.stderr.strip()[:300]}")
    return eng


def _debian_mirror() -> str:
    if os.environ.get("CWDM_TEST_DEBIAN_MIRROR"):
        return os.environ["CWDM_TEST_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        for uri in re.findall(r"(?:URIs:\s*|deb\s+)(https?://\S+/debian)/?\s", path.read_text() + "\n"):
            return uri
    return "http://deb.debian.org/debian"


def _make_debootstrap_base(eng: Engine, tag: str, scratch: Path) -> None:
    """A minimal Debian bookworm with Python 3.11 (python3, python3-venv) imported as ``tag``."""
    if not shutil.which("debootstrap") or os.geteuid() != 0:
        pytest.skip(f"no base image: set CWDM_TEST_BASE_IMAGE, or run as root with debootstrap to make {tag}")
    rootfs = scratch / "rootfs"
    mirror = _debian_mirror()
    _log(f"debootstrap bookworm from {mirror} (once; reused as {tag})")
    subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs)]
        + [mirror],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / cache).glob("*"):
            if path.is_file():
                path.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run([eng.exe, "import", "-", tag], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    shutil.rmtree(rootfs)


@pytest.fixture(scope="session")
def base_image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base to build on: CWDM_TEST_BASE_IMAGE, or a debootstrap bookworm made once and reused."""
    tag = os.environ.get("CWDM_TEST_BASE_IMAGE", DEFAULT_BASE)
    if not engine.has_image(tag):
        if "CWDM_TEST_BASE_IMAGE" in os.environ:
            pytest.fail(f"CWDM_TEST_BASE_IMAGE={tag} is not an image of {engine.exe}")
        _make_debootstrap_base(engine, tag, tmp_path_factory.mktemp("base"))
    return tag


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"Dockerfile has no ARG {name}=..."
    return match.group(1)


def _project_dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs Python >= 3.11 or tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def _fill_wheelhouse(engine: Engine, base: str, wheelhouse: Path) -> None:
    """Download (host pip) every wheel the build needs for the base's Python into ``wheelhouse``."""
    probe = engine.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", base, "-c",
        "import sys, platform, importlib.util as u; v = sys.version_info; "
        "print(f'{v[0]}.{v[1]}', platform.machine(), u.find_spec('torch') is not None)",
    )  # fmt: skip
    py_version, machine, has_torch = probe.stdout.split()
    requirements = ["setuptools", "wheel", *_project_dependencies()]
    if has_torch != "True":
        requirements.append(f"torch=={_dockerfile_arg('TORCH_VERSION')}")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse)]
    command += ["--constraint", str(REPO / "docker" / "constraints.txt")]
    if os.environ.get("CWDM_TEST_TORCH_INDEX"):
        command += ["--extra-index-url", os.environ["CWDM_TEST_TORCH_INDEX"]]
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if (py_version, machine) != (host, os.uname().machine):
        command += ["--only-binary=:all:", "--python-version", py_version, "--implementation", "cp"]
        command += [arg for p in _PLATFORMS for arg in ("--platform", f"{p}_{machine}")]
    _log(f"filling the wheelhouse {wheelhouse} for Python {py_version} ({machine})")
    result = subprocess.run(
        [*command, *requirements], capture_output=True, text=True, timeout=1800, check=False
    )
    assert result.returncode == 0, f"pip download failed:\n{result.stderr[-3000:]}"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_s: float
    size: str


@pytest.fixture(scope="session")
def image(engine: Engine, base_image: str) -> BuiltImage:
    """The image built from this checkout on ``base_image``, tagged as mlcube.yaml names it."""
    tag = yaml.safe_load((REPO / "mlcube" / "mlcube.yaml").read_text())["docker"]["image"]
    demo = REPO / "weights" / "demo"
    assert (demo / "model.yaml").is_file(), f"{demo} holds no model.yaml: the image bakes the demo weights"
    command = ["build", "--tag", tag, "--build-arg", f"BASE_IMAGE={base_image}"]
    if engine.is_podman:
        default = Path.home() / ".cache" / "cwdm-brasyn" / "container-tests-wheels"
        wheelhouse = Path(os.environ.get("CWDM_TEST_WHEELHOUSE", default))
        wheelhouse.mkdir(parents=True, exist_ok=True)
        _fill_wheelhouse(engine, base_image, wheelhouse)
        command += ["--build-arg", "WHEELHOUSE=/wheels", "--volume", f"{wheelhouse}:/wheels:ro"]
    _log(f"{engine.exe} {' '.join(command)} {REPO}")
    start = time.monotonic()
    engine.run(*command, str(REPO), timeout=3600)
    build_s = time.monotonic() - start
    size = engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    _log(f"built {tag} in {build_s:.0f} s, {int(size) / 1e9:.2f} GB")
    return BuiltImage(tag=tag, build_s=build_s, size=size)


@pytest.fixture(scope="session")
def docker_cli(engine: Engine, tmp_path_factory: pytest.TempPathFactory):
    """(docker executable, environment) for mlcube's docker runner: with podman, the docker CLI talking
    to podman's docker-compatible socket (or podman itself where no docker CLI is installed)."""
    env = dict(os.environ)
    if not engine.is_podman:
        yield engine.exe, env
        return
    docker = shutil.which("docker")
    if docker is None:
        yield engine.exe, env
        return
    socket = tmp_path_factory.mktemp("podman") / "podman.sock"
    service = subprocess.Popen(
        [engine.exe, "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env["DOCKER_HOST"] = f"unix://{socket}"
    try:
        for _ in range(100):
            ready = subprocess.run([docker, "version"], env=env, capture_output=True, check=False)
            if ready.returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"podman's docker socket {socket} did not come up")
        _log(f"docker CLI on podman's socket {socket}")
        yield docker, env
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
