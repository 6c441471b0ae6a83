"""The weights a run uses when it is given none: the image's built-in folder, else the demo weights
that ship in the repository (``weights/demo``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

#: Set by the Dockerfile to the weights baked into the image.
DEFAULT_WEIGHTS_ENV = "CWDM_DEFAULT_WEIGHTS"
#: The demo weights of a source checkout (an editable install runs from it).
REPOSITORY_DEMO_WEIGHTS = Path(__file__).resolve().parents[3] / "weights" / "demo"


def shipped_weights() -> Path:
    """``$CWDM_DEFAULT_WEIGHTS`` when set, else the repository's ``weights/demo``.

    Raises:
        CheckpointError: neither exists (a wheel installed without the repository): pass ``--weights``.
    """
    named = os.environ.get(DEFAULT_WEIGHTS_ENV)
    candidate = Path(named) if named else REPOSITORY_DEMO_WEIGHTS
    if not candidate.is_dir():
        source = f"{DEFAULT_WEIGHTS_ENV}={named}" if named else "the repository's weights/demo"
        raise CheckpointError(
            f"no --weights given and the shipped weights ({source}, {candidate}) are not there: pass "
            "--weights DIR (one checkpoint per target and model.yaml; see weights/README.md)"
        )
    return candidate
