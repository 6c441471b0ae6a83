"""What each sampling setting costs in score: ``cwdm sweep``, in three parts: running it
(:mod:`.run`), reading its rows (:mod:`.analysis`: typed rows, means, Pareto fronts, the recommendation)
and showing them (:mod:`.report`: tables, plots, ``recommended.yaml``)."""

from __future__ import annotations

from .analysis import SettingSummary, SweepRow, comparable, read_rows, recommend, summarise
from .report import write_report
from .run import run_sweep

__all__ = [
    "SettingSummary",
    "SweepRow",
    "comparable",
    "read_rows",
    "recommend",
    "run_sweep",
    "summarise",
    "write_report",
]
