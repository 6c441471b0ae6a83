"""Reading and writing denoiser weights without executing pickled code.

A checkpoint is a plain state dict in the published layout (docs/METHOD.md, "The denoiser"): ``.pt``/``.pth``
files are read with ``torch.load(weights_only=True)``, ``.safetensors`` with the safetensors library.
Loading is strict: a mismatch names the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import replacing
from ..errors import CheckpointError
from ..method.denoiser import Denoiser, DenoiserConfig

StateDict = Mapping[str, Tensor]

#: File suffixes accepted as checkpoints.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
#: The most bytes a ``.pt`` archive may inflate to when the architecture is not known (the published
#: denoiser takes a few hundred megabytes): a torch archive may hold compressed entries, so a small
#: file could otherwise inflate to exhaust memory.
MAX_CHECKPOINT_BYTES = 2**33
_SHOWN_PER_KIND = 5


def read_state_dict(path: Path | str, max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read a state dict from ``path`` without running pickled code.

    Args:
        path: A ``.pt``/``.pth`` (torch zip or legacy format, weights-only) or ``.safetensors`` file.
        max_bytes: The most bytes a ``.pt`` archive's entries may inflate to (checked on its directory
            before anything is read); default :data:`MAX_CHECKPOINT_BYTES`. A ``.safetensors`` file
            cannot hold more than its size (the library checks its offsets).

    Returns:
        The tensors by key, on the CPU, as stored.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt, inflates to more than ``max_bytes``,
            is not a flat mapping of tensors, or needs code execution to load.
    """
    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type {path.suffix!r}; expected one of {CHECKPOINT_SUFFIXES}"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix != ".safetensors":
        _check_archive_size(path, MAX_CHECKPOINT_BYTES if max_bytes is None else max_bytes)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():
            # weights_only refused an object that only arbitrary code could rebuild (torch words it
            # "Unsupported global: ..." or "unsupported GLOBAL posix.system whose module ... is blocked").
            raise CheckpointError(
                f"{path}: refused to load: the file needs code execution to unpickle "
                f"({_first_line(exc)}). Only plain state dicts of tensors are accepted."
            ) from exc
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt pickle: {_first_line(exc)})") from exc
    except Exception as exc:  # torch, zipfile and safetensors each raise their own types
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise CheckpointError(
            f"{path}: expected a flat state dict of tensors (the published layout), "
            f"got {type(loaded).__name__}"
        )
    return dict(loaded)


def _check_archive_size(path: Path, max_bytes: int) -> None:
    """Refuse a torch zip archive whose entries inflate to more than ``max_bytes`` (what its directory
    declares bounds what torch reads); other files are left to ``torch.load``."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # the legacy format, or a damaged file: torch.load says what it is
    if declared > max_bytes:
        raise CheckpointError(
            f"{path}: its archive inflates to {declared:,} bytes, more than the {max_bytes:,} its "
            "tensors can take; a damaged file, or one made to exhaust memory"
        )


def expected_bytes(model: torch.nn.Module) -> int:
    """A generous bound on the size of a checkpoint of ``model``: every tensor of its state dict stored
    as float64, plus 1 KiB per tensor and 16 MiB for the archive's other entries."""
    tensors = model.state_dict().values()
    return sum(value.numel() * 8 + 1024 for value in tensors) + 2**24


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    detail = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else "")
    return detail.strip()


def write_state_dict(state_dict: StateDict, path: Path | str) -> Path:
    """Write a state dict atomically, as safetensors or as a torch ``.pt`` file by suffix.

    Args:
        state_dict: Tensors by key (the published layout).
        path: Destination; ``.safetensors``, ``.pt`` or ``.pth``.

    Returns:
        ``path``, readable by every user (mode 0644), as a container run under another uid needs.
    """
    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported checkpoint type {path.suffix!r}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return path


def _describe(keys: list[str], label: str) -> str:
    shown = ", ".join(keys[:_SHOWN_PER_KIND])
    more = f", ... ({len(keys) - _SHOWN_PER_KIND} more)" if len(keys) > _SHOWN_PER_KIND else ""
    return f"{len(keys)} {label} ({shown}{more})"


def check_state_dict(state_dict: StateDict, model: torch.nn.Module, source: str = "checkpoint") -> None:
    """Check that ``state_dict`` has exactly the keys and shapes of ``model``.

    Raises:
        CheckpointError: listing the first few missing, unexpected and mis-shaped keys with counts.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            _describe(keys, label)
            for keys, label in (
                (missing, "missing keys"),
                (unexpected, "unexpected keys"),
                (misshaped, "mis-shaped keys (checkpoint vs model)"),
            )
            if keys
        ]
        raise CheckpointError(
            f"{source} does not match the denoiser architecture: "
            + "; ".join(parts)
            + ". Check model.yaml or the architecture keywords."
        )


def check_values(state_dict: StateDict, source: str = "checkpoint") -> None:
    """Check that every tensor holds finite floating-point numbers (a model with NaN weights would
    write NaN volumes).

    Raises:
        CheckpointError: naming the first offending keys and their count.
    """
    not_float = [key for key, value in state_dict.items() if not value.is_floating_point()]
    if not_float:
        raise CheckpointError(f"{source}: non-floating-point tensors ({', '.join(not_float[:5])})")
    not_finite = [key for key, value in state_dict.items() if not torch.isfinite(value).all()]
    if not_finite:
        shown = ", ".join(not_finite[:3]) + (", ..." if len(not_finite) > 3 else "")
        raise CheckpointError(
            f"{source}: NaN or infinite values in {len(not_finite)} tensors ({shown}); "
            "the checkpoint is damaged"
        )


def load_denoiser(
    checkpoint: Path | str | StateDict,
    config: DenoiserConfig | None = None,
    **architecture: Any,
) -> Denoiser:
    """Build a denoiser and load published-layout weights into it, strictly.

    Args:
        checkpoint: A ``.pt``/``.pth``/``.safetensors`` path or an already-loaded state dict.
        config: The architecture; the published configuration when omitted.
        **architecture: :class:`DenoiserConfig` fields overriding ``config``
            (for example ``model_channels=8, num_groups=8``).

    Returns:
        A float32 :class:`Denoiser` on the CPU in eval mode; move it with ``.to(device)``.

    Raises:
        CheckpointError: unreadable file, a key/shape mismatch, or weights that are not finite floats
            (:func:`check_values`).
        ConfigError: invalid architecture values.
    """
    base = config or DenoiserConfig()
    if architecture:
        fields = {**base.__dict__, **architecture}
        try:
            base = DenoiserConfig(**fields)
        except TypeError as exc:
            raise CheckpointError(f"unknown architecture keyword: {exc}") from exc
    model = Denoiser(base)
    if isinstance(checkpoint, (str, Path)):
        source = str(checkpoint)
        state_dict: StateDict = read_state_dict(checkpoint, max_bytes=expected_bytes(model))
    else:
        source = "state dict"
        state_dict = checkpoint
    check_state_dict(state_dict, model, source)
    check_values(state_dict, source)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model.eval()
