"""The held-out cases of a training run: drawn once, before any training, from a written-down seed.

Every quality number we publish is measured on cases no model of ours was trained on. The draw is a
plain function of its inputs (candidate ids, the ids always kept, the count and the seed), so anyone can
redraw the same set: ``random.Random(seed).sample`` over the sorted candidates, which Python documents as
reproducible for a given seed across versions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from ..errors import ConfigError


def draw_heldout(
    candidates: Iterable[str], count: int, seed: int, keep: Iterable[str] = ()
) -> tuple[str, ...]:
    """The held-out case ids: ``keep`` plus cases drawn from ``candidates`` up to ``count``, sorted.

    Args:
        candidates: Case ids the draw may pick (``keep`` ids among them are not drawn twice).
        count: Size of the held-out set, ``keep`` included.
        seed: The seed of the draw (write it down beside the set).
        keep: Ids held out whatever the draw (e.g. cases older results were measured on).

    Raises:
        ConfigError: fewer candidates than needed, or more kept ids than ``count``.
    """
    kept = sorted(set(keep))
    pool = sorted(set(candidates) - set(kept))
    needed = count - len(kept)
    if needed < 0:
        raise ConfigError(f"{len(kept)} kept held-out cases exceed the held-out count {count}")
    if needed > len(pool):
        raise ConfigError(f"cannot draw {needed} held-out cases from {len(pool)} candidates")
    return tuple(sorted(kept + random.Random(seed).sample(pool, needed)))
