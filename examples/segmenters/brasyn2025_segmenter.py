"""The BraSyn 2025 organisers' segmentation of one case, as a command segmenter of
``cwdm evaluate --protocol brasyn2025 --segmenter brasyn2025.yaml``.

    python brasyn2025_segmenter.py CASE_DIR OUTPUT_FILE

CASE_DIR holds ``<case>-t1c.nii.gz``, ``-t1n``, ``-t2f`` and ``-t2w`` (the BraTS naming that cwdm gives a
command segmenter); OUTPUT_FILE receives the label volume. As the organisers' tutorial
(github.com/hongweilibran/BraSyn_tutorial, segmentation.py) does, the tumour type is read from the case
id (the first of GLI, MEN, MET that it contains) and the BraTS 2023 winner of that type segments the case:
``BraTS23_1`` of the adult glioma (pre-treatment), meningioma or metastases segmenter of the BrainLesion
``brats`` package (``pip install brats``), which runs the algorithm's container itself (Docker, a GPU;
it downloads the image the first time). CUDA_DEVICE (default 0) picks the GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Tumour type in the case id -> (segmenter class, algorithm enum) of the brats package.
SEGMENTERS = {
    "GLI": ("AdultGliomaPreTreatmentSegmenter", "AdultGliomaPreTreatmentAlgorithms"),
    "MEN": ("MeningiomaSegmenter", "MeningiomaAlgorithms"),
    "MET": ("MetastasesSegmenter", "MetastasesAlgorithms"),
}


def main(case_dir: Path, output_file: Path) -> int:
    import brats
    import brats.constants

    case = case_dir.name
    kind = next((kind for kind in SEGMENTERS if kind in case), None)
    if kind is None:
        print(f"{case}: no tumour type (GLI, MEN, MET) in the case id; no segmenter for it", file=sys.stderr)
        return 2
    segmenter_name, algorithms_name = SEGMENTERS[kind]
    algorithm = getattr(brats.constants, algorithms_name).BraTS23_1
    segmenter = getattr(brats, segmenter_name)(
        algorithm=algorithm, cuda_devices=os.environ.get("CUDA_DEVICE", "0")
    )
    segmenter.infer_single(
        t1c=case_dir / f"{case}-t1c.nii.gz",
        t1n=case_dir / f"{case}-t1n.nii.gz",
        t2f=case_dir / f"{case}-t2f.nii.gz",
        t2w=case_dir / f"{case}-t2w.nii.gz",
        output_file=output_file,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
