"""runtime.py: device and precision resolution, autocast scope, per-case generators, and the process-wide
settings (cache folders, cuDNN autotuning)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import cwdm.runtime
from cwdm.errors import ConfigError
from cwdm.runtime import (
    CACHE_VARIABLES,
    HOME_CACHE_VARIABLES,
    Runtime,
    case_generator,
    case_seed,
    configure_process,
    ensure_writable_caches,
    resolve_device,
    resolve_precision,
    resolve_runtime,
)

CPU = torch.device("cpu")
CUDA0 = torch.device("cuda", 0)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Pretend PyTorch sees a GPU (resolution only: no tensor is ever put on it)."""
    state = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["bf16"])
    return state


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_and_auto_without_gpu(no_cuda: None) -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == CPU
    runtime = resolve_runtime("auto", "auto")
    assert (runtime.device, runtime.precision, runtime.notes) == (CPU, "fp32", ())
    assert runtime.autocast_dtype is None
    assert runtime.describe() == "cpu, fp32"


def test_cuda_requested_without_gpu_is_a_config_error(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="device: 'cuda' was requested but .* sees no CUDA GPU"):
        resolve_device("cuda")


def test_unknown_names_are_config_errors(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="device: unknown value 'tpu'"):
        resolve_device("tpu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision: unknown value 'fp8'"):
        resolve_precision("fp8", CPU)  # type: ignore[arg-type]


def test_auto_picks_the_gpu_and_bf16_when_supported(fake_cuda: dict[str, bool]) -> None:
    assert resolve_device("auto") == CUDA0
    assert resolve_device("cuda") == CUDA0
    assert resolve_device("cpu") == CPU
    assert resolve_precision("auto", CUDA0) == ("bf16", ())
    fake_cuda["bf16"] = False
    assert resolve_precision("auto", CUDA0) == ("fp32", ())


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
def test_explicit_precision_on_a_gpu(fake_cuda: dict[str, bool], name: str) -> None:
    assert resolve_precision(name, CUDA0) == (name, ())  # type: ignore[arg-type]


def test_bf16_on_a_gpu_without_bf16_falls_back_to_fp32(fake_cuda: dict[str, bool]) -> None:
    fake_cuda["bf16"] = False
    precision, notes = resolve_precision("bf16", CUDA0)
    assert precision == "fp32" and "does not support bf16" in notes[0]


@pytest.mark.parametrize(
    ("name", "native_bf16", "reason"),
    [
        ("bf16", False, "needs a GPU or a CPU with AVX512-BF16 or AMX"),
        ("fp16", False, "needs a CUDA GPU"),
        ("fp16", True, "needs a CUDA GPU"),
    ],
)
def test_half_precision_on_cpu_without_it_falls_back_to_fp32_with_a_warning(
    no_cuda: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    native_bf16: bool,
    reason: str,
) -> None:
    monkeypatch.setattr(cwdm.runtime, "cpu_has_native_bf16", lambda: native_bf16)
    with caplog.at_level(logging.WARNING, logger="cwdm.runtime"):
        runtime = resolve_runtime("cpu", name)  # type: ignore[arg-type]
    assert runtime.precision == "fp32" and runtime.autocast_dtype is None
    assert runtime.notes == (f"precision {name} {reason}; running on cpu in fp32 instead",)
    assert runtime.notes[0] in caplog.text


def test_bf16_on_a_cpu_with_native_bf16_is_bf16_and_auto_stays_fp32(
    no_cuda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cwdm.runtime, "cpu_has_native_bf16", lambda: True)
    runtime = resolve_runtime("cpu", "bf16")
    assert (runtime.precision, runtime.autocast_dtype, runtime.notes) == ("bf16", torch.bfloat16, ())
    assert resolve_precision("auto", CPU) == ("fp32", ())


def test_native_bf16_probe_reads_torch_and_treats_a_missing_probe_as_no(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    assert cwdm.runtime.cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cwdm.runtime.cpu_has_native_bf16() is True


def test_autocast_context_follows_the_precision() -> None:
    weight = torch.randn(4, 4)
    with Runtime(CPU, "fp32").autocast():
        assert (torch.ones(2, 4) @ weight).dtype == torch.float32
    with Runtime(CPU, "bf16").autocast():  # constructed directly: CPU autocast works, resolution avoids it
        assert (torch.ones(2, 4) @ weight).dtype == torch.bfloat16
    assert Runtime(CPU, "fp16").autocast_dtype == torch.float16


def test_case_seed_depends_on_seed_and_case_only() -> None:
    seeds = {
        case_seed(seed, case)
        for seed in (0, 1, 42)
        for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")
    }
    assert len(seeds) == 6
    assert all(0 <= s < 2**63 for s in seeds)
    assert case_seed(42, "BraTS-GLI-00001-000") == case_seed(42, "BraTS-GLI-00001-000")


def test_case_generator_reproduces_its_draws() -> None:
    first = torch.randn(5, generator=case_generator(7, "case-a", CPU))
    again = torch.randn(5, generator=case_generator(7, "case-a", CPU))
    other = torch.randn(5, generator=case_generator(7, "case-b", CPU))
    assert torch.equal(first, again) and not torch.allclose(first, other)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_gpu_runtime() -> None:  # pragma: no cover - runs only where a GPU exists
    runtime = resolve_runtime("auto", "auto")
    assert runtime.device.type == "cuda"
    generator = case_generator(1, "case", runtime.device)
    draw = torch.randn(3, generator=generator, device=runtime.device)
    assert draw.device.type == "cuda"
    with runtime.autocast():
        out = torch.ones(2, 4, device=runtime.device) @ torch.ones(4, 4, device=runtime.device)
    assert out.dtype == (runtime.autocast_dtype or torch.float32)


# -- caches ----------------------------------------------------------------------------------------------


def test_unset_and_unwritable_caches_get_temporary_folders(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    keep = tmp_path / "keep"
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(keep),
        "TRITON_CACHE_DIR": str(blocker / "sub"),
        "HOME": "/nonexistent",
    }
    changed = ensure_writable_caches(env, root=tmp_path / "root")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(keep) and keep.is_dir()  # set and creatable: kept
    every = CACHE_VARIABLES | HOME_CACHE_VARIABLES  # HOME is unwritable: the general caches move too
    assert set(changed) == set(every) - {"TORCHINDUCTOR_CACHE_DIR"}
    for name, value in changed.items():
        assert env[name] == value == str(tmp_path / "root" / every[name])
        assert Path(value).is_dir() and os.access(value, os.W_OK)
    assert env["HOME"] == "/nonexistent"  # HOME itself is not ours to change
    assert ensure_writable_caches(env, root=tmp_path / "other") == {}  # idempotent


def test_general_caches_keep_their_places_under_a_writable_home(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    changed = ensure_writable_caches(env, root=tmp_path / "root")
    assert set(changed) == set(CACHE_VARIABLES)
    assert not set(HOME_CACHE_VARIABLES) & set(env)


def _as_stranger(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run Python as uid/gid 12345 (unknown to the passwd file), as MedPerf runs the container."""
    command = ["setpriv", "--reuid=12345", "--regid=12345", "--clear-groups", sys.executable, "-c", code]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


_STRANGER = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(), reason="needs root and setpriv"
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder every user can reach (pytest's own lies under a root-only folder)."""
    folder = Path(tempfile.mkdtemp(prefix="cwdm-test-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _stranger_env(tmp: Path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "TMPDIR": str(tmp)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


@_STRANGER
def test_caches_are_writable_for_an_unknown_user_with_an_unwritable_home(shared_tmp: Path) -> None:
    code = (
        "import os, cwdm.runtime as f\n"
        "f.ensure_writable_caches()\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "assert cache_dir() == os.environ['TORCHINDUCTOR_CACHE_DIR']\n"
        "for name in f.CACHE_VARIABLES | f.HOME_CACHE_VARIABLES:\n"
        "    open(os.path.join(os.environ[name], 'probe'), 'w').close()\n"
        "    print(name, os.environ[name])\n"
    )
    done = _as_stranger(code, _stranger_env(shared_tmp))
    assert done.returncode == 0, done.stderr
    root = shared_tmp / "cwdm-cache-12345"
    every = CACHE_VARIABLES | HOME_CACHE_VARIABLES
    assert done.stdout.split("\n")[:-1] == [f"{k} {root / v}" for k, v in every.items()]
    assert root.stat().st_uid == 12345 and (root.stat().st_mode & 0o777) == 0o700


def test_configure_process_turns_on_cudnn_autotuning_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in CACHE_VARIABLES:
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert configure_process(cudnn_benchmark=False) == {}  # every cache already set and writable
    assert torch.backends.cudnn.benchmark is False
    configure_process(cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark is True
