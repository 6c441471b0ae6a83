"""Running a sweep: every setting of a grid on every complete case and target, timed and scored.

Each case is made into a pseudo-validation case once per target (the target dropped: a folder of links
to the three other sequences) and synthesised with every setting through the same front door as
``cwdm infer`` (:func:`cwdm.inference.run.run_request`, one case at a time, the models loaded once and
each setting's synthesizer made by :meth:`~cwdm.inference.synthesizer.Synthesizer.from_loaded`, so that
every run parameter applies). A synthesis is timed end to end (read, preprocess, sample, post-process,
write: the case's time in the run report) with nothing else running in the process tree
(:mod:`cwdm.evaluation.timing`), repeated while cheap, and scored after, in this process
(``workers`` = 0) or by a pool of scoring processes beside the next synthesis (faster; its timings are
marked as taken on a busy machine). ``OUT/sweep.csv`` gets one row per setting, case and target as each
is scored; a rerun skips the rows it finds, so an interrupted sweep loses at most the case in progress.

With a segmenter every synthesis also gets the Dice of its completed case
(:mod:`cwdm.evaluation.downstream`), and each case is scored once, in ``baselines.csv``, as the real
complete case (the ceiling), with each present sequence copied into the missing slot (the challenge's
dummy) and, where the segmenter can, with the sequence left out (the skip-synthesis baseline).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ...cases.discovery import Case, discover_cases
from ...cases.reader import read_segmentation
from ...config import RunParameters, SweepSetting, expand_sweep_grid
from ...errors import CwdmError
from ...inference.report import CaseResult
from ...inference.run import RunRequest, run_request
from ...inference.synthesizer import LoadedModels, Synthesizer
from ...runtime import resolve_runtime
from ...segmentation.spec import open_segmenter
from ...sequences import CANONICAL_ORDER, MRISequence, condition_order
from ..downstream import DownstreamScorer
from ..evaluate import baseline_scores, score_prediction
from ..results import MISSING, REAL
from ..timing import Timing, measure
from .analysis import BaselineRow, SweepRow, read_baselines, read_rows, write_rows
from .report import BASELINES_NAME

log = logging.getLogger(__name__)

#: The grid of ``cwdm sweep`` without ``--grid``: few-step DDIM both ways, DDPM up to the published 1000
#: steps, the challenge container's post-processing, and four draws a case.
DEFAULT_GRID: list[dict[str, object]] = [
    {"sampler": "ddim", "timestep_spacing": "trailing", "sampling_steps": [1, 2, 3, 5, 10, 25]},
    {"sampler": "ddim", "timestep_spacing": "linspace", "sampling_steps": [2, 5, 10, 25]},
    {"sampler": "ddpm", "timestep_spacing": "linspace", "sampling_steps": [10, 50, 100, 1000]},
    {"sampler": "ddim", "timestep_spacing": "trailing", "sampling_steps": [5, 10], "samples": 4},
    {"sampler": "ddim", "timestep_spacing": "trailing", "sampling_steps": 10, "postprocess": "threshold"},
]
CSV_NAME = "sweep.csv"


@dataclass(frozen=True)
class Scoring:
    """How each synthesis is scored: the segmenter (a ``--segmenter`` value) and where its label volumes
    are kept, if any."""

    segmenter: str | None = None
    segmentations_dir: Path | None = None

    def downstream(self) -> DownstreamScorer | None:
        """The Dice scorer, loaded once per process (the scoring workers' too)."""
        if self.segmenter is None:
            return None
        return _downstream(self.segmenter, self.segmentations_dir)


@functools.cache
def _downstream(segmenter: str, segmentations_dir: Path | None) -> DownstreamScorer:
    return DownstreamScorer(open_segmenter(segmenter, device="cpu"), segmentations_dir)


def _inputs(cases: Sequence[Case], target: MRISequence, root: Path) -> Path:
    """A folder of pseudo-validation cases for ``target``: links to the three other sequences."""
    folder = root / str(target)
    for case in cases:
        case_dir = folder / case.case_id
        case_dir.mkdir(parents=True, exist_ok=True)
        for seq in condition_order(target):
            link = case_dir / case.files[seq].name
            if not link.is_symlink():
                link.symlink_to(case.files[seq].resolve())
    return folder


def _score(
    setting: SweepSetting,
    case: Case,
    target: str,
    result: CaseResult,
    timing: Timing,
    device: str,
    scoring: Scoring,
) -> SweepRow:
    """Score one prediction (in a worker process, or here); with a segmenter, the Dice of its completed
    case, its label volume kept as ``<case>-<target>-<setting>.nii.gz``."""
    seg = read_segmentation(case)
    assert result.output is not None  # a written case has its output
    values = score_prediction(result.output, case.files[MRISequence(target)], case.case_id, seg).values()
    downstream = scoring.downstream()
    if downstream is not None and seg is not None:
        values |= downstream.completed(case, MRISequence(target), result.output, setting.name).values()
    return SweepRow(
        setting.name,
        setting,
        case.case_id,
        target,
        timing.seconds,
        device,
        result.uncertainty,
        values,
        timing,
    )


class _InlineExecutor:
    """The part of an executor's interface the sweep uses, running each call at once in this process."""

    def submit(self, fn: Callable[..., SweepRow], /, *args: object) -> Future[SweepRow]:
        future: Future[SweepRow] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # handed on through the future, as a process pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Nothing runs in the background."""


def run_sweep(
    cases_dir: Path,
    out_dir: Path,
    weights_dir: Path,
    grid: Sequence[SweepSetting] | None = None,
    *,
    targets: Sequence[MRISequence | str] | None = None,
    base: RunParameters | None = None,
    workers: int = 0,
    repeats: int = 3,
    keep_predictions: bool = False,
    segmenter: str | None = None,
    segmentations_dir: Path | None = None,
    on_row: Callable[[SweepRow], None] | None = None,
    on_scoring: Callable[[SweepSetting, str, str], None] | None = None,
) -> list[SweepRow]:
    """Synthesise and score every complete case of ``cases_dir`` once per target and setting.

    Args:
        cases_dir: Complete cases (all four sequences; ``-seg`` files are used when present).
        out_dir: The sweep folder: ``sweep.csv``, and ``work/`` (inputs, predictions while scored).
        weights_dir: The weights to measure.
        grid: The settings (default :data:`DEFAULT_GRID`).
        targets: The targets to drop in turn (default all four).
        base: Run parameters for what the grid does not set (seed, device, batch size, fast path,
            compile, CUDA graphs): each setting's synthesizer is made from ``base`` with the setting's
            keys, exactly as ``cwdm infer --parameters`` would make it.
        workers: 0 (the default) scores each synthesis in this process once it is timed, so that no
            scoring shares the processor with a timed synthesis; more: that many scoring processes
            beside the syntheses (faster, but their timings count the scoring's load).
        repeats: Time each synthesis up to this many times while its runs add up to under 20 s; the
            median is kept.
        keep_predictions: Keep every prediction (``work/predictions/<setting>/``) after it is scored.
        segmenter: Also score the Dice of each completed case with this segmenter (a ``--segmenter``
            value: ``builtin``, a folder, a description file), and the baselines (:func:`score_baselines`).
        segmentations_dir: Keep every label volume made there.
        on_row: Called with each new row.
        on_scoring: Called with the setting, case id and target as each scoring starts in this process
            (progress: a scoring with a segmenter takes minutes on a CPU).

    Returns:
        Every row of ``sweep.csv`` (those of earlier runs too).

    Raises:
        CwdmError: no complete case, a bad weights folder, or a case that failed to synthesise (the
            sweep measures a working setup; a failure is not a score).
    """
    out_dir = Path(out_dir)
    grid = list(grid) if grid is not None else expand_sweep_grid(DEFAULT_GRID)
    base = base or RunParameters()
    cases = [case for case in discover_cases(Path(cases_dir)) if case.is_complete]
    if not cases:
        raise CwdmError(f"no complete cases (all four sequences) in {cases_dir}")
    wanted = [MRISequence(t) for t in targets] if targets else list(CANONICAL_ORDER)
    scoring = Scoring(segmenter, segmentations_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    rows = read_rows(csv_path)
    done = {(row.name, row.case_id, row.target) for row in rows}
    work = out_dir / "work"
    inputs = {target: _inputs(cases, target, work / "inputs") for target in wanted}
    loaded = LoadedModels.load(Path(weights_dir), wanted, resolve_runtime(base.device, "fp32").device)
    # Spawned, not forked: a fork of a process whose torch threads are running can hang or crash.
    pool: ProcessPoolExecutor | _InlineExecutor = (
        _InlineExecutor()
        if workers == 0
        else ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    )
    pending: list[Future[SweepRow]] = []

    def collect(wait: bool, stopping: bool = False) -> None:
        """Record the scored rows: the finished ones, or (``wait``) all. When ``stopping`` (after an
        interruption) a scoring that failed is logged, not raised, so that the stop is what is reported."""
        for future in [f for f in pending if wait or (f.done() and not f.cancelled())]:
            pending.remove(future)
            try:
                row = future.result()
            except Exception as exc:
                if stopping:
                    log.warning("a scoring was lost in the stop (%s); a rerun redoes it", exc)
                    continue
                raise CwdmError(f"a synthesis could not be scored: {type(exc).__name__}: {exc}") from exc
            rows.append(row)
            write_rows(csv_path, rows)
            if on_row is not None:
                on_row(row)
            if not keep_predictions:
                (work / "predictions" / row.name / f"{row.case_id}-{row.target}.nii.gz").unlink(
                    missing_ok=True
                )

    try:
        for setting in grid:
            params = setting.run_parameters(base)
            synth = Synthesizer.from_loaded(loaded, params)
            pred_dir = work / "predictions" / setting.name
            for target in wanted:
                for case in [c for c in cases if (setting.name, c.case_id, str(target)) not in done]:
                    request = RunRequest(
                        inputs[target], pred_dir, Path(weights_dir), params, case_ids={case.case_id}
                    )
                    results: list[CaseResult] = []
                    output = pred_dir / case.output_name(target)
                    once = functools.partial(_synthesise_once, synth, request, output, results)
                    timing = measure(once, repeats=repeats)
                    if timing.busy():
                        log.warning(
                            "%s %s (%s): timed while other processes kept %.1f of %d cores busy: this "
                            "time is not to be trusted (rerun on a quiet machine; scoring workers count)",
                            setting.name,
                            case.case_id,
                            target,
                            timing.other_cores,
                            os.cpu_count() or 1,
                        )
                    if on_scoring is not None and workers == 0:
                        on_scoring(setting, case.case_id, str(target))
                    device = str(synth.runtime.device)
                    pending.append(
                        pool.submit(_score, setting, case, str(target), results[-1], timing, device, scoring)
                    )
                    collect(wait=False)
        collect(wait=True)
    finally:
        # Also when stopped: the scorings already running finish, and their rows are kept.
        pool.shutdown(wait=True, cancel_futures=True)
        collect(wait=False, stopping=True)
    if not keep_predictions:
        shutil.rmtree(work / "predictions", ignore_errors=True)
    downstream = scoring.downstream()
    if downstream is not None:
        score_baselines(cases, wanted, downstream, out_dir / BASELINES_NAME)
    return rows


def _synthesise_once(
    synth: Synthesizer, request: RunRequest, output: Path, results: list[CaseResult]
) -> float:
    """Synthesise the request's one case into ``output`` (anew: also a stale output, written but not
    scored before an interruption), append its result to ``results`` and return its seconds.

    Raises:
        CwdmError: the case failed (the sweep measures a working setup; a failure is not a score).
    """
    output.unlink(missing_ok=True)
    result = run_request(request, synthesizer=synth).report.cases[0]
    if result.status != "written":
        raise CwdmError(f"{result.case_id} ({result.target}) {result.status}: {result.error}")
    results.append(result)
    return result.elapsed_s


def score_baselines(
    cases: Sequence[Case], targets: Sequence[MRISequence], scorer: DownstreamScorer, path: Path
) -> list[BaselineRow]:
    """Score, once, each case's real complete case (Dice, target ``all``), each copy baseline of each
    target (every score and the Dice) and, where the segmenter can, each target left out (source
    ``missing``, the Dice) into ``path``; rows already there are kept (resumable).

    Returns:
        Every row of ``path``.
    """
    rows = read_baselines(path)
    done = {(row.case_id, row.target, row.source) for row in rows}

    def save(case_id: str, target: str, source: str, values: dict[str, float]) -> None:
        rows.append(BaselineRow(case_id, target, source, values))
        write_rows(path, rows)

    for case in cases:
        if read_segmentation(case) is None:
            continue
        if (case.case_id, "all", REAL) not in done:
            save(case.case_id, "all", REAL, scorer.real(case).values())
        for target in targets:
            for copy in baseline_scores(case.folder, target):
                if (case.case_id, str(target), copy.source) in done:
                    continue
                seq = MRISequence(copy.source.removeprefix("copy-"))
                save(
                    case.case_id,
                    str(target),
                    copy.source,
                    copy.values() | scorer.copy(case, target, seq).values(),
                )
            if (case.case_id, str(target), MISSING) not in done:
                skipped = scorer.missing(case, target)
                if skipped is not None:
                    save(case.case_id, str(target), MISSING, skipped.values())
    return rows
