"""Held-out downstream evaluation of weights folders: each held-out case with each target dropped in turn,
synthesised, then scored by ``cwdm evaluate --baseline --segmenter`` (image scores, the Dice of the
completed case, the real case, every copy and, where the segmenter can, the target left out), and the
per-target verdict with bootstrap intervals (:mod:`cwdm.evaluation.verdict`).

    python benchmarks/downstream_heldout.py CASES OUT --weights NAME=W [--weights NAME=W ...] \
        --segmenter S --heldout ID,ID,... [--targets t1c,t2f] [--parameters recommended.yaml]

Writes, per weights folder, ``OUT/<NAME>/scores.csv`` (every score), ``verdict.md`` (the verdict table,
the image scores with intervals, the per-case Dice), ``verdict.json`` and ``seconds.csv`` (each
synthesis's seconds, read to written); the syntheses stay in
``OUT/<NAME>/work``. The baselines (the real case, the copies, the target left out) do not depend on the
weights: they are scored once, with the first folder, and reused for the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from cwdm.cases.discovery import discover_cases
from cwdm.config import load_run_parameters
from cwdm.evaluation.downstream import DownstreamScorer
from cwdm.evaluation.evaluate import evaluate
from cwdm.evaluation.stats import bootstrap_mean
from cwdm.evaluation.verdict import REGION_TITLES, verdict_table, verdicts
from cwdm.inference.run import RunRequest, run_request
from cwdm.segmentation.spec import open_segmenter
from cwdm.sequences import CANONICAL_ORDER, MRISequence, condition_order

IMAGE_SCORES = {
    "full_psnr": "PSNR (dB)",
    "full_ssim": "SSIM",
    "brasyn_ssim_non_tumor": "BraSyn SSIM non-tumour",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", action="append", required=True, help="NAME=FOLDER, repeatable")
    parser.add_argument("--segmenter", required=True)
    parser.add_argument("--heldout", required=True, help="comma list of case ids")
    parser.add_argument("--targets", default="t1n,t1c,t2w,t2f")
    parser.add_argument("--parameters", type=Path, default=None)
    parser.add_argument(
        "--baselines",
        type=Path,
        default=None,
        help="scores.csv of an earlier run: its copies and left-out rows",
    )
    args = parser.parse_args(argv)

    heldout = [item.strip() for item in args.heldout.split(",") if item.strip()]
    targets = [MRISequence(t) for t in args.targets.split(",")]
    params = load_run_parameters(args.parameters).model_copy(update={"device": "cpu"})
    cases = {case.case_id: case for case in discover_cases(args.cases) if case.case_id in heldout}
    missing = sorted(set(heldout) - set(cases))
    if missing:
        raise SystemExit(f"held-out cases not in {args.cases}: {missing}")
    scorer = DownstreamScorer(open_segmenter(args.segmenter, device="cpu"))
    baselines: list[dict] = [] if args.baselines is None else _baseline_rows(args.baselines, targets)
    for number, item in enumerate(args.weights, start=0 if args.baselines is None else 1):
        name, _, folder = item.partition("=")
        root = args.out / name
        rows, seconds = [], []
        for target in targets:
            inputs = _inputs(cases, target, args.out / "inputs")
            predictions = root / "work" / "predictions" / str(target)
            report = root / "work" / f"predictions-{target}-report.json"
            run = run_request(RunRequest(inputs, predictions, Path(folder), params, report))
            if run.report.exit_code != 0:
                raise SystemExit(f"{name}: synthesis of {target} failed: {run.report.counts_text()}")
            seconds += [
                {"case": case.case_id, "target": str(target), "elapsed_s": case.elapsed_s}
                for case in run.report.cases
                if case.status == "written"
            ]
            result = evaluate(predictions, args.cases, baseline=number == 0, downstream=scorer)
            for failure in result.failures:
                print(f"not scored: {failure.message}", file=sys.stderr)
            rows += [
                {"case": s.case_id, "target": s.target, "source": s.source, **s.values()}
                for s in result.scores
            ]
        if number == 0:
            baselines = [row for row in rows if row["source"] not in ("prediction", "real")]
        else:
            rows += baselines
        _write(root, name, rows, args, folder)
        # Each written synthesis's seconds (read to written, from the run reports): what a setting costs.
        _write_csv(root / "seconds.csv", ["case", "target", "elapsed_s"], seconds)
    return 0


def _baseline_rows(path: Path, targets: list[MRISequence]) -> list[dict]:
    """The copy and left-out rows of an earlier run's ``scores.csv`` (they do not depend on the weights)."""
    wanted = {str(t) for t in targets}
    rows = [row for row in csv.DictReader(path.open()) if row["source"] not in ("prediction", "real")]
    return [row for row in rows if row["target"] in wanted]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _inputs(cases: dict, target: MRISequence, root: Path) -> Path:
    """``root/<target>/<case>/``: copies of the three present sequences of each held-out case."""
    inputs = root / str(target)
    for case in cases.values():
        folder = inputs / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        for seq in condition_order(target):
            if not (folder / case.files[seq].name).is_file():
                shutil.copy(case.files[seq], folder / case.files[seq].name)
    return inputs


def _write(root: Path, name: str, rows: list[dict], args: argparse.Namespace, folder: str) -> None:
    columns = sorted({key for row in rows for key in row} - {"case", "target", "source"})
    blanked = [{k: ("" if v != v else v) for k, v in row.items()} for row in rows]  # NaN: empty
    _write_csv(root / "scores.csv", ["case", "target", "source", *columns], blanked)
    found = verdicts(rows)
    lines = [
        f"# Held-out downstream evaluation: {name}",
        "",
        f"Weights `{folder}`, segmenter `{args.segmenter}`, parameters "
        f"`{args.parameters or 'defaults'}`; held-out cases: {args.heldout}.",
        "",
        "## Verdict per target (Dice, mean [bootstrap 95 % interval] over cases)",
        "",
        verdict_table(found),
        "",
        "## Image scores of the synthesis (mean [95 % interval])",
        "",
        "| missing | " + " | ".join(IMAGE_SCORES.values()) + " |",
        "|---|" + "---|" * len(IMAGE_SCORES),
    ]
    for target in [str(t) for t in CANONICAL_ORDER]:
        ours = [row for row in rows if row["target"] == target and row["source"] == "prediction"]
        if ours:
            cells = [bootstrap_mean([float(row.get(k, "nan")) for row in ours]).text() for k in IMAGE_SCORES]
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per case (Dice WT / TC / ET)",
        "",
        "| case | missing | source | WT | TC | ET |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["target"], r["case"], r["source"])):
        if all(row.get(k) == row.get(k) for k in REGION_TITLES) and "dice_wt" in row:
            dice = [f"{float(row[k]):.3f}" for k in REGION_TITLES]
            lines.append(f"| {row['case']} | {row['target']} | {row['source']} | " + " | ".join(dice) + " |")
    (root / "verdict.md").write_text("\n".join(lines) + "\n")
    summary = {
        v.target: {
            "cases": list(v.cases),
            "best_copy": v.best_copy,
            "earns_its_place": v.earns_its_place,
            "shortfalls": v.shortfalls(),
            "means": {s: {k: [i.mean, i.low, i.high] for k, i in m.items()} for s, m in v.means.items()},
            "versus_copy": {k: [i.mean, i.low, i.high] for k, i in v.versus_copy.items()},
            "versus_missing": {k: [i.mean, i.low, i.high] for k, i in v.versus_missing.items()},
        }
        for v in found
    }
    (root / "verdict.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(verdict_table(found))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
