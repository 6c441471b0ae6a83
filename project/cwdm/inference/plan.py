"""Which cases of a run need sampling: the plan, made before any model runs (no torch here).

For each case, in order: its target (a case without exactly one missing sequence is ignored, or failed
when it looks like one that should have been synthesised); an output that is already complete is judged
(:class:`ExistingOutputs`): kept and ``skipped`` when its header records this run's settings, model
and inputs (or records nothing), ``mismatched`` when it records others (redone with ``overwrite``); the
rest are claimed (:class:`cwdm.inference.claims.ClaimSet`), and a case another live process holds is
``claimed``. What is settled is recorded at once through ``record``; what is left is the plan.

Each case is planned inside its own isolation: an output that cannot be read, a name the file system
refuses for a claim, any error while planning one case fails that case only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cases.discovery import Case
from ..errors import CaseError
from ..sequences import CANONICAL_ORDER, MRISequence, condition_order
from . import provenance
from .claims import ClaimSet
from .outputs import output_complete
from .report import CaseCallback, CaseResult, CaseStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Planned:
    """A case to synthesise, claimed by this process."""

    case: Case
    target: MRISequence
    output: Path


class ExistingOutputs:
    """Judges a complete output already in the output folder against this run.

    Args:
        settings: A target's settings as its outputs record them
            (:meth:`cwdm.config.SamplingSettings.output_record`).
        model_sha256: The SHA-256 of the checkpoint serving a target (``None``: not known).
        digests: The run's file-hash cache (inputs are hashed once).
        overwrite: Redo mismatched outputs instead of keeping them.
    """

    def __init__(
        self,
        settings: Callable[[MRISequence], Mapping[str, Any]],
        model_sha256: Callable[[MRISequence], str | None],
        digests: provenance.DigestCache,
        overwrite: bool = False,
    ) -> None:
        self.settings = settings
        self.model_sha256 = model_sha256
        self.digests = digests
        self.overwrite = overwrite

    def verdict(self, case: Case, target: MRISequence, output: Path) -> CaseResult | None:
        """``skipped`` or ``mismatched`` for ``output``, or ``None`` to redo it (``overwrite``).

        Raises:
            CaseError: an input of the case cannot be read to compare its checksum.
        """
        recorded = provenance.read_record(output)
        try:
            mismatch = provenance.settings_mismatch(
                recorded, self.settings(target), self.model_sha256(target)
            )
            mismatch += provenance.source_mismatch(recorded, case, target, self.digests)
        except OSError as exc:
            raise CaseError(
                case.case_id, f"cannot hash an input to compare with {output.name} ({exc})"
            ) from exc
        if not mismatch:
            return CaseResult(case.case_id, "skipped", target, output, provenance=recorded)
        if self.overwrite:
            log.warning(
                "%s: %s was made otherwise (%s); replacing it", case.case_id, output.name, "; ".join(mismatch)
            )
            return None
        message = (
            f"{output.name} was made otherwise ({'; '.join(mismatch)}); kept, not replaced: rerun with "
            "--overwrite to resample it with this run's settings and inputs"
        )
        return CaseResult(
            case.case_id, "mismatched", target, output, error=message, provenance=recorded, mismatch=mismatch
        )


def plan_cases(
    cases: Sequence[Case],
    out_dir: Path,
    claims: ClaimSet,
    existing: ExistingOutputs,
    record: CaseCallback,
) -> list[Planned]:
    """The cases of ``cases`` that this process must synthesise, claimed, grouped by target in the
    canonical order (then in the given order); every other case's result goes to ``record``."""
    planned: list[Planned] = []
    for case in cases:
        item = _plan_isolated(case, Path(out_dir), claims, existing, record)
        if item is not None:
            planned.append(item)
    return sorted(planned, key=lambda item: CANONICAL_ORDER.index(item.target))


def _plan_isolated(
    case: Case, out_dir: Path, claims: ClaimSet, existing: ExistingOutputs, record: CaseCallback
) -> Planned | None:
    """:func:`_plan_one` inside the case's isolation boundary (the claim released on failure)."""
    output: Path | None = None
    try:
        target = case.target()
    except CaseError as exc:
        status: CaseStatus = "failed" if case.expects_synthesis or case.problems else "ignored"
        record(CaseResult(case.case_id, status, error=exc.detail, error_type=type(exc).__name__))
        return None
    try:
        output = out_dir / case.output_name(target)
        return _plan_one(case, target, output, claims, existing, record)
    except CaseError as exc:
        failure = CaseResult(case.case_id, "failed", target, error=exc.detail, error_type=type(exc).__name__)
    except OSError as exc:  # the output folder refuses the claim file or a look at the output
        name = output.name if output is not None else case.case_id
        failure = CaseResult(
            case.case_id,
            "failed",
            target,
            output,
            error=f"cannot claim or inspect {name} ({exc.strerror or exc})",
            error_type="OSError",
        )
    except Exception as exc:  # the per-case isolation boundary of planning
        log.exception("unexpected error while planning %s", case.case_id)
        failure = CaseResult(
            case.case_id,
            "failed",
            target,
            error=f"unexpected {type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
        )
    if output is not None:
        claims.release(output)  # nothing when it was not claimed
    record(failure)
    return None


def _plan_one(
    case: Case,
    target: MRISequence,
    output: Path,
    claims: ClaimSet,
    existing: ExistingOutputs,
    record: CaseCallback,
) -> Planned | None:
    reference = case.files[condition_order(target)[0]]
    if output_complete(output, reference):
        verdict = existing.verdict(case, target, output)
        if verdict is not None:
            record(verdict)
            return None
    other = claims.claim(output)
    if other is not None:
        holder = other.holder.label if other.holder is not None else None
        message = f"{other.detail}; that process writes it (a rerun after it ends skips or redoes it)"
        record(CaseResult(case.case_id, "claimed", target, output, error=message, writer=holder))
        return None
    if output_complete(output, reference):  # finished by another process since the first look
        verdict = existing.verdict(case, target, output)
        if verdict is not None:
            claims.release(output)
            record(verdict)
            return None
    elif output.exists() or output.is_symlink():
        log.warning(
            "%s: %s exists but is incomplete, not a regular file or not on the case's grid; "
            "replacing it (a symbolic link is replaced, never written through)",
            case.case_id,
            output,
        )
    return Planned(case, target, output)


def unfinished_cases(cases: Sequence[Case], out_dir: Path, existing: ExistingOutputs) -> list[Case]:
    """The cases whose output a run would still make: a quick look before any model is loaded, so that a
    rerun with nothing to do loads none (the plan proper, with claims, comes when the run starts).

    Cases that cannot be planned are kept: the run reports them.
    """
    left = []
    for case in cases:
        try:
            target = case.target()
            output = Path(out_dir) / case.output_name(target)
            reference = case.files[condition_order(target)[0]]
            if output_complete(output, reference) and existing.verdict(case, target, output) is not None:
                continue
        except Exception:  # noqa: BLE001 - the run itself reports whatever is wrong with the case
            pass
        left.append(case)
    return left
