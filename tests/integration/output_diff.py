"""How two runs' output files differ, in words: for the tests that compare a split or scheduled run with
one plain run (tests/integration/test_slurm.py). A failed ``==`` of two files' bytes prints a dump of
compressed bytes; this says which file, and whether only the deflate stream, the header (which fields of
the provenance) or the voxels (how many, by how much) differ."""

from __future__ import annotations

import gzip
import platform
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from cwdm.cases import gzip_codec
from cwdm.inference.provenance import read_record


@dataclass(frozen=True)
class Difference:
    """How one output differs between two runs."""

    name: str
    detail: str
    #: Whether it matters: a header (provenance) that differs, another shape, or voxels further apart
    #: than the tolerance; not a deflate stream alone, nor float rounding.
    material: bool


def differences(reference: Path, other: Path, names: list[str], tolerance: float) -> list[Difference]:
    """Each file of ``names`` (gzipped NIfTI-1) whose bytes differ between the two folders, and how.

    Args:
        reference: The folder of the plain run.
        other: The folder of the run compared with it.
        names: The file names to compare (present in both folders).
        tolerance: The largest voxel difference that is float rounding, not a material difference.
    """
    found = []
    for name in names:
        expected, got = (reference / name).read_bytes(), (other / name).read_bytes()
        if expected == got:
            continue
        expected_raw, got_raw = gzip.decompress(expected), gzip.decompress(got)
        if expected_raw == got_raw:
            detail = f"the same NIfTI deflated differently ({len(expected)} vs {len(got)} bytes)"
            found.append(Difference(name, detail, material=False))
            continue
        offset = int(struct.unpack_from("<f", expected_raw, 108)[0])  # NIfTI-1 vox_offset
        what, material = [], False
        if expected_raw[:offset] != got_raw[:offset]:
            records = read_record(reference / name) or {}, read_record(other / name) or {}
            keys = sorted({*records[0], *records[1]})
            changed = [
                f"{key}: {_short(records[0].get(key))} vs {_short(records[1].get(key))}"
                for key in keys
                if records[0].get(key) != records[1].get(key)
            ]
            what.append("header differs (" + ("; ".join(changed) or "provenance the same") + ")")
            material = True
        a = np.asarray(nib.Nifti1Image.from_bytes(expected_raw).dataobj, dtype=np.float64)
        b = np.asarray(nib.Nifti1Image.from_bytes(got_raw).dataobj, dtype=np.float64)
        if a.shape != b.shape:
            what.append(f"shape {a.shape} vs {b.shape}")
            material = True
        else:
            gap = np.abs(a - b)
            what.append(
                f"{np.count_nonzero(gap)} of {gap.size} voxels differ, by at most {gap.max():.3g} "
                f"(values up to {np.abs(a).max():.3g})"
            )
            material = material or bool(gap.max() > tolerance)
        found.append(Difference(name, ", ".join(what), material))
    return found


def machine() -> str:
    """The CPU and the libraries that compute and deflate the outputs, for a message about their bytes."""
    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (
        f"{cpu}; torch {torch.__version__}, numpy {np.__version__}, deflated by {gzip_codec.IMPLEMENTATION}"
    )


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
