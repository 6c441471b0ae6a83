"""Provenance: every output says, in its own NIfTI header, that it is synthetic, from what and how.

Three places, for three readers:
- ``descrip`` (80 bytes, shown by ``fslhd``, ITK-SNAP, 3D Slicer, nibabel): ``SYNTHETIC cwdm <version>
  <target><-<sources> <sampler> <steps> <spacing> x<draws> seed<seed>`` (shortened from the right if
  a field is unusually long);
- ``intent_name`` (16 bytes): ``SYNTHETIC cwdm``, where a viewer shows the intent; the intent code stays
  "none", so readers that act on intents treat the volume as plain intensities;
- a NIfTI-1 header extension (code 6, "comment", ignored by readers that do not know it: ITK, the
  organisers' evaluator) with the full record as JSON: version, method, target, each source's file name
  and SHA-256, the model file's name and SHA-256 and every setting that changes the output. A rerun
  reads it back to tell whether a finished output was made with the run's settings
  (:func:`settings_mismatch`).
The run report holds the same record with absolute paths (a file that travels does not carry the
sender's folder layout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib

from ..cases.discovery import Case
from ..sequences import MRISequence, condition_order
from ..version import __version__

if TYPE_CHECKING:  # annotations only: provenance is read back without torch
    from ..config import SamplingSettings

log = logging.getLogger(__name__)
_RECORD_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_RECORD_REPR.maxlevel, _RECORD_REPR.maxstring, _RECORD_REPR.maxother = 2, 60, 60
_RECORD_REPR.maxlist = _RECORD_REPR.maxdict = 4

#: The marker of our extension's JSON, and its NIfTI extension code ("comment").
RECORD_KIND = "cwdm-synthesis-provenance"
EXTENSION_CODE = 6
INTENT_NAME = "SYNTHETIC cwdm"
METHOD = "cWDM conditional wavelet diffusion"
DESCRIP_BYTES = 80


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class DigestCache:
    """SHA-256 of files, computed once per (path, size, mtime): a checkpoint is hashed once per run."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: Path) -> str:
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = sha256_file(path)
        return self._known[key]


def run_settings(settings: SamplingSettings, precision: str) -> dict[str, Any]:
    """The settings of a run that change the written voxels (:meth:`SamplingSettings.output_record`)."""
    return settings.output_record(precision)


def case_record(
    case: Case,
    target: MRISequence,
    settings: Mapping[str, Any],
    checkpoint: Path | None,
    digest: DigestCache,
) -> dict[str, Any]:
    """The full provenance of one synthesis, with absolute paths (for the run report).

    Raises:
        OSError: an input or the checkpoint cannot be read (hashed).
    """
    sources = [
        {
            "sequence": str(seq),
            "path": str(Path(case.files[seq]).resolve()),
            "sha256": digest(case.files[seq]),
        }
        for seq in condition_order(target)
    ]
    model = None
    if checkpoint is not None:
        model = {"path": str(Path(checkpoint).resolve()), "sha256": digest(checkpoint)}
    return {
        "kind": RECORD_KIND,
        "synthetic": True,
        "generator": f"cwdm {__version__}",
        "method": METHOD,
        "case_id": case.case_id,
        "target": str(target),
        "sources": sources,
        "model": model,
        "settings": dict(settings),
    }


def file_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as it goes into the file: file names instead of absolute paths."""
    portable = json.loads(json.dumps(record))
    for source in portable["sources"]:
        source["file"] = Path(source.pop("path")).name
    if portable["model"] is not None:
        portable["model"]["file"] = Path(portable["model"].pop("path")).name
    return portable


def descrip(record: Mapping[str, Any]) -> str:
    """The 80-byte ``descrip`` text of a record (ASCII; cut from the right if ever too long)."""
    s = record["settings"]
    sources = ",".join(source["sequence"] for source in record["sources"])
    text = (
        f"SYNTHETIC {record['generator']} {record['target']}<-{sources} "
        f"{s['sampler']} {s['sampling_steps']} {s['timestep_spacing']} x{s['samples']} seed{s['seed']}"
    )
    return text.encode("ascii", "replace")[:DESCRIP_BYTES].decode("ascii")


def stamp(header: nib.Nifti1Header, record: Mapping[str, Any]) -> nib.Nifti1Header:
    """A copy of ``header`` that says it is synthetic: ``descrip``, ``intent_name`` and the extension.

    Extensions inherited from the input's header are dropped: they describe the acquisition.
    """
    stamped = header.copy()
    stamped["descrip"] = descrip(record).encode("ascii")
    stamped.set_intent("none", (), name=INTENT_NAME)
    stamped.extensions.clear()
    payload = json.dumps(file_record(record), sort_keys=True).encode("utf-8")
    stamped.extensions.append(nib.nifti1.Nifti1Extension(EXTENSION_CODE, payload))
    return stamped


#: The largest extension read back as a record (a record takes about 2 KB).
MAX_RECORD_BYTES = 2**16


def read_record(path: Path) -> dict[str, Any] | None:
    """The provenance record in an output's header; ``None`` when it has none (not written by cwdm, or
    by a version before records), the file cannot be read, or the record is not one this package writes
    (larger than :data:`MAX_RECORD_BYTES`, nested too deep, ``settings`` or ``model`` not mappings)."""
    try:
        image = nib.load(str(path))
        extensions = list(getattr(image.header, "extensions", ()))
    except Exception as exc:  # noqa: BLE001 - any unreadable file simply has no record
        log.debug("no provenance in %s (%s)", path, exc)
        return None
    for extension in extensions:
        if extension.get_code() != EXTENSION_CODE:
            continue
        content = extension.get_content()
        if not isinstance(content, bytes) or len(content) > MAX_RECORD_BYTES:
            continue
        try:
            record = json.loads(content.rstrip(b"\x00 "))
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if _is_record(record):
            return record
    return None


def _is_record(record: Any) -> bool:
    """Whether ``record`` has the shape of the records :func:`stamp` writes, as far as a rerun reads it."""
    return (
        isinstance(record, dict)
        and record.get("kind") == RECORD_KIND
        and isinstance(record.get("settings", {}), dict)
        and isinstance(record.get("model") or {}, dict)
    )


def settings_mismatch(
    recorded: Mapping[str, Any] | None, settings: Mapping[str, Any], model_sha256: str | None
) -> tuple[str, ...]:
    """How an output's recorded synthesis differs from this run's: ``("sampling_steps: output 1, run 2",
    ...)``; empty when it matches, or when there is no record to compare."""
    if recorded is None:
        return ()
    made = _mapping(recorded.get("settings"))
    differences = [
        f"{key}: output {_short(made.get(key))}, run {settings[key]!r}"
        for key in settings
        if made.get(key) != settings[key]
    ]
    made_model = _mapping(recorded.get("model")).get("sha256")
    if model_sha256 is not None and made_model != model_sha256:
        differences.append(f"model sha256: output {str(made_model)[:12]}, run {model_sha256[:12]}")
    return tuple(differences)


def source_mismatch(
    recorded: Mapping[str, Any] | None, case: Case, target: MRISequence, digest: DigestCache
) -> tuple[str, ...]:
    """How an output's recorded case, target and input checksums differ from ``case``'s: a file copied
    or renamed into place is not this case's synthesis. Empty when they match, or without a record.

    Raises:
        OSError: an input of ``case`` cannot be read (hashed).
    """
    if recorded is None:
        return ()
    differences = []
    if recorded.get("case_id") != case.case_id:
        differences.append(f"case: output {_short(recorded.get('case_id'))}, run {case.case_id!r}")
    if recorded.get("target") != str(target):
        differences.append(f"target: output {_short(recorded.get('target'))}, run {str(target)!r}")
    sources = recorded.get("sources")
    made = {
        source.get("sequence"): source.get("sha256")
        for source in (sources if isinstance(sources, list) else [])
        if isinstance(source, dict)
    }
    for seq in condition_order(target):
        sha = digest(case.files[seq])
        if made.get(str(seq)) != sha:
            differences.append(f"{seq} input sha256: output {str(made.get(str(seq)))[:12]}, run {sha[:12]}")
    return tuple(differences)


def _mapping(value: Any) -> Mapping[str, Any]:
    """A recorded field that should be a mapping, or an empty one (a record is a user's file)."""
    return value if isinstance(value, Mapping) else {}


def _short(value: Any, limit: int = 40) -> str:
    """A recorded value for a message: its repr, bounded in depth and items, cut to ``limit`` characters
    (a record is a user's file: a value may be megabytes long, or deeply nested)."""
    text = _RECORD_REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
