"""What a sweep shows: ``sweep.md`` (a table per target and over all, the baselines, the recommended
setting, how the times were taken), the plots of score against seconds, and ``recommended.yaml``."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ...atomic import write_atomic
from ...config import SweepSetting
from ...segmentation.labels import DICE_COLUMNS
from ...sequences import CANONICAL_ORDER
from ..results import MISSING, REAL
from ..timing import BUSY_SHARE
from .analysis import (
    SUMMARY_SCORES,
    BaselineRow,
    SettingSummary,
    SweepRow,
    Tolerances,
    baseline_summary,
    comparable,
    read_baselines,
    recommendation,
    summarise,
)

#: The setting ``cwdm sweep`` recommends, as a ``parameters.yaml`` (``cwdm infer --parameters``).
RECOMMENDED_NAME = "recommended.yaml"
BASELINES_NAME = "baselines.csv"
_LABELS = {REAL: "real complete case (ceiling)", MISSING: "sequence left out (skip synthesis)"}


def _format(key: str, value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}" if "psnr" in key else f"{value:.4f}"


def baseline_table(summary: dict[str, dict[str, float]]) -> str:
    """A Markdown table of :func:`~cwdm.evaluation.sweep.analysis.baseline_summary`."""
    lines = [
        "| baseline | n | " + " | ".join(SUMMARY_SCORES.values()) + " |",
        "|" + "---|" * (len(SUMMARY_SCORES) + 2),
    ]
    for source, means in summary.items():
        label = _LABELS.get(source, source.replace("copy-", "copy "))
        cells = [label, str(int(means["n"])), *(_format(key, means[key]) for key in SUMMARY_SCORES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(summaries: Sequence[SettingSummary]) -> str:
    """A Markdown table of the summaries (Pareto-front settings marked: P for PSNR, S for SSIM)."""
    header = ["sampler", "steps", "spacing", "post-processing", "precision", "draws", "n", "s / case"]
    header += [*SUMMARY_SCORES.values(), "front"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        f = s.fields or SweepSetting()
        cells = [f.sampler, str(f.sampling_steps), f.timestep_spacing, f.postprocess, f.precision]
        cells += [str(f.samples), str(s.n), f"{s.seconds:.3g}"]
        cells += [_format(key, s.scores[key]) for key in SUMMARY_SCORES]
        cells.append(("P" if s.pareto_psnr else "") + ("S" if s.pareto_ssim else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds_ticks(low: float, high: float) -> list[float]:
    """Ticks of the seconds axis between ``low`` and ``high``: the round 1, 2, 5 series, or, over a range
    too narrow for three of them, every whole multiple of the decade (4, 5, 6, ... 10, 20), or every half
    (0.25, 0.3, 0.35, ...)."""
    for multiples in ((1, 2, 5), tuple(range(1, 10)), tuple(m / 2 for m in range(2, 20))):
        ticks = [round(m * 10.0**e, 6) for e in range(-3, 7) for m in multiples]
        ticks = sorted({t for t in ticks if low <= t <= high})
        if len(ticks) >= 3:
            return ticks
    return ticks


#: Marker and colour of a sampler and spacing in the plots (and their legend entries).
_KINDS = {
    ("ddim", "trailing"): ("o", "tab:blue", "DDIM, trailing"),
    ("ddim", "linspace"): ("o", "tab:orange", "DDIM, linspace"),
    ("ddpm", "linspace"): ("s", "tab:orange", "DDPM, linspace"),
    ("ddpm", "trailing"): ("s", "tab:blue", "DDPM, trailing"),
}


def plot(
    summaries: Sequence[SettingSummary],
    path: Path,
    title: str,
    references: dict[str, dict[str, float]] | None = None,
) -> Path:
    """:func:`draw` the plot and write it as a PNG (atomically); returns ``path``."""
    buffer = io.BytesIO()
    draw(summaries, title, references).savefig(buffer, format="png", dpi=110)
    return write_atomic(Path(path), buffer.getvalue())


def draw(
    summaries: Sequence[SettingSummary],
    title: str,
    references: dict[str, dict[str, float]] | None = None,
):  # noqa: ANN201 (a matplotlib Figure; matplotlib is imported only when a plot is drawn)
    """Score against seconds per case (log scale), one point per setting, the Pareto front drawn: PSNR
    and SSIM, and where the rows have Dice a second row with Dice of WT, TC and ET. ``references``
    adds the real case (the ceiling) and the best copy baseline as lines, where they have the score.
    The legend lists only what the plot shows (kinds of point, lines), and the title explains only the
    point labels present."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    with_dice = any(math.isfinite(s.scores.get(k, math.nan)) for s in summaries for k in DICE_COLUMNS)
    panels = [("full_psnr", "PSNR (dB), full volume"), ("full_ssim", "SSIM, full volume")]
    if with_dice:
        panels += [(key, f"Dice {key[-2:].upper()} of the completed case") for key in DICE_COLUMNS]
    figure = Figure(figsize=(15, 9) if with_dice else (11, 4.5))
    grid = figure.subplots(2, 3) if with_dice else figure.subplots(1, 2)
    axes = list(grid.flat)
    legend_ax = axes.pop(2) if with_dice else axes[1]
    references = references or {}
    copies = {k: v for k, v in references.items() if k not in (REAL, MISSING)}
    skipped = {k: v for k, v in references.items() if k == MISSING}
    fields = [s.fields or SweepSetting() for s in summaries]
    kinds_seen = {(f.sampler, f.timestep_spacing) for f in fields}
    lines_drawn: set[str] = set()
    low, high = min(s.seconds for s in summaries) / 1.3, max(s.seconds for s in summaries) * 1.3
    ticks = _seconds_ticks(low, high)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for s, f in zip(summaries, fields, strict=True):
            marker, colour, _ = _KINDS[(f.sampler, f.timestep_spacing)]
            ax.scatter(
                s.seconds,
                s.scores[key],
                marker=marker,
                edgecolors=colour,
                facecolors="none" if _hollow(f) else colour,
                s=36,
                zorder=3,
            )
            ax.annotate(
                _tag(f), (s.seconds, s.scores[key]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        if key in ("full_psnr", "full_ssim"):
            front = sorted(
                (s for s in summaries if (s.pareto_psnr if key == "full_psnr" else s.pareto_ssim)),
                key=lambda s: s.seconds,
            )
            ax.plot([s.seconds for s in front], [s.scores[key] for s in front], color="black", lw=1, zorder=2)
        lines_drawn |= _reference_lines(ax, key, references, copies, skipped)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 5, not 5.0
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds per case (end to end)")
        ax.set_ylabel(label)
        if key in DICE_COLUMNS:
            ax.set_ylim(0, 1.02)  # one scale for the three regions
        ax.grid(alpha=0.3)
    handles = []
    for kind, (marker, colour, text) in _KINDS.items():
        if kind in kinds_seen:
            handles.append(
                legend_ax.scatter([], [], marker=marker, edgecolors=colour, facecolors=colour, label=text)
            )
    draws = any(f.samples != 1 for f in fields)
    threshold = any(f.postprocess != "brain_mask" for f in fields)
    if draws or threshold:
        text = " or ".join(["several draws"] * draws + ["threshold"] * threshold)
        handles.append(
            legend_ax.scatter([], [], marker="o", edgecolors="gray", facecolors="none", label=text)
        )
    handles.append(legend_ax.plot([], [], color="black", lw=1, label="Pareto front")[0])
    for name in _REFERENCE_LINES:
        if name in lines_drawn:
            style, text = _REFERENCE_LINES[name]
            handles.append(legend_ax.plot([], [], label=text, **style)[0])
    if with_dice:
        legend_ax.axis("off")
        legend_ax.legend(handles=handles, fontsize=9, loc="center")
    else:
        legend_ax.legend(handles=handles, fontsize=7, loc="best")  # where it hides no point
    notes = ["labels: sampling steps"]
    notes += ["bf16: bfloat16"] * any(f.precision == "bf16" for f in fields)
    notes += ["xK: K draws averaged"] * draws + ["thr: threshold post-processing"] * threshold
    figure.suptitle(f"{title} ({'; '.join(notes)})", fontsize=9)
    figure.tight_layout()
    return figure


#: The reference lines: their style and legend text.
_REFERENCE_LINES = {
    "real": ({"color": "tab:green", "lw": 1.2}, _LABELS[REAL]),
    "copy": ({"color": "gray", "lw": 1, "ls": "--"}, "best copy baseline"),
    "skip": ({"color": "tab:red", "lw": 1, "ls": ":"}, _LABELS[MISSING]),
}


def _hollow(setting: SweepSetting) -> bool:
    """Points of several draws or of the threshold post-processing are drawn hollow."""
    return setting.samples != 1 or setting.postprocess != "brain_mask"


def _reference_lines(ax, key: str, references: dict, copies: dict, skipped: dict) -> set[str]:  # noqa: ANN001
    """The ceiling, the best copy and the skip baseline as horizontal lines, where measured; returns the
    names (of :data:`_REFERENCE_LINES`) of the lines drawn."""
    drawn = set()
    if REAL in references and math.isfinite(references[REAL].get(key, math.nan)):
        ax.axhline(references[REAL][key], **_REFERENCE_LINES["real"][0])
        drawn.add("real")
    for name, group in (("copy", copies), ("skip", skipped)):
        best = max(
            (v.get(key, math.nan) for v in group.values() if math.isfinite(v.get(key, math.nan))),
            default=None,
        )
        if best is not None:
            ax.axhline(best, **_REFERENCE_LINES[name][0])
            drawn.add(name)
    return drawn


def _tag(setting: SweepSetting) -> str:
    """A point's label: its steps, and what sets it apart (bf16, draws, threshold)."""
    tag = str(setting.sampling_steps) + (" bf16" if setting.precision == "bf16" else "")
    tag += f" x{setting.samples}" if setting.samples != 1 else ""
    return tag + (" thr" if setting.postprocess == "threshold" else "")


def write_recommended(choice: SettingSummary, path: Path, title: str) -> Path:
    """The recommended setting as a ``parameters.yaml`` for ``cwdm infer --parameters``."""
    setting = choice.fields or SweepSetting()
    comment = (
        f"{title}: the recommended setting ({choice.seconds:.1f} s a case, PSNR "
        f"{choice.scores['full_psnr']:.2f} dB, SSIM {choice.scores['full_ssim']:.4f}); see sweep.md.\n"
        "Use it with: cwdm infer DATA OUT --weights <the weights swept> --parameters recommended.yaml"
    )
    return write_atomic(path, setting.parameters_yaml(comment))


def timing_notes(rows: Sequence[SweepRow], cpus: int | None = None) -> list[str]:
    """The paragraph on how the times were taken, with a warning where the machine was busy."""
    timed = [row.timing for row in rows if row.timing is not None and not math.isnan(row.timing.other_cores)]
    if not timed:
        return []
    cpus = cpus or os.cpu_count() or 1
    others = [timing.other_cores for timing in timed]
    runs = [len(timing.runs) for timing in timed]
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
    rows: Sequence[SweepRow], out_dir: Path, title: str, tolerances: Tolerances | None = None
) -> tuple[Path, Path, SettingSummary]:
    """``sweep.md`` (a table per target and over all, the baselines, and the recommendation),
    ``sweep.png`` (all targets) and ``sweep-<target>.png``. Each table and plot compares only the
    settings measured on all of its cases and targets; the others are listed with what they were
    measured on. With ``baselines.csv`` in ``out_dir`` (a sweep with a segmenter), the real case and the
    baselines of the same cases are tabled and drawn beside the settings, and the recommendation also
    holds the Dice; ``recommended.yaml``, that setting as a ``parameters.yaml``. Returns the table,
    the plot and the recommended setting over all targets."""
    out_dir = Path(out_dir)
    tolerances = tolerances or Tolerances()
    baselines: list[BaselineRow] = read_baselines(out_dir / BASELINES_NAME)
    overall = summarise(comparable(rows))
    best = recommendation(overall, tolerances)
    choice = best.choice
    with_dice = any(math.isfinite(choice.scores.get(k, math.nan)) for k in DICE_COLUMNS)
    parts = [
        f"# {title}",
        "",
        f"{len(rows)} syntheses scored. Mean over cases; times end to end per case.",
        "",
    ]
    parts += ["## All targets", "", markdown_table(overall), ""]
    references = baseline_summary(baselines, comparable(rows)) if baselines else {}
    if references:
        parts += ["Baselines of the same cases and targets:", "", baseline_table(references), ""]
    partial = sorted({row.name for row in rows} - {s.setting for s in overall})
    if partial:
        parts += ["Measured on some cases or targets only (see the tables per target):", ""]
        for name in partial:
            where = sorted({f"{row.case_id} {row.target}" for row in rows if row.name == name})
            parts.append(f"- `{name}`: " + ", ".join(where))
        parts.append("")
    per_target = []
    for target in [str(t) for t in CANONICAL_ORDER if any(row.target == str(t) for row in rows)]:
        chosen = comparable(rows, target)
        summaries = summarise(chosen)
        target_references = baseline_summary(baselines, chosen, target) if baselines else {}
        parts += [f"## Missing {target}", "", markdown_table(summaries), ""]
        if target_references:
            parts += [baseline_table(target_references), ""]
        plot(summaries, out_dir / f"sweep-{target}.png", f"{title}, missing {target}", target_references)
        per_target.append((target, recommendation(summaries, tolerances)))
    rule = tolerances.describe(with_dice)
    intro = (
        f"`{choice.setting}`: the fastest setting {rule} of the best measured over all targets "
        if best.within
        else f"`{choice.setting}`: no setting is {rule} of the best measured over all targets; "
        "this one falls least short "
    )
    dice = ", Dice WT/TC/ET " + "/".join(f"{choice.scores[k]:.3f}" for k in DICE_COLUMNS) if with_dice else ""
    parts += [
        "## Recommended",
        "",
        intro + f"({choice.seconds:.1f} s a case, PSNR {choice.scores['full_psnr']:.2f} dB, "
        f"SSIM {choice.scores['full_ssim']:.4f}{dice}).",
        "",
        "By the same rule, target by target:",
        "",
    ]
    parts += [
        f"- missing {target}: `{pick.choice.setting}` ({pick.choice.seconds:.1f} s a case"
        + (")" if pick.within else "; none within every tolerance, this one falls least short)")
        for target, pick in per_target
    ]
    parts.append("")
    parts += timing_notes(rows)
    table = write_atomic(out_dir / "sweep.md", "\n".join(parts))
    write_recommended(choice, out_dir / RECOMMENDED_NAME, title)
    picture = plot(overall, out_dir / "sweep.png", title, references)
    return table, picture, choice
