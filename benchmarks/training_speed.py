"""Training speed of ``cwdm train``: steps per second, time to the first step, and on a GPU its utilisation.

    python benchmarks/training_speed.py DATA --steps 30 --json speed.json
    python benchmarks/training_speed.py DATA --code /path/to/other/checkout/project   # another version

Runs ``cwdm train`` (the code under ``--code``, default this checkout's ``project/``) as a subprocess on
the cases of DATA for ``--steps`` steps of one fixed configuration (the demo weights' architecture,
target t2f, seed 0), in a fresh temporary run folder, and reads its ``train_log.csv``:

- ``first_log_s``: wall time from the command's start to its first log row (start-up, reading the first
  cases, the first ``--log-every`` steps);
- ``steady_steps_per_s``: steps per second between the first and the last log row (the first rows hold
  the start-up, the rest is the steady state);
- on a GPU: ``nvidia-smi``'s utilisation and memory, sampled every 0.5 s while the command runs (mean
  and median over the samples after the first log row).

Pointing ``--code`` at a checkout of an older commit measures that version on the same machine with the
same configuration (the options both versions know); this is how the data-path change was measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The demo weights' architecture (weights/demo/model.yaml).
ARCHITECTURE = [
    "--model-channels",
    "16",
    "--channel-mult",
    "1,2,2,2,2",
    "--num-res-blocks",
    "1",
    "--num-groups",
    "8",
]


def _sample_gpu(samples: list[tuple[float, float, float]], stop: threading.Event) -> None:
    """Append (time, utilisation %, memory MiB) from nvidia-smi every 0.5 s until ``stop``."""
    while not stop.is_set():
        try:
            line = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.splitlines()[0]
            utilisation, memory = (float(v) for v in line.split(","))
            samples.append((time.monotonic(), utilisation, memory))
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return
        stop.wait(0.5)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="cwdm-train-speed-"))
    command = [
        sys.executable,
        "-m",
        "cwdm.cli",
        "train",
        str(args.data),
        str(run_dir / "run"),
        "--target",
        "t2f",
        *ARCHITECTURE,
        "--lr",
        "2e-4",
        "--iterations",
        str(args.steps),
        "--log-every",
        str(args.log_every),
        "--save-every",
        str(10 * args.steps),
        "--precision",
        args.precision,
        *(["--crop", args.crop] if args.crop else []),
        *(["--flip"] if args.flip else []),
        *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(args.code)}
    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_gpu, args=(samples, stop), daemon=True)
    if shutil.which("nvidia-smi"):
        sampler.start()
    start = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    stop.set()
    if done.returncode != 0:
        raise SystemExit(f"cwdm train failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = list(csv.DictReader((run_dir / "run" / "train_log.csv").open()))
    shutil.rmtree(run_dir, ignore_errors=True)
    steps = [int(row["step"]) for row in rows]
    elapsed = [float(row["elapsed_s"]) for row in rows]
    # The log's elapsed_s counts from the loop's start; the command's wall time also holds start-up.
    startup = wall - elapsed[-1]
    result: dict[str, Any] = {
        "code": str(args.code),
        "steps": args.steps,
        "crop": args.crop,
        "precision": args.precision,
        "wall_s": wall,
        "startup_s": startup,
        "first_log_s": startup + elapsed[0],
        "steady_steps_per_s": (steps[-1] - steps[0]) / (elapsed[-1] - elapsed[0]),
        "overall_steps_per_s": steps[-1] / wall,
        "machine": platform.node(),
        "cpu_count": os.cpu_count(),
        "flip": args.flip,
        "cache_dir": None if args.cache_dir is None else str(args.cache_dir),
    }
    steady_from = start + result["first_log_s"]
    steady = [(u, m) for t, u, m in samples if t >= steady_from]
    if steady:
        result["gpu_utilisation_mean_pct"] = statistics.fmean(u for u, _ in steady)
        result["gpu_utilisation_median_pct"] = statistics.median(u for u, _ in steady)
        result["gpu_memory_max_mib"] = max(m for _, m in steady)
        result["gpu_samples"] = len(steady)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="folder of complete training cases")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--crop", default="96,96,96", help="crop size, or '' for whole volumes")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--flip", action="store_true", help="random left-right flips (newer versions only)")
    parser.add_argument("--cache-dir", type=Path, help="the training cache folder (newer versions only)")
    parser.add_argument("--code", type=Path, default=REPO / "project", help="the project/ folder to run")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
