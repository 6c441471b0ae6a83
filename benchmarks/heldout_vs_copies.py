"""Held-out scores of one sweep setting against the challenge's copy baselines: the model card's table.

    python benchmarks/heldout_vs_copies.py SWEEP_DIR CASES --setting ddim-2-trailing-brain_mask-fp32-k1

Reads ``SWEEP_DIR/sweep.csv`` (written by ``cwdm sweep`` on the complete cases of CASES), scores every
copy baseline of the same cases and targets with ``cwdm.evaluation.evaluate.baseline_scores`` (kept in
``SWEEP_DIR/copies.csv``, so a second run only reads it), and prints a Markdown table: per case and
target the model's PSNR / SSIM on the full volume and the 224 x 224 x 155 crop, the organisers' SSIM
inside and outside the tumour, every copy's full-volume PSNR / SSIM, and whether the model beats every
copy on both. Then the same per copy source for the organisers' scores, and the mean over the rows.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from cwdm.evaluation.evaluate import baseline_scores
from cwdm.sequences import CANONICAL_ORDER


def copy_rows(sweep_dir: Path, cases_dir: Path, pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The copy baselines' scores of ``pairs`` (case, target), from ``copies.csv`` or computed into it."""
    path = sweep_dir / "copies.csv"
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    have = {(r["case"], r["target"]) for r in rows}
    for case, target in pairs:
        if (case, target) in have:
            continue
        for scores in baseline_scores(cases_dir / case, target):
            rows.append(
                {"case": case, "target": target, "source": scores.source}
                | {key: repr(value) for key, value in scores.values().items()}
            )
        with path.open("w", newline="") as handle:  # a benchmark's cache, rewritten whole each time
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def _number(row: dict[str, str], key: str) -> float:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else math.nan


def table(model: list[dict[str, str]], copies: list[dict[str, str]]) -> str:
    order = {str(seq): i for i, seq in enumerate(CANONICAL_ORDER)}
    model = sorted(model, key=lambda r: (r["case"], order[r["target"]]))
    sources = [f"copy-{seq}" for seq in CANONICAL_ORDER]
    header = [
        "case",
        "missing",
        "model: PSNR / SSIM",
        "crop",
        "BraSyn SSIM tumour / non-tumour",
        *[s.replace("copy-", "copy ") for s in sources],
        "beats every copy",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    wins = 0
    for row in model:
        mine = [c for c in copies if c["case"] == row["case"] and c["target"] == row["target"]]
        psnr, ssim = _number(row, "full_psnr"), _number(row, "full_ssim")
        cells = [
            row["case"],
            row["target"],
            f"**{psnr:.2f} / {ssim:.4f}**",
            f"{_number(row, 'crop_psnr'):.2f} / {_number(row, 'crop_ssim'):.4f}",
            f"{_number(row, 'brasyn_ssim_tumor'):.4f} / {_number(row, 'brasyn_ssim_non_tumor'):.4f}",
        ]
        beaten_psnr = beaten_ssim = True
        for source in sources:
            found = [c for c in mine if c["source"] == source]
            if not found:
                cells.append("-")
                continue
            c_psnr, c_ssim = _number(found[0], "full_psnr"), _number(found[0], "full_ssim")
            beaten_psnr &= psnr > c_psnr
            beaten_ssim &= ssim > c_ssim
            cells.append(f"{c_psnr:.2f} / {c_ssim:.4f}")
        verdict = {
            (True, True): "yes",
            (True, False): "PSNR only",
            (False, True): "SSIM only",
            (False, False): "no",
        }[(beaten_psnr, beaten_ssim)]
        wins += verdict == "yes"
        cells.append(verdict)
        lines.append("| " + " | ".join(cells) + " |")
    means = {key: sum(_number(r, key) for r in model) / len(model) for key in ("full_psnr", "full_ssim")}
    lines += [
        "",
        f"{wins} of {len(model)} beat every copy on PSNR and SSIM. Mean over the rows: PSNR "
        f"{means['full_psnr']:.2f} dB, SSIM {means['full_ssim']:.4f}.",
    ]
    brasyn = [c for c in copies if c.get("brasyn_ssim_tumor")]
    if brasyn:
        lines += ["", "| case | missing | copy | BraSyn SSIM tumour / non-tumour |", "|---|---|---|---|"]
        for c in sorted(brasyn, key=lambda r: (r["case"], order[r["target"]], r["source"])):
            lines.append(
                f"| {c['case']} | {c['target']} | {c['source']} | "
                f"{_number(c, 'brasyn_ssim_tumor'):.4f} / {_number(c, 'brasyn_ssim_non_tumor'):.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("cases", type=Path, help="the complete cases the sweep ran on")
    parser.add_argument("--setting", required=True, help="a setting name of sweep.csv")
    args = parser.parse_args()
    rows = [r for r in csv.DictReader((args.sweep_dir / "sweep.csv").open()) if r["setting"] == args.setting]
    if not rows:
        raise SystemExit(f"no rows of setting {args.setting} in {args.sweep_dir / 'sweep.csv'}")
    copies = copy_rows(args.sweep_dir, args.cases, sorted({(r["case"], r["target"]) for r in rows}))
    print(table(rows, copies), end="")


if __name__ == "__main__":
    main()
