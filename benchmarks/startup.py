"""Start-up times (issue 23): ``cwdm --help``, ``cwdm infer`` up to its first case, and the MLCube entry
point's ``infer`` up to its first case, each the minimum of ``--reps`` fresh processes.

"Up to the first case" is a whole run on one case whose output is already complete: the process starts,
imports, discovers the case, loads the model it needs and skips the case, so the wall time is what
every run pays before its first case. ``python benchmarks/startup.py DATA OUT --weights W`` with OUT
holding DATA's complete outputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _best(command: list[str], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights/demo")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    report = Path(tempfile.mkdtemp()) / "report.json"
    cli = [python, "-c", "import sys; from cwdm.cli import main; sys.argv[0] = 'cwdm'; main()"]
    infer = ["infer", str(args.data), str(args.out), "--weights", str(args.weights)]
    mlcube = [python, str(ROOT / "project/mlcube.py"), "infer", f"--data_path={args.data}"]
    mlcube += [f"--output_path={args.out}", f"--weights={args.weights}", f"--report_path={report}"]
    result = {
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "python -c pass (interpreter alone)": _best([python, "-c", "pass"], args.reps),
        "cwdm --help": _best([*cli, "--help"], args.reps),
        "cwdm infer, to the first case": _best([*cli, *infer, "--report", str(report)], args.reps),
        "mlcube.py infer, to the first case": _best(mlcube, args.reps),
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
