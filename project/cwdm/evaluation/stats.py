"""Intervals for numbers measured on a handful of held-out cases: the mean with a percentile bootstrap
95 % interval over cases, and the same for a paired difference (one case, two ways of completing it).

With eight cases an interval is wide; it is reported so that a difference smaller than it is read as
what it is. The bootstrap resamples cases with replacement from a seeded generator (reproducible), the
interval is the 2.5th and 97.5th percentiles of the resampled means (Efron and Tibshirani, "An
Introduction to the Bootstrap", 1993, ch. 13).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Resamples drawn, and the seed of their generator.
BOOTSTRAP_DRAWS = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A mean over cases and its bootstrap 95 % interval (NaN where no case has the number)."""

    mean: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 3) -> str:
        """``0.712 [0.651, 0.770]``; ``-`` without cases."""
        if self.n == 0:
            return "-"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    @property
    def excludes_zero(self) -> bool:
        """The interval lies wholly above or below 0 (a paired difference that the cases agree on)."""
        return self.n > 0 and (self.low > 0 or self.high < 0)


def bootstrap_mean(
    values: Sequence[float], draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """The mean of ``values`` (NaN ones left out) and its percentile bootstrap 95 % interval."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    picks = np.random.default_rng(seed).integers(0, finite.size, size=(draws, finite.size))
    means = finite[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(finite.mean()), float(low), float(high), int(finite.size))


def paired_difference(
    first: Sequence[float], second: Sequence[float], draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """The mean of ``first - second`` over the cases where both are measured, and its interval: the
    cases are resampled as pairs, so what both ways share (an easy case, a hard one) cancels."""
    if len(first) != len(second):
        raise ValueError(f"paired values of {len(first)} and {len(second)} cases")
    return bootstrap_mean([a - b for a, b in zip(first, second, strict=True)], draws, seed)
