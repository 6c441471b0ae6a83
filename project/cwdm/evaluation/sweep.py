"""What each sampling setting costs in score: ``cwdm sweep``.

For a folder of complete cases, each case is made into a pseudo-validation case once per target (the
target dropped: a folder of links to the three other sequences), synthesised with every setting of a
grid (:class:`cwdm.config.SweepSetting`: sampler, steps, timestep spacing, post-processing, precision,
draws a case), timed end to end (read, preprocess, sample, post-process, write: the case's time in the
run report), and scored by :mod:`cwdm.evaluation.evaluate` (every region, the organisers' SSIM where the
case has a segmentation). The models are loaded once; cases are synthesised one at a time, so that an
interrupted sweep loses at most the case in progress: ``OUT/sweep.csv`` holds one row per setting, case
and target, written as each is scored, and a rerun skips the rows it finds.

Timings are taken with nothing else running in the process tree (:mod:`cwdm.evaluation.timing`): by
default each synthesis is timed first, repeated while cheap (the median kept), and scored after, in
this process; the CSV records each run's seconds and how many cores other processes kept busy
meanwhile. A pool of scoring processes (``workers`` > 0) is faster overall but scores beside the next
synthesis: its timings are marked as taken on a busy machine.

With a segmenter (``segmenter``: a ``--segmenter`` value) every synthesis also gets the Dice of its
completed case (:mod:`cwdm.evaluation.downstream`), and each case is scored once, in ``baselines.csv``,
as the real complete case (the ceiling) and with each present sequence copied into the missing slot
(the challenge's dummy), so that a setting's Dice is read against both.

:func:`summarise` turns the rows into a table per target and overall (mean over cases), marks the
Pareto front (no other setting both faster and better), and :func:`recommend` picks the fastest setting
within a tolerance of the best score measured; :func:`plot` draws score against seconds per case.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..cases.discovery import Case, discover_cases
from ..cases.reader import read_segmentation
from ..config import RunParameters, SamplingSettings, SweepSetting, expand_sweep_grid
from ..errors import CwdmError
from ..inference.fastpath import FastPathOptions
from ..inference.report import CaseResult
from ..inference.synthesizer import Synthesizer
from ..runtime import resolve_runtime
from ..segmentation.labels import DICE_COLUMNS
from ..segmentation.spec import open_segmenter
from ..sequences import CANONICAL_ORDER, MRISequence, condition_order
from ..weights.folder import WeightsDir
from .downstream import DownstreamScorer
from .evaluate import REAL, baseline_scores, columns, score_prediction
from .timing import BUSY_SHARE, Timing, measure

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
#: The CSV's columns before the scores.
SETTING_COLUMNS = [
    "setting",
    "sampler",
    "sampling_steps",
    "timestep_spacing",
    "postprocess",
    "precision",
    "samples",
]
#: After ``seconds`` (the median of the runs): each run, and the load (:class:`Timing`).
TIMING_COLUMNS = ["seconds_runs", "other_cores", "load_1min"]
ROW_COLUMNS = [
    *SETTING_COLUMNS,
    "case",
    "target",
    "seconds",
    *TIMING_COLUMNS,
    "device",
    "uncertainty",
    *columns(),
]
#: The setting ``cwdm sweep`` recommends, as a ``parameters.yaml`` (``cwdm infer --parameters``).
RECOMMENDED_NAME = "recommended.yaml"
CSV_NAME = "sweep.csv"


@dataclass(frozen=True)
class SweepRow:
    """One synthesis of the sweep, scored."""

    setting: SweepSetting
    case_id: str
    target: str
    seconds: float
    device: str
    uncertainty: float | None
    scores: dict[str, float]
    timing: Timing | None = None

    def record(self) -> dict[str, str]:
        values = {
            "setting": self.setting.name,
            **{key: str(value) for key, value in self.setting.model_dump().items()},
            "case": self.case_id,
            "target": self.target,
            "seconds": repr(self.seconds),
            "device": self.device,
            "uncertainty": "" if self.uncertainty is None else repr(self.uncertainty),
        }
        if self.timing is not None:
            values["seconds_runs"] = " ".join(f"{run:.3f}" for run in self.timing.runs)
            values["other_cores"] = (
                "" if math.isnan(self.timing.other_cores) else f"{self.timing.other_cores:.2f}"
            )
            values["load_1min"] = "" if math.isnan(self.timing.load_1min) else f"{self.timing.load_1min:.2f}"
        return values | {key: "" if math.isnan(v) else repr(v) for key, v in self.scores.items()}


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an existing ``sweep.csv`` (none when it does not exist)."""
    if not path.is_file():
        return []
    return list(csv.DictReader(path.open(newline="")))


def _write_rows(path: Path, rows: Iterable[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


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


#: The segmenter of each ``--segmenter`` value, loaded once per process (the scoring workers' too).
_SCORERS: dict[tuple[str, str | None], DownstreamScorer] = {}


def _downstream(segmenter: str, segmentations_dir: Path | None) -> DownstreamScorer:
    key = (segmenter, None if segmentations_dir is None else str(segmentations_dir))
    if key not in _SCORERS:
        _SCORERS[key] = DownstreamScorer(open_segmenter(segmenter, device="cpu"), segmentations_dir)
    return _SCORERS[key]


def _score(
    setting: SweepSetting,
    case: Case,
    target: str,
    prediction: Path,
    timing: Timing,
    device: str,
    uncertainty: float | None,
    segmenter: str | None = None,
    segmentations_dir: Path | None = None,
) -> SweepRow:
    """Score one prediction (in a worker process); with a segmenter, the Dice of its completed case.

    A segmentation kept in ``segmentations_dir`` is named ``<case>-<target>-<setting>.nii.gz``.
    """
    seg = read_segmentation(case)
    scored = score_prediction(prediction, case.files[MRISequence(target)], case.case_id, seg)
    values = scored.values()
    if segmenter is not None and seg is not None:
        scorer = _downstream(segmenter, segmentations_dir)
        values |= scorer.completed(case, MRISequence(target), prediction, setting.name).values()
    return SweepRow(setting, case.case_id, target, timing.seconds, device, uncertainty, values, timing)


def _synthesise_once(
    synth: Synthesizer,
    case: Case,
    target: MRISequence,
    setting: SweepSetting,
    pred_dir: Path,
    results: list[CaseResult],
) -> float:
    """Synthesise one case (anew: also a stale output, written but not scored before an interruption),
    append its result to ``results`` and return its seconds.

    Raises:
        CwdmError: the case failed (the sweep measures a working setup; a failure is not a score).
    """
    (pred_dir / case.output_name(target)).unlink(missing_ok=True)
    result = synth.run([case], pred_dir).cases[0]
    if result.status != "written":
        raise CwdmError(f"{setting.name}: {case.case_id} ({target}) {result.status}: {result.error}")
    results.append(result)
    return result.elapsed_s


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
) -> list[dict[str, str]]:
    """Synthesise and score every complete case of ``cases_dir`` once per target and setting.

    Args:
        cases_dir: Complete cases (all four sequences; ``-seg`` files are used when present).
        out_dir: The sweep folder: ``sweep.csv``, and ``work/`` (inputs, predictions while scored).
        weights_dir: The weights to measure.
        grid: The settings (default :data:`DEFAULT_GRID`).
        targets: The targets to drop in turn (default all four).
        base: Run parameters for what the grid does not set (seed, device, batch size, fast path).
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
        Every row of ``sweep.csv`` (those of earlier runs too), as strings.

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
    weights = WeightsDir.open(Path(weights_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_NAME
    rows = read_rows(csv_path)
    done = {(row["setting"], row["case"], row["target"]) for row in rows}
    work = out_dir / "work"
    inputs = {target: _inputs(cases, target, work / "inputs") for target in wanted}
    runtime = resolve_runtime(base.device, "fp32")
    models = {target: weights.load(target, runtime.device) for target in wanted}
    # Spawned, not forked: a fork of a process whose torch threads are running can hang or crash.
    pool: ProcessPoolExecutor | _InlineExecutor = (
        _InlineExecutor()
        if workers == 0
        else ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
        )
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
            rows.append(row.record())
            _write_rows(csv_path, rows)
            if on_row is not None:
                on_row(row)
            if not keep_predictions:
                (work / "predictions" / row.setting.name / f"{row.case_id}-{row.target}.nii.gz").unlink(
                    missing_ok=True
                )

    try:
        for setting in grid:
            params = setting.run_parameters(base)
            settings = SamplingSettings.resolve(params, weights.spec, weights.spec_path)
            setting_runtime = resolve_runtime(params.device, setting.precision)
            fast = FastPathOptions.resolve(setting_runtime.device, fast_path=params.fast_path)
            pred_dir = work / "predictions" / setting.name
            for target in wanted:
                todo = [c for c in cases if (setting.name, c.case_id, str(target)) not in done]
                if not todo:
                    continue
                synth = Synthesizer(
                    {target: models[target]}, settings, setting_runtime, weights.schedule(), fast_path=fast
                )
                by_id = {case.case_id: case for case in discover_cases(inputs[target])}
                for case in todo:
                    done_runs: list[CaseResult] = []
                    synthesise = partial(
                        _synthesise_once, synth, by_id[case.case_id], target, setting, pred_dir, done_runs
                    )
                    timing = measure(synthesise, repeats=repeats)
                    result = done_runs[-1]
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
                    pending.append(
                        pool.submit(
                            _score,
                            setting,
                            case,
                            str(target),
                            result.output,
                            timing,
                            str(setting_runtime.device),
                            result.uncertainty,
                            segmenter,
                            segmentations_dir,
                        )
                    )
                    collect(wait=False)
        collect(wait=True)
    finally:
        # Also when stopped: the scorings already running finish, and their rows are kept.
        pool.shutdown(wait=True, cancel_futures=True)
        collect(wait=False, stopping=True)
    if not keep_predictions:
        shutil.rmtree(work / "predictions", ignore_errors=True)
    if segmenter is not None:
        score_baselines(cases, wanted, _downstream(segmenter, segmentations_dir), out_dir / BASELINES_NAME)
    return rows


#: The baselines' scores beside ``sweep.csv``: per case the real complete case, per case and target each
#: copy of a present sequence.
BASELINES_NAME = "baselines.csv"
BASELINE_COLUMNS = ["case", "target", "source", *columns()]


def score_baselines(
    cases: Sequence[Case], targets: Sequence[MRISequence], scorer: DownstreamScorer, path: Path
) -> list[dict[str, str]]:
    """Score, once, each case's real complete case (Dice, target ``all``) and each copy baseline of each
    target (every score and the Dice) into ``path``; rows already there are kept (resumable).

    Returns:
        Every row of ``path``.
    """
    rows = read_rows(path)
    done = {(row["case"], row["target"], row["source"]) for row in rows}

    def save(case_id: str, target: str, source: str, values: dict[str, float]) -> None:
        cells = {
            key: "" if math.isnan(v) else repr(v) for key, v in values.items() if key in BASELINE_COLUMNS
        }
        rows.append({"case": case_id, "target": target, "source": source} | cells)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, BASELINE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, buffer.getvalue())

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
    return rows


# -- summary ---------------------------------------------------------------------------------------
#: The scores the summary shows, with their titles.
SUMMARY_SCORES = {
    "full_psnr": "PSNR",
    "full_ssim": "SSIM",
    "brain_psnr": "PSNR brain",
    "brasyn_ssim_tumor": "BraSyn SSIM tumour",
    "brasyn_ssim_non_tumor": "BraSyn SSIM non-tumour",
    "dice_wt": "Dice WT",
    "dice_tc": "Dice TC",
    "dice_et": "Dice ET",
}


@dataclass(frozen=True)
class SettingSummary:
    """Mean scores and time of one setting over a group of rows (a target's, or all)."""

    setting: str
    fields: dict[str, str]
    n: int
    seconds: float
    scores: dict[str, float]
    pareto_psnr: bool = False
    pareto_ssim: bool = False


def _mean(values: Iterable[str]) -> float:
    numbers = [float(v) for v in values if v not in ("", None)]
    return float(np.mean(numbers)) if numbers else math.nan


def comparable(rows: Sequence[dict[str, str]], target: str | None = None) -> list[dict[str, str]]:
    """The rows (of ``target``, or of all targets) of the settings measured on every case and target
    that any setting was: a mean over fewer or other syntheses is not comparable (a slow reference run
    on one target only, say)."""
    chosen = [row for row in rows if target is None or row["target"] == target]
    measured = {(row["case"], row["target"]) for row in chosen}
    covered: dict[str, set[tuple[str, str]]] = {}
    for row in chosen:
        covered.setdefault(row["setting"], set()).add((row["case"], row["target"]))
    return [row for row in chosen if covered[row["setting"]] == measured]


def summarise(rows: Sequence[dict[str, str]], target: str | None = None) -> list[SettingSummary]:
    """One :class:`SettingSummary` per setting (of ``target``, or over all targets), fastest first,
    with the Pareto fronts of PSNR and SSIM against seconds marked."""
    chosen = [row for row in rows if target is None or row["target"] == target]
    summaries = []
    for name in dict.fromkeys(row["setting"] for row in chosen):
        group = [row for row in chosen if row["setting"] == name]
        summaries.append(
            SettingSummary(
                setting=name,
                fields={key: group[0][key] for key in SETTING_COLUMNS[1:]},
                n=len(group),
                seconds=_mean(row["seconds"] for row in group),
                scores={key: _mean(row[key] for row in group) for key in SUMMARY_SCORES},
            )
        )
    summaries.sort(key=lambda s: s.seconds)
    return [
        SettingSummary(
            s.setting,
            s.fields,
            s.n,
            s.seconds,
            s.scores,
            _on_front(s, summaries, "full_psnr"),
            _on_front(s, summaries, "full_ssim"),
        )
        for s in summaries
    ]


def _on_front(candidate: SettingSummary, others: Sequence[SettingSummary], key: str) -> bool:
    """No other setting is at least as fast and as good, and strictly better in one of the two."""
    score = candidate.scores[key]
    return not any(
        o.seconds <= candidate.seconds
        and o.scores[key] >= score
        and (o.seconds < candidate.seconds or o.scores[key] > score)
        for o in others
        if o is not candidate
    )


def shortfalls(
    summaries: Sequence[SettingSummary],
    psnr_tolerance: float = 0.5,
    ssim_tolerance: float = 0.01,
    dice_tolerance: float = 0.02,
) -> dict[str, float]:
    """Each setting's worst shortfall from the best measured mean PSNR, SSIM and (where the rows have
    Dice) Dice of each region, counted in that score's tolerance: at most 1 is within every tolerance;
    a missing score is an infinite shortfall."""
    best_psnr = max(s.scores["full_psnr"] for s in summaries)
    best_ssim = max(s.scores["full_ssim"] for s in summaries)
    dice_keys = [k for k in DICE_COLUMNS if any(math.isfinite(s.scores.get(k, math.nan)) for s in summaries)]
    best_dice = {k: max(s.scores[k] for s in summaries if math.isfinite(s.scores[k])) for k in dice_keys}
    out = {}
    for summary in summaries:
        gaps = [
            (best_psnr - summary.scores["full_psnr"]) / psnr_tolerance,
            (best_ssim - summary.scores["full_ssim"]) / ssim_tolerance,
            *((best_dice[k] - summary.scores[k]) / dice_tolerance for k in dice_keys),
        ]
        out[summary.setting] = math.inf if any(math.isnan(gap) for gap in gaps) else max(gaps)
    return out


def recommend(
    summaries: Sequence[SettingSummary],
    psnr_tolerance: float = 0.5,
    ssim_tolerance: float = 0.01,
    dice_tolerance: float = 0.02,
) -> SettingSummary:
    """The fastest setting whose mean PSNR and SSIM are within the tolerances of the best measured and,
    where the rows have Dice, whose mean Dice of every region (WT, TC, ET) is within ``dice_tolerance``
    of the best measured for that region.

    The bests may come from different settings, so that no setting is within every tolerance (on two
    held-out cases, t1c's best PSNR came from 1 step and its best TC and ET Dice from 10, 0.9 dB
    lower). Then the setting that falls least short (:func:`shortfalls`) is the one recommended, the
    fastest of those if tied.
    """
    return _fastest_within(summaries, shortfalls(summaries, psnr_tolerance, ssim_tolerance, dice_tolerance))


def _fastest_within(summaries: Sequence[SettingSummary], short: dict[str, float]) -> SettingSummary:
    """:func:`recommend`'s choice from the settings' :func:`shortfalls`."""
    good = [s for s in summaries if short[s.setting] <= 1.0]
    if good:
        return min(good, key=lambda s: s.seconds)
    return min(summaries, key=lambda s: (short[s.setting], s.seconds))


def baseline_summary(
    baselines: Sequence[dict[str, str]], rows: Sequence[dict[str, str]], target: str | None = None
) -> dict[str, dict[str, float]]:
    """Mean scores of the real case and of each copy source over the cases and targets of ``rows``.

    Returns:
        ``{source: {column: mean, "n": rows averaged}}``, the real case first (one row per case: its
        Dice does not depend on the target).
    """
    pairs = {(row["case"], row["target"]) for row in rows if target is None or row["target"] == target}
    cases = {case for case, _ in pairs}
    out: dict[str, dict[str, float]] = {}
    for source in sorted({b["source"] for b in baselines}, key=lambda src: (src != REAL, src)):
        chosen = [
            b
            for b in baselines
            if b["source"] == source
            and (b["case"] in cases if source == REAL else (b["case"], b["target"]) in pairs)
        ]
        if chosen:
            out[source] = {key: _mean(b.get(key, "") for b in chosen) for key in SUMMARY_SCORES}
            out[source]["n"] = float(len(chosen))
    return out


def baseline_table(summary: dict[str, dict[str, float]]) -> str:
    """A Markdown table of :func:`baseline_summary`."""
    lines = [
        "| baseline | n | " + " | ".join(SUMMARY_SCORES.values()) + " |",
        "|" + "---|" * (len(SUMMARY_SCORES) + 2),
    ]
    for source, means in summary.items():
        label = "real complete case (ceiling)" if source == REAL else source.replace("copy-", "copy ")
        cells = [label, str(int(means["n"]))]
        for key in SUMMARY_SCORES:
            value = means[key]
            cells.append("-" if math.isnan(value) else f"{value:.2f}" if "psnr" in key else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(summaries: Sequence[SettingSummary]) -> str:
    """A Markdown table of the summaries (Pareto-front settings marked: P for PSNR, S for SSIM)."""
    header = [
        "sampler",
        "steps",
        "spacing",
        "post-processing",
        "precision",
        "draws",
        "n",
        "s / case",
        *SUMMARY_SCORES.values(),
        "front",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        f = s.fields
        cells = [
            f["sampler"],
            f["sampling_steps"],
            f["timestep_spacing"],
            f["postprocess"],
            f["precision"],
            f["samples"],
            str(s.n),
            f"{s.seconds:.3g}",
        ]
        for key in SUMMARY_SCORES:
            value = s.scores[key]
            cells.append("-" if math.isnan(value) else f"{value:.2f}" if "psnr" in key else f"{value:.4f}")
        cells.append(("P" if s.pareto_psnr else "") + ("S" if s.pareto_ssim else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_ROUND_SECONDS = [m * 10.0**e for e in range(-2, 6) for m in (1, 2, 5)]


def plot(
    summaries: Sequence[SettingSummary],
    path: Path,
    title: str,
    references: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Score against seconds per case (log scale), one point per setting, the Pareto front drawn: PSNR
    and SSIM, and where the rows have Dice a second row with Dice of WT, TC and ET. ``references``
    (:func:`baseline_summary`) adds the real case (the ceiling) and the best copy baseline as lines."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    with_dice = any(math.isfinite(s.scores.get(k, math.nan)) for s in summaries for k in DICE_COLUMNS)
    panels = [("full_psnr", "PSNR (dB), full volume"), ("full_ssim", "SSIM, full volume")]
    if with_dice:
        panels += [(key, f"Dice {key[-2:].upper()} of the completed case") for key in DICE_COLUMNS]
    figure = Figure(figsize=(15, 9) if with_dice else (11, 4.5))
    grid = figure.subplots(2, 3) if with_dice else figure.subplots(1, 2)
    axes = list(grid.flat)
    legend_ax = axes.pop(2) if with_dice else axes[1]
    references = references or {}
    copies = {k: v for k, v in references.items() if k != REAL}
    for ax, (key, label) in zip(axes, panels, strict=True):
        for s in summaries:
            f = s.fields
            marker = {"ddim": "o", "ddpm": "s"}.get(f["sampler"], "^")
            colour = "tab:blue" if f["timestep_spacing"] == "trailing" else "tab:orange"
            face = colour if f["samples"] == "1" and f["postprocess"] == "brain_mask" else "none"
            ax.scatter(
                s.seconds, s.scores[key], marker=marker, edgecolors=colour, facecolors=face, s=36, zorder=3
            )
            tag = f["sampling_steps"] + (" bf16" if f["precision"] == "bf16" else "")
            tag += (f" x{f['samples']}" if f["samples"] != "1" else "") + (
                " thr" if f["postprocess"] == "threshold" else ""
            )
            ax.annotate(
                tag, (s.seconds, s.scores[key]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        if key in ("full_psnr", "full_ssim"):
            front = sorted(
                (s for s in summaries if (s.pareto_psnr if key == "full_psnr" else s.pareto_ssim)),
                key=lambda s: s.seconds,
            )
            ax.plot([s.seconds for s in front], [s.scores[key] for s in front], color="black", lw=1, zorder=2)
        if REAL in references and math.isfinite(references[REAL].get(key, math.nan)):
            ax.axhline(references[REAL][key], color="tab:green", lw=1.2)
        best_copy = max(
            (v.get(key, math.nan) for v in copies.values() if math.isfinite(v.get(key, math.nan))),
            default=None,
        )
        if best_copy is not None:
            ax.axhline(best_copy, color="gray", lw=1, ls="--")
        ax.set_xscale("log")
        # Labelled ticks at 1-2-5 steps (plain 5, 10, 20 rather than 10^1), whatever the range.
        low, high = min(s.seconds for s in summaries) / 1.3, max(s.seconds for s in summaries) * 1.3
        ax.set_xlim(low, high)
        ax.set_xticks([v for v in _ROUND_SECONDS if low <= v <= high])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds per case (end to end)")
        ax.set_ylabel(label)
        if key in DICE_COLUMNS:
            ax.set_ylim(0, 1.02)  # one scale for the three regions
        ax.grid(alpha=0.3)
    handles = [
        legend_ax.scatter(
            [], [], marker="o", edgecolors="tab:blue", facecolors="tab:blue", label="DDIM, trailing"
        ),
        legend_ax.scatter(
            [], [], marker="o", edgecolors="tab:orange", facecolors="tab:orange", label="DDIM, linspace"
        ),
        legend_ax.scatter(
            [], [], marker="s", edgecolors="tab:orange", facecolors="tab:orange", label="DDPM, linspace"
        ),
        legend_ax.scatter(
            [], [], marker="o", edgecolors="gray", facecolors="none", label="4 draws, or threshold"
        ),
        legend_ax.plot([], [], color="black", lw=1, label="Pareto front")[0],
    ]
    if REAL in references:
        handles.append(
            legend_ax.plot([], [], color="tab:green", lw=1.2, label="real complete case (ceiling)")[0]
        )
    if copies:
        handles.append(legend_ax.plot([], [], color="gray", lw=1, ls="--", label="best copy baseline")[0])
    if with_dice:
        legend_ax.axis("off")
        legend_ax.legend(handles=handles, fontsize=9, loc="center")
    else:
        legend_ax.legend(handles=handles, fontsize=7, loc="best")  # where it hides no point
    figure.suptitle(title + " (labels: sampling steps; x4: draws averaged; thr: threshold)", fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return write_atomic(Path(path), buffer.getvalue())


def write_recommended(choice: SettingSummary, path: Path, title: str) -> Path:
    """The recommended setting as a ``parameters.yaml`` for ``cwdm infer --parameters``."""
    fields = dict(choice.fields)
    setting = SweepSetting.model_validate(
        fields | {"sampling_steps": int(fields["sampling_steps"]), "samples": int(fields["samples"])}
    )
    comment = (
        f"{title}: the recommended setting ({choice.seconds:.1f} s a case, PSNR "
        f"{choice.scores['full_psnr']:.2f} dB, SSIM {choice.scores['full_ssim']:.4f}); see sweep.md.\n"
        "Use it with: cwdm infer DATA OUT --weights <the weights swept> --parameters recommended.yaml"
    )
    return write_atomic(path, setting.parameters_yaml(comment))


def _timing_notes(rows: Sequence[dict[str, str]]) -> list[str]:
    """The paragraph on how the times were taken, with a warning where the machine was busy."""
    others = [float(row["other_cores"]) for row in rows if row.get("other_cores")]
    runs = [len(row["seconds_runs"].split()) for row in rows if row.get("seconds_runs")]
    if not others:
        return []
    cpus = os.cpu_count() or 1
    busy = [value for value in others if value > BUSY_SHARE * cpus]
    notes = [
        "## Timing",
        "",
        f"Each time is the median of {min(runs)} to {max(runs)} runs of the synthesis, taken with no scoring "
        f"beside it; other processes kept {min(others):.2f} to {max(others):.2f} of the {cpus} cores busy "
        "meanwhile (`other_cores` in sweep.csv).",
        "",
    ]
    if busy:
        notes += [
            f"**Warning**: {len(busy)} of {len(others)} syntheses were timed while other processes kept more "
            f"than {BUSY_SHARE:.0%} of the cores busy: their times are not to be trusted; rerun them on a "
            "quiet machine (delete their rows from sweep.csv).",
            "",
        ]
    return notes


def write_report(
    rows: Sequence[dict[str, str]], out_dir: Path, title: str
) -> tuple[Path, Path, SettingSummary]:
    """``sweep.md`` (a table per target and over all, the baselines, and the recommendation),
    ``sweep.png`` (all targets) and ``sweep-<target>.png``. Each table and plot compares only the
    settings measured on all of its cases and targets; the others are listed with what they were
    measured on. With ``baselines.csv`` in ``out_dir`` (a sweep with a segmenter), the real case and the
    copy baselines of the same cases are tabled and drawn beside the settings, and the recommendation
    also holds the Dice; ``recommended.yaml``, that setting as a ``parameters.yaml``. Returns the table,
    the plot and the recommended setting over all targets."""
    out_dir = Path(out_dir)
    baselines = read_rows(out_dir / BASELINES_NAME)
    overall = summarise(comparable(rows))
    overall_short = shortfalls(overall)
    choice = _fastest_within(overall, overall_short)
    with_dice = any(math.isfinite(choice.scores.get(k, math.nan)) for k in DICE_COLUMNS)
    parts = [
        f"# {title}",
        "",
        f"{len(rows)} syntheses scored. Mean over cases; times end to end per case.",
        "",
        "## All targets",
        "",
        markdown_table(overall),
        "",
    ]
    references = baseline_summary(baselines, comparable(rows)) if baselines else {}
    if references:
        parts += ["Baselines of the same cases and targets:", "", baseline_table(references), ""]
    partial = sorted({row["setting"] for row in rows} - {s.setting for s in overall})
    if partial:
        parts += ["Measured on some cases or targets only (see the tables per target):", ""]
        for name in partial:
            where = sorted({f"{row['case']} {row['target']}" for row in rows if row["setting"] == name})
            parts.append(f"- `{name}`: " + ", ".join(where))
        parts.append("")
    per_target: list[tuple[str, SettingSummary]] = []
    for target in [str(t) for t in CANONICAL_ORDER if any(row["target"] == str(t) for row in rows)]:
        chosen = comparable(rows, target)
        summaries = summarise(chosen)
        target_references = baseline_summary(baselines, chosen, target) if baselines else {}
        parts += [f"## Missing {target}", "", markdown_table(summaries), ""]
        if target_references:
            parts += [baseline_table(target_references), ""]
        plot(summaries, out_dir / f"sweep-{target}.png", f"{title}, missing {target}", target_references)
        short = shortfalls(summaries)
        pick = _fastest_within(summaries, short)
        per_target.append((target, pick, short[pick.setting] > 1.0))
    rule = "within 0.5 dB PSNR and 0.01 SSIM" + (" and 0.02 Dice of each region" if with_dice else "")
    parts += [
        "## Recommended",
        "",
        (
            f"`{choice.setting}`: the fastest setting {rule} of the best measured over all targets "
            if overall_short[choice.setting] <= 1.0
            else f"`{choice.setting}`: no setting is {rule} of the best measured over all targets; "
            "this one falls least short "
        )
        + f"({choice.seconds:.1f} s a case, PSNR {choice.scores['full_psnr']:.2f} dB, "
        f"SSIM {choice.scores['full_ssim']:.4f}"
        + (
            ", Dice WT/TC/ET " + "/".join(f"{choice.scores[k]:.3f}" for k in DICE_COLUMNS)
            if with_dice
            else ""
        )
        + ").",
        "",
        "By the same rule, target by target:",
        "",
    ]
    parts += [
        f"- missing {target}: `{pick.setting}` ({pick.seconds:.1f} s a case"
        + ("; none within every tolerance, this one falls least short)" if short else ")")
        for target, pick, short in per_target
    ]
    parts.append("")
    parts += _timing_notes(rows)
    table = write_atomic(out_dir / "sweep.md", "\n".join(parts))
    write_recommended(choice, out_dir / RECOMMENDED_NAME, title)
    picture = plot(overall, out_dir / "sweep.png", title, references)
    return table, picture, choice
