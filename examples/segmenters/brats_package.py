"""A BraTS challenge segmentation algorithm, run by the BrainLesion ``brats`` package, as a command
segmenter of ``cwdm evaluate --segmenter brats-package.yaml``.

    python brats_package.py CASE_DIR OUTPUT_FILE

CASE_DIR holds ``<case>-t1c.nii.gz``, ``-t1n``, ``-t2f`` and ``-t2w`` (the BraTS naming that cwdm gives a
command segmenter); OUTPUT_FILE receives the label volume. The ``brats`` package (``pip install brats``)
runs the algorithm's container itself, so it needs a Docker engine and, for its algorithms, a GPU; it
downloads each algorithm's image and weights the first time. ``AdultGliomaPreAndPostTreatmentSegmenter``
writes the BraTS 2024 labels (1 NETC, 2 SNFH, 3 ET, 4 RC): hence ``labels: brats2024`` in the YAML file.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(case_dir: Path, output_file: Path) -> None:
    from brats import AdultGliomaPreAndPostTreatmentSegmenter

    case = case_dir.name
    segmenter = AdultGliomaPreAndPostTreatmentSegmenter(cuda_devices="0")
    segmenter.infer_single(
        t1c=case_dir / f"{case}-t1c.nii.gz",
        t1n=case_dir / f"{case}-t1n.nii.gz",
        t2f=case_dir / f"{case}-t2f.nii.gz",
        t2w=case_dir / f"{case}-t2w.nii.gz",
        output_file=output_file,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
