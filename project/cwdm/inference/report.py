"""What a run did: one :class:`CaseResult` per case and the :class:`RunReport` of the run, its exit
status, and its JSON file, which is always written outside the output folder (the organisers' evaluator
reads every file there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..atomic import write_atomic
from ..config import SamplingSettings
from ..errors import ConfigError, CwdmError, Interrupted
from ..runtime import Runtime
from ..sequences import MRISequence
from ..version import __version__
from .outputs import is_inside
from .split import WorkPart

log = logging.getLogger(__name__)

CaseStatus = Literal["written", "skipped", "mismatched", "claimed", "failed", "ignored", "interrupted"]
#: Every status, in the order reports list them.
CASE_STATUSES: tuple[CaseStatus, ...] = (
    "written",
    "skipped",
    "mismatched",
    "claimed",
    "failed",
    "ignored",
    "interrupted",
)
#: Statuses shown in the one-line counts only when some case has them.
_SHOWN_WHEN_PRESENT = ("mismatched", "claimed", "interrupted")
#: Called after each case with its result.
CaseCallback = Callable[["CaseResult"], None]


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case.

    Attributes:
        case_id: The case folder name.
        status: ``written`` (output synthesised now), ``skipped`` (a complete output was already
            there, made with this run's settings, or with no record of them), ``mismatched`` (a
            complete output is there, but its header records other settings: it was kept, not
            replaced; ``--overwrite`` redoes it), ``claimed`` (another live process holds the case's
            claim and writes it; :mod:`cwdm.inference.claims`), ``failed`` (the case needed an output
            and did not get one), ``ignored`` (not a case with exactly one missing sequence,
            e.g. a complete training case) or
            ``interrupted`` (the run was stopped by a signal before the case was finished; a rerun
            does it).
        target: The synthesised sequence, when known.
        output: The output file (written or skipped cases).
        elapsed_s: Wall time spent on the case; a batch's sampling time is shared equally.
        error: Why the case failed, was ignored or was interrupted.
        error_type: The exception's class name, for failed cases.
        warnings: Remarks on a case that was written all the same (e.g. a constant input volume).
        uncertainty: With several draws (``samples``), the mean of their voxel-wise standard deviation
            inside the brain.
        writer: The process that wrote the output (``host:pid``), or holds the claim (``claimed``).
        provenance: How the output was made: the record written into its header now, or read from it
            (skipped and mismatched cases; :mod:`cwdm.inference.provenance`).
        mismatch: For ``mismatched`` cases, each setting that differs (output's value, run's value).
        stages_s: For a written case, the seconds each stage took: ``read`` and ``preprocess`` (summed
            over the three sequences, which are read concurrently), ``network`` (the case's share of its
            batch), ``postprocess`` and ``write``. Stages of different cases overlap when the run reads
            and writes in the background, so they may add up to more than ``elapsed_s``.
    """

    case_id: str
    status: CaseStatus
    target: MRISequence | None = None
    output: Path | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    error_type: str | None = None
    warnings: tuple[str, ...] = ()
    uncertainty: float | None = None
    writer: str | None = None
    provenance: Mapping[str, Any] | None = None
    mismatch: tuple[str, ...] = ()
    stages_s: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def slowest_stage(self) -> str | None:
        """The stage of :attr:`stages_s` that took longest, or None without stage times."""
        return max(self.stages_s, key=self.stages_s.__getitem__) if self.stages_s else None

    @property
    def ok(self) -> bool:
        """The case has its output (written now or before)."""
        return self.status in ("written", "skipped")

    @classmethod
    def interrupted(cls, case_id: str, target: MRISequence | None, signum: int) -> CaseResult:
        """The result of a case that a signal stopped before it was finished."""
        return cls(
            case_id,
            "interrupted",
            target,
            error=f"not finished: the run was stopped by {Interrupted(signum).signal_name}; a rerun does it",
            error_type="Interrupted",
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "status": self.status,
            "target": None if self.target is None else str(self.target),
            "output": None if self.output is None else str(self.output),
            "elapsed_s": round(self.elapsed_s, 3),
            "error": self.error,
            "error_type": self.error_type,
            "warnings": list(self.warnings),
            "uncertainty_mean_in_brain": self.uncertainty,
            "writer": self.writer,
            "settings_mismatch": list(self.mismatch),
            "provenance": None if self.provenance is None else dict(self.provenance),
            "stages_s": {stage: round(seconds, 3) for stage, seconds in self.stages_s.items()} or None,
            "slowest_stage": self.slowest_stage,
        }


@dataclass(frozen=True)
class RunReport:
    """The outcome of :meth:`Synthesizer.run`; :func:`write_report` saves it as JSON.

    Attributes:
        cases: One result per case, in the order the cases were given.
        out_dir: The output folder.
        settings: The effective sampling settings.
        runtime: Device and precision used.
        models: The checkpoint used for each loaded target.
        unavailable: Targets whose model could not be loaded, with the reason.
        started_at: UTC start time, ISO 8601.
        elapsed_s: Wall time of the run.
        interrupted_by: The number of the signal that stopped the run early, if one did.
        part: The part of a split run this report covers (:mod:`cwdm.inference.split`), if split.
        cases_total: With ``part``: the cases in the whole folder (this part has ``len(cases)``).
        process: This process (``host:pid``), as claims and ``writer`` name it.
        taken_over: Claims this run took over from dead processes: ``output name -> old holder``.
    """

    cases: tuple[CaseResult, ...]
    out_dir: Path
    settings: SamplingSettings
    runtime: Runtime
    models: Mapping[MRISequence, Path] = field(default_factory=dict)
    unavailable: Mapping[MRISequence, str] = field(default_factory=dict)
    started_at: str = ""
    elapsed_s: float = 0.0
    interrupted_by: int | None = None
    part: WorkPart | None = None
    cases_total: int | None = None
    process: str | None = None
    taken_over: Mapping[str, str] = field(default_factory=dict)

    def count(self, status: CaseStatus) -> int:
        return sum(result.status == status for result in self.cases)

    def counts_text(self) -> str:
        """``3 written, 0 skipped, 1 failed, 0 ignored`` (plus ``, 2 interrupted``, ``, 1 mismatched``,
        ``, 1 claimed`` when there are any)."""
        shown = [s for s in CASE_STATUSES if s not in _SHOWN_WHEN_PRESENT or self.count(s)]
        return ", ".join(f"{self.count(status)} {status}" for status in shown)

    @property
    def expected(self) -> tuple[CaseResult, ...]:
        """The cases that needed an output (all but the ignored ones)."""
        return tuple(result for result in self.cases if result.status != "ignored")

    @property
    def exit_code(self) -> int:
        """0 when there was at least one case to synthesise and every such case has its output; 128 +
        the signal number when a signal stopped the run (130 for SIGINT, 143 for SIGTERM); else 1."""
        if self.interrupted_by is not None:
            return 128 + self.interrupted_by
        expected = self.expected
        if not self.cases and self.part is not None and self.cases_total:
            return 0  # a part with no case of its own, in a folder that has cases: nothing to do
        return 0 if expected and all(result.ok for result in expected) else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "cwdm_version": __version__,
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 3),
            "exit_code": self.exit_code,
            "interrupted_by": (
                None if self.interrupted_by is None else Interrupted(self.interrupted_by).signal_name
            ),
            "out_dir": str(self.out_dir),
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
            "runtime_notes": list(self.runtime.notes),
            "settings": asdict(self.settings),
            "models": {str(seq): str(path) for seq, path in self.models.items()},
            "unavailable_models": {str(seq): reason for seq, reason in self.unavailable.items()},
            "part": None if self.part is None else self.part.to_record() | {"cases_total": self.cases_total},
            "process": self.process,
            "claims_taken_over": dict(self.taken_over),
            "counts": {status: self.count(status) for status in CASE_STATUSES},
            "cases": [result.to_record() for result in self.cases],
        }


def check_report_path(report_path: Path, out_dir: Path) -> None:
    """Refuse a report location inside the output folder (the evaluator reads every file there).

    Raises:
        ConfigError: ``report_path`` is inside ``out_dir``.
    """
    if is_inside(Path(report_path).parent, Path(out_dir)):
        raise ConfigError(
            f"report file {report_path} is inside the output folder {out_dir}; the output folder must "
            "hold predictions only: put the report elsewhere"
        )


def write_report(report: RunReport, path: Path) -> Path:
    """Write ``report`` as JSON to ``path``, atomically (never inside the output folder).

    Raises:
        ConfigError: ``path`` is inside the run's output folder.
        CwdmError: the file cannot be written.
    """
    path = Path(path)
    check_report_path(path, report.out_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(report.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise CwdmError(f"cannot write the run report {path} ({exc})") from exc
    return path
