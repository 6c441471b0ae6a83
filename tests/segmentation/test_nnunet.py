"""The nnU-Net adapter on a real nnU-Net v2 model folder made by nnU-Net's own tooling
(tests/fixtures/nnunet_tiny/make_model.py: planned, preprocessed and trained by nnU-Net), against
nnU-Net's own file-to-file prediction of the same case."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.config import NnUNetSegmenterSpec, load_segmenter_spec
from cwdm.errors import ConfigError
from cwdm.segmentation.case import CompleteCase
from cwdm.segmentation.labels import region_dice
from cwdm.segmentation.spec import open_segmenter
from cwdm.sequences import CANONICAL_ORDER

from .synthetic import write_case_folder

pytest.importorskip("nnunetv2")

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "nnunet_tiny" / "model"
#: The fixture's layout: FLAIR, T1, T1ce, T2; labels as nnU-Net's BraTS 2021 conversion
#: (1 oedema, 2 necrosis, 3 ET).
CHANNELS = ["t2f", "t1n", "t1c", "t2w"]
LABELS = {1: "ED", 2: "NCR", 3: "ET"}


def describe(tmp_path: Path, **changes: object) -> Path:
    spec = {"model_folder": str(MODEL), "channels": CHANNELS, "labels": LABELS, "device": "cpu"} | changes
    lines = ["kind: nnunet"] + [
        f"{key}: {value!r}" if isinstance(value, str) else f"{key}: {value}" for key, value in spec.items()
    ]
    path = tmp_path / "nnunet.yaml"
    path.write_text("\n".join(lines).replace("'", '"') + "\n")
    return path


def nnunet_own_prediction(folder: Path, tmp_path: Path) -> np.ndarray:
    """nnU-Net's own file-to-file prediction (predict_from_files_sequential), read back with nibabel."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(
            device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False
        )
        predictor.initialize_from_trained_model_folder(str(MODEL), (0,), "checkpoint_final.pth")
        files = [str(folder / f"{folder.name}-{seq}.nii.gz") for seq in CHANNELS]
        out = tmp_path / "own"
        out.mkdir()
        predictor.predict_from_files_sequential([files], [str(out / "case")], overwrite=True)
    return np.asanyarray(nib.load(out / "case.nii.gz").dataobj)


def test_the_adapter_gives_nnunets_own_prediction_mapped_as_declared(tmp_path: Path) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00042-000", seed=42)
    case = CompleteCase(folder.name, {seq: folder / f"{folder.name}-{seq}.nii.gz" for seq in CANONICAL_ORDER})
    segmenter = open_segmenter(describe(tmp_path))
    labels = segmenter.segment(case)
    own = nnunet_own_prediction(folder, tmp_path)
    expected = np.zeros_like(own, dtype=np.uint8)
    expected[own == 1], expected[own == 2], expected[own == 3] = 2, 1, 3  # ED, NCR, ET in canonical labels
    assert labels.shape == (32, 32, 24)
    np.testing.assert_array_equal(labels, expected)
    # It learnt something in its two short epochs: the whole tumour is found.
    truth = np.asanyarray(nib.load(folder / f"{folder.name}-seg.nii.gz").dataobj)
    assert region_dice(labels, truth).wt > 0.5


def test_the_declared_channel_order_is_the_one_used(tmp_path: Path) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00043-000", seed=43)
    case = CompleteCase(folder.name, {seq: folder / f"{folder.name}-{seq}.nii.gz" for seq in CANONICAL_ORDER})
    right = open_segmenter(describe(tmp_path)).segment(case)
    wrong = open_segmenter(describe(tmp_path, channels=["t1n", "t1c", "t2w", "t2f"])).segment(case)
    assert not np.array_equal(right, wrong)


def test_descriptions_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="declare the structure of \\[3\\]"):
        open_segmenter(describe(tmp_path, labels={1: "ED", 2: "NCR"}))
    with pytest.raises(ConfigError, match="each of t1n, t1c, t2w, t2f once"):
        load_segmenter_spec(describe(tmp_path, channels=["t2f", "t2f", "t1c", "t2w"]))
    spec = load_segmenter_spec(describe(tmp_path, model_folder="model"))
    assert isinstance(spec, NnUNetSegmenterSpec) and spec.model_folder == (tmp_path / "model").resolve()
