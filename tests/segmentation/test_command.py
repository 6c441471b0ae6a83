"""The command adapter on real commands (a Python script run as a separate process), and its failures."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cwdm.config import CommandSegmenterSpec
from cwdm.errors import ConfigError
from cwdm.segmentation.case import CompleteCase, SegmentationError
from cwdm.segmentation.command import CommandSegmenter
from cwdm.sequences import CANONICAL_ORDER

from .synthetic import write_case_folder

#: A stand-in segmenter: reads the BraTS-named inputs, thresholds the sequences, writes 2021 labels.
#: Its behaviour for some case ids exercises the failures.
SCRIPT = r"""
import sys, time
from pathlib import Path
import nibabel as nib
import numpy as np

case_dir, out_file = Path(sys.argv[1]), Path(sys.argv[2])
case = case_dir.name
if "00066" in case:
    print("model crashed on purpose", file=sys.stderr)
    sys.exit(3)
if "00077" in case:
    time.sleep(30)
t2f = nib.load(case_dir / f"{case}-t2f.nii.gz")
t1c = np.asanyarray(nib.load(case_dir / f"{case}-t1c.nii.gz").dataobj)
t2w = np.asanyarray(nib.load(case_dir / f"{case}-t2w.nii.gz").dataobj)
flair = np.asanyarray(t2f.dataobj)
tumour = (flair > 450) | (t1c > 700) | (t2w > 420)
labels = np.zeros(flair.shape, np.uint8)
labels[tumour] = 2
labels[t1c > 700] = 4
labels[tumour & (t1c < 200)] = 1
if "00088" in case:
    labels = labels[:, :, :-1]
if "00099" in case:
    labels[0, 0, 0] = 7
if "00055" not in case:
    nib.save(nib.Nifti1Image(labels, t2f.affine), out_file)
"""


def threshold_oracle(folder: Path) -> np.ndarray:
    """The script's rule in canonical labels (4 -> 3), computed here."""
    load = lambda seq: np.asanyarray(nib.load(folder / f"{folder.name}-{seq}.nii.gz").dataobj)  # noqa: E731
    flair, t1c, t2w = load("t2f"), load("t1c"), load("t2w")
    tumour = (flair > 450) | (t1c > 700) | (t2w > 420)
    labels = np.zeros(flair.shape, np.uint8)
    labels[tumour] = 2
    labels[t1c > 700] = 3
    labels[tumour & (t1c < 200)] = 1
    return labels


@pytest.fixture
def script_spec(tmp_path: Path) -> CommandSegmenterSpec:
    script = tmp_path / "segment.py"
    script.write_text(SCRIPT)
    return CommandSegmenterSpec(
        kind="command",
        command=[sys.executable, str(script), "{input}/{case}", "{output}/{case}.nii.gz"],
        labels="brats2021",
        timeout_s=20,
    )


def complete(folder: Path) -> CompleteCase:
    return CompleteCase(folder.name, {seq: folder / f"{folder.name}-{seq}.nii.gz" for seq in CANONICAL_ORDER})


def test_a_real_command_segments_a_case(tmp_path: Path, script_spec: CommandSegmenterSpec) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00001-000", seed=1)
    labels = CommandSegmenter(script_spec).segment(complete(folder))
    expected = threshold_oracle(folder)
    assert expected.any() and (expected == 3).any()
    np.testing.assert_array_equal(labels, expected)


def test_a_command_string_is_split_like_a_shell_line(
    tmp_path: Path, script_spec: CommandSegmenterSpec
) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00002-000", seed=2)
    line = f"'{sys.executable}' '{script_spec.command[1]}' {{input}}/{{case}} {{output}}/{{case}}.nii.gz"
    segmenter = CommandSegmenter(script_spec.model_copy(update={"command": line}))
    np.testing.assert_array_equal(segmenter.segment(complete(folder)), threshold_oracle(folder))


@pytest.mark.parametrize(
    ("case_number", "message"),
    [
        ("00066", r"exited with status 3 .*model crashed on purpose"),
        ("00055", "wrote no BraTS-GLI-00055-000.nii.gz"),
        ("00088", "shape 32x32x23 .* grid 32x32x24"),
        ("00099", r"holds labels \[0, 1, 2, 4, 7\]"),
    ],
)
def test_a_failing_command_is_an_error_naming_the_case(
    tmp_path: Path, script_spec: CommandSegmenterSpec, case_number: str, message: str
) -> None:
    folder = write_case_folder(tmp_path / "cases", f"BraTS-GLI-{case_number}-000", seed=3)
    with pytest.raises(SegmentationError, match=message) as caught:
        CommandSegmenter(script_spec).segment(complete(folder))
    assert caught.value.case_id == folder.name


def test_a_command_that_hangs_is_stopped(tmp_path: Path, script_spec: CommandSegmenterSpec) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00077-000", seed=4)
    segmenter = CommandSegmenter(script_spec.model_copy(update={"timeout_s": 1.0}))
    with pytest.raises(SegmentationError, match="did not finish .* within 1 s"):
        segmenter.segment(complete(folder))


def test_bad_templates_are_configuration_errors(script_spec: CommandSegmenterSpec) -> None:
    with pytest.raises(ConfigError, match="unknown placeholder"):
        CommandSegmenter(script_spec.model_copy(update={"command": ["seg", "{inputs}"]}))
    with pytest.raises(ConfigError, match="empty command"):
        CommandSegmenter(script_spec.model_copy(update={"command": "  "}))


def test_a_missing_program_is_an_error(tmp_path: Path, script_spec: CommandSegmenterSpec) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00003-000", seed=5)
    segmenter = CommandSegmenter(script_spec.model_copy(update={"command": ["no-such-segmenter", "{input}"]}))
    with pytest.raises(SegmentationError, match="command not found: 'no-such-segmenter'"):
        segmenter.segment(complete(folder))
