"""What a run did: one :class:`CaseResult` per case and the :class:`RunReport` of the run, its exit
status, and its JSON file, which is always written outside the output folder (the organisers' evaluator
reads every file there).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..atomic import write_atomic
from ..errors import ConfigError, CwdmError, Interrupted
from ..sequences import MRISequence
from ..version import __version__
from .outputs import is_inside
from .split import WorkPart

if TYPE_CHECKING:  # annotations only: a report is read and written without torch
    from ..config import SamplingSettings
    from ..runtime import Runtime

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
#: The statuses of a case that has its output.
OK_STATUSES = ("written", "skipped")
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
        target_settings: The settings of the targets whose ``model.yaml`` defaults differ from
            ``settings`` (``targets:``).
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
    target_settings: Mapping[MRISequence, SamplingSettings] = field(default_factory=dict)

    def count(self, status: CaseStatus) -> int:
        return sum(result.status == status for result in self.cases)

    def counts_text(self) -> str:
        """The counts line (:func:`counts_text`)."""
        return counts_text(result.status for result in self.cases)

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
        if not self.cases and self.part is not None and self.cases_total:
            return 0  # a part with no case of its own, in a folder that has cases: nothing to do
        return exit_status(result.status for result in self.cases)

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
            "target_settings": {str(t): asdict(s) for t, s in self.target_settings.items()},
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


def write_report(report: RunReport, path: Path, previous_runs: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write ``report`` as JSON to ``path``, atomically (never inside the output folder), with the
    records of ``previous_runs`` (earlier runs of the same report file, newest first).

    Raises:
        ConfigError: ``path`` is inside the run's output folder.
        CwdmError: the file cannot be written.
    """
    path = Path(path)
    check_report_path(path, report.out_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = report.to_dict() | {"previous_runs": [dict(run) for run in previous_runs]}
        write_atomic(path, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise CwdmError(f"cannot write the run report {path} ({exc})") from exc
    return path


def counts_text(statuses: Iterable[str]) -> str:
    """``3 written, 0 skipped, 1 failed, 0 ignored`` (plus ``, 2 interrupted``, ``, 1 mismatched``,
    ``, 1 claimed`` when there are any): the one counts line of a run, a part or a merged run."""
    counted = Counter(statuses)
    shown = [s for s in CASE_STATUSES if s not in _SHOWN_WHEN_PRESENT or counted[s]]
    return ", ".join(f"{counted[status]} {status}" for status in shown)


def exit_status(statuses: Iterable[str]) -> int:
    """0 when at least one case needed an output and every such case has it, else 1 (ignored cases need
    none): the one rule of a run, a part and a merged run."""
    expected = [status for status in statuses if status != "ignored"]
    return 0 if expected and all(status in OK_STATUSES for status in expected) else 1


def default_report_path(out_dir: Path, part: WorkPart | None = None) -> Path:
    """``OUT-report.json`` beside the output folder (``OUT-report-partIofN.json`` for a part of a split
    run). The folder's absolute path gives the name, so that ``.`` or ``..`` work too."""
    folder = Path(out_dir).absolute().resolve()
    suffix = "" if part is None else f"-{part.suffix}"
    return folder.parent / f"{folder.name or 'output'}-report{suffix}.json"


def save_report(report: RunReport, path: Path) -> Path | None:
    """:func:`write_report`, keeping the runs an existing report at ``path`` recorded (its
    ``previous_runs``, newest first), and with a failure logged rather than raised: the outputs stand,
    and the log and the summary hold every case's outcome (the exit status still follows the cases)."""
    try:
        return write_report(report, path, previous_runs=_previous_runs(Path(path)))
    except CwdmError as exc:
        log.error("%s", exc)
        return None


def _previous_runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded in an existing report file (none when there is none, or it is not ours: it is
    then replaced, with a warning)."""
    if not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("%s: not a readable run report (%s); replacing it", path, type(exc).__name__)
        return []
    if not isinstance(earlier, dict) or "cwdm_version" not in earlier:
        log.warning("%s: not a cwdm run report; replacing it", path)
        return []
    history = earlier.pop("previous_runs", [])
    return [earlier, *(history if isinstance(history, list) else [])]
