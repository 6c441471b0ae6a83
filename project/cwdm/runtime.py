"""Where and how inference runs: the concrete device, the network's autocast precision, and the
per-case random generators.

This is the only module of the package that asks whether CUDA exists. Resolution rules (README,
"Parameters"):

- ``device: auto`` is ``cuda`` (the current CUDA device) when PyTorch sees a GPU, else ``cpu``;
  ``device: cuda`` without a GPU is a :class:`cwdm.ConfigError` (asking for a GPU and silently getting a
  CPU run that is a thousand times slower is worse than stopping).
- ``precision: auto`` is bf16 autocast on a CUDA GPU that supports bf16, else fp32.
- ``precision: bf16`` or ``fp16`` where that arithmetic is not available (any CPU, or bf16 on a GPU
  without bf16) falls back to fp32 with a logged warning, recorded in :attr:`Runtime.notes`: a
  parameters.yaml written for a GPU must still run on a CPU-only machine, and fp32 is the reference.
- Autocast covers only the network call; GroupNorm computes in float32 inside the network, and the
  sampler state stays float32 (STYLE.md section 4).

Randomness: each case gets its own generator, seeded from the run seed and the case id
(:func:`case_seed`), so that a case's output depends on neither the order of the cases nor on which
other cases share its batch. Same seed, same case id, same device and precision -> same output.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .config import DeviceName, PrecisionName
from .errors import ConfigError

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        dtype = self.autocast_dtype
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

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
    bf16_ok = on_cuda and torch.cuda.is_bf16_supported()
    if name == "auto":
        return ("bf16" if bf16_ok else "fp32"), ()
    if name == "fp32":
        return "fp32", ()
    if name not in _AUTOCAST_DTYPES:
        raise ConfigError(f"precision: unknown value {name!r}; expected auto, fp32, bf16 or fp16")
    if not on_cuda:
        return "fp32", (f"precision {name} is for CUDA GPUs; running on {device} in fp32 instead",)
    if name == "bf16" and not bf16_ok:
        return "fp32", ("this GPU does not support bf16; running in fp32 instead (fp16 is an option)",)
    return name, ()


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


def case_seed(seed: int, case_id: str) -> int:
    """The seed of one case's generator: the first 63 bits of SHA-256 of ``"<seed>/<case_id>"``.

    A hash (rather than, say, ``seed + index``) makes the value independent of the case's position
    in the run, and different for every case even when the run seeds are neighbours.
    """
    digest = hashlib.sha256(f"{seed}/{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def case_generator(seed: int, case_id: str, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`case_seed` (the sampler draws on that device)."""
    return torch.Generator(device=device).manual_seed(case_seed(seed, case_id))


def worker_devices(device: torch.device) -> tuple[torch.device, ...]:
    """The devices a run shares its cases over: every visible CUDA GPU when ``device`` is a GPU
    (restrict them with ``CUDA_VISIBLE_DEVICES`` or ``docker run --gpus``), else ``device`` alone."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count > 1:
            return tuple(torch.device("cuda", index) for index in range(count))
    return (device,)
