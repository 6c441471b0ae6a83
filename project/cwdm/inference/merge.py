"""One report and one exit status for a run split into parts (``cwdm report merge``).

Each part of a split run (:mod:`cwdm.inference.split`) writes its own JSON report. :func:`merge_reports`
reads them back and says, for the whole run: which parts are missing (no report) or unfinished (stopped
by a signal, or with cases another process still held), how many of the folder's cases no report
accounts for, each case's outcome, the counts, and an exit status that is 0 only when every part
reported, none is unfinished and every case has its output.
Reports of processes that were not split (several runs on one folder) merge too: each case keeps its
best outcome, and a case written by two processes is listed under ``written_twice``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import shown
from ..errors import ConfigError
from .report import CASE_STATUSES, OK_STATUSES, counts_text, exit_status

#: When reports disagree on a case, the outcome that stands (earlier wins).
_PRECEDENCE = ("written", "skipped", "mismatched", "failed", "interrupted", "claimed", "ignored")


@dataclass(frozen=True)
class MergedReport:
    """The whole run, from its parts' reports.

    Attributes:
        sources: The report files merged.
        num_parts: How many parts the run was split into (``None``: the reports are not of a split run).
        missing_parts: Part indices (0-based) with no report.
        unfinished_parts: Part indices whose report says the part did not finish, with why.
        cases: One record per case (from the report where its outcome stands), sorted by case id.
        written_twice: Cases that more than one process wrote.
        problems: Other inconsistencies (parts that saw different numbers of cases, ...).
        cases_total: The number of cases in the folder, as the parts' reports record it (the largest,
            if they differ); ``None`` for reports of runs that were not split.
    """

    sources: tuple[Path, ...]
    num_parts: int | None
    missing_parts: tuple[int, ...] = ()
    unfinished_parts: dict[int, str] = field(default_factory=dict)
    cases: tuple[dict[str, Any], ...] = ()
    written_twice: dict[str, list[str]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    cases_total: int | None = None

    def count(self, status: str) -> int:
        return sum(case["status"] == status for case in self.cases)

    @property
    def unaccounted(self) -> int | None:
        """How many of the folder's cases no report names (the cases of the missing parts, usually);
        ``None`` when the folder's count is not recorded."""
        return None if self.cases_total is None else max(self.cases_total - len(self.cases), 0)

    @property
    def exit_code(self) -> int:
        """0 when every part reported and finished, every case of the folder is in a report, and every
        case that needs an output has it; else 1."""
        if self.missing_parts or self.unfinished_parts or self.problems or self.unaccounted:
            return 1
        return exit_status(case["status"] for case in self.cases)

    def counts_text(self) -> str:
        return counts_text(case["status"] for case in self.cases)

    def headline(self) -> str:
        """``7 of 10 cases from 3 part(s): 7 written, ...; 3 unaccounted for (no report of part 2)``: the
        merge's first line."""
        reported = len(self.cases)
        of = "" if self.cases_total is None else f" of {self.cases_total}"
        parts = "" if self.num_parts is None else f" from {self.num_parts} part(s)"
        text = f"{reported}{of} cases{parts}: {self.counts_text()}"
        if self.unaccounted:
            missing = ", ".join(map(str, self.missing_parts))
            why = f"no report of part {missing}" if self.missing_parts else "in no part's report"
            text += f"; {self.unaccounted} unaccounted for ({why})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "merged_from": [str(path) for path in self.sources],
            "exit_code": self.exit_code,
            "num_parts": self.num_parts,
            "cases_total": self.cases_total,
            "cases_unaccounted": self.unaccounted,
            "missing_parts": list(self.missing_parts),
            "unfinished_parts": {str(k): v for k, v in self.unfinished_parts.items()},
            "written_twice": self.written_twice,
            "problems": list(self.problems),
            "counts": {status: self.count(status) for status in CASE_STATUSES},
            "cases": list(self.cases),
        }


#: The largest report read (a case takes about 2 KB of a report).
MAX_REPORT_BYTES = 2**28
#: The most parts a split run may have (the reports of more would not fit on one command line anyway).
MAX_PARTS = 100_000
#: The longest error message of a case kept in the merged report (this package's are a few hundred
#: characters).
_ERROR_CHARS = 2_000


def load_report(path: Path) -> dict[str, Any]:
    """A run report's JSON, checked to have the shape of a ``cwdm infer`` report where the merge reads it.

    Raises:
        ConfigError: the file cannot be read, is larger than :data:`MAX_REPORT_BYTES`, is not JSON (or
            nests too deep), or is not a ``cwdm infer`` report; the message names the file and the field.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the report {path} ({exc.strerror or exc})") from exc
    if len(raw) > MAX_REPORT_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_REPORT_BYTES:,} bytes; is it a cwdm infer report?")
    try:
        record = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not JSON ({_clip(str(exc), 200)}); is it a cwdm infer report?") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path} nests too deep to be a cwdm infer report") from exc
    if not isinstance(record, dict) or not isinstance(record.get("cases"), list):
        raise ConfigError(f"{path} is not a cwdm infer run report (no 'cases' list)")
    _check_report(path, record)
    return record


def _check_report(path: Path, record: dict[str, Any]) -> None:
    """Check the fields :func:`merge_reports` reads; clip each case's error message.

    Raises:
        ConfigError: a field of the wrong type or out of range, named with the file.
    """

    def bad(where: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(
            f"{path}: {where} should be {expected}, got {shown(value)}; is it a cwdm infer report?"
        )

    for number, case in enumerate(record["cases"]):
        where = f"cases[{number}]"
        if not isinstance(case, dict):
            raise bad(where, "a mapping", case)
        for key in ("case_id", "status"):
            if not isinstance(case.get(key), str):
                raise bad(f"{where}.{key}", "a string", case.get(key))
        for key in ("writer", "error"):
            if case.get(key) is not None and not isinstance(case[key], str):
                raise bad(f"{where}.{key}", "a string or null", case[key])
        if case.get("error") is not None:
            case["error"] = _clip(case["error"], _ERROR_CHARS)
    part = record.get("part")
    if part is not None:
        if not isinstance(part, dict):
            raise bad("part", "a mapping or null", part)
        count, index, total = part.get("count"), part.get("index"), part.get("cases_total")
        if not _is_int(count) or not 1 <= count <= MAX_PARTS:
            raise bad("part.count", f"an integer from 1 to {MAX_PARTS:,}", count)
        if not _is_int(index) or not 0 <= index < count:
            raise bad("part.index", f"an integer from 0 to {count - 1}", index)
        if total is not None and not _is_int(total):
            raise bad("part.cases_total", "an integer or null", total)
    stop = record.get("interrupted_by")
    if stop is not None and not isinstance(stop, (str, int)):
        raise bad("interrupted_by", "a signal name or null", stop)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def merge_reports(paths: Sequence[Path]) -> MergedReport:
    """Merge the reports of the parts of one run (see the module).

    Raises:
        ConfigError: no report given, an unreadable report, or reports of splits into different numbers
            of parts (not one run).
    """
    if not paths:
        raise ConfigError("no report to merge: give the report of every part")
    reports = [(Path(path), load_report(Path(path))) for path in paths]
    counts = {report["part"]["count"] for _, report in reports if report.get("part")}
    if len(counts) > 1:
        raise ConfigError(
            f"the reports are of splits into different numbers of parts ({sorted(counts)}): "
            "merge the reports of one run"
        )
    num_parts = counts.pop() if counts else None
    present: set[int] = set()
    unfinished: dict[int, str] = {}
    problems: list[str] = []
    totals = {report["part"].get("cases_total") for _, report in reports if report.get("part")}
    known = [total for total in totals if total is not None]
    if len(totals) > 1:
        problems.append(
            f"the parts saw different numbers of cases ({sorted(t for t in totals if t is not None)}): "
            "cases were added or removed while the run went on; rerun the parts that saw fewer"
        )
    best: dict[str, dict[str, Any]] = {}
    writers: dict[str, list[str]] = {}
    for path, report in reports:
        for case in report["cases"]:
            case_id = case["case_id"]
            if case["status"] == "written":
                writers.setdefault(case_id, []).append(case.get("writer") or str(path))
            if case_id not in best or _rank(case) < _rank(best[case_id]):
                best[case_id] = case
    for path, report in reports:
        part = report.get("part")
        if part is None:
            continue
        index = int(part["index"])
        present.add(index)
        why = _unfinished(report, best)
        if why:
            unfinished[index] = f"{why} ({path})"
    missing = tuple(i for i in range(num_parts) if i not in present) if num_parts else ()
    return MergedReport(
        sources=tuple(path for path, _ in reports),
        num_parts=num_parts,
        missing_parts=missing,
        unfinished_parts=dict(sorted(unfinished.items())),
        cases=tuple(best[case_id] for case_id in sorted(best)),
        written_twice={case_id: names for case_id, names in sorted(writers.items()) if len(names) > 1},
        problems=tuple(problems),
        cases_total=max(known) if known else None,
    )


def _rank(case: dict[str, Any]) -> int:
    status = case["status"]
    return _PRECEDENCE.index(status) if status in _PRECEDENCE else len(_PRECEDENCE)


def _unfinished(report: dict[str, Any], best: dict[str, dict[str, Any]]) -> str:
    """Why a part's report shows it unfinished, or "": stopped by a signal, or with cases left to
    another process that no other report shows finished."""
    pending = [
        c["case_id"]
        for c in report["cases"]
        if c["status"] in ("interrupted", "claimed") and best[c["case_id"]]["status"] not in OK_STATUSES
    ]
    if report.get("interrupted_by") and (pending or not report["cases"]):
        return f"stopped by {_clip(str(report['interrupted_by']), 40)}"
    if pending:
        return f"{len(pending)} case(s) not finished by this part: {', '.join(_first(pending))}"
    return ""


def _first(items: Iterable[str], limit: int = 5) -> list[str]:
    items = list(items)
    return items[:limit] + ([f"... {len(items) - limit} more"] if len(items) > limit else [])
