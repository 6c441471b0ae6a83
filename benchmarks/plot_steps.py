"""Sampling steps on the held-out cases: per target, the Dice of the completed case (WT, TC, ET), PSNR
and SSIM at each number of DDIM steps, against the best copy and the sequence left out, and the steps
the sweep's rule recommends for that target.

    python benchmarks/plot_steps.py OUT.png STEPS=DIR/scores.csv [STEPS=... ...] [--default N]

Each ``scores.csv`` is one run of ``benchmarks/downstream_heldout.py`` with ``--parameters`` setting
``sampling_steps`` (the same weights, cases and segmenter). The rule is the sweep's
(:func:`cwdm.evaluation.sweep.analysis.recommendation`): the fewest steps whose mean PSNR, SSIM and Dice
of every region are within 0.5 dB, 0.01 and 0.02 of the best measured. Each row also gives the paired
difference of the mean of the three regions' Dice against ``--default`` steps (bootstrap 95 % interval
over cases), so that a difference smaller than its interval is read as noise. The Markdown goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from cwdm.evaluation.stats import Interval, bootstrap_mean, paired_difference
from cwdm.evaluation.sweep.analysis import SettingSummary, recommendation
from cwdm.evaluation.verdict import MISSING, PREDICTION, REGION_TITLES, verdicts
from cwdm.sequences import CANONICAL_ORDER

REGION_COLOURS = {"dice_wt": "#1b7837", "dice_tc": "#2166ac", "dice_et": "#b2182b"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", nargs="+", help="STEPS=scores.csv")
    parser.add_argument("--default", type=int, default=2, help="the steps the others are compared to")
    args = parser.parse_args(argv)
    runs, seconds = {}, {}
    for item in args.runs:
        steps, _, path = item.partition("=")
        runs[int(steps)] = read(Path(path))
        seconds[int(steps)] = case_seconds(Path(path))
    if args.default not in runs:
        raise SystemExit(f"--default {args.default}: no run with that many steps")
    measured = measure(dict(sorted(runs.items())), seconds)
    draw(measured).savefig(args.out, dpi=110)
    print(table(measured, args.default))
    return 0


def read(path: Path) -> list[dict]:
    """The rows of one ``scores.csv``."""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def case_seconds(scores: Path) -> dict[str, Interval]:
    """Target -> seconds per written case, from the ``seconds.csv`` that ``downstream_heldout.py``
    writes beside ``scores.csv``; empty where there is none."""
    table = scores.with_name("seconds.csv")
    if not table.is_file():
        return {}
    rows = read(table)
    return {
        target: bootstrap_mean([float(row["elapsed_s"]) for row in rows if row["target"] == target])
        for target in (str(seq) for seq in CANONICAL_ORDER)
        if any(row["target"] == target for row in rows)
    }


def _values(rows: list[dict], target: str, source: str, key: str) -> dict[str, float]:
    """Case -> value of ``key`` for one target and source (empty cells left out)."""
    return {
        row["case"]: float(row[key])
        for row in rows
        if row["target"] == target and row["source"] == source and row.get(key, "") != ""
    }


def measure(
    runs: dict[int, list[dict]], seconds: dict[int, dict[str, Interval]] | None = None
) -> dict[str, dict]:
    """Per target measured in every run: each steps' intervals (the regions' Dice over the cases its
    verdict compares, PSNR, SSIM, seconds per case where ``seconds`` has them) and per-case mean Dice,
    and the baselines (best copy, left out) of the first run's verdict
    (:func:`cwdm.evaluation.verdict.verdicts`, which `downstream_heldout.py` reports)."""
    judged = {steps: {v.target: v for v in verdicts(rows)} for steps, rows in runs.items()}
    first = next(iter(judged.values()))
    found: dict[str, dict] = {}
    for target in [t for t in first if all(t in judgement for judgement in judged.values())]:
        per_steps = {}
        for steps, rows in runs.items():
            verdict = judged[steps][target]
            dice = {key: _values(rows, target, PREDICTION, key) for key in REGION_TITLES}
            per_steps[steps] = {
                **verdict.means[PREDICTION],
                "per_case": {
                    c: sum(dice[k][c] for k in REGION_TITLES) / len(REGION_TITLES) for c in verdict.cases
                },
                "full_psnr": bootstrap_mean(list(_values(rows, target, PREDICTION, "full_psnr").values())),
                "full_ssim": bootstrap_mean(list(_values(rows, target, PREDICTION, "full_ssim").values())),
                "seconds": (seconds or {}).get(steps, {}).get(target),
            }
        base = first[target]
        found[target] = {
            "steps": per_steps,
            "best_copy": base.best_copy,
            "baselines": {s: base.means[s] for s in (base.best_copy, MISSING) if s in base.means},
        }
    return found


def recommended_steps(target: dict) -> tuple[int, bool]:
    """The sweep's rule over this target's steps: (steps, whether within every tolerance)."""
    summaries = [
        SettingSummary(
            setting=str(steps),
            fields=None,
            n=len(m["per_case"]),
            seconds=float(steps),  # the network's time grows with the steps; only their order is used
            scores={"full_psnr": m["full_psnr"].mean, "full_ssim": m["full_ssim"].mean}
            | {key: m[key].mean for key in REGION_TITLES},
        )
        for steps, m in target["steps"].items()
    ]
    chosen = recommendation(summaries)
    return int(chosen.choice.setting), chosen.within


def _versus(target: dict, steps: int, default: int) -> Interval | None:
    """Paired difference of the regions' mean Dice, ``steps`` minus ``default``, over shared cases."""
    if steps == default:
        return None
    mine, base = target["steps"][steps]["per_case"], target["steps"][default]["per_case"]
    cases = sorted(set(mine) & set(base))
    return paired_difference([mine[c] for c in cases], [base[c] for c in cases])


def table(measured: dict[str, dict], default: int) -> str:
    """Markdown: a row per target and steps (and its baselines), then the rule's choice per target."""
    lines = [
        f"| missing | completed with | WT | TC | ET | mean Dice minus {default} steps | PSNR (dB) | SSIM "
        "| s per case |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    choices = []
    for name, target in measured.items():
        for steps, m in target["steps"].items():
            versus = _versus(target, steps, default)
            cells = [m[key].text() for key in REGION_TITLES]
            lines.append(
                f"| {name} | synthesis, {steps} step{'s' if steps > 1 else ''} | "
                + " | ".join(cells)
                + f" | {versus.text() if versus else '(reference)'} | {m['full_psnr'].text(2)}"
                + f" | {m['full_ssim'].text(3)} | {m['seconds'].text(1) if m['seconds'] else '-'} |"
            )
        for source, means in target["baselines"].items():
            label = "left out" if source == MISSING else f"best copy ({source.removeprefix('copy-')})"
            cells = [means[key].text() for key in REGION_TITLES]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " | | | | |")
        steps, within = recommended_steps(target)
        choices.append(
            f"- {name}: {steps} step{'s' if steps > 1 else ''}"
            + ("" if within else " (no setting within every tolerance: the smallest shortfall)")
        )
    rule = "fewest steps within 0.5 dB PSNR, 0.01 SSIM and 0.02 Dice of each region of the best measured"
    return "\n".join([*lines, "", f"Recommended by the sweep's rule ({rule}):", "", *choices])


def draw(measured: dict[str, dict]):  # noqa: ANN201 (a matplotlib Figure, imported here only)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.4 * len(measured), 6.4), layout="constrained")
    axes = figure.subplots(2, len(measured), sharex=True, squeeze=False, height_ratios=[2, 1])
    for column, (name, target) in enumerate(measured.items()):
        ax, below = axes[0][column], axes[1][column]
        steps = list(target["steps"])
        for number, (key, title) in enumerate(REGION_TITLES.items()):
            means = [target["steps"][s][key] for s in steps]
            errors = [[m.mean - m.low for m in means], [m.high - m.mean for m in means]]
            nudged = [s * 1.04 ** (number - 1) for s in steps]  # the three intervals side by side
            ax.errorbar(
                nudged,
                [m.mean for m in means],
                yerr=errors,
                color=REGION_COLOURS[key],
                marker="o",
                capsize=2,
                label=f"{title}, synthesis",
            )
            for source, style in ((target["best_copy"], "--"), (MISSING, ":")):
                if source in target["baselines"]:
                    ax.axhline(
                        target["baselines"][source][key].mean,
                        color=REGION_COLOURS[key],
                        linestyle=style,
                        linewidth=1,
                    )
        copy = (target["best_copy"] or "").removeprefix("copy-")
        ax.plot([], [], "k--", linewidth=1, label=f"best copy ({copy})")
        ax.plot([], [], "k:", linewidth=1, label="left out")
        chosen, within = recommended_steps(target)
        rule = f"sweep rule: {chosen}" + ("" if within else " (closest)")  # none within every tolerance
        ax.axvline(chosen, color="#999999", linewidth=6, alpha=0.25, label=rule)
        ax.set_title(f"missing {name} ({len(target['steps'][steps[0]]['per_case'])} cases)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", ncol=2, frameon=False)
        psnr = [target["steps"][s]["full_psnr"] for s in steps]
        below.errorbar(
            steps,
            [m.mean for m in psnr],
            yerr=[[m.mean - m.low for m in psnr], [m.high - m.mean for m in psnr]],
            color="#4d4d4d",
            marker="o",
            capsize=2,
        )
        below.set_xscale("log")
        below.set_xticks(steps, [str(s) for s in steps])
        below.minorticks_off()
        below.set_xlabel("DDIM steps (trailing)")
        below.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice of the completed case\n(mean, 95 % CI)")
    axes[1][0].set_ylabel("PSNR of the synthesis (dB)")
    for ax in axes[1]:
        ax.margins(y=0.2)
    return figure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
