"""The held-out draw: a pure function of its seed, keeping the kept ids, refusing impossible draws."""

from __future__ import annotations

import random

import pytest

from cwdm.cases.holdout import draw_heldout
from cwdm.errors import ConfigError

CANDIDATES = [f"BraTS-GLI-999{n}-000" for n in range(19, 28)]
KEEP = ["BraTS-GLI-99909-000", "BraTS-GLI-99912-000"]


def test_the_draw_is_reproducible_from_its_seed() -> None:
    first = draw_heldout(CANDIDATES, 8, 20261207, KEEP)
    assert first == draw_heldout(reversed(CANDIDATES), 8, 20261207, KEEP)  # order of the input is irrelevant
    assert set(KEEP) <= set(first) and len(first) == 8 and list(first) == sorted(first)
    # The oracle: the documented recipe written out with the standard library alone.
    expected = sorted(KEEP + random.Random(20261207).sample(sorted(CANDIDATES), 6))
    assert list(first) == expected
    others = {draw_heldout(CANDIDATES, 8, seed, KEEP) for seed in range(20)}
    assert len(others) > 5  # the seed matters


def test_impossible_draws_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot draw 12"):
        draw_heldout(CANDIDATES, 14, 0, KEEP)
    with pytest.raises(ConfigError, match="exceed"):
        draw_heldout(CANDIDATES, 1, 0, KEEP)
