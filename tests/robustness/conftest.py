"""Fixtures of the bad-input and fault suite (issue 7).

Every scenario starts from the same good cases (seeded blob volumes on a non-identity grid, three
targets), adds a bad input or injects a fault, runs ``cwdm infer`` in process (``CliRunner``: its
stdout, stderr, exit status and JSON report), and compares the good cases' outputs byte for byte with a
clean run of the good cases alone (:func:`clean_outputs`). Inputs are checksummed before and after
(:func:`snapshot`: regular files by SHA-256, symbolic links by target, other entries by kind).

The good volumes hold multiples of 2.5 (0 ... 1000) stored as float32, so the same values can be stored
exactly as scaled integers (``int16`` with scl_slope 2.5, ...) and must give the same output.

Torch runs single-threaded here: the two cores of CI are shared with other jobs, and spinning OpenMP
threads made the tiny models up to twenty times slower under load; every run of a comparison (clean
and faulted) uses the same setting, so outputs stay comparable bit for bit.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cwdm.cli import app
from cwdm.config import ModelSpec
from cwdm.sequences import CANONICAL_ORDER

from ..conftest import AFFINE, smooth_blobs, write_tiny_weights

#: The good cases of every scenario and their missing sequence (three targets, three cohorts).
GOOD = {"BraTS-GLI-00101-000": "t2f", "BraTS-MEN-00102-000": "t1n", "BraTS-PED-00103-000": "t2w"}
#: Their grid: not a multiple of the network's size multiple on purpose (the pad path runs).
SHAPE = (38, 32, 42)
#: The id used for the bad case a scenario adds.
BAD = "BraTS-GLI-00900-000"
#: The tiny models of this suite: two U-Net levels, two DDPM steps.
SPEC = ModelSpec(
    model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8, sampling_steps=2, sampler="ddpm"
)
SEQUENCES = [str(seq) for seq in CANONICAL_ORDER]


# -- volumes and cases ------------------------------------------------------------------------------------


def good_levels(seed: int, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Integer levels 0 ... 400 of a seeded blob volume (the stored values are 2.5 times these)."""
    return np.round(smooth_blobs(shape, seed=seed).numpy().astype(np.float64) * 400.0)


def nifti_bytes(
    levels: np.ndarray,
    dtype: type | str = np.float32,
    slope: float = 2.5,
    inter: float = 0.0,
    affine: np.ndarray = AFFINE,
    nifti2: bool = False,
) -> bytes:
    """An uncompressed single-file NIfTI holding ``levels`` stored as ``dtype`` with an explicit scaling.

    Float types store ``levels * slope + inter`` unscaled; integer types store ``levels`` raw with
    scl_slope/scl_inter in the header (nibabel's writer would choose its own scaling, so the bytes are
    composed here).
    """
    header_class = nib.Nifti2Header if nifti2 else nib.Nifti1Header
    header = header_class()
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        raw = np.asarray(levels * slope + inter, dtype=dtype)
    else:
        raw = np.asarray(levels, dtype=dtype)
        header.set_slope_inter(slope, inter)
    header.set_data_shape(raw.shape)
    header.set_data_dtype(dtype)
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    offset = 544 if nifti2 else 352
    header["vox_offset"] = offset
    block = header.binaryblock
    return block + b"\0" * (offset - len(block)) + raw.tobytes(order="F")


def write_nifti(path: Path, levels: np.ndarray, **kwargs: object) -> Path:
    """:func:`nifti_bytes` to ``path``, gzipped when the name ends in ``.gz``."""
    data = nifti_bytes(levels, **kwargs)  # type: ignore[arg-type]
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def write_good_case(
    root: Path,
    case_id: str,
    missing: str | None,
    seed: int,
    suffix: str = ".nii.gz",
    shape: tuple[int, int, int] = SHAPE,
    **kwargs: object,
) -> Path:
    """A case folder of blob volumes (values 2.5 x levels, float32 by default) with ``missing`` left out."""
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for index, seq in enumerate(SEQUENCES):
        if seq != missing:
            write_nifti(folder / f"{case_id}-{seq}{suffix}", good_levels(10 * seed + index, shape), **kwargs)
    return folder


def good_seed(case_id: str) -> int:
    return list(GOOD).index(case_id) + 1


def case_file(data: Path, case_id: str, seq: str, suffix: str = ".nii.gz") -> Path:
    return data / case_id / f"{case_id}-{seq}{suffix}"


def patched(content: bytes, **fields: float) -> bytes:
    """NIfTI-1 bytes with header fields overwritten in place, as a damaged or hostile writer would leave
    them (nibabel's own setters refuse such values): ``scl_inter=inf``, ``datatype=1234``, ``dim1=-5``,
    ``vox_offset=1e30``, ``srow_x0=nan``."""
    block = bytearray(content)
    for name, value in fields.items():
        fmt, offset = _NIFTI1_FIELDS[name]
        struct.pack_into(fmt, block, offset, value)
    return bytes(block)


#: Offsets of NIfTI-1 header fields (little-endian, as nibabel writes them on this machine).
_NIFTI1_FIELDS = {
    "dim0": ("<h", 40),
    "dim1": ("<h", 42),
    "datatype": ("<h", 70),
    "pixdim1": ("<f", 80),
    "vox_offset": ("<f", 108),
    "scl_slope": ("<f", 112),
    "scl_inter": ("<f", 116),
    "srow_x0": ("<f", 280),
}


def gzip_bomb(content: bytes, extra_mib: int) -> bytes:
    """One valid gzip member holding ``content`` followed by ``extra_mib`` MiB of zeros: an honest header
    and volume, then a stream that inflates far past them (about 1 KB of file per MiB inflated).

    Built without deflating the zeros more than once: a full flush resets the compressor, so the block of
    a 16 MiB run of zeros is the same bytes each time and is repeated; the trailer's CRC and size are
    those of the whole inflated content, so any gzip reader inflates all of it without error.
    """
    chunk_mib = 16
    chunk = bytes(chunk_mib * 2**20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflater.compress(content) + deflater.flush(zlib.Z_FULL_FLUSH)
    block = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    repeats = extra_mib // chunk_mib
    crc = zlib.crc32(content)
    for _ in range(repeats):
        crc = zlib.crc32(chunk, crc)
    size = len(content) + repeats * len(chunk)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, size % 2**32)
    return header + first + block * repeats + deflater.flush(zlib.Z_FINISH) + trailer


# -- snapshots of inputs ------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): SHA-256 of regular files, the target of links,
    the kind of other entries (FIFOs are never opened)."""
    entries: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            relative = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entries[relative] = f"link -> {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                entries[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[relative] = f"mode {stat.S_IFMT(mode):o}"
    return entries


# -- running cwdm infer -----------------------------------------------------------------------------------


@contextmanager
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def restored_logging() -> Iterator[None]:
    """The command installs its own root handler (rich, on the runner's stderr): undo it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@dataclass
class Run:
    """One ``cwdm infer`` run: exit status, streams, JSON report (``None`` when none was written)."""

    code: int
    stdout: str
    stderr: str
    report: dict | None
    out: Path

    def case(self, case_id: str) -> dict:
        assert self.report is not None, self.stderr
        (record,) = [r for r in self.report["cases"] if r["case_id"] == case_id]
        return record

    def outputs(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.out.iterdir())} if self.out.is_dir() else {}

    def names(self) -> list[str]:
        return sorted(p.name for p in self.out.iterdir()) if self.out.is_dir() else []


def run_infer(data: Path, out: Path, weights: Path, *extra: str | Path, report: Path | None = None) -> Run:
    """``cwdm infer DATA OUT --weights W --device cpu --report R [extra]`` in process."""
    report = report or out.parent / f"{out.name}-report.json"
    if report.is_file():
        report.unlink()
    args = ["infer", str(data), str(out), "--weights", str(weights), "--device", "cpu"]
    args += ["--report", str(report), *map(str, extra)]
    with restored_logging(), single_thread():
        result = CliRunner().invoke(app, args, env={"COLUMNS": "3000"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    record = json.loads(report.read_text()) if report.is_file() else None
    return Run(result.exit_code, result.stdout, result.stderr, record, out)


def good_names(ids: list[str] | None = None) -> list[str]:
    return sorted(f"{case_id}-{GOOD[case_id]}.nii.gz" for case_id in ids or GOOD)


def assert_good_cases_identical(run: Run, clean: dict[str, bytes], ids: list[str] | None = None) -> None:
    """The good cases (all, or ``ids``) were written, and their outputs equal the clean run's bytes."""
    for case_id in ids or list(GOOD):
        record = run.case(case_id)
        assert record["status"] == "written", record
        name = f"{case_id}-{GOOD[case_id]}.nii.gz"
        written = (run.out / name).read_bytes()
        if written != clean[name]:  # inputs stored another way are other files: other SHA-256 in the record
            assert without_provenance(written) == without_provenance(clean[name]), f"{name} differs"


def without_provenance(content: bytes) -> bytes:
    """The NIfTI bytes of a gzipped output with its header extensions (the provenance record) removed;
    ``descrip`` stays, so the settings and sources it names are still compared."""
    image = nib.Nifti1Image.from_bytes(gzip.decompress(content))
    image.header.extensions.clear()
    return nib.Nifti1Image(np.asanyarray(image.dataobj), None, image.header).to_bytes()


def assert_reported(run: Run, case_id: str, status: str, *words: str, error_type: str | None = None) -> None:
    """The case has ``status`` in the report; its error (or warnings) holds every word; the error is on
    stderr with the case id, and the case and its status are in the summary table."""
    record = run.case(case_id)
    assert record["status"] == status, record
    if error_type is not None:
        assert record["error_type"] == error_type, record
    text = record["error"] if status != "written" else "; ".join(record["warnings"])
    for word in words:
        assert word in text, (word, text)
    lines = [line for line in run.stderr.splitlines() if case_id in line]
    if words:
        assert any(words[0] in line for line in lines), (words[0], run.stderr)
    assert any(case_id in line and status in line for line in run.stdout.splitlines()), run.stdout


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four tiny models (read only by convention: scenarios that damage weights copy them)."""
    return write_tiny_weights(tmp_path_factory.mktemp("robust-weights") / "weights", spec=SPEC)


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good cases, written once; scenarios copy them."""
    data = tmp_path_factory.mktemp("robust-pristine") / "data"
    for case_id, missing in GOOD.items():
        write_good_case(data, case_id, missing, seed=good_seed(case_id))
    return data


@pytest.fixture(scope="session")
def clean_outputs(
    pristine: Path, weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    """The outputs of a clean run of the good cases alone, by file name."""
    out = tmp_path_factory.mktemp("robust-clean") / "out"
    run = run_infer(pristine, out, weights)
    assert run.code == 0, run.stderr
    assert run.names() == good_names()
    return run.outputs()


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good cases for one scenario."""
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


# -- the MLCube entry point, in process ---------------------------------------------------------------------

ENTRY_POINT = Path(__file__).resolve().parents[2] / "project" / "mlcube.py"


def load_entry_point() -> object:
    """project/mlcube.py as a module (it is a script: ``mlcube`` is also the MLCube runner's package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cwdm_mlcube_entry_point", ENTRY_POINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_mlcube(data: Path, out: Path, weights: Path, parameters: Path, report: Path) -> Run:
    """``mlcube.py infer --data_path ... --report_path REPORT`` in process."""
    entry = load_entry_point()
    args = ["infer", f"--data_path={data}", f"--parameters_file={parameters}", f"--weights={weights}"]
    args += [f"--output_path={out}", f"--report_path={report}"]
    with restored_logging(), single_thread():
        result = CliRunner().invoke(entry.app, args)  # type: ignore[attr-defined]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    record = json.loads(report.read_text()) if report.is_file() else None
    return Run(result.exit_code, result.stdout, result.stderr, record, out)
