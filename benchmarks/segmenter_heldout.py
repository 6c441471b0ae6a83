"""The reference segmenter on held-out cases: its ceiling (the real complete case) and, for each sequence in
turn, the case with that sequence left out (given as zeros), per case and as means with bootstrap 95 %
intervals. Several segmenter folders side by side answer "can one model be good at both": a segmenter
trained without sequence dropout is given the zeros all the same, to show what the dropout buys.

    python benchmarks/segmenter_heldout.py CASES --segmenter NAME=FOLDER [--segmenter NAME=FOLDER ...] \
        --heldout ID,ID,... --out OUT.json

Prints a Markdown table per segmenter and writes every Dice to ``OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cwdm.cases.discovery import discover_cases
from cwdm.cases.reader import read_segmentation
from cwdm.evaluation.stats import bootstrap_mean
from cwdm.segmentation.labels import convention_mapping, detect_convention, region_dice, to_canonical
from cwdm.segmentation.reference import ReferenceSegmenter
from cwdm.sequences import CANONICAL_ORDER, MRISequence

REGIONS = ("dice_wt", "dice_tc", "dice_et")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", type=Path)
    parser.add_argument("--segmenter", action="append", required=True, help="NAME=FOLDER, repeatable")
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    wanted = {item.strip() for item in args.heldout.split(",") if item.strip()}
    cases = [case for case in discover_cases(args.cases) if case.case_id in wanted]
    results: dict[str, dict] = {}
    for item in args.segmenter:
        name, _, folder = item.partition("=")
        segmenter = ReferenceSegmenter.open(Path(folder), device="cpu")
        order = [MRISequence(seq) for seq in segmenter.spec.channels]
        dice: dict[str, dict[str, list[float]]] = {}
        for case in cases:
            seg = read_segmentation(case)
            truth = to_canonical(seg, convention_mapping(detect_convention(seg)), case.case_id)
            volumes = {seq: volume.data for seq, volume in zip(CANONICAL_ORDER, _read(case), strict=True)}
            for absent in [None, *CANONICAL_ORDER]:
                given = [np.zeros_like(volumes[s]) if s == absent else volumes[s] for s in order]
                labels = segmenter.labels_of(given)  # the network as it is, also without sequence dropout
                key = "real" if absent is None else f"without {absent}"
                scores = region_dice(labels, truth).values()
                for region in REGIONS:
                    dice.setdefault(key, {}).setdefault(region, []).append(scores[region])
        results[name] = {"cases": [case.case_id for case in cases], "dice": dice}
        title = f"{name} ({folder}): Dice WT / TC / ET, mean [bootstrap 95 % interval], {len(cases)} cases"
        print(f"\n{title}\n")
        print("| case given | WT | TC | ET |\n|---|---|---|---|")
        for key, per_region in dice.items():
            cells = [bootstrap_mean(per_region[region]).text() for region in REGIONS]
            print(f"| {key} | " + " | ".join(cells) + " |")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _read(case):  # noqa: ANN001, ANN202 (a Case; its four volumes in canonical order)
    from cwdm.cases.reader import read_sequences

    return read_sequences(case, CANONICAL_ORDER)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
