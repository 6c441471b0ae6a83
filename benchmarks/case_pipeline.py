"""Case-pipeline benchmark (issue 23): what a case costs outside the network, against its I/O floor.

``python benchmarks/case_pipeline.py --json benchmarks/results/case_pipeline-<date>-<label>.json``

In one run, each figure the minimum of ``--reps`` repetitions (the machine may be shared):

1. The I/O floor of one case (``--case``, default the example ``BraTS-GLI-99904-000``): gzip-decompressing
   its three present sequences (one after the other), the exact 0.1/99.9 percentiles of each by
   ``np.partition`` on float32, and compressing one float32 output volume with zlib at level 1 (level 6
   and, when installed, ``isal`` and ``zlib-ng`` at their fastest levels are timed too, with the sizes).
2. The pipeline with a zero-cost network: :class:`cwdm.Synthesizer` on every case of ``--data`` with
   ``_synthesise`` replaced by a copy of the first condition (so the output compresses like a real one),
   sequential and with background I/O (and, where the code has them, ``prepare_workers`` workers):
   cases/s and seconds a case, which is the per-case time outside the network.
3. The demo network (``--weights``, default ``weights/demo``) at 1 step on the first ``--network-cases``
   cases: seconds a case, and the report's per-stage times where the code records them.

The GPU run is the same command on a GPU machine (``--device cuda``). The script runs on older code as
well (it only uses what the code has), so that before and after are measured by one script.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib
import json
import os
import platform
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from cwdm import RunParameters
from cwdm.cases.discovery import discover_cases, needed_targets
from cwdm.inference.synthesizer import Synthesizer
from cwdm.inference.throughput import Throughput

ROOT = Path(__file__).resolve().parents[1]
_QUANTILES = (0.001, 0.999)


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _best(fn, reps: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _exact_percentiles(values: np.ndarray) -> tuple[float, float]:
    flat = values.ravel()
    n = flat.size
    ranks = sorted({int(q * (n - 1)) + d for q in _QUANTILES for d in (0, 1) if int(q * (n - 1)) + d < n})
    part = np.partition(flat, ranks)
    return float(part[ranks[0]]), float(part[ranks[-1]])


def io_floor(case_dir: Path, reps: int) -> dict:
    """Decompress the inputs, exact percentiles in float32, compress one output."""
    files = sorted(p for p in case_dir.glob("*.nii.gz") if not p.name.endswith("-seg.nii.gz"))
    blobs = [p.read_bytes() for p in files]
    decompress_s, raws = _best(lambda: [gzip.decompress(b) for b in blobs], reps)
    volumes = [np.asarray(nib.Nifti1Image.from_bytes(r).dataobj, dtype=np.float32) for r in raws]
    percentile_s = [_best(lambda v=v: _exact_percentiles(v), reps)[0] for v in volumes]
    low, high = _exact_percentiles(volumes[0])
    output = np.clip(volumes[0], low, high)
    output = ((output - low) / max(high - low, 1e-12)).astype(np.float32)
    payload = nib.Nifti1Image(output, np.eye(4)).to_bytes()
    compress = {}
    for name, module, level in [
        ("zlib", zlib, 1),
        ("zlib", zlib, 6),
        ("isal", "isal.isal_zlib", 0),
        ("isal", "isal.isal_zlib", 2),
    ]:
        compress.update(_compress_entry(name, module, level, payload, reps))
    compress.update(_compress_entry("zlib-ng", "zlib_ng.zlib_ng", 1, payload, reps))
    floor = decompress_s + sum(percentile_s) + compress["zlib-1"]["s"]
    return {
        "case": case_dir.name,
        "inputs": [p.name for p in files],
        "decompress_inputs_s": decompress_s,
        "percentiles_float32_s": percentile_s,
        "compress_output": compress,
        "uncompressed_output_bytes": len(payload),
        "floor_s": floor,
        "floor_definition": "decompress 3 inputs + exact percentiles of 3 volumes + zlib-1 of one output",
    }


def _compress_entry(name: str, module, level: int, payload: bytes, reps: int) -> dict:
    if isinstance(module, str):
        try:
            module = importlib.import_module(module)
        except ImportError:
            return {}
    seconds, packed = _best(lambda: module.compress(payload, level), reps)
    return {f"{name}-{level}": {"s": seconds, "bytes": len(packed)}}


class _ZeroCostNetwork(Synthesizer):
    """The pipeline with a network that costs nothing: the 'synthesis' is the first condition."""

    def _synthesise(self, target, draws, on_step):
        return np.stack([item.cond[0] for item, _ in draws]).astype(np.float32)


def _throughputs(workers: int) -> dict[str, Throughput]:
    fields = {f.name for f in dataclasses.fields(Throughput)}
    modes = {"sequential": Throughput(background_io=False)}
    if "prepare_workers" in fields:
        modes["sequential"] = Throughput(background_io=False, prepare_workers=1)
        modes[f"background, {workers} workers"] = Throughput(background_io=True, prepare_workers=workers)
    else:
        modes["background"] = Throughput(background_io=True)
    return modes


def _run_cases(synth: Synthesizer, data: Path, reps: int) -> tuple[float, dict]:
    cases = discover_cases(data)
    best, report = float("inf"), None
    for _ in range(reps):
        out = Path(tempfile.mkdtemp(prefix="cwdm-bench-"))
        try:
            start = time.perf_counter()
            run = synth.run(cases, out / "pred")
            elapsed = time.perf_counter() - start
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if run.exit_code != 0:
            raise SystemExit(f"benchmark run failed: {run.counts_text()}")
        if elapsed < best:
            best, report = elapsed, run.to_dict()
    return best, report


def zero_cost_pipeline(data: Path, weights: Path, device: str, reps: int, workers: int) -> dict:
    cases = discover_cases(data)
    params = RunParameters(sampling_steps=1, device=device)
    results = {}
    for label, flow in _throughputs(workers).items():
        synth = _ZeroCostNetwork.from_weights(weights, params, needed_targets(cases), throughput=flow)
        wall, report = _run_cases(synth, data, reps)
        results[label] = {
            "cases": len(cases),
            "wall_s": wall,
            "cases_per_s": len(cases) / wall,
            "s_per_case": wall / len(cases),
            "stages_s": [c.get("stages_s") for c in report["cases"]],
            "loadavg": _loadavg(),
        }
    return results


def demo_network(data: Path, weights: Path, device: str, reps: int, count: int) -> dict:
    subset = Path(tempfile.mkdtemp(prefix="cwdm-bench-cases-"))
    try:
        for case in sorted(p for p in data.iterdir() if p.is_dir())[:count]:
            (subset / case.name).symlink_to(case.resolve())
        cases = discover_cases(subset)
        params = RunParameters(sampling_steps=1, device=device)
        synth = Synthesizer.from_weights(weights, params, needed_targets(cases))
        wall, report = _run_cases(synth, subset, reps)
    finally:
        shutil.rmtree(subset, ignore_errors=True)
    return {
        "cases": len(cases),
        "wall_s": wall,
        "s_per_case": wall / len(cases),
        "per_case": [
            {k: c.get(k) for k in ("case_id", "elapsed_s", "stages_s", "slowest_stage")}
            for c in report["cases"]
        ],
        "throughput": synth.throughput.describe(),
        "loadavg": _loadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "examples/pseudo_validation")
    parser.add_argument("--case", type=Path, default=ROOT / "examples/pseudo_validation/BraTS-GLI-99904-000")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--network-cases", type=int, default=3)
    parser.add_argument("--skip-network", action="store_true")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    result: dict = {
        "label": args.label,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "device": args.device,
        },
        "loadavg_start": _loadavg(),
    }
    result["io_floor"] = io_floor(args.case, args.reps)
    print(json.dumps({"io_floor_s": result["io_floor"]["floor_s"], "loadavg": _loadavg()}), flush=True)
    result["zero_cost_network"] = zero_cost_pipeline(
        args.data, args.weights, args.device, args.reps, args.workers
    )
    print(json.dumps({k: v["s_per_case"] for k, v in result["zero_cost_network"].items()}), flush=True)
    if not args.skip_network:
        result["demo_network_1_step"] = demo_network(
            args.data, args.weights, args.device, args.reps, args.network_cases
        )
    result["loadavg_end"] = _loadavg()
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
