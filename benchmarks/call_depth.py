"""How many frames of ours lie between ``cwdm infer`` and the network call.

Runs ``cwdm infer`` in this process on one example case (one sampling step, the demo weights) with the
denoiser's ``forward`` wrapped to take the call stack once, and prints the frames that belong to the
``cwdm`` package, from the command down to the frame that calls the network. Run from the repository
root: ``python benchmarks/call_depth.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import cwdm
from cwdm.method.denoiser import Denoiser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(cwdm.__file__).resolve().parent


def main() -> int:
    stacks: list[list[traceback.FrameSummary]] = []
    forward = Denoiser.forward

    def recording(self, *args, **kwargs):  # noqa: ANN001, ANN202 (a wrapper of any signature)
        if not stacks:
            stacks.append(traceback.extract_stack()[:-1])
        return forward(self, *args, **kwargs)

    Denoiser.forward = recording  # type: ignore[method-assign]
    from cwdm.cli import app

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(
            ROOT / "examples" / "pseudo_validation" / "BraTS-GLI-99904-000", data / "BraTS-GLI-99904-000"
        )
        args = ["infer", str(data), str(Path(tmp) / "out"), "--weights", str(ROOT / "weights" / "demo")]
        with contextlib.suppress(SystemExit):
            app(args=[*args, "--sampling-steps", "1"], standalone_mode=False)
    ours = [f for f in stacks[0] if Path(f.filename).resolve().is_relative_to(PACKAGE)]
    for frame in ours:
        print(f"{Path(frame.filename).resolve().relative_to(PACKAGE.parent)}:{frame.lineno} {frame.name}")
    print(f"{len(ours)} frames of ours from the command to the network call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
