"""The BraSyn year presets (cwdm.evaluation.protocols): each names what its year computed, and
evaluate_protocol puts the year's own columns (per-label Dice and HD95 for 2025) into the CSV and the
summary, scored against an independent computation."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.cases.preprocessing import normalise
from cwdm.config import CommandSegmenterSpec, load_segmenter_spec
from cwdm.errors import ConfigError
from cwdm.evaluation.downstream import combined_scores
from cwdm.evaluation.evaluate import evaluate
from cwdm.evaluation.labelwise import LABEL_COLUMNS
from cwdm.evaluation.protocols import PROTOCOL_NAMES, PROTOCOLS, evaluate_protocol, get_protocol
from cwdm.evaluation.results import columns
from cwdm.segmentation.case import CompleteCase
from tests.segmentation.synthetic import write_case_folder
from tests.test_labelwise import brute_hd95

CASES = ("BraTS-GLI-00001-000", "BraTS-MET-00002-000")


class DamagingSegmenter:
    """Returns each case's true labels, damaged in a known way: label 1 moved one voxel along the first
    axis, label 3 (ET) turned into 2 (so ET is missed)."""

    name = "damaging-test-segmenter"

    def __init__(self, truth: dict[str, np.ndarray]) -> None:
        self.truth = truth
        self.calls: list[str] = []

    def segment(self, case: CompleteCase) -> np.ndarray:
        self.calls.append(f"{case.case_id}:{case.label}")
        return damaged(self.truth[case.case_id])


def damaged(truth: np.ndarray) -> np.ndarray:
    labels = np.where(truth == 3, 2, truth).astype(np.uint8)
    labels[labels == 1] = 2
    labels[np.roll(truth == 1, 1, axis=0)] = 1
    return labels


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    pred.mkdir()
    labels = {}
    for seed, case_id in enumerate(CASES):
        folder = write_case_folder(truth, case_id, seed=seed)
        image = nib.load(folder / f"{case_id}-t2w.nii.gz")
        synthesis = normalise(np.asanyarray(image.dataobj).astype(np.float64))
        synthesis = np.clip(synthesis + np.random.default_rng(seed).normal(0, 0.02, synthesis.shape), 0, 1)
        nib.save(nib.Nifti1Image(synthesis, image.affine), pred / f"{case_id}-t2w.nii.gz")
        labels[case_id] = np.asanyarray(nib.load(folder / f"{case_id}-seg.nii.gz").dataobj).astype(np.uint8)
    return truth, pred, labels


def _rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    return {(row["case"], row["source"]): row for row in csv.DictReader(io.StringIO(text))}


def test_every_preset_names_its_year_and_its_columns_exist() -> None:
    assert set(PROTOCOL_NAMES) == set(PROTOCOLS) == {"brasyn2023", "brasyn2024", "brasyn2025"}
    for name, protocol in PROTOCOLS.items():
        assert protocol.name == name and str(protocol.year) in name
        assert protocol.segmenter and protocol.segmenter_hint and protocol.ssim and protocol.not_offline
        assert all(source.startswith("https://") for source in protocol.sources), protocol.sources
        assert set(protocol.columns) <= set(columns()) | set(protocol.extra_titles)
        assert "brasyn_ssim_tumor" in protocol.image_columns
    assert PROTOCOLS["brasyn2025"].segmentation_columns == LABEL_COLUMNS
    assert "dice_wt" in PROTOCOLS["brasyn2024"].segmentation_columns
    assert "FeTS" in PROTOCOLS["brasyn2023"].segmenter
    assert "Dataset137_BraTS2021" in PROTOCOLS["brasyn2024"].segmenter
    assert "BraTS23_1" in PROTOCOLS["brasyn2025"].segmenter


def test_an_unknown_protocol_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="brasyn2023, brasyn2024, brasyn2025"):
        get_protocol("brasyn2022")


def test_2025_adds_the_per_label_scores_of_each_segmentation(
    folders: tuple[Path, Path, dict[str, np.ndarray]],
) -> None:
    truth, pred, labels = folders
    segmenter = DamagingSegmenter(labels)
    result = evaluate_protocol(pred, truth, "brasyn2025", segmenter=segmenter, baseline=True)
    assert result.exit_code == 0 and not result.evaluation.failures
    rows = _rows(result.evaluation.to_csv())
    header = next(csv.reader(io.StringIO(result.evaluation.to_csv())))
    assert header[: 3 + len(columns())] == ["case", "target", "source", *columns()]
    assert header[3 + len(columns()) :] == [*LABEL_COLUMNS, "error", "status"]
    for case_id in CASES:
        true, predicted = labels[case_id], damaged(labels[case_id])
        for source in ("prediction", "real", "copy-t1n"):
            row = rows[(case_id, source)]
            for label in (1, 2):
                p, t = predicted == label, true == label
                dice = 2 * np.sum(p & t) / (p.sum() + t.sum())
                assert float(row[f"dice_label{label}"]) == pytest.approx(dice)
                assert float(row[f"hd95_label{label}"]) == pytest.approx(brute_hd95(p, t, (1.0, 1.0, 1.0)))
            assert float(row["dice_label3"]) == 0.0 and row["hd95_label3"] == ""  # missed: undefined
            assert float(row["dice_et"]) == 0.0  # the region Dice is still there
    assert f"{CASES[0]}:real" in segmenter.calls and f"{CASES[0]}:t2w" in segmenter.calls

    text = result.summary_table()
    assert "Dice label 1" in text and "HD95 label 3" in text
    assert "BraSyn 2025 (--protocol brasyn2025)" in text
    assert "segmented by: damaging-test-segmenter, standing in for" in text and "BraTS23_1" in text
    assert "not reproduced here:" in text
    summary = {(r.source, r.target): r for r in result.evaluation.summary()}
    assert summary[("prediction", "t2w")].counts["hd95_label3"] == 0  # every one undefined
    expected = np.mean([float(rows[(c, "prediction")]["hd95_label1"]) for c in CASES])
    assert summary[("prediction", "t2w")].mean["hd95_label1"] == pytest.approx(expected)


def test_without_a_segmenter_the_segmentation_half_is_named_not_computed(
    folders: tuple[Path, Path, dict[str, np.ndarray]],
) -> None:
    truth, pred, _ = folders
    result = evaluate_protocol(pred, truth, get_protocol("brasyn2024"))
    assert result.exit_code == 0
    assert result.segmenter is None
    assert "dice_label1" not in result.evaluation.to_csv()  # only 2025 adds the per-label columns
    row = _rows(result.evaluation.to_csv())[(CASES[0], "prediction")]
    assert row["dice_wt"] == "" and 0 < float(row["brasyn_ssim_tumor"]) <= 1
    notes = result.notes()
    assert notes[0].startswith("no --segmenter") and "Dataset137_BraTS2021" in notes[0]
    text = result.summary_table()
    assert "BraSyn SSIM tumor" in text and "segmented by: nothing (no --segmenter)" in text
    plain = evaluate(pred, truth)
    assert result.evaluation.to_csv() == plain.to_csv()  # the same scores as plain cwdm evaluate


def test_options_of_the_segmentation_half_need_a_segmenter(
    folders: tuple[Path, Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    truth, pred, _ = folders
    with pytest.raises(ConfigError, match="need --segmenter"):
        evaluate_protocol(pred, truth, "brasyn2025", segmentations_dir=tmp_path / "segs")


def test_2023_notes_the_missing_lesion_wise_dice(folders: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    truth, pred, labels = folders
    result = evaluate_protocol(pred, truth, "brasyn2023", segmenter=DamagingSegmenter(labels))
    assert any("--lesion-wise" in note for note in result.notes())
    assert any("FelixSteinbauer/GaNDLF" in note for note in result.notes())
    assert "dice_label1" not in result.evaluation.to_csv()


def test_combined_extra_scores() -> None:
    def first(*_: object) -> dict[str, float]:
        return {"a": 1.0}

    def second(*_: object) -> dict[str, float]:
        return {"b": 2.0}

    assert combined_scores(None, None) is None
    assert combined_scores(first, None) is first
    both = combined_scores(first, second)
    assert both(np.zeros(1), np.zeros(1), np.eye(4)) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match=r"\['a'\]"):
        combined_scores(first, first)(np.zeros(1), np.zeros(1), np.eye(4))


def test_the_exit_code_of_an_evaluation(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    (tmp_path / "pred" / "notes.txt").write_text("not a prediction")
    result = evaluate(tmp_path / "pred", tmp_path / "truth")
    assert result.exit_code == 1 and not result.scores and len(result.failures) == 1


FAKE_BRATS = """
import json
from pathlib import Path

def _segmenter(kind):
    class Segmenter:
        def __init__(self, algorithm, cuda_devices):
            self.record = {"segmenter": kind, "algorithm": algorithm, "cuda": cuda_devices}

        def infer_single(self, t1c, t1n, t2f, t2w, output_file):
            self.record["inputs"] = [Path(p).name for p in (t1c, t1n, t2f, t2w)]
            Path(output_file).write_text(json.dumps(self.record))
    return Segmenter

AdultGliomaPreTreatmentSegmenter = _segmenter("glioma")
MeningiomaSegmenter = _segmenter("meningioma")
MetastasesSegmenter = _segmenter("metastases")
"""


@pytest.mark.parametrize(
    ("case_id", "segmenter"),
    [
        ("BraTS-GLI-01667-000", "glioma"),
        ("BraTS-MEN-01346-000", "meningioma"),
        ("BraTS-MET-00777-000", "metastases"),
    ],
)
def test_the_2025_example_segmenter_picks_the_winner_of_the_tumour_type(
    tmp_path: Path, case_id: str, segmenter: str
) -> None:
    """examples/segmenters/brasyn2025*: a valid command description, and a script that calls the brats
    package as the organisers' tutorial does (here a stand-in package that records the call)."""
    root = Path(__file__).resolve().parents[1]
    spec = load_segmenter_spec(root / "examples" / "segmenters" / "brasyn2025.yaml")
    assert isinstance(spec, CommandSegmenterSpec) and spec.labels == "brats2023"
    script = root / "examples" / "segmenters" / "brasyn2025_segmenter.py"
    assert str(script.relative_to(root)) in spec.command
    fake = tmp_path / "fake" / "brats"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_BRATS)
    (fake / "constants.py").write_text(
        "class _A:\n    BraTS23_1 = 'BraTS23_1'\n"
        "AdultGliomaPreTreatmentAlgorithms = MeningiomaAlgorithms = MetastasesAlgorithms = _A\n"
    )
    case = tmp_path / case_id
    case.mkdir()
    out = tmp_path / "out.nii.gz"
    env = {**os.environ, "PYTHONPATH": str(fake.parent), "CUDA_DEVICE": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(case), str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert record == {
        "segmenter": segmenter,
        "algorithm": "BraTS23_1",
        "cuda": "1",
        "inputs": [f"{case_id}-{seq}.nii.gz" for seq in ("t1c", "t1n", "t2f", "t2w")],
    }
    other = tmp_path / "BraTS-PED-00001-000"
    other.mkdir()
    refused = subprocess.run(
        [sys.executable, str(script), str(other), str(out)], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "no tumour type" in refused.stderr
