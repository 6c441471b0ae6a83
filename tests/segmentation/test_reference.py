"""The reference segmenter: its input layout against a float64 oracle, loading, segmenting, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cwdm.cases.preprocessing import normalise
from cwdm.config import ReferenceSegmenterSpec
from cwdm.errors import CheckpointError, ConfigError
from cwdm.segmentation.case import CompleteCase
from cwdm.segmentation.reference import ReferenceSegmenter, network_input, regions_on_grid, to_network_grid
from cwdm.segmentation.spec import open_segmenter
from cwdm.segmentation.training import SegmenterTrainingConfig, augmented_crop, train_segmenter
from cwdm.sequences import CANONICAL_ORDER

from .synthetic import write_case_folder

TINY_SPEC = ReferenceSegmenterSpec(init_filters=8, blocks_down=(1, 1), blocks_up=(1,), downsample=2)


def block_means_oracle(values: np.ndarray, factor: int, multiple: int) -> np.ndarray:
    """Zero-pad after each axis to ``multiple``, then average ``factor``-blocks, in float64."""
    pad = [(0, 0)] + [(0, (-n) % multiple) for n in values.shape[1:]]
    padded = np.pad(values.astype(np.float64), pad)
    c, x, y, z = padded.shape
    return padded.reshape(c, x // factor, factor, y // factor, factor, z // factor, factor).mean(
        axis=(2, 4, 6)
    )


@pytest.mark.parametrize("shape", [(32, 32, 24), (30, 27, 19)])
def test_network_grid_is_the_padded_block_mean(shape: tuple[int, int, int]) -> None:
    values = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    ours = to_network_grid(torch.from_numpy(values), TINY_SPEC).numpy()
    np.testing.assert_allclose(ours, block_means_oracle(values, 2, 4), atol=1e-6)


def test_network_input_normalises_each_sequence_as_synthesis_does() -> None:
    rng = np.random.default_rng(1)
    volumes = [rng.gamma(2.0, 100.0, (16, 16, 8)) for _ in range(4)]
    ours = network_input(volumes, TINY_SPEC).numpy()
    expected = block_means_oracle(np.stack([normalise(v) for v in volumes]), 2, 4)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_probabilities_come_back_on_the_input_grid() -> None:
    logits = torch.randn(3, 8, 7, 5)
    probabilities = regions_on_grid(logits, (15, 13, 9), TINY_SPEC)
    assert probabilities.shape == (3, 15, 13, 9)
    assert float(probabilities.min()) >= 0 and float(probabilities.max()) <= 1


@pytest.fixture
def tiny_segmenter_dir(tmp_path: Path) -> Path:
    data = tmp_path / "train"
    for index in range(2):
        write_case_folder(data, f"BraTS-GLI-{index:05d}-000", seed=index)
    config = SegmenterTrainingConfig(spec=TINY_SPEC, iterations=2, crop_size=(16, 16, 8), save_every=2)
    trainer = train_segmenter(data, tmp_path / "run", config)
    return trainer.weights_dir


def test_a_trained_folder_loads_and_segments_a_case_on_its_grid(
    tiny_segmenter_dir: Path, tmp_path: Path
) -> None:
    folder = write_case_folder(tmp_path / "cases", "BraTS-GLI-00009-000", seed=9)
    case = CompleteCase(folder.name, {seq: folder / f"{folder.name}-{seq}.nii.gz" for seq in CANONICAL_ORDER})
    segmenter = open_segmenter(tiny_segmenter_dir, device="cpu")
    assert isinstance(segmenter, ReferenceSegmenter)
    labels = segmenter.segment(case)
    assert labels.shape == (32, 32, 24) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    # The labels are the thresholded probabilities painted outside in.
    regions = segmenter.probabilities([v.data for v in case.volumes()]).numpy() > 0.5
    np.testing.assert_array_equal(labels == 3, regions[2])
    np.testing.assert_array_equal(labels > 0, regions[0] | regions[1] | regions[2])


def test_bad_segmenter_values_are_clear_errors(tmp_path: Path, tiny_segmenter_dir: Path) -> None:
    with pytest.raises(ConfigError, match="neither 'builtin' nor an existing"):
        open_segmenter(tmp_path / "nowhere")
    (tmp_path / "nnunet").mkdir()
    (tmp_path / "nnunet" / "plans.json").write_text("{}")
    with pytest.raises(ConfigError, match="nnU-Net model folder"):
        open_segmenter(tmp_path / "nnunet")
    (tiny_segmenter_dir / "segmenter.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="segmenter.safetensors"):
        open_segmenter(tiny_segmenter_dir)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_resumes_bit_for_bit(tmp_path: Path) -> None:
    data = tmp_path / "train"
    for index in range(2):
        write_case_folder(data, f"BraTS-GLI-{index:05d}-000", seed=index, seg_convention="brats2021")
    config = SegmenterTrainingConfig(spec=TINY_SPEC, iterations=4, crop_size=(8, 8, 8), save_every=100)
    straight = train_segmenter(data, tmp_path / "straight", config)
    stops = iter([False, True])
    stopped = train_segmenter(data, tmp_path / "resumed", config, should_stop=lambda: next(stops))
    assert stopped.step == 2
    resumed = train_segmenter(data, tmp_path / "resumed", config)
    assert resumed.step == 4
    assert _states_equal(straight.network.state_dict(), resumed.network.state_dict())
    other = SegmenterTrainingConfig(spec=TINY_SPEC, iterations=6, lr=1e-3, crop_size=(8, 8, 8))
    with pytest.raises(CheckpointError, match="lr"):
        train_segmenter(data, tmp_path / "resumed", other)


def test_training_needs_segmented_cases(tmp_path: Path) -> None:
    write_case_folder(tmp_path / "train", "BraTS-GLI-00001-000", seed=1, with_seg=False)
    with pytest.raises(Exception, match="no complete case with a -seg file"):
        train_segmenter(tmp_path / "train", tmp_path / "run", SegmenterTrainingConfig(spec=TINY_SPEC))


def test_exported_weights_are_small_half_precision(tiny_segmenter_dir: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(tiny_segmenter_dir / "segmenter.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.float16}


def test_sequence_dropout_zeroes_one_whole_channel_of_a_crop() -> None:
    spec = TINY_SPEC.model_copy(update={"accepts_absent_sequence": True})
    config = SegmenterTrainingConfig(
        spec=spec, crop_size=(8, 8, 8), sequence_dropout=0.5, intensity_jitter=0.0
    )
    image = torch.rand(4, 8, 8, 8) + 0.1  # no zero voxel anywhere before the dropout
    target = torch.zeros(3, 8, 8, 8)
    generator = torch.Generator().manual_seed(3)
    absent_counts = []
    for _ in range(200):
        crop, _ = augmented_crop(image, target, config, generator)
        zero_channels = [c for c in range(4) if not crop[c].any()]
        assert all(crop[c].all() for c in range(4) if c not in zero_channels)
        absent_counts.append(len(zero_channels))
    assert set(absent_counts) == {0, 1}
    assert 0.35 < np.mean(absent_counts) < 0.65  # about half the crops lose a sequence
    assert image.min() > 0  # the case in memory is untouched


def test_sequence_dropout_must_be_declared_by_the_spec() -> None:
    with pytest.raises(ConfigError, match="sequence_dropout"):
        SegmenterTrainingConfig(spec=TINY_SPEC, sequence_dropout=0.4)
    with pytest.raises(ConfigError, match="sequence_dropout"):
        SegmenterTrainingConfig(spec=TINY_SPEC.model_copy(update={"accepts_absent_sequence": True}))


def test_the_command_trains_with_held_out_cases_and_sequence_dropout(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cwdm.cli import app

    data = tmp_path / "train"
    for index in range(3):
        write_case_folder(data, f"BraTS-GLI-{index:05d}-000", seed=index, shape=(32, 32, 16))
    args = ["segmenter", "train", str(data), str(tmp_path / "run"), "--iterations", "1", "--crop", "16,16,16"]
    args += ["--init-filters", "8", "--exclude", "BraTS-GLI-00002-000", "--sequence-dropout", "0.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "segmenter: step 1 of 1 (done)" in result.output
    written = (tmp_path / "run" / "weights" / "segmenter.yaml").read_text()
    assert "accepts_absent_sequence: true" in written
    checkpoint = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=True)
    assert checkpoint["config"]["exclude"] == ["BraTS-GLI-00002-000"]


def test_windowed_segmentation_is_the_whole_pass_when_one_window_covers_it(tiny_segmenter_dir: Path) -> None:
    volumes = [np.random.default_rng(i).random((30, 28, 20)) * 900 for i in range(4)]
    trained = ReferenceSegmenter.open(tiny_segmenter_dir, device="cpu")

    def with_window(window: tuple[int, int, int] | None) -> ReferenceSegmenter:
        spec = trained.spec.model_copy(update={"window": window})
        return ReferenceSegmenter(trained.network, spec, trained.device)

    whole = with_window(None)
    # The network grid of this case is 16 x 14 x 10 (padded to a multiple of 4, then 2 mm): one window.
    one = with_window((16, 14, 10)).probabilities(volumes)
    assert torch.allclose(one, whole.probabilities(volumes), atol=1e-6)
    sizes = []
    hook = trained.network.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[2:])))
    windowed = with_window((8, 8, 8)).probabilities(volumes)
    hook.remove()
    assert set(sizes) == {(8, 8, 8)} and len(sizes) > 1  # the network saw windows only
    assert windowed.shape == (3, 30, 28, 20) and not torch.allclose(windowed, whole.probabilities(volumes))


def test_a_trained_segmenter_segments_in_windows_of_its_crop(tiny_segmenter_dir: Path) -> None:
    spec = ReferenceSegmenter.open(tiny_segmenter_dir, device="cpu").spec
    assert spec.window == (16, 16, 8)  # the fixture's training crop
