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


def test_the_command_draws_among_the_segmented_cases(tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from cwdm.cli import app

    from .segmentation.synthetic import write_case_folder

    ids = [f"BraTS-GLI-0000{n}-000" for n in range(1, 7)]
    for number, case_id in enumerate(ids):
        write_case_folder(tmp_path / "cases", case_id, seed=number, shape=(16, 16, 8), with_seg=number != 5)
    args = ["heldout", str(tmp_path / "cases"), "--count", "3", "--seed", "5", "--keep", ids[0]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    drawn = result.output.strip().split(",")
    assert drawn == list(draw_heldout(ids[:5], 3, 5, [ids[0]]))  # the last case has no labels: no candidate
    assert CliRunner().invoke(app, [*args[:3], "9"]).exit_code == 2  # more than there are
