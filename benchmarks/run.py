"""Speed benchmark of cWDM inference: ``python benchmarks/run.py`` (``--help`` for the options).

Always (any machine):
  * FLOPs of one full-resolution forward of the published U-Net (1 x 32 x 112 x 112 x 80), counted
    with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no arithmetic runs).
  * CPU, at a reduced size: our float32 denoiser step (``cwdm.inference.fastpath``, the CPU fast path)
    against a plain eager float32 call of the same module under ``torch.no_grad()``, interleaved in one
    process (the order rotates every repetition), as median ratios of wall time and of process CPU time;
    plus the channels-last layout that the CPU fast path leaves off, optionally torch.compile, and on a
    CPU with native bf16 (AVX512-BF16 or AMX) the bf16 autocast path that ``precision: bf16`` selects
    there. ``--cpu-weights DIR`` times a real model of that folder (e.g. ``weights/demo``, its own
    architecture) instead of a random published-width one.

With a CUDA GPU (skipped otherwise; ``--dry-run-cpu`` runs this code on the CPU with a tiny model to
check the script, reported as a dry run), published configuration at full resolution, batch 1:
  * time per denoiser step (CUDA events, median) and peak GPU memory for: fp32 eager without TF32
    (the numerical reference), fp32 eager with PyTorch's default TF32 convolutions, bf16 autocast
    eager (``fast_path: false``), the fast path (default), with channels-last, with CUDA graphs,
    and with ``--compile`` also torch.compile (with and without CUDA graphs);
  * achieved TFLOP/s (counted FLOPs / step time) and its fraction of ``--peak-tflops``;
  * error of each variant against the fp32 reference on the same input (relative L2 error of one
    denoiser output), and the PSNR between fp32 and fast-path 100-step DDPM samples from the same seed
    and condition (decoded to image space, clamped to [0, 1], data range 1);
  * time per case end to end (``Synthesizer.run`` on one example case: read, preprocess, sample
    ``--case-steps`` steps, post-process, write) and its peak GPU memory, for the default fast path and
    with CUDA graphs.

Weights: random (every layer at PyTorch's default initialisation, including the output convolutions
that the published code zero-initialises), unless ``--weights DIR`` names a published-layout weights
directory; timings do not depend on the weights, the error figures do.

Output: a Markdown report on stdout (machine, versions, date, load) and, with ``--json PATH``, the raw
numbers. Nothing is estimated: what was not run is absent from the report.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import functools
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import cwdm
from cwdm.cases.discovery import read_case
from cwdm.config import ModelSpec, RunParameters
from cwdm.inference.casework import prepare_case
from cwdm.inference.fastpath import FastPathOptions, prepare_denoiser
from cwdm.method.denoiser import Denoiser, DenoiserConfig
from cwdm.runtime import Runtime, cpu_has_native_bf16
from cwdm.weights.folder import WeightsDir

REPO = Path(__file__).resolve().parents[1]
FULL_SHAPE = (1, 32, 112, 112, 80)
EXAMPLE_CASE = REPO / "examples" / "pseudo_validation" / "BraTS-GLI-00001-000"

#: Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity), used when
#: ``--peak-tflops`` is not given; matched against ``torch.cuda.get_device_name()`` in this order.
DATASHEET_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
)


# -- helpers -----------------------------------------------------------------------------------------


def random_denoiser(config: DenoiserConfig, seed: int = 0) -> Denoiser:
    """A denoiser with every layer at PyTorch's default initialisation (deterministic in ``seed``)."""
    torch.manual_seed(seed)  # a benchmark script, not the library: default initialisers draw from it
    model = Denoiser(config)
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            module.reset_parameters()
    return model.eval()


def count_flops(config: DenoiserConfig, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward at ``shape``, counted on the meta device (convolutions and matmuls)."""
    with torch.device("meta"):
        model = Denoiser(config)
        x = torch.empty(shape)
        t = torch.zeros(shape[0], dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Full float32 convolutions and matmuls (no TF32), restored afterwards."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        saved = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        return
    saved_flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_flags


def relative_error(got: Tensor, reference: Tensor) -> float:
    return float((got.double() - reference.double()).norm() / reference.double().norm())


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def example_condition(case_dir: Path, multiple: int = 32) -> Tensor:
    """The wavelet condition of an example case, preprocessed as the pipeline does: ``(1, 24, ...)``."""
    case = read_case(case_dir)
    prepared = prepare_case(case, case.target(), case_dir.parent, multiple, "brain_mask")
    return cwdm.build_condition(torch.from_numpy(prepared.cond)[None])


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cwdm": cwdm.__version__,
        "git_commit": _git_commit(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _git_commit() -> str | None:
    head = REPO / ".git" / "HEAD"
    with contextlib.suppress(OSError):
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (REPO / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    return None


# -- CPU ---------------------------------------------------------------------------------------------------


def cpu_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Our fp32 denoiser step against plain eager fp32 of the same module, interleaved, at a reduced size."""
    if args.cpu_weights is not None:
        weights = WeightsDir.open(args.cpu_weights)
        config = weights.spec.architecture
        model = weights.load(args.target, torch.device("cpu"))
    else:
        config = DenoiserConfig(model_channels=args.cpu_width, num_groups=min(32, args.cpu_width))
        model = random_denoiser(config)
    shape = (1, 32, *args.cpu_size)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator)
    t = torch.tensor([500])
    cpu = torch.device("cpu")
    options = FastPathOptions.resolve(cpu)
    ours = prepare_denoiser(model, Runtime(cpu, "fp32"), options)  # converts in place: still the same module

    def baseline() -> Tensor:
        with torch.no_grad():
            return model(x, t)

    candidates: dict[str, Callable[[], Tensor]] = {"baseline": baseline, "ours": lambda: ours(x, t)}
    channels_last = prepare_denoiser(
        copy.deepcopy(model), Runtime(cpu, "fp32"), FastPathOptions(channels_last=True)
    )
    candidates["channels_last"] = lambda: channels_last(x, t)
    if cpu_has_native_bf16():
        bf16 = prepare_denoiser(copy.deepcopy(model), Runtime(cpu, "bf16"), FastPathOptions.resolve(cpu))
        candidates["bf16"] = lambda: bf16(x, t)
    compile_s = None
    if args.cpu_compile:
        compiled = prepare_denoiser(copy.deepcopy(model), Runtime(cpu, "fp32"), FastPathOptions(compile=True))
        start = time.perf_counter()
        compiled(x, t)
        compile_s = time.perf_counter() - start
        candidates["compile"] = lambda: compiled(x, t)

    reference = baseline()
    outputs = {name: fn() for name, fn in candidates.items()}
    errors = {name: float((out - reference).abs().max()) for name, out in outputs.items()}
    relative = {name: relative_error(out, reference) for name, out in outputs.items()}
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    cpu_time: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    load_before = os.getloadavg()
    for rep in range(args.cpu_reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate: no fixed order bias
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            candidates[name]()
            cpu_time[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    load_after = os.getloadavg()

    def ratios(times: dict[str, list[float]], name: str) -> list[float]:
        return [a / b for a, b in zip(times[name], times["baseline"], strict=True)]

    summary: dict[str, Any] = {}
    for name in names:
        wall_ratios, cpu_ratios = ratios(wall, name), ratios(cpu_time, name)
        summary[name] = {
            "median_wall_s": statistics.median(wall[name]),
            "median_cpu_s": statistics.median(cpu_time[name]),
            "median_ratio_wall": statistics.median(wall_ratios),
            "median_ratio_cpu": statistics.median(cpu_ratios),
            "ratio_wall_quartiles": _quartiles(wall_ratios),
            "ratio_cpu_quartiles": _quartiles(cpu_ratios),
            "max_abs_diff_vs_baseline": errors[name],
            "relative_error_vs_baseline": relative[name],
        }
    return {
        "config": {
            "model_channels": config.model_channels,
            "channel_mult": list(config.channel_mult),
            "num_res_blocks": config.num_res_blocks,
            "weights": None if args.cpu_weights is None else f"{args.cpu_weights} ({args.target})",
        },
        "threads": torch.get_num_threads(),
        "input_shape": list(shape),
        "flops_per_step": count_flops(config, shape),
        "repetitions": args.cpu_reps,
        "fast_path": options.describe(),
        "compile_s": compile_s,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "results": summary,
        "raw_wall_s": wall,
        "raw_cpu_s": cpu_time,
    }


def _quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


# -- GPU ---------------------------------------------------------------------------------------------------


class Accelerator:
    """The CUDA calls of the GPU part (timing with CUDA events, peak memory, cache release); on a CPU
    (``--dry-run-cpu``) wall-clock timing and no memory figures, to check the script without a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else str(self.device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def reserved_gib(self) -> float | None:
        return torch.cuda.max_memory_reserved(self.device) / 2**30 if self.cuda else None

    def time_s(self, call: Callable[[], object]) -> float:
        """Seconds one ``call()`` takes on the device (CUDA events around it on a GPU)."""
        if not self.cuda:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3


#: The GPU part's network and input in a dry run on the CPU: a tiny model, a small input.
DRY_RUN_CONFIG = DenoiserConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
DRY_RUN_SHAPE = (1, 32, 16, 16, 16)


def gpu_benchmark(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Step time, memory, TFLOP/s, errors and end-to-end time of the published configuration on a GPU.

    On a CPU device (``--dry-run-cpu``) the same code runs a tiny model, to check the script.
    """
    acc = Accelerator(device)
    config, shape = (DenoiserConfig(), FULL_SHAPE) if acc.cuda else (DRY_RUN_CONFIG, DRY_RUN_SHAPE)
    flops = count_flops(config, shape)
    precision = "bf16" if not acc.cuda or torch.cuda.is_bf16_supported() else "fp16"
    peak = args.peak_tflops or (_datasheet_peak(acc.name()) if acc.cuda else None)
    base, spec = _gpu_model(args, config)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=generator, device=device)
    t = torch.tensor([500], device=device)
    fp32, fast = Runtime(device, "fp32"), Runtime(device, precision)

    variants: list[tuple[str, Runtime, FastPathOptions, bool]] = [
        ("fp32 eager, IEEE (reference)", fp32, FastPathOptions(enabled=False), True),
        ("fp32 eager, TF32 convs (PyTorch default)", fp32, FastPathOptions(enabled=False), False),
        (f"{precision} autocast eager (fast_path: false)", fast, FastPathOptions(enabled=False), False),
        (f"fast path: {precision} + cudnn (default)", fast, FastPathOptions.resolve(device), False),
        (
            f"fast path with channels-last ({precision} + channels-last + cudnn)",
            fast,
            FastPathOptions(channels_last=True, cudnn_benchmark=True),
            False,
        ),
        ("fast path + CUDA graphs", fast, FastPathOptions.resolve(device, cuda_graphs=True), False),
    ]
    if args.compile:
        variants += [
            ("fast path + torch.compile", fast, FastPathOptions.resolve(device, compile=True), False),
            (
                "fast path + torch.compile + CUDA graphs",
                fast,
                FastPathOptions.resolve(device, compile=True, cuda_graphs=True),
                False,
            ),
        ]

    rows: list[dict[str, Any]] = []
    reference: Tensor | None = None
    for name, runtime, options, ieee in variants:
        row, out = _time_variant(acc, base, runtime, options, x, t, args.gpu_steps, ieee)
        if reference is None:
            reference = out
        row |= {
            "variant": name,
            "tflops": flops / row["median_step_s"] / 1e12,
            "relative_error_vs_fp32": relative_error(out, reference),
        }
        row["fraction_of_peak"] = row["tflops"] / peak if peak else None
        rows.append(row)
        step_ms, error = row["median_step_s"] * 1e3, row["relative_error_vs_fp32"]
        _progress(f"{name}: {step_ms:.1f} ms a step, error {error:.2e}")
        del out
        acc.free()

    result: dict[str, Any] = {
        "device": acc.name(),
        "dry_run": not acc.cuda,
        "precision": precision,
        "peak_tflops": peak,
        "peak_source": "--peak-tflops" if args.peak_tflops else "datasheet table in benchmarks/run.py",
        "weights": spec,
        "input_shape": list(shape),
        "flops_per_step": flops,
        "steps_timed": args.gpu_steps,
        "variants": rows,
    }
    result["sample_psnr"] = _sample_psnr(acc, base, fp32, fast, args)
    _progress(f"PSNR fp32 vs fast, {args.psnr_steps} steps: {result['sample_psnr']['psnr_db']:.2f} dB")
    if not args.skip_case:
        result["end_to_end"] = []
        for graphs in (False, True):
            result["end_to_end"].append(_end_to_end(acc, base, args, cuda_graphs=graphs))
            _progress(f"case end to end, cuda_graphs {graphs}: {result['end_to_end'][-1]['case_s']:.1f} s")
    return result


def _progress(line: str) -> None:
    # Each figure as soon as it exists: the report comes at the end, and a run stopped by a time
    # limit (a lent GPU's, say) would otherwise leave nothing behind.
    print(f"[benchmark] {line}", file=sys.stderr, flush=True)


def _datasheet_peak(name: str) -> float | None:
    for key, value in DATASHEET_BF16_PEAKS:
        if key in name:
            return value
    return None


def _gpu_model(args: argparse.Namespace, config: DenoiserConfig) -> tuple[Denoiser, str]:
    if args.weights is None:
        return random_denoiser(config), "random (PyTorch default initialisation)"
    weights = WeightsDir.open(args.weights)
    return weights.load(args.target), str(weights.checkpoint(args.target))


def _time_variant(
    acc: Accelerator,
    base: Denoiser,
    runtime: Runtime,
    options: FastPathOptions,
    x: Tensor,
    t: Tensor,
    steps: int,
    ieee: bool,
) -> tuple[dict[str, Any], Tensor]:
    acc.free()
    acc.reset_peak()
    model = copy.deepcopy(base).to(runtime.device)
    torch.backends.cudnn.benchmark = options.cudnn_benchmark  # a process-wide setting, per variant here
    fast = prepare_denoiser(model, runtime, options)
    precision = ieee_fp32() if ieee else contextlib.nullcontext()
    with precision:
        start = time.perf_counter()
        out = fast(x, t)  # compiles / autotunes / captures
        acc.sync()
        first_s = time.perf_counter() - start
        step = functools.partial(fast, x, t)
        for _ in range(3):
            step()
        times = [acc.time_s(step) for _ in range(steps)]
        out = step()
    row = {
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "first_call_s": first_s,
        "peak_memory_gib": acc.peak_gib(),
        "peak_reserved_gib": acc.reserved_gib(),
        "cuda_graphs_used": fast.captured_graphs > 0,
        "compiled": fast.compiled,
    }
    out = out.clone()
    del fast, model, step
    return row, out


def _sample_psnr(
    acc: Accelerator, base: Denoiser, fp32: Runtime, fast: Runtime, args: argparse.Namespace
) -> dict[str, Any]:
    """PSNR between the fp32 (IEEE) and fast-path samples of ``args.psnr_steps`` DDPM steps, same seed."""
    device = acc.device
    real = acc.cuda and EXAMPLE_CASE.is_dir()
    cond = (example_condition(EXAMPLE_CASE) if real else _synthetic_condition(acc.cuda)).to(device)
    images = {}
    for name, runtime, options in [
        ("fp32", fp32, FastPathOptions(enabled=False)),
        ("fast", fast, FastPathOptions.resolve(device)),
    ]:
        model = copy.deepcopy(base).to(device)
        network = prepare_denoiser(model, runtime, options)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        start = time.perf_counter()
        with ieee_fp32() if name == "fp32" else contextlib.nullcontext(), torch.inference_mode():
            coeffs = cwdm.sample(network, cond, steps=args.psnr_steps, generator=generator, sampler="ddpm")
            images[name] = cwdm.decode(coeffs).clamp(0, 1).cpu()
        acc.sync()
        images[f"{name}_s"] = time.perf_counter() - start
        del network, model
        acc.free()
    return {
        "steps": args.psnr_steps,
        "sampler": "ddpm",
        "condition": str(EXAMPLE_CASE.relative_to(REPO)) if real else "synthetic",
        "psnr_db": psnr(images["fast"], images["fp32"]),
        "fp32_s": images["fp32_s"],
        "fast_s": images["fast_s"],
    }


def _synthetic_condition(full_size: bool) -> Tensor:
    """Smooth random volumes in [0, 1] (224 x 224 x 160, or 32^3 for a dry run) as a condition."""
    generator = torch.Generator().manual_seed(2)
    volumes = torch.rand(1, 3, 7, 7, 5, generator=generator)
    size = (224, 224, 160) if full_size else (32, 32, 32)
    return cwdm.build_condition(torch.nn.functional.interpolate(volumes, size=size, mode="trilinear"))


def _end_to_end(
    acc: Accelerator, base: Denoiser, args: argparse.Namespace, cuda_graphs: bool
) -> dict[str, Any]:
    """``Synthesizer.run`` on one example case: read, preprocess, sample, post-process, write."""
    case_id = EXAMPLE_CASE.name
    with tempfile.TemporaryDirectory(prefix="cwdm-bench-") as tmp:
        root = Path(tmp)
        shutil.copytree(EXAMPLE_CASE, root / "data" / case_id)
        weights = root / "weights"
        weights.mkdir()
        cases = cwdm.discover_cases(root / "data")
        target = cases[0].missing[0]
        cfg = base.config
        spec = ModelSpec(
            model_channels=cfg.model_channels,
            channel_mult=cfg.channel_mult,
            num_res_blocks=cfg.num_res_blocks,
            num_groups=cfg.num_groups,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
        )
        (weights / "model.yaml").write_text(spec.to_yaml())
        cwdm.write_state_dict(base.state_dict(), weights / f"{target}.safetensors")
        params = RunParameters(
            sampling_steps=args.case_steps, sampler="ddpm", cuda_graphs=cuda_graphs, device=acc.device.type
        )
        acc.free()
        acc.reset_peak()
        start = time.perf_counter()
        synth = cwdm.Synthesizer.from_weights(weights, params, [target])
        loaded_s = time.perf_counter() - start
        report = synth.run(cases, root / "out")
        total_s = time.perf_counter() - start
        result = report.cases[0]
        if result.status != "written":
            raise RuntimeError(f"benchmark case not written: {result.error}")
        row = {
            "cuda_graphs": cuda_graphs,
            "steps": args.case_steps,
            "model_load_s": loaded_s,
            "case_s": result.elapsed_s,
            "run_s": report.elapsed_s,
            "total_s_including_model_load": total_s,
            "peak_memory_gib": acc.peak_gib(),
        }
        del synth
        acc.free()
        return row


# -- report ----------------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"## Benchmark run {m['date_utc']}",
        "",
        f"- machine: {m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
        + (f", GPU {m['gpu']} x{m['gpu_count']}" if "gpu" in m else ", no GPU"),
        f"- versions: Python {m['python']}, torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
        f"cwdm {m['cwdm']} (commit {m['git_commit']})",
        f"- load average (1, 5, 15 min) at start: {m['load_average_1_5_15']}",
        f"- FLOPs of one full-resolution forward {tuple(FULL_SHAPE)}, published U-Net, counted: "
        f"{results['flops_full'] / 1e12:.3f} TFLOP",
        "",
    ]
    if "gpu" in results:
        g = results["gpu"]
        peak = f"{g['peak_tflops']} TFLOP/s ({g['peak_source']})" if g["peak_tflops"] else "unknown"
        where = "DRY RUN, tiny model, NOT A MEASUREMENT" if g["dry_run"] else "full resolution"
        lines += [
            f"### GPU part: {g['device']}, {where}, {tuple(g['input_shape'])}, batch 1, "
            f"weights {g['weights']}",
            f"bf16 peak used: {peak}",
            "",
            "| variant | step (ms, median) | TFLOP/s | of peak | peak memory (GiB) | rel. error vs fp32 |",
            "|---|---|---|---|---|---|",
        ]
        for row in g["variants"]:
            fraction = f"{row['fraction_of_peak']:.1%}" if row["fraction_of_peak"] else "n/a"
            lines.append(
                f"| {row['variant']} | {row['median_step_s'] * 1e3:.1f} | {row['tflops']:.1f} | {fraction} | "
                f"{_gib(row['peak_memory_gib'])} | {row['relative_error_vs_fp32']:.2e} |"
            )
        s = g["sample_psnr"]
        lines += [
            "",
            f"PSNR between fp32 and fast-path {s['steps']}-step {s['sampler']} samples (same seed, condition "
            f"{s['condition']}): {s['psnr_db']:.2f} dB (fp32 {s['fp32_s']:.1f} s, fast {s['fast_s']:.1f} s)",
        ]
        for row in g.get("end_to_end", []):
            lines.append(
                f"- end to end, {row['steps']} steps, cuda_graphs {row['cuda_graphs']}: case "
                f"{row['case_s']:.1f} s (run {row['run_s']:.1f} s, model load {row['model_load_s']:.1f} s), "
                f"peak memory {_gib(row['peak_memory_gib'])} GiB"
            )
        lines.append("")
    if "cpu" in results:
        c = results["cpu"]
        lines += [
            f"### CPU: {tuple(c['input_shape'])}, width {c['config']['model_channels']}, "
            f"{c['flops_per_step'] / 1e9:.1f} GFLOP a step, {c['repetitions']} interleaved repetitions",
            f"CPU fast path: {c['fast_path']}; load average before {c['load_average_before']}, after "
            f"{c['load_average_after']}",
            "",
            "| candidate | median wall (s) | median CPU (s) | ratio to baseline, wall: median [IQR] "
            "| ratio, CPU time: median [IQR] | max abs diff | relative error |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in c["results"].items():
            qw, qc = row["ratio_wall_quartiles"], row["ratio_cpu_quartiles"]
            lines.append(
                f"| {name} | {row['median_wall_s']:.3f} | {row['median_cpu_s']:.3f} | "
                f"{row['median_ratio_wall']:.3f} [{qw[0]:.3f}, {qw[1]:.3f}] | "
                f"{row['median_ratio_cpu']:.3f} [{qc[0]:.3f}, {qc[1]:.3f}] | "
                f"{row['max_abs_diff_vs_baseline']:.1e} | {row['relative_error_vs_baseline']:.1e} |"
            )
        if c["compile_s"] is not None:
            lines.append(f"\ntorch.compile (CPU) first call: {c['compile_s']:.0f} s")
    return "\n".join(lines) + "\n"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU part")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU part")
    parser.add_argument(
        "--cpu-size",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        default=(32, 32, 32),
        help="reduced wavelet-space size of the CPU comparison, multiples of 16 (default 32,32,32)",
    )
    parser.add_argument("--cpu-width", type=int, default=64, help="model_channels on the CPU (default 64)")
    parser.add_argument("--cpu-reps", type=int, default=15, help="interleaved repetitions on the CPU")
    parser.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on the CPU")
    parser.add_argument(
        "--cpu-weights", type=Path, default=None, help="time --target of this weights folder on the CPU"
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the GPU in TFLOP/s (default: the datasheet table in this file)",
    )
    parser.add_argument("--gpu-steps", type=int, default=50, help="timed denoiser steps per GPU variant")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the GPU")
    parser.add_argument("--psnr-steps", type=int, default=100, help="DDPM steps of the PSNR samples")
    parser.add_argument("--case-steps", type=int, default=1000, help="sampling steps of the end-to-end case")
    parser.add_argument("--skip-case", action="store_true", help="skip the end-to-end case")
    parser.add_argument("--weights", type=Path, default=None, help="published-layout weights directory")
    parser.add_argument("--target", default="t1n", help="which model of --weights (default t1n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="run the GPU part's code on the CPU with a tiny model (checks the script; not a measurement)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results: dict[str, Any] = {"machine": machine()}
    results["flops_full"] = count_flops(DenoiserConfig(), FULL_SHAPE)
    if args.dry_run_cpu:
        results["gpu"] = gpu_benchmark(args, torch.device("cpu"))
    elif torch.cuda.is_available() and not args.cpu_only:
        results["gpu"] = gpu_benchmark(args, torch.device("cuda", torch.cuda.current_device()))
    if not args.gpu_only:
        results["cpu"] = cpu_benchmark(args)
    report = render(results)
    sys.stdout.write(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
