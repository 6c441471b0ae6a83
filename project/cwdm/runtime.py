"""Where and how inference runs: the concrete device, the network's autocast precision, and the
per-case random generators.

This is the only module of the package that asks whether CUDA exists. Resolution rules (docs/USAGE.md,
"Parameters"):

- ``device: auto`` is ``cuda`` (the current CUDA device) when PyTorch sees a GPU, else ``cpu``;
  ``device: cuda`` without a GPU is a :class:`cwdm.ConfigError` (asking for a GPU and silently getting a
  CPU run that is a thousand times slower is worse than stopping).
- ``precision: auto`` is bf16 autocast on a CUDA GPU that supports bf16, else fp32 (on a CPU too:
  fp32 is the reference, and bf16 there is a choice to make knowingly).
- ``precision: bf16`` runs bf16 autocast on a CUDA GPU with bf16 and on a CPU with native bf16
  arithmetic (AVX512-BF16 or AMX: Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later),
  where oneDNN's bf16 convolutions measured 1.5 times faster than fp32 for the demo network
  (docs/PERFORMANCE.md). ``bf16`` or ``fp16`` where that arithmetic is not available (fp16 on any CPU, bf16
  on an older CPU or a GPU without bf16) falls back to fp32 with a logged warning, recorded in
  :attr:`Runtime.notes`: a parameters.yaml written for one machine must still run on another, and fp32
  is the reference.
- Autocast covers only the network call; GroupNorm computes in float32 inside the network, and the
  sampler state stays float32 (docs/ARCHITECTURE.md, "Conventions").

Process-wide settings are made in one place, :func:`configure_process`, which the entry points call
(``cwdm infer``, ``cwdm train``, the MLCube entry point, the benchmarks), never a library call: cuDNN
autotuning, and compiler and driver caches (TorchInductor, Triton, the CUDA JIT cache) pointed at writable
temporary folders when they are unset or unwritable, so that compilation works in a container run as an
arbitrary non-root user with an unwritable home directory.

Randomness: each case gets its own generator, seeded from the run seed and the case id
(:func:`case_seed`), so that a case's output depends on neither the order of the cases nor on which
other cases share its batch. Same seed, same case id, same device and precision -> same output.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .choices import DeviceName, PrecisionName
from .errors import ConfigError

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Environment variables of the caches written during compilation or kernel loading, and the folder
#: name each gets under the temporary cache root when it is unset or not writable.
CACHE_VARIABLES: Mapping[str, str] = {
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "TRITON_HOME": "triton-home",
    "CUDA_CACHE_PATH": "nv",
}
#: General caches that default to folders under ``$HOME``: redirected like the others, but only when
#: the home folder is not writable (on a workstation they keep their usual places).
HOME_CACHE_VARIABLES: Mapping[str, str] = {"XDG_CACHE_HOME": "xdg", "TORCH_HOME": "torch"}


def autocast(
    device: torch.device | str, precision: str, *, cache_enabled: bool = True
) -> AbstractContextManager[object]:
    """The context for a network call in ``precision``: autocast to bf16/fp16, or nothing for fp32.

    GroupNorm still computes in float32 inside the network (``GroupNorm32``); everything outside the
    block stays float32. The one autocast set-up of the package (inference, fast path and training).

    Args:
        device: Where the network runs (its type selects the autocast backend).
        precision: ``fp32``, ``bf16`` or ``fp16`` (an effective precision, see :func:`resolve_precision`).
        cache_enabled: Autocast's weight-cast cache (off for CUDA-graph capture).
    """
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=cache_enabled)


@dataclass(frozen=True)
class Runtime:
    """A resolved device and network precision.

    Attributes:
        device: Where models and tensors live.
        precision: The effective precision name: ``fp32``, ``bf16`` or ``fp16``.
        notes: Human-readable remarks on the resolution (fallbacks), also logged as warnings.
    """

    device: torch.device
    precision: str
    notes: tuple[str, ...] = ()

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the network call, or ``None`` for plain float32."""
        return _AUTOCAST_DTYPES.get(self.precision)

    def autocast(self) -> AbstractContextManager[object]:
        """A context manager for the network call: autocast in :attr:`autocast_dtype`, or nothing."""
        return autocast(self.device, self.precision)

    def release_cached_memory(self) -> None:
        """Hand the allocator's cached blocks back to the GPU (before retrying a batch that ran out of
        memory); nothing to do on a CPU."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> str:
        """For logs, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3), bf16 autocast`` or ``cpu, fp32``."""
        where = str(self.device)
        if self.device.type == "cuda":
            where += f" ({torch.cuda.get_device_name(self.device)})"
        how = "fp32" if self.precision == "fp32" else f"{self.precision} autocast"
        return f"{where}, {how}"


def resolve_device(name: DeviceName) -> torch.device:
    """Turn ``auto``, ``cuda`` or ``cpu`` into a concrete device.

    Raises:
        ConfigError: ``cuda`` was asked for but PyTorch sees no CUDA GPU, or the name is unknown.
    """
    if name == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if has_cuda else torch.device("cpu")
    if name == "cuda":
        if not has_cuda:
            raise ConfigError(
                f"device: 'cuda' was requested but PyTorch {torch.__version__} sees no CUDA GPU "
                f"(built with CUDA {torch.version.cuda}); use device: auto or cpu, or run the container "
                "with GPUs (docker run --gpus all)"
            )
        return torch.device("cuda", torch.cuda.current_device())
    raise ConfigError(f"device: unknown value {name!r}; expected auto, cuda or cpu")


def resolve_precision(name: PrecisionName, device: torch.device) -> tuple[str, tuple[str, ...]]:
    """Turn a precision name into the effective one on ``device``.

    Returns:
        ``(precision, notes)``: ``fp32``, ``bf16`` or ``fp16``, and the fallback remarks, if any.

    Raises:
        ConfigError: unknown precision name.
    """
    on_cuda = device.type == "cuda"
    if name == "auto":
        return ("bf16" if on_cuda and torch.cuda.is_bf16_supported() else "fp32"), ()
    if name == "fp32":
        return "fp32", ()
    if name not in _AUTOCAST_DTYPES:
        raise ConfigError(f"precision: unknown value {name!r}; expected auto, fp32, bf16 or fp16")
    if on_cuda:
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp32", ("this GPU does not support bf16; running in fp32 instead (fp16 is an option)",)
        return name, ()
    if name == "bf16" and cpu_has_native_bf16():
        return "bf16", ()
    why = "needs a CUDA GPU" if name == "fp16" else "needs a GPU or a CPU with AVX512-BF16 or AMX"
    return "fp32", (f"precision {name} {why}; running on {device} in fp32 instead",)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles).

    Without it PyTorch still runs bf16 on a CPU, emulated and slower than fp32, so bf16 is only used
    where it pays. The probes are PyTorch's own (``torch.cpu``); a build without them counts as no.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_runtime(device: DeviceName = "auto", precision: PrecisionName = "auto") -> Runtime:
    """Resolve ``device`` and ``precision`` (the parameters.yaml values); log any fallback.

    Raises:
        ConfigError: see :func:`resolve_device` and :func:`resolve_precision`.
    """
    resolved = resolve_device(device)
    effective, notes = resolve_precision(precision, resolved)
    for note in notes:
        log.warning("%s", note)
    return Runtime(device=resolved, precision=effective, notes=notes)


def case_seed(seed: int, case_id: str, draw: int = 0) -> int:
    """The seed of one draw's generator: the first 63 bits of SHA-256 of ``"<seed>/<case_id>"`` for the
    first draw of a case, and of ``"<seed>/<case_id>/<draw>"`` for its further draws (``samples`` > 1).

    A hash (rather than, say, ``seed + index``) makes the value independent of the case's position
    in the run, and different for every case and draw even when the run seeds are neighbours. The first
    draw's seed does not depend on ``samples``: one sample gives what a run without the option gives.
    """
    key = f"{seed}/{case_id}" if draw == 0 else f"{seed}/{case_id}/{draw}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def case_generator(seed: int, case_id: str, device: torch.device) -> torch.Generator:
    """The generator of a case's first draw: :func:`sample_generator` with ``draw`` 0."""
    return sample_generator(seed, case_id, 0, device)


def sample_generator(seed: int, case_id: str, draw: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`case_seed` (the sampler draws on that device)."""
    return torch.Generator(device=device).manual_seed(case_seed(seed, case_id, draw))


def worker_devices(device: torch.device) -> tuple[torch.device, ...]:
    """The devices a run shares its cases over: every visible CUDA GPU when ``device`` is a GPU
    (restrict them with ``CUDA_VISIBLE_DEVICES`` or ``docker run --gpus``), else ``device`` alone."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count > 1:
            return tuple(torch.device("cuda", index) for index in range(count))
    return (device,)


def ensure_writable_caches(
    environ: MutableMapping[str, str] | None = None, root: Path | None = None
) -> dict[str, str]:
    """Point the cache variables that are unset or unwritable at writable folders.

    Every variable of :data:`CACHE_VARIABLES`, and those of :data:`HOME_CACHE_VARIABLES` when ``$HOME``
    is not a writable folder. A variable set to a folder that exists and is writable, or that can be
    created, is left alone (the Dockerfile sets them all under ``/tmp``). The others get
    ``<root>/<name>``, where ``root`` defaults to ``<temporary folder>/cwdm-cache-<uid>`` (created with
    mode 0700). Idempotent.

    Args:
        environ: The environment to update (``os.environ`` by default; tests pass a dict).
        root: Where the replacement folders go.

    Returns:
        The variables that were set, with their new values (empty when nothing changed or when no
        writable temporary folder exists, which is logged).
    """
    env = os.environ if environ is None else environ
    names = dict(CACHE_VARIABLES)
    if not _writable_dir(env.get("HOME"), create=False):
        names |= HOME_CACHE_VARIABLES
    pending = [name for name in names if not _writable_dir(env.get(name))]
    if not pending:
        return {}
    try:
        base = root if root is not None else Path(tempfile.gettempdir()) / f"cwdm-cache-{os.getuid()}"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no writable temporary folder for the compiler caches (%s); leaving %s", exc, pending)
        return {}
    changed: dict[str, str] = {}
    for name in pending:
        folder = base / names[name]
        if env.get(name):
            log.warning("%s=%s is not writable; using %s", name, env[name], folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = changed[name] = str(folder)
    return changed


def _writable_dir(value: str | None, create: bool = True) -> bool:
    """Whether ``value`` names a folder that exists and is writable, or (``create``) can be created."""
    if not value:
        return False
    path = Path(value)
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def configure_process(*, cudnn_benchmark: bool) -> dict[str, str]:
    """Make the process-wide settings of a run; called once by an entry point, before the first CUDA call.

    Args:
        cudnn_benchmark: Turn on cuDNN autotuning (the GPU fast path, ``fast_path: true``); it picks the
            fastest convolution algorithm per shape once, and matters only where cuDNN runs.

    Returns:
        The cache variables that were redirected (:func:`ensure_writable_caches`).
    """
    changed = ensure_writable_caches()  # the CUDA driver reads CUDA_CACHE_PATH at its first call
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    return changed
