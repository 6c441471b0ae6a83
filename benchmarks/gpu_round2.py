"""GPU speed, round 2: the published network's denoiser step in every variant worth trying, and whole
cases end to end, each figure printed and saved the moment it is measured.

    python benchmarks/gpu_round2.py --out results/ --case CASE_DIR            # variants, then cases
    python benchmarks/gpu_round2.py --out results/ --only compile-max-autotune --timeout-s 120
    python benchmarks/gpu_round2.py --out results/ --case CASE_DIR --dry-run-cpu   # check the script

Every figure is one JSON line appended to ``OUT/results.jsonl`` (and printed), so a run cut short by
a time limit keeps everything measured before. Published configuration (64 channels, multipliers
1,2,2,4,4), full resolution (1 x 32 x 112 x 112 x 80) unless ``--batch`` says otherwise, random weights
(PyTorch's default initialisation): timings do not depend on the weights, the error figures do.

Variants, in this order (issue 17's): fp32 with IEEE convolutions (the reference every error is taken
against), fp32 with TF32 convolutions, the current fast path (bf16 autocast + cuDNN autotuning), the fast
path in fp32 (TF32 + autotuning), bf16 eager, channels-last 3D (bf16 + autotuning) with GroupNorm in
either layout, batch 2 and 4 of the fast path (time per case = step / batch), then ``torch.compile``
(default mode; max-autotune with ``--only``), each compiled variant in a subprocess with a time limit so
that a compiler that takes too long costs at most that limit. Per variant: median of ``--steps`` timed
steps (CUDA events, after warm-up), the first call's time (autotuning or compilation), peak memory,
and the relative L2 error of one step's output against the reference on the same input.

Cases end to end (``--case``: a case folder with one sequence missing): ``Synthesizer.run`` on it with
random full-size weights and the fast path, for a few sampling settings up to the published 1000 DDPM
steps: the time of the case (read, preprocess, sample, post-process, write) and of the model load.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (benchmarks/run.py: the shared helpers)

import cwdm  # noqa: E402
from cwdm.config import ModelSpec, RunParameters  # noqa: E402
from cwdm.inference.fastpath import FastPathOptions, prepare_denoiser  # noqa: E402
from cwdm.method import denoiser as denoiser_module  # noqa: E402
from cwdm.method.denoiser import DenoiserConfig  # noqa: E402
from cwdm.runtime import Runtime  # noqa: E402
from cwdm.weights.folder import WeightsDir  # noqa: E402

#: (name, precision, options keywords, batch, IEEE fp32, GroupNorm contiguous). Order matters: the first
#: is the reference of the error column.
VARIANTS: list[tuple[str, str, dict[str, Any], int, bool, bool]] = [
    ("fp32 IEEE (reference)", "fp32", {"enabled": False}, 1, True, False),
    ("fp32 TF32", "fp32", {"enabled": False}, 1, False, False),
    ("fast path bf16 (cudnn autotune)", "bf16", {"cudnn_benchmark": True}, 1, False, False),
    ("fast path fp32/TF32 (cudnn autotune)", "fp32", {"cudnn_benchmark": True}, 1, False, False),
    ("bf16 eager (no autotune)", "bf16", {"enabled": False}, 1, False, False),
    (
        "channels-last bf16 (cudnn autotune)",
        "bf16",
        {"channels_last": True, "cudnn_benchmark": True},
        1,
        False,
        False,
    ),
    (
        "channels-last bf16, GroupNorm contiguous",
        "bf16",
        {"channels_last": True, "cudnn_benchmark": True},
        1,
        False,
        True,
    ),
    ("fast path bf16, batch 2", "bf16", {"cudnn_benchmark": True}, 2, False, False),
    ("fast path bf16, batch 4", "bf16", {"cudnn_benchmark": True}, 4, False, False),
]
#: Compiled variants, each in its own process: (name, precision, compile mode).
COMPILED = {
    "compile-default": ("torch.compile default, bf16", "bf16", "default"),
    "compile-default-fp32": ("torch.compile default, fp32/TF32", "fp32", "default"),
    "compile-max-autotune": (
        "torch.compile max-autotune-no-cudagraphs, bf16",
        "bf16",
        "max-autotune-no-cudagraphs",
    ),
}
#: Sampling settings of the end-to-end cases: (sampler, steps, spacing).
CASE_SETTINGS = [("ddim", 1, "trailing"), ("ddim", 10, "trailing"), ("ddpm", 1000, "linspace")]


_START = time.monotonic()


def out_of_time(args: argparse.Namespace, record: Recorder, what: str) -> bool:
    """Whether ``--deadline-s`` has passed (then ``what`` is recorded as skipped)."""
    if args.deadline_s is None or time.monotonic() - _START < args.deadline_s:
        return False
    record("skipped", name=what, reason=f"the run's deadline of {args.deadline_s} s had passed")
    return True


class Recorder:
    """Appends each result as a JSON line to ``OUT/results.jsonl`` and prints it at once."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.jsonl"

    def __call__(self, kind: str, **values: Any) -> None:
        line = json.dumps({"kind": kind, **values})
        with self.path.open("a") as handle:
            handle.write(line + "\n")
        print(line, flush=True)


@contextlib.contextmanager
def groupnorm_contiguous() -> Iterator[None]:
    """GroupNorm computed on a contiguous copy, its result returned in the input's layout."""
    original = denoiser_module.GroupNorm32.forward

    def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
        out = original(self, x.contiguous())
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            return out.contiguous(memory_format=torch.channels_last_3d)
        return out

    denoiser_module.GroupNorm32.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        denoiser_module.GroupNorm32.forward = original  # type: ignore[method-assign]


def _setup(dry_run: bool) -> tuple[torch.device, DenoiserConfig, tuple[int, ...]]:
    if dry_run:
        return torch.device("cpu"), bench.DRY_RUN_CONFIG, bench.DRY_RUN_SHAPE
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: use --dry-run-cpu to check the script")
    return torch.device("cuda"), DenoiserConfig(), bench.FULL_SHAPE


def measure(
    acc: bench.Accelerator,
    base: torch.nn.Module,
    runtime: Runtime,
    options: FastPathOptions,
    x: torch.Tensor,
    t: torch.Tensor,
    steps: int,
    ieee: bool,
    gn_contiguous: bool,
) -> tuple[dict[str, Any], torch.Tensor]:
    acc.free()
    acc.reset_peak()
    model = copy.deepcopy(base).to(runtime.device)
    torch.backends.cudnn.benchmark = options.cudnn_benchmark
    fast = prepare_denoiser(model, runtime, options)
    with contextlib.ExitStack() as stack:
        if ieee:
            stack.enter_context(bench.ieee_fp32())
        if gn_contiguous:
            stack.enter_context(groupnorm_contiguous())
        start = time.perf_counter()
        out = fast(x, t)
        acc.sync()
        first_s = time.perf_counter() - start
        step = functools.partial(fast, x, t)
        for _ in range(3):
            step()
        times = [acc.time_s(step) for _ in range(steps)]
        out = step().clone()
    row = {
        "median_step_ms": 1e3 * statistics.median(times),
        "min_step_ms": 1e3 * min(times),
        "first_call_s": first_s,
        "peak_memory_gib": acc.peak_gib(),
        "compiled": fast.compiled,
    }
    del fast, model, step
    return row, out


def run_variants(args: argparse.Namespace, record: Recorder) -> None:
    device, config, shape = _setup(args.dry_run_cpu)
    acc = bench.Accelerator(device)
    flops = bench.count_flops(config, shape)
    base = bench.random_denoiser(config)
    generator = torch.Generator(device=device).manual_seed(0)
    reference: dict[int, torch.Tensor] = {}
    for name, precision, keywords, batch, ieee, gn in VARIANTS:
        if (args.only and args.only != name) or out_of_time(args, record, name):
            continue
        x = torch.randn((batch, *shape[1:]), generator=generator.manual_seed(0), device=device)
        t = torch.full((batch,), 500, device=device)
        runtime = Runtime(device, precision if device.type == "cuda" else "fp32")
        row, out = measure(acc, base, runtime, FastPathOptions(**keywords), x, t, args.steps, ieee, gn)
        if batch not in reference:
            reference[batch] = out if ieee else _reference(acc, base, x, t)
        error = bench.relative_error(out, reference[batch])
        record(
            "variant",
            name=name,
            batch=batch,
            per_case_ms=row["median_step_ms"] / batch,
            tflops=flops * batch / (row["median_step_ms"] / 1e3) / 1e12,
            relative_error_vs_fp32_ieee=error,
            **row,
        )
        acc.free()


def _reference(
    acc: bench.Accelerator, base: torch.nn.Module, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    fp32 = Runtime(x.device, "fp32")
    _, out = measure(acc, base, fp32, FastPathOptions(enabled=False), x, t, 1, True, False)
    return out


def run_compiled(args: argparse.Namespace, record: Recorder, key: str) -> None:
    """One compiled variant in this process (called in a subprocess by :func:`compiled_in_subprocess`)."""
    name, precision, mode = COMPILED[key]
    device, config, shape = _setup(args.dry_run_cpu)
    acc = bench.Accelerator(device)
    base = bench.random_denoiser(config)
    x = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(0), device=device)
    t = torch.full((1,), 500, device=device)
    runtime = Runtime(device, precision if device.type == "cuda" else "fp32")
    options = FastPathOptions(cudnn_benchmark=device.type == "cuda", compile=True, compile_mode=mode)  # type: ignore[arg-type]
    row, out = measure(acc, base, runtime, options, x, t, args.steps, False, False)
    error = bench.relative_error(out, _reference(acc, base, x, t))
    flops = bench.count_flops(config, shape)
    record(
        "variant",
        name=name,
        batch=1,
        per_case_ms=row["median_step_ms"],
        tflops=flops / (row["median_step_ms"] / 1e3) / 1e12,
        relative_error_vs_fp32_ieee=error,
        compile_s=row["first_call_s"],
        **row,
    )


def compiled_in_subprocess(args: argparse.Namespace, record: Recorder, key: str) -> None:
    command = [
        sys.executable,
        __file__,
        "--out",
        str(args.out),
        "--steps",
        str(args.steps),
        "--compiled",
        key,
    ]
    command += ["--dry-run-cpu"] if args.dry_run_cpu else []
    start = time.perf_counter()
    try:
        done = subprocess.run(command, timeout=args.timeout_s, capture_output=True, text=True, check=False)
    except subprocess.TimeoutExpired:
        record(
            "variant-not-finished",
            name=COMPILED[key][0],
            reason=f"compile and timing took over {args.timeout_s} s",
        )
        return
    print(done.stdout, end="", flush=True)  # the child recorded its line in results.jsonl already
    if done.returncode != 0:
        record(
            "variant-failed",
            name=COMPILED[key][0],
            seconds=time.perf_counter() - start,
            stderr=done.stderr[-1500:],
        )


def run_cases(args: argparse.Namespace, record: Recorder) -> None:
    """The published network (random weights) on one real case, end to end, for a few settings."""
    device, config, _ = _setup(args.dry_run_cpu)
    base = bench.random_denoiser(config)
    with tempfile.TemporaryDirectory(prefix="cwdm-e2e-") as tmp:
        root = Path(tmp)
        shutil.copytree(args.case, root / "data" / args.case.name, symlinks=False)
        case = cwdm.discover_cases(root / "data")[0]
        target = case.missing[0]
        spec = ModelSpec(
            model_channels=config.model_channels,
            channel_mult=config.channel_mult,
            num_res_blocks=config.num_res_blocks,
            num_groups=config.num_groups,
        )
        weights = root / "weights"
        weights.mkdir()
        (weights / "model.yaml").write_text(spec.to_yaml())
        cwdm.write_state_dict(base.state_dict(), weights / f"{target}.safetensors")
        torch.backends.cudnn.benchmark = device.type == "cuda"
        for index, (sampler, steps, spacing) in enumerate(CASE_SETTINGS):
            if out_of_time(args, record, f"case {sampler} {steps}"):
                continue
            steps = min(steps, 3) if args.dry_run_cpu else steps
            params = RunParameters(
                sampling_steps=steps, sampler=sampler, timestep_spacing=spacing, device=device.type
            )
            start = time.perf_counter()
            synth = cwdm.Synthesizer.from_weights(weights, params, [target])
            load_s = time.perf_counter() - start
            report = synth.run([case], root / f"out-{index}")
            result = report.cases[0]
            record(
                "case",
                sampler=sampler,
                steps=steps,
                spacing=spacing,
                precision=synth.runtime.precision,
                status=result.status,
                case_s=result.elapsed_s,
                model_load_s=load_s,
                peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            )
            del synth


def run_weight_errors(args: argparse.Namespace, record: Recorder) -> None:
    """One-step relative errors of TF32 and bf16 against IEEE fp32 with trained weights: the model of
    ``--case``'s missing sequence on the case's real condition, at a few noise levels."""
    device, _, _ = _setup(args.dry_run_cpu)
    acc = bench.Accelerator(device)
    folder = WeightsDir.open(args.weights)
    cond = bench.example_condition(args.case).to(device)
    target = cwdm.discover_cases(args.case.parent)[0].missing[0]
    model = folder.load(target)
    generator = torch.Generator(device=device).manual_seed(0)
    for timestep in (999, 500, 50):
        x = torch.cat([torch.randn((1, 8, *cond.shape[2:]), generator=generator, device=device), cond], dim=1)
        t = torch.full((1,), timestep, device=device)
        reference = _reference(acc, model, x, t)
        for name, precision in (("fp32 TF32", "fp32"), ("bf16 autocast", "bf16")):
            runtime = Runtime(device, precision if device.type == "cuda" else "fp32")
            _, out = measure(
                acc, model, runtime, FastPathOptions(cudnn_benchmark=True), x, t, 1, False, False
            )
            record(
                "trained-weights-error",
                weights=str(args.weights),
                target=str(target),
                timestep=timestep,
                name=name,
                relative_error_vs_fp32_ieee=bench.relative_error(out, reference),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--case", type=Path, help="a case folder with one sequence missing (end-to-end cases)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--only", help="one variant by name, or a compiled one (compile-default, ...)")
    parser.add_argument("--timeout-s", type=int, default=150, help="limit of each compiled variant")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-variants", action="store_true", help="only the compiled variants and cases")
    parser.add_argument("--deadline-s", type=float, help="start no measurement after this many seconds")
    parser.add_argument("--weights", type=Path, help="trained weights: one-step errors of each precision")
    parser.add_argument("--compiled", choices=sorted(COMPILED), help=argparse.SUPPRESS)
    parser.add_argument(
        "--dry-run-cpu", action="store_true", help="run the GPU code on the CPU with a tiny model"
    )
    args = parser.parse_args()
    record = Recorder(args.out)
    if args.compiled:
        run_compiled(args, record, args.compiled)
        return
    record("machine", **bench.machine(), dry_run=args.dry_run_cpu)
    if args.weights is not None:
        run_weight_errors(args, record)
        return
    if args.only in COMPILED:
        compiled_in_subprocess(args, record, args.only)
        return
    if not args.skip_variants:
        run_variants(args, record)
    if args.only:
        return
    # Issue 17's order: compiled (default mode) first, then whole cases, then the fp32 compile.
    if not args.skip_compile and not out_of_time(args, record, COMPILED["compile-default"][0]):
        compiled_in_subprocess(args, record, "compile-default")
    if args.case is not None:
        run_cases(args, record)
    if not args.skip_compile and not out_of_time(args, record, COMPILED["compile-default-fp32"][0]):
        compiled_in_subprocess(args, record, "compile-default-fp32")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
