"""Timings that can be trusted: a measured call repeated while it is cheap, its median kept, and the
machine's load beside it (how many cores other processes kept busy meanwhile), so that a number taken
on a busy machine says so.

The load is read from Linux's ``/proc/stat`` (all CPUs' busy time) less this process's own CPU time
(``os.times``, every thread): what is left is the work of other processes, including any scoring
workers this process started. Elsewhere the load is unknown (NaN).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Other processes keeping more than this share of the cores busy make a timing suspect.
BUSY_SHARE = 0.25


@dataclass(frozen=True)
class Timing:
    """Attributes:
    seconds: The median of ``runs``.
    runs: Each run's seconds, as the measured call reported them.
    other_cores: Mean number of cores other processes kept busy during the runs (NaN: unknown).
    load_1min: The one-minute load average when the first run started (NaN: unknown).
    """

    seconds: float
    runs: tuple[float, ...]
    other_cores: float
    load_1min: float

    def busy(self, cpus: int | None = None) -> bool:
        """Whether other processes kept more than :data:`BUSY_SHARE` of the cores busy."""
        return self.other_cores > BUSY_SHARE * (cpus or os.cpu_count() or 1)


def _machine_busy_seconds() -> float:
    """All CPUs' busy time since boot (NaN without ``/proc/stat``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def load_1min() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def measure(run: Callable[[], float], repeats: int = 3, cheap_s: float = 20.0) -> Timing:
    """Call ``run`` (which does the work and returns the seconds it counts) once, then again while the
    runs so far took under ``cheap_s`` in all, up to ``repeats`` runs.

    Args:
        run: The measured call.
        repeats: The most runs.
        cheap_s: Repeat only while the runs so far add up to less than this.
    """
    load = load_1min()
    busy, own, start = _machine_busy_seconds(), _own_seconds(), time.perf_counter()
    runs = [run()]
    while len(runs) < repeats and sum(runs) < cheap_s:
        runs.append(run())
    wall = time.perf_counter() - start
    others = (_machine_busy_seconds() - busy) - (_own_seconds() - own)
    other_cores = max(0.0, others / wall) if wall > 0 and math.isfinite(others) else math.nan
    return Timing(statistics.median(runs), tuple(runs), other_cores, load)
