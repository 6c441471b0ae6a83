"""The bootstrap intervals against a plain NumPy loop (the oracle) and known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cwdm.evaluation.stats import bootstrap_mean, paired_difference


def test_the_interval_is_the_percentiles_of_resampled_means() -> None:
    values = [0.71, 0.64, 0.80, 0.55, float("nan"), 0.77, 0.69, 0.60, 0.74]
    got = bootstrap_mean(values, draws=2000, seed=7)
    finite = [v for v in values if not math.isnan(v)]
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(finite), size=(2000, len(finite)))
    means = [np.mean([finite[i] for i in row]) for row in picks]  # one resample at a time
    assert got.n == 8 and got.mean == pytest.approx(np.mean(finite))
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert got.low <= got.mean <= got.high


def test_a_paired_difference_cancels_what_both_share() -> None:
    hard_and_easy = [0.2, 0.9, 0.4, 0.8, 0.3, 0.7]
    better = [v + 0.05 for v in hard_and_easy]
    difference = paired_difference(better, hard_and_easy)
    assert difference.mean == pytest.approx(0.05) and difference.excludes_zero
    assert difference.high - difference.low < 1e-9  # every pair differs by the same amount
    unpaired = bootstrap_mean(better)
    assert unpaired.high - unpaired.low > 0.2  # the cases' spread, which pairing removes
    assert bootstrap_mean([]).n == 0 and bootstrap_mean([]).text() == "-"
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0], [1.0, 2.0])
