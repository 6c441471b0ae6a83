"""The training loop on a tiny configuration: objective, learning, exact resume, export, CLI."""

from __future__ import annotations

import csv
import math
import os
import signal
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cwdm import CheckpointError, ConfigError, CwdmError, GeometryError, dwt3d, load_denoiser
from cwdm.cli import app
from cwdm.config import ModelSpec
from cwdm.errors import VolumeReadError
from cwdm.sequences import MRISequence, condition_order
from cwdm.training.data import TrainingCases
from cwdm.training.trainer import Trainer, TrainingConfig, ema_decay, training_batch
from cwdm.weights.folder import WeightsDir

from .conftest import smooth_blobs

TINY_SPEC = ModelSpec(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
MULTIPLE = 2 * TINY_SPEC.architecture.size_multiple


def with_architecture(**changes: object) -> ModelSpec:
    """TINY_SPEC with some architecture keys changed."""
    return TINY_SPEC.model_copy(update={"architecture": replace(TINY_SPEC.architecture, **changes)})


SHAPE = (16, 16, 12)
AFFINE = np.array([[0.0, -1.1, 0, 20], [1.2, 0, 0, -10], [0, 0, 1.3, 4], [0, 0, 0, 1]])
CASES = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: thread start-up costs more than it saves, and a loaded CI machine makes it worse.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train_dir(tmp_path: Path) -> Path:
    """Two complete cases of smooth blobs at scanner-like intensities, non-identity affine."""
    root = tmp_path / "train"
    for c, case in enumerate(CASES):
        (root / case).mkdir(parents=True)
        for s, seq in enumerate(MRISequence):
            data = smooth_blobs(SHAPE, 10 * c + s).numpy() * 1000.0
            nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), root / case / f"{case}-{seq}.nii.gz")
    return root


def config(**changes) -> TrainingConfig:
    settings = {
        "target": "t2f",
        "spec": TINY_SPEC,
        "iterations": 6,
        "lr": 1e-3,
        "save_every": 3,
        "log_every": 1,
        "seed": 5,
    }
    return TrainingConfig(**{**settings, **changes})


def trainer(train_dir: Path, out: Path, **changes) -> Trainer:
    return Trainer(config(**changes), TrainingCases.from_folder(train_dir, MULTIPLE), out)


# -- the objective ----------------------------------------------------------------------------------
@pytest.mark.parametrize("target", list(MRISequence))
def test_training_batch_follows_the_published_objective(target):
    volumes = torch.stack(
        [torch.stack([smooth_blobs((8, 8, 8), 4 * b + s) for s in range(4)]) for b in range(2)]
    )
    schedule = TINY_SPEC.schedule()
    x_in, t, x0 = training_batch(volumes, MRISequence(target), schedule, torch.Generator().manual_seed(3))

    order = list(MRISequence)
    # The documented draw order: timestep indices first, then image-space noise (cwdm/training/trainer.py;
    # docs/METHOD.md, "Training objective").
    gen = torch.Generator().manual_seed(3)
    t_index = torch.randint(1000, (2,), generator=gen)
    noise = torch.randn(2, 1, 8, 8, 8, generator=gen)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = torch.from_numpy(np.cumprod(1.0 - betas))[t_index].view(-1, 1, 1, 1, 1)
    target_volume = volumes[:, order.index(MRISequence(target))].unsqueeze(1).double()
    expected_x0 = dwt3d(target_volume)
    expected_x0[:, 0] /= 3.0  # LLL / 3; the noise is not scaled
    expected_xt = abar.sqrt() * expected_x0 + (1 - abar).sqrt() * dwt3d(noise.double())
    conditions = [
        dwt3d(volumes[:, order.index(seq)].unsqueeze(1).double()) for seq in condition_order(target)
    ]
    for cond in conditions:
        cond[:, 0] /= 3.0

    assert torch.equal(t, t_index)  # 1000-step schedule: the timestep value is the index
    torch.testing.assert_close(x0.double(), expected_x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(x_in[:, :8].double(), expected_xt, atol=1e-5, rtol=0)
    torch.testing.assert_close(x_in[:, 8:].double(), torch.cat(conditions, dim=1), atol=1e-6, rtol=0)


def test_training_cases_are_preprocessed_like_inference(train_dir):
    data = TrainingCases.from_folder(train_dir, MULTIPLE)
    assert len(data) == 2
    raw = nib.load(train_dir / CASES[1] / f"{CASES[1]}-t2w.nii.gz").get_fdata()
    low, high = np.percentile(raw, [0.1, 99.9])
    expected = (np.clip(raw, low, high) - low) / (high - low)
    volumes = data[1]
    assert volumes.shape == (4, *SHAPE) and volumes.dtype == torch.float32
    # Kept as 16-bit levels: the nearest of 65536 values, so within half a level of the float value.
    levels = data.levels(1)
    assert levels.dtype == torch.uint16
    np.testing.assert_array_equal(levels[2].numpy(), np.rint(expected * 65535))  # canonical order: t2w third
    np.testing.assert_allclose(volumes[2].numpy(), expected, atol=0.5 / 65535 + 1e-7, rtol=0)


def test_a_case_on_two_grids_or_with_a_corrupt_file_is_named(train_dir):
    data = TrainingCases.from_folder(train_dir, MULTIPLE)
    case = CASES[1]
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    raw = smooth_blobs(SHAPE, 0).numpy().astype(np.float32)
    nib.save(nib.Nifti1Image(raw, shifted), train_dir / case / f"{case}-t2w.nii.gz")
    with pytest.raises(GeometryError, match=rf"{case}: t2w grid differs from t1n"):
        data[1]
    (train_dir / case / f"{case}-t1c.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(
        VolumeReadError, match=rf"{case}: cannot use the t1c volume {case}-t1c.nii.gz: cannot read"
    ):
        data[1]


def test_incomplete_cases_are_not_training_cases(train_dir):
    for case in CASES:
        (train_dir / case / f"{case}-t1c.nii.gz").unlink()
    with pytest.raises(CwdmError, match="no complete training cases"):
        TrainingCases.from_folder(train_dir, MULTIPLE)


# -- learning ---------------------------------------------------------------------------------------
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(train_dir, tmp_path):
    run = trainer(train_dir, tmp_path / "out", iterations=30, save_every=1000)
    volumes = torch.stack([run.data[0], run.data[1]])
    x_in, t, x0 = training_batch(volumes, run.config.target, run.schedule, torch.Generator().manual_seed(123))

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(torch.mean((run.model.eval()(x_in, t) - x0) ** 2))

    before = fixed_loss()
    run.run()
    after = fixed_loss()
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("cache", [True, False])
def test_the_loop_draws_in_the_documented_order(train_dir, tmp_path, cache):
    """Per step: case picks, crop offsets (even, per case and axis), timesteps, noise; one generator
    seeded with ``seed``. Pins the numerics of a seed: an extra draw anywhere would show here."""
    data = TrainingCases.from_folder(train_dir, MULTIPLE, cache=cache)
    run = Trainer(config(crop_size=(8, 8, 4), batch_size=2, iterations=3), data, tmp_path / "out")
    seen = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append([a.clone() for a in args]))
    run.run()

    gen = torch.Generator().manual_seed(5)
    for x_in, t in seen:
        picks = torch.randint(len(data), (2,), generator=gen)
        crops = []
        for i in picks:
            volume = data[int(i)]
            x, y, z = (
                2 * int(torch.randint((n - c) // 2 + 1, (1,), generator=gen))
                for n, c in zip(SHAPE, (8, 8, 4), strict=True)
            )
            crops.append(volume[:, x : x + 8, y : y + 8, z : z + 4])
        expected_x_in, expected_t, _ = training_batch(torch.stack(crops), MRISequence.T2F, run.schedule, gen)
        assert torch.equal(t, expected_t)
        assert torch.equal(x_in, expected_x_in)
    assert len(seen) == 3


@pytest.mark.parametrize(("cache", "cache_bytes"), [(False, None), (True, 4 * 16 * 16 * 12 * 2)])  # uint16
def test_reading_cases_in_the_background_changes_nothing(train_dir, tmp_path, cache, cache_bytes):
    settings = {"crop_size": (8, 8, 8), "batch_size": 2}
    cached = trainer(train_dir, tmp_path / "cached", **settings)
    expected = _losses(cached)
    data = TrainingCases.from_folder(train_dir, MULTIPLE, cache=cache, cache_bytes=cache_bytes)
    streamed = Trainer(config(**settings), data, tmp_path / "streamed")
    assert _losses(streamed) == expected
    _assert_same_state(cached, streamed, ema=False)
    assert sum(data.is_cached(i) for i in range(len(data))) == (1 if cache else 0)  # budget: one case
    assert streamed._pool is None and not streamed._prefetched  # background readers stopped


def test_ema_follows_its_recurrence_with_warm_up(train_dir, tmp_path):
    # The decay of update n is min(rate, (1 + n) / (10 + n)): 0.1, then 2/11, ... capped at the rate.
    run = trainer(train_dir, tmp_path / "out", ema_rate=0.9)
    expected = [p.detach().clone() for p in run.model.parameters()]
    for n in range(2):
        run.train_step()
        decay = min(0.9, (1 + n) / (10 + n))
        expected = [
            decay * e + (1 - decay) * p.detach()
            for e, p in zip(expected, run.model.parameters(), strict=True)
        ]
    for ema, e in zip(run.ema.parameters(), expected, strict=True):
        torch.testing.assert_close(ema, e, atol=1e-7, rtol=1e-6)
    assert [ema_decay(0.999, n) for n in (0, 90, 10_000)] == [0.1, 0.91, 0.999]


def test_init_weights_start_a_run_from_exported_weights(train_dir, tmp_path):
    first = trainer(train_dir, tmp_path / "first", iterations=2)
    first.run()
    exported = first.weights_dir / "t2f.safetensors"
    second = trainer(train_dir, tmp_path / "second", crop_size=None)
    second.load_weights(exported)
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, first.model.state_dict()[key]), key
    assert second.step == 0 and not second.optimizer.state  # a fresh optimiser
    with pytest.raises(CheckpointError, match="does not match"):
        trainer(
            train_dir,
            tmp_path / "third",
            spec=TINY_SPEC.model_copy(
                update={"architecture": replace(TINY_SPEC.architecture, model_channels=16)}
            ),
        ).load_weights(exported)


# -- checkpoints ------------------------------------------------------------------------------------
def _losses(run: Trainer) -> list[tuple[int, float]]:
    seen: list[tuple[int, float]] = []
    run.run(on_log=lambda report: seen.append((report.step, report.loss)))
    return seen


def _assert_same_state(a: Trainer, b: Trainer, ema: bool = True) -> None:
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    for key, value in a.ema.state_dict().items() if ema else ():
        assert torch.equal(value, b.ema.state_dict()[key]), key
    state_a, state_b = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    for index, entry in state_a["state"].items():
        for name, tensor in entry.items():
            assert torch.equal(tensor, state_b["state"][index][name]), (index, name)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert a.step == b.step


def test_save_then_resume_continues_bit_identically(train_dir, tmp_path):
    settings = {"ema_rate": 0.9, "crop_size": (8, 8, 8)}  # every kind of draw and state in play
    straight = trainer(train_dir, tmp_path / "straight", **settings)
    straight_losses = _losses(straight)

    interrupted = trainer(train_dir, tmp_path / "interrupted", iterations=3, **settings)
    first_losses = _losses(interrupted)
    checkpoint = interrupted.latest_checkpoint()
    assert checkpoint is not None and checkpoint.name == "step_00000003.pt"

    resumed = trainer(train_dir, tmp_path / "interrupted", **settings)  # a fresh process, in effect
    resumed.load_checkpoint(checkpoint)
    assert resumed.step == 3
    resumed_losses = _losses(resumed)

    assert first_losses + resumed_losses == straight_losses
    assert len(straight_losses) == 6 and len({loss for _, loss in straight_losses}) == 6
    _assert_same_state(straight, resumed)
    for name in ("t2f.safetensors", "model.yaml"):
        a = (tmp_path / "straight" / "weights" / name).read_bytes()
        assert a == (tmp_path / "interrupted" / "weights" / name).read_bytes()


def test_a_stop_request_checkpoints_the_finished_step_and_the_rerun_continues_identically(
    train_dir, tmp_path
):
    settings = {"ema_rate": 0.9, "crop_size": (8, 8, 8)}  # save_every 3: step 2 is no regular save
    straight = trainer(train_dir, tmp_path / "straight", **settings)
    straight_losses = _losses(straight)

    stopped = trainer(train_dir, tmp_path / "stopped", **settings)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(stopped.step)
        return stopped.step >= 2

    stopped.run(should_stop=should_stop)
    assert asked == [1, 2] and stopped.step == 2
    assert [p.name for p in stopped.checkpoint_dir.iterdir()] == ["step_00000002.pt"]

    resumed = trainer(train_dir, tmp_path / "stopped", **settings)
    resumed.load_checkpoint(stopped.latest_checkpoint())
    resumed_losses = _losses(resumed)
    assert [step for step, _ in resumed_losses] == [3, 4, 5, 6]
    assert resumed_losses == straight_losses[2:]
    _assert_same_state(straight, resumed)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"lr": 2e-3}, "lr"),
        ({"target": "t1n"}, "target"),
        ({"seed": 6}, "seed"),
        ({"crop_size": (8, 8, 8)}, "crop_size"),
        ({"spec": with_architecture(num_res_blocks=2)}, "spec"),
    ],
    ids=["lr", "target", "seed", "crop", "architecture"],
)
def test_resuming_with_changed_settings_is_refused(train_dir, tmp_path, change, named):
    first = trainer(train_dir, tmp_path / "a", iterations=3)
    first.run()
    other = trainer(train_dir, tmp_path / "b", **change)
    with pytest.raises(CheckpointError, match=rf"different settings \({named}\); cannot resume"):
        other.load_checkpoint(first.latest_checkpoint())
    assert other.step == 0


def test_resume_drops_log_rows_past_the_checkpoint_and_streams_cases(train_dir, tmp_path):
    settings = {"crop_size": (8, 8, 8), "save_every": 2}
    straight = trainer(train_dir, tmp_path / "straight", iterations=4, **settings)
    expected = _losses(straight)
    first = trainer(train_dir, tmp_path / "run", iterations=3, **settings)
    first.run()
    (tmp_path / "run" / "checkpoints" / "step_00000003.pt").unlink()  # stopped before saving step 3
    data = TrainingCases.from_folder(train_dir, MULTIPLE, cache=False)
    resumed = Trainer(config(iterations=4, **settings), data, tmp_path / "run")
    resumed.load_checkpoint(resumed.latest_checkpoint())
    assert resumed.step == 2
    assert _losses(resumed) == expected[2:]
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert [float(row["loss"]) for row in rows] == pytest.approx([loss for _, loss in expected], rel=1e-5)


def test_longer_run_and_other_intervals_may_resume(train_dir, tmp_path):
    first = trainer(train_dir, tmp_path / "a", iterations=3)
    first.run()
    longer = trainer(train_dir, tmp_path / "a", iterations=9, save_every=4, log_every=2)
    longer.load_checkpoint(first.latest_checkpoint())
    assert longer.step == 3


def test_unreadable_or_foreign_checkpoints_are_refused(train_dir, tmp_path):
    run = trainer(train_dir, tmp_path / "out")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        run.load_checkpoint(garbage)
    foreign = tmp_path / "weights.pt"
    torch.save(run.model.state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a cwdm-training-checkpoint-v1 checkpoint"):
        run.load_checkpoint(foreign)


# -- exported weights -------------------------------------------------------------------------------
@pytest.mark.parametrize("ema_rate", [None, 0.9])
def test_exported_weights_reproduce_the_model(train_dir, tmp_path, ema_rate):
    run = trainer(train_dir, tmp_path / "out", iterations=2, ema_rate=ema_rate)
    path = run.run()
    weights = WeightsDir.open(run.weights_dir)
    assert weights.spec == TINY_SPEC and weights.checkpoint(MRISequence.T2F) == path
    loaded = load_denoiser(path, weights.spec.architecture)
    source = run.ema if ema_rate else run.model
    x, t = torch.randn(2, 32, 8, 8, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), source.eval()(x, t))
        if ema_rate:  # the export is the average, not the raw weights
            assert not torch.equal(loaded(x, t), run.model.eval()(x, t))


def test_export_refuses_a_directory_of_another_model(train_dir, tmp_path):
    run = trainer(train_dir, tmp_path / "out", iterations=1)
    run.weights_dir.mkdir(parents=True)
    (run.weights_dir / "model.yaml").write_text(ModelSpec().to_yaml())
    with pytest.raises(ConfigError, match="describes a different model"):
        run.export_weights()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"crop_size": (6, 8, 8)}, "crop_size must be three positive multiples of 4"),
        ({"iterations": 0}, "iterations"),
        ({"precision": "fp8"}, "precision"),
        ({"ema_rate": 1.0}, "ema_rate"),
    ],
)
def test_invalid_settings_raise(changes, match):
    with pytest.raises(ConfigError, match=match):
        config(**changes)


@pytest.mark.parametrize(
    ("precision", "native_bf16", "match"),
    [
        ("fp16", True, "--precision fp16 needs a CUDA GPU; this run is on cpu"),
        ("bf16", False, "--precision bf16 needs a GPU or a CPU with AVX512-BF16 or AMX"),
    ],
)
def test_half_precision_the_cpu_cannot_run_is_refused_not_relabelled(
    train_dir, tmp_path, monkeypatch, precision, native_bf16, match
):
    monkeypatch.setattr("cwdm.runtime.cpu_has_native_bf16", lambda: native_bf16)
    with pytest.raises(ConfigError, match=match):
        trainer(train_dir, tmp_path / "out", precision=precision)


def test_bf16_on_a_cpu_with_native_bf16_trains_in_bf16(train_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("cwdm.runtime.cpu_has_native_bf16", lambda: True)
    run = trainer(train_dir, tmp_path / "out", precision="bf16", iterations=2)
    seen: list[torch.dtype] = []
    hook = run.model.out[-1].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    run.run()
    hook.remove()
    fp32 = trainer(train_dir, tmp_path / "fp32", iterations=2)
    fp32.run()
    assert seen == [torch.bfloat16, torch.bfloat16]  # autocast reached the network's last convolution
    assert run.step == 2 and not torch.equal(run.model.out[-1].weight, fp32.model.out[-1].weight)


def test_crop_larger_than_the_volume_raises(train_dir, tmp_path):
    run = trainer(train_dir, tmp_path / "out", crop_size=(32, 8, 8))
    with pytest.raises(ConfigError, match=r"exceeds the volume's network shape \(16, 16, 12\)"):
        run.train_step()


# -- the command ------------------------------------------------------------------------------------
TINY_OPTIONS = [
    "--target",
    "t1c",
    "--model-channels",
    "8",
    "--channel-mult",
    "1,2",
    "--num-res-blocks",
    "1",
    "--num-groups",
    "8",
    "--lr",
    "1e-3",
    "--save-every",
    "2",
    "--log-every",
    "1",
    "--crop",
    "8,8,8",
]


def test_cli_train_runs_end_to_end_and_resumes(train_dir, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(train_dir), str(out), *TINY_OPTIONS, "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert f"weights: {out / 'weights' / 't1c.safetensors'}" in result.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000003.pt"]

    streamed = ["--iterations", "5", "--cache-gb", "0"]  # cases read from disk at every draw
    result = runner.invoke(app, ["train", str(train_dir), str(out), *TINY_OPTIONS, *streamed])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5]  # resumed at 3, nothing repeated
    assert all(math.isfinite(float(row["loss"])) for row in rows)
    weights = WeightsDir.open(out / "weights")
    assert weights.spec.architecture.model_channels == 8 and weights.spec.architecture.channel_mult == (1, 2)
    load_denoiser(weights.checkpoint(MRISequence.T1C), weights.spec.architecture)

    result = runner.invoke(
        app, ["train", str(train_dir), str(out), *TINY_OPTIONS, "--iterations", "6", "--lr", "1"]
    )
    assert result.exit_code == 2 and "different settings (lr)" in result.output


def test_cli_train_stops_on_sigterm_after_checkpointing_and_the_same_command_resumes(
    train_dir, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    command = ["train", str(train_dir), str(out), *TINY_OPTIONS, "--iterations", "5", "--save-every", "4"]
    real_step = Trainer.train_step

    def step_then_sigterm(self: Trainer) -> float:
        loss = real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `docker stop` or a scheduler would, mid-run
        return loss

    monkeypatch.setattr(Trainer, "train_step", step_then_sigterm)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert "stopped by SIGTERM after step 3 of 5" in result.output
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003.pt"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    monkeypatch.setattr(Trainer, "train_step", real_step)
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5]


# -- flips, the learning-rate schedule, several targets, time limits ---------------------------------
def test_flips_are_drawn_after_the_crops_and_mirror_left_right(train_dir, tmp_path):
    """With flip on, each case's flip is one uniform draw after its crop offsets: x_in pins it."""
    data = TrainingCases.from_folder(train_dir, MULTIPLE)
    run = Trainer(config(crop_size=(8, 8, 4), batch_size=2, iterations=4, flip=True), data, tmp_path / "out")
    seen = []
    run.model.register_forward_pre_hook(lambda module, args: seen.append([a.clone() for a in args]))
    run.run()

    gen = torch.Generator().manual_seed(5)
    flips = []
    for x_in, t in seen:
        picks = torch.randint(len(data), (2,), generator=gen)
        crops = []
        for i in picks:
            x, y, z = (
                2 * int(torch.randint((n - c) // 2 + 1, (1,), generator=gen))
                for n, c in zip(SHAPE, (8, 8, 4), strict=True)
            )
            crop = data[int(i)][:, x : x + 8, y : y + 8, z : z + 4]
            flips.append(float(torch.rand(1, generator=gen)) < 0.5)
            crops.append(crop.flip(1) if flips[-1] else crop)
        expected_x_in, expected_t, _ = training_batch(torch.stack(crops), MRISequence.T2F, run.schedule, gen)
        assert torch.equal(t, expected_t) and torch.equal(x_in, expected_x_in)
    assert any(flips) and not all(flips)  # both kinds happened in these 8 draws


def test_cosine_schedule_decays_to_zero_and_is_applied_every_step(train_dir, tmp_path):
    cfg = config(lr=0.01, iterations=4, lr_schedule="cosine")
    assert [round(cfg.lr_at(step), 6) for step in range(5)] == [0.01, 0.008536, 0.005, 0.001464, 0.0]
    assert config(lr=0.01).lr_at(3) == 0.01
    run = Trainer(cfg, TrainingCases.from_folder(train_dir, MULTIPLE), tmp_path / "out")
    used = []
    real_step = run.optimizer.step

    def record_lr(*args, **kwargs):  # type: ignore[no-untyped-def]
        used.append(run.optimizer.param_groups[0]["lr"])
        return real_step(*args, **kwargs)

    run.optimizer.step = record_lr  # type: ignore[method-assign]
    run.run()
    assert used == pytest.approx([cfg.lr_at(step) for step in range(4)])


def test_cli_trains_several_targets_in_turn_from_one_copy_of_the_data(train_dir, tmp_path, monkeypatch):
    reads = []
    real_preprocess = TrainingCases._preprocess
    monkeypatch.setattr(
        TrainingCases, "_preprocess", lambda self, i: reads.append(i) or real_preprocess(self, i)
    )
    out = tmp_path / "run"
    options = [o if o != "t1c" else "t1n,t2f" for o in TINY_OPTIONS]
    result = CliRunner().invoke(app, ["train", str(train_dir), str(out), *options, "--iterations", "3"])
    assert result.exit_code == 0, result.output
    assert sorted(reads) == [0, 1]  # each case read once for both targets
    for target in ("t1n", "t2f"):
        assert (
            f"{target}: step 3 of 3 (done); weights: {out / 'weights' / f'{target}.safetensors'}"
            in result.output
        )
        assert (out / target / "checkpoints" / "step_00000003.pt").is_file()
    assert sorted(WeightsDir.open(out / "weights").checkpoints) == [MRISequence.T1N, MRISequence.T2F]

    reads.clear()  # a rerun finds both finished: nothing to train, nothing read
    result = CliRunner().invoke(app, ["train", str(train_dir), str(out), *options, "--iterations", "3"])
    assert result.exit_code == 0 and reads == [], result.output


def test_a_time_limit_checkpoints_each_target_and_the_rerun_goes_on(train_dir, tmp_path):
    out = tmp_path / "run"
    options = [o if o != "t1c" else "all" for o in TINY_OPTIONS]
    command = ["train", str(train_dir), str(out), *options, "--iterations", "4", "--max-seconds", "0"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "time limit of 0 s a run reached" in result.output
    for target in ("t1n", "t1c", "t2w", "t2f"):  # one step each, checkpointed
        assert [p.name for p in (out / target / "checkpoints").iterdir()] == ["step_00000001.pt"]
    result = CliRunner().invoke(app, command[:-2])
    assert result.exit_code == 0, result.output
    assert all(f"{t}: step 4 of 4 (done)" in result.output for t in ("t1n", "t1c", "t2w", "t2f"))


def test_unknown_targets_and_bad_lists_are_refused(train_dir, tmp_path):
    for target, words in (("t1n,t1n", "different targets"), ("t3x", "t3x")):
        options = [o if o != "t1c" else target for o in TINY_OPTIONS]
        result = CliRunner().invoke(app, ["train", str(train_dir), str(tmp_path / "r"), *options])
        assert result.exit_code != 0 and words in result.output, result.output


def test_torchrun_with_two_cpu_processes_trains_one_model_with_gloo(train_dir, tmp_path):
    """DDP as on several GPUs or nodes, here two CPU ranks (gloo): one run folder, one set of weights,
    identical on both ranks (rank 0 writes), the log written once."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    script = [str(Path(sys.executable).with_name("cwdm"))]  # as the README's $(which cwdm)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*torchrun, *script, "train", str(train_dir), str(out), *TINY_OPTIONS, "--iterations", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader((out / "train_log.csv").open()))
    assert [int(row["step"]) for row in rows] == [1, 2]  # rank 0 alone writes the log
    weights = WeightsDir.open(out / "weights")
    load_denoiser(weights.checkpoint(MRISequence.T1C), weights.spec.architecture)
