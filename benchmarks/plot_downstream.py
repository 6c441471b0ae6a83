"""The downstream verdict as a picture and one table: per target and tumour region, the mean Dice (with
its bootstrap 95 % interval) of the real case, the synthesis of each weights folder, the best copy and
the sequence left out, from the ``verdict.json`` files that ``benchmarks/downstream_heldout.py`` writes
(and, for the synthesis's PSNR and SSIM, the ``scores.csv`` beside each).

    python benchmarks/plot_downstream.py OUT.png NAME=OUT/NAME/verdict.json [NAME=... ...]

The baselines (real, copy, left out) are taken from the first file: they do not depend on the weights.
The table (Markdown) goes to stdout.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from cwdm.evaluation.stats import bootstrap_mean

REGIONS = {"dice_wt": "WT", "dice_tc": "TC", "dice_et": "ET"}
BASELINE_COLOURS = {"real": "#4d4d4d", "copy": "#bdbdbd", "missing": "#f4a582"}
SYNTHESIS_COLOURS = ["#2166ac", "#67a9cf", "#1b7837", "#762a83"]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out = Path(argv[0])
    runs = []
    for item in argv[1:]:
        name, _, path = item.partition("=")
        runs.append((name, json.loads(Path(path).read_text())))
    figure = draw(runs)
    figure.savefig(out, dpi=110)
    images = {
        name: _image_scores(Path(item.partition("=")[2]).with_name("scores.csv"))
        for name, item in zip([name for name, _ in runs], argv[1:], strict=True)
    }
    print(table(runs, images))
    return 0


def table(runs: list[tuple[str, dict]], images: dict[str, dict[str, str]]) -> str:
    """Markdown: one row per target and source, Dice per region as ``mean [low, high]``; the synthesis
    rows also with PSNR and SSIM."""
    first = runs[0][1]
    lines = [
        "| missing | completed with | WT | TC | ET | PSNR (dB) | SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in [t for t in ("t1n", "t1c", "t2w", "t2f") if t in first]:
        base = first[target]
        rows = [("real case (ceiling)", base["means"]["real"], "", "")]
        for name, run in [(name, run) for name, run in runs if target in run]:
            psnr, ssim = images.get(name, {}).get(target, ("", ""))
            rows.append((f"synthesis, {name}", run[target]["means"]["prediction"], psnr, ssim))
        copy = base["best_copy"]
        rows.append((f"best copy ({copy.removeprefix('copy-')})", base["means"][copy], "", ""))
        if "missing" in base["means"]:
            rows.append(("left out", base["means"]["missing"], "", ""))
        for label, means, psnr, ssim in rows:
            cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (means[key] for key in REGIONS)]
            lines.append(f"| {target} | {label} | " + " | ".join(cells) + f" | {psnr} | {ssim} |")
    return "\n".join(lines)


def _image_scores(scores: Path) -> dict[str, tuple[str, str]]:
    """Target -> the synthesis's mean PSNR and SSIM with their intervals (empty when no scores file)."""
    if not scores.is_file():
        return {}
    rows = [row for row in csv.DictReader(scores.open()) if row["source"] == "prediction"]
    found = {}
    for target in {row["target"] for row in rows}:
        mine = [row for row in rows if row["target"] == target]
        psnr = bootstrap_mean([float(row["full_psnr"]) for row in mine]).text(2)
        ssim = bootstrap_mean([float(row["full_ssim"]) for row in mine]).text(3)
        found[target] = (psnr, ssim)
    return found


def draw(runs: list[tuple[str, dict]]):  # noqa: ANN201 (a matplotlib Figure, imported here only)
    from matplotlib.figure import Figure

    first = runs[0][1]
    targets = [t for t in ("t1n", "t1c", "t2w", "t2f") if t in first]
    figure = Figure(figsize=(3.4 * len(targets), 4.3), layout="constrained")
    axes = figure.subplots(1, len(targets), sharey=True, squeeze=False)[0]
    for ax, target in zip(axes, targets, strict=True):
        base = first[target]
        bars = [("real case", base["means"]["real"], BASELINE_COLOURS["real"])]
        bars += [
            (f"synthesis ({name})", run[target]["means"]["prediction"], SYNTHESIS_COLOURS[i % 4])
            for i, (name, run) in enumerate(runs)
            if target in run  # a folder measured on some targets only
        ]
        copy = base["best_copy"]
        bars.append(
            (f"best copy ({copy.removeprefix('copy-')})", base["means"][copy], BASELINE_COLOURS["copy"])
        )
        if "missing" in base["means"]:
            bars.append(("left out", base["means"]["missing"], BASELINE_COLOURS["missing"]))
        width = 0.8 / len(bars)
        for number, (label, means, colour) in enumerate(bars):
            xs, heights, errors = [], [], [[], []]
            for region_number, key in enumerate(REGIONS):
                mean, low, high = means[key]
                xs.append(region_number + (number - (len(bars) - 1) / 2) * width)
                heights.append(mean)
                errors[0].append(mean - low)
                errors[1].append(high - mean)
            ax.bar(xs, heights, width, yerr=errors, color=colour, label=label, capsize=2, linewidth=0)
        ax.set_xticks(range(len(REGIONS)), list(REGIONS.values()))
        ax.set_title(f"missing {target} ({len(base['cases'])} cases)")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    axes[0].set_ylabel("Dice of the completed case (mean, 95 % CI)")
    return figure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
