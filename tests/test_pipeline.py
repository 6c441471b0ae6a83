"""pipeline.py: the Synthesizer on synthetic cases.

The central oracle: a stand-in denoiser that returns, as its x0, the coefficients of one condition
sequence. The DDPM chain's last step returns x0 exactly, so the written output must equal that
sequence after the training preprocessing (recomputed here in float64), post-processed and put back on
the input grid. That checks condition order, preprocessing, layout, decoding, masking, the inverse
layout and the output header in one comparison. Tiny random denoisers then check seeding and batching.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cwdm.cases.discovery import discover_cases, needed_targets
from cwdm.config import RunParameters, SamplingSettings
from cwdm.errors import CheckpointError, ConfigError
from cwdm.inference.report import RunReport, check_report_path, write_report
from cwdm.inference.synthesizer import Synthesizer
from cwdm.method.denoiser import DenoiserConfig
from cwdm.method.schedule import NoiseSchedule
from cwdm.runtime import Runtime
from cwdm.sequences import CANONICAL_ORDER, MRISequence, condition_order

from .conftest import AFFINE, TINY_SPEC, write_case, write_tiny_weights, write_volume

SEQUENCES = [str(seq) for seq in CANONICAL_ORDER]
CPU_FP32 = Runtime(torch.device("cpu"), "fp32")


class CopyCondition(nn.Module):
    """Predicts x0 = the scaled coefficients of condition ``index`` (input channels after x_t)."""

    def __init__(self, index: int = 0, fail: bool = False) -> None:
        super().__init__()
        self.config = DenoiserConfig(model_channels=8, channel_mult=(1, 2), num_groups=8)
        self.index = index
        self.fail = fail
        self.seen: list[dict[str, object]] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.seen.append(
            {
                "inference": torch.is_inference_mode_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
                "dtype": x.dtype,
                "batch": x.shape[0],
            }
        )
        if self.fail:
            raise RuntimeError("simulated failure inside the network")
        start = 8 + 8 * self.index
        return x[:, start : start + 8] * torch.ones(
            (), dtype=torch.bfloat16 if self.seen[-1]["autocast"] else x.dtype
        )


def _settings(**changes: object) -> SamplingSettings:
    values = {"sampling_steps": 3, "sampler": "ddpm", "seed": 0, "batch_size": 1, "postprocess": "brain_mask"}
    values.update(changes)
    return SamplingSettings(**values)  # type: ignore[arg-type]


def _synth(models: dict, runtime: Runtime = CPU_FP32, **settings: object) -> Synthesizer:
    return Synthesizer(models, _settings(**settings), runtime, NoiseSchedule.linear(1000))


def _oracle_preprocess(path: Path) -> np.ndarray:
    """Float64 reimplementation of the training preprocessing, in image space on the input grid."""
    data = np.asarray(nib.load(path).get_fdata(dtype=np.float64))
    low, high = np.percentile(data, [0.1, 99.9])
    clipped = np.minimum(np.maximum(data, low), high)
    return (clipped - low) / (high - low)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("target", SEQUENCES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_output_is_the_chosen_condition_through_the_whole_chain(
    tmp_path: Path, target: str, index: int
) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00001-000", missing=target, seed=1)
    cases = discover_cases(tmp_path / "data")
    report = _synth({MRISequence(target): CopyCondition(index)}).run(cases, tmp_path / "out")
    assert report.exit_code == 0 and [r.status for r in report.cases] == ["written"]

    out = tmp_path / "out" / f"BraTS-GLI-00001-000-{target}.nii.gz"
    assert _files(tmp_path / "out") == [out.name]
    order = condition_order(target)
    case_dir = tmp_path / "data" / "BraTS-GLI-00001-000"
    source = _oracle_preprocess(case_dir / f"BraTS-GLI-00001-000-{order[index]}.nii.gz")
    mask = _oracle_preprocess(case_dir / f"BraTS-GLI-00001-000-{order[0]}.nii.gz") == 0
    expected = np.where(mask, 0.0, source)
    image = nib.load(out)
    assert image.get_data_dtype() == np.float32 and image.shape == (26, 20, 14)
    np.testing.assert_allclose(image.get_fdata(), expected, atol=2e-6)
    reference = nib.load(case_dir / f"BraTS-GLI-00001-000-{order[0]}.nii.gz")
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-6)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    assert image.header.get_zooms() == reference.header.get_zooms()


def test_threshold_postprocess_reproduces_the_challenge_container(tmp_path: Path) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00002-000", missing="t1c", seed=2)
    cases = discover_cases(tmp_path / "data")
    _synth({MRISequence.T1C: CopyCondition(1)}, postprocess="threshold").run(cases, tmp_path / "out")
    source = _oracle_preprocess(tmp_path / "data" / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2w.nii.gz")
    written = nib.load(tmp_path / "out" / "BraTS-GLI-00002-000-t1c.nii.gz").get_fdata()
    np.testing.assert_allclose(written, np.where(source <= 0.04, 0.0, source), atol=2e-6)


def test_network_runs_in_inference_mode_and_autocast_covers_only_the_network(tmp_path: Path) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00003-000", missing="t2f")
    model = CopyCondition(0)
    report = _synth({MRISequence.T2F: model}, Runtime(torch.device("cpu"), "bf16")).run(
        discover_cases(tmp_path / "data"), tmp_path / "out"
    )
    assert report.exit_code == 0
    assert len(model.seen) == 3  # one network call per step
    assert all(call["inference"] and call["autocast"] for call in model.seen)
    assert all(call["dtype"] == torch.float32 for call in model.seen)  # the sampler state stays fp32
    assert not torch.is_autocast_enabled("cpu")
    out = nib.load(tmp_path / "out" / "BraTS-GLI-00003-000-t2f.nii.gz")
    assert out.get_data_dtype() == np.float32


def test_isolation_bad_cases_fail_alone_and_the_report_says_why(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_case(data, "BraTS-GLI-00001-000", missing="t2f", seed=1)  # good
    write_case(data, "BraTS-GLI-00002-000", missing="t2f", seed=2)  # corrupt t1c
    corrupt = data / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t1c.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:400])
    folder = write_case(data, "BraTS-GLI-00003-000", missing="t2f", seed=3)  # t2w on another grid
    write_volume(folder / "BraTS-GLI-00003-000-t2w.nii.gz", np.ones((26, 20, 15)))
    folder = write_case(data, "BraTS-GLI-00004-000", missing="t2f", seed=4)  # shifted t1c
    shifted = AFFINE.copy()
    shifted[:3, 3] += 1.5
    write_volume(folder / "BraTS-GLI-00004-000-t1c.nii.gz", np.ones((26, 20, 14)), shifted)
    write_case(data, "BraTS-GLI-00005-000", missing=None)  # complete: a training case
    folder = write_case(data, "BraTS-GLI-00006-000", missing="t2f")  # two missing
    (folder / "BraTS-GLI-00006-000-t2w.nii.gz").unlink()
    write_case(data, "BraTS-GLI-00007-000", missing="t1n", seed=7)  # good, other target
    before = {p: p.read_bytes() for p in sorted(data.rglob("*.nii.gz"))}

    models = {MRISequence.T2F: CopyCondition(0), MRISequence.T1N: CopyCondition(2)}
    seen = []
    report = _synth(models).run(discover_cases(data), tmp_path / "out", on_case=seen.append)

    status = {r.case_id: r.status for r in report.cases}
    assert status == {
        "BraTS-GLI-00001-000": "written",
        "BraTS-GLI-00002-000": "failed",
        "BraTS-GLI-00003-000": "failed",
        "BraTS-GLI-00004-000": "failed",
        "BraTS-GLI-00005-000": "ignored",
        "BraTS-GLI-00006-000": "ignored",
        "BraTS-GLI-00007-000": "written",
    }
    errors = {r.case_id: (r.error_type, r.error) for r in report.cases}
    assert errors["BraTS-GLI-00002-000"][0] == "VolumeReadError"
    assert "t1c volume BraTS-GLI-00002-000-t1c.nii.gz" in errors["BraTS-GLI-00002-000"][1]
    assert errors["BraTS-GLI-00003-000"][0] == "GeometryError"
    assert "t2w grid differs from t1n" in errors["BraTS-GLI-00003-000"][1]
    assert "shape 26x20x15" in errors["BraTS-GLI-00003-000"][1]
    assert "shape 26x20x14" in errors["BraTS-GLI-00003-000"][1]
    assert "affines differ by up to 1.5 mm" in errors["BraTS-GLI-00004-000"][1]
    assert "all four sequences are present" in errors["BraTS-GLI-00005-000"][1]
    assert "2 sequences are missing" in errors["BraTS-GLI-00006-000"][1]
    assert report.exit_code == 1
    assert (report.count("written"), report.count("failed"), report.count("ignored")) == (2, 3, 2)
    assert sorted(r.case_id for r in seen) == sorted(status)  # every case reported once
    assert _files(tmp_path / "out") == ["BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00007-000-t1n.nii.gz"]
    assert {p: p.read_bytes() for p in sorted(data.rglob("*.nii.gz"))} == before


def test_unexpected_exception_fails_its_cases_only_and_is_logged_with_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00001-000", missing="t2f")
    write_case(tmp_path / "data", "BraTS-GLI-00002-000", missing="t2w")
    models = {MRISequence.T2F: CopyCondition(fail=True), MRISequence.T2W: CopyCondition()}
    with caplog.at_level(logging.ERROR, logger="cwdm.inference.synthesizer"):
        report = _synth(models).run(discover_cases(tmp_path / "data"), tmp_path / "out")
    failed, written = report.cases
    assert (failed.status, failed.error_type) == ("failed", "RuntimeError")
    assert "simulated failure inside the network" in failed.error
    assert written.status == "written"
    assert any(record.exc_info and "BraTS-GLI-00001-000" in record.getMessage() for record in caplog.records)
    assert report.exit_code == 1


def test_missing_model_fails_the_affected_cases_and_names_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    for number, missing in [(1, "t1c"), (2, "t2f"), (3, "t1c")]:
        write_case(data, f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    weights = write_tiny_weights(tmp_path / "weights", targets=("t1n", "t2w", "t2f"))
    params = RunParameters(sampling_steps=1, device="cpu")
    cases = discover_cases(data)
    with caplog.at_level(logging.ERROR, logger="cwdm.inference.synthesizer"):
        synth = Synthesizer.from_weights(weights, params, needed_targets(cases))
        report = synth.run(cases, tmp_path / "out")
    assert set(synth.models) == {MRISequence.T2F}  # only what the cases need
    assert set(synth.unavailable) == {MRISequence.T1C}
    assert [r.status for r in report.cases] == ["failed", "written", "failed"]
    assert "no model for target t1c" in report.cases[0].error
    assert "affected cases: BraTS-GLI-00001-000, BraTS-GLI-00003-000" in caplog.text
    assert report.to_dict()["unavailable_models"]["t1c"].endswith("whose name contains 't1c')")


def test_from_weights_settings_fall_back_to_model_yaml(tmp_path: Path, tiny_weights: Path) -> None:
    synth = Synthesizer.from_weights(tiny_weights, RunParameters(device="cpu"), ["t2f"])
    assert (synth.settings.sampling_steps, synth.settings.sampler) == (2, "ddpm")  # TINY_SPEC's defaults
    assert set(synth.models) == {MRISequence.T2F} and synth.multiple == 4
    assert not synth.models[MRISequence.T2F].training
    params = RunParameters(device="cpu", sampling_steps=5, sampler="ddim", seed=9, batch_size=3)
    synth = Synthesizer.from_weights(tiny_weights, params, [])
    assert (synth.settings.sampling_steps, synth.settings.sampler, synth.settings.seed) == (5, "ddim", 9)
    assert synth.models == {}


def test_from_weights_errors_stop_before_any_case(tmp_path: Path, tiny_weights: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Synthesizer.from_weights(tmp_path / "nope", RunParameters(device="cpu"))
    small = write_tiny_weights(
        tmp_path / "w", targets=("t2f",), spec=TINY_SPEC.model_copy(update={"diffusion_steps": 10})
    )
    with pytest.raises(ConfigError, match="sampling_steps 20 exceeds the model's 10 diffusion steps"):
        Synthesizer.from_weights(small, RunParameters(device="cpu", sampling_steps=20))
    broken = write_tiny_weights(tmp_path / "broken", targets=("t2f",))
    (broken / "t2f.safetensors").write_bytes(b"garbage")
    synth = Synthesizer.from_weights(broken, RunParameters(device="cpu"), ["t2f"])
    assert "cannot read checkpoint" in synth.unavailable[MRISequence.T2F]


def test_rerun_skips_complete_outputs_and_replaces_incomplete_ones(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    model = CopyCondition()
    first = _synth({MRISequence.T2F: model}).run(discover_cases(data), out)
    assert first.exit_code == 0
    outputs = sorted(out.iterdir())
    stats = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outputs}
    outputs[1].write_bytes(outputs[1].read_bytes()[:300])  # truncated: not complete
    write_volume(outputs[2], np.ones((26, 20, 13)))  # wrong grid: not ours
    (out / ".cwdm-BraTS-GLI-00009-000-t2f.nii.gz.x1y2.part").write_bytes(b"left by a killed run")
    model.seen.clear()

    second = _synth({MRISequence.T2F: model}).run(discover_cases(data), out)
    assert [r.status for r in second.cases] == ["skipped", "written", "written"]
    assert second.exit_code == 0
    assert (outputs[0].stat().st_ino, outputs[0].stat().st_mtime_ns) == stats[outputs[0]]
    assert len(model.seen) == 2 * 3  # two cases sampled, three steps each
    assert sorted(out.iterdir()) == outputs  # the partial file is gone, nothing else appeared
    assert nib.load(outputs[2]).shape == (26, 20, 14)


def test_same_seed_same_output_independent_of_order_and_batching(tmp_path: Path, tiny_weights: Path) -> None:
    data = tmp_path / "data"
    for number in (1, 2, 3):
        write_case(data, f"BraTS-GLI-0000{number}-000", missing="t2w", seed=number)
    cases = discover_cases(data)

    def run(name: str, order: list, **params: object) -> dict[str, np.ndarray]:
        settings = {"device": "cpu", "sampling_steps": 3, "seed": 5} | params
        synth = Synthesizer.from_weights(tiny_weights, RunParameters(**settings), ["t2w"])
        report = synth.run(order, tmp_path / name)
        assert report.exit_code == 0
        return {p.name: nib.load(p).get_fdata() for p in sorted((tmp_path / name).iterdir())}

    single = run("a", cases)
    again = run("b", cases)
    reversed_batched = run("c", cases[::-1], batch_size=2)
    other_seed = run("d", cases, seed=6)
    ddim = run("e", cases, sampler="ddim")
    assert len(single) == 3
    for name, volume in single.items():
        np.testing.assert_array_equal(volume, again[name])
        np.testing.assert_allclose(volume, reversed_batched[name], atol=1e-5)
        assert not np.allclose(volume, other_seed[name], atol=1e-3)
        assert not np.allclose(volume, ddim[name], atol=1e-3)
        assert volume.min() >= 0.0 and volume.max() <= 1.0 and volume.max() > 0.0


def test_batches_group_cases_of_one_target(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for number, missing in [(1, "t2f"), (2, "t1n"), (3, "t2f"), (4, "t2f")]:
        write_case(data, f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    write_case(data, "BraTS-GLI-00005-000", missing="t2f", shape=(20, 20, 14))  # another network shape
    models = {MRISequence.T2F: CopyCondition(), MRISequence.T1N: CopyCondition()}
    steps: list[tuple[tuple[str, ...], int, int]] = []
    report = _synth(models, batch_size=2).run(
        discover_cases(data), tmp_path / "out", on_step=lambda ids, d, t: steps.append((ids, d, t))
    )
    assert report.exit_code == 0
    batches = [ids for ids, done, total in steps if done == total]
    assert batches == [
        ("BraTS-GLI-00002-000",),
        ("BraTS-GLI-00001-000", "BraTS-GLI-00003-000"),
        ("BraTS-GLI-00004-000",),
        ("BraTS-GLI-00005-000",),
    ]
    assert [b["batch"] for b in models[MRISequence.T2F].seen] == [2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert [r.case_id for r in report.cases] == [f"BraTS-GLI-0000{n}-000" for n in range(1, 6)]


def test_output_folder_inside_the_data_folder_is_refused(tmp_path: Path) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00001-000")
    cases = discover_cases(tmp_path / "data")
    synth = _synth({MRISequence.T2F: CopyCondition()})
    for out in [tmp_path / "data", tmp_path / "data" / "preds", tmp_path / "data" / "BraTS-GLI-00001-000"]:
        with pytest.raises(ConfigError, match="is inside the data folder"):
            synth.run(cases, out)
    assert not (tmp_path / "data" / "preds").exists()


def test_no_case_to_synthesise_is_a_failed_run(tmp_path: Path) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00001-000", missing=None)
    report = _synth({}).run(discover_cases(tmp_path / "data"), tmp_path / "out")
    assert [r.status for r in report.cases] == ["ignored"] and report.exit_code == 1
    assert _synth({}).run([], tmp_path / "out").exit_code == 1


def test_report_json_goes_outside_the_output_folder(tmp_path: Path) -> None:
    write_case(tmp_path / "data", "BraTS-GLI-00001-000", missing="t2f")
    write_case(tmp_path / "data", "BraTS-GLI-00002-000", missing=None)
    out = tmp_path / "out"
    report = _synth({MRISequence.T2F: CopyCondition()}).run(discover_cases(tmp_path / "data"), out)
    with pytest.raises(ConfigError, match="inside the output folder"):
        write_report(report, out / "report.json")
    with pytest.raises(ConfigError, match="inside the output folder"):
        check_report_path(out / "sub" / "report.json", out)
    path = write_report(report, tmp_path / "reports" / "run.json")
    record = json.loads(path.read_text())
    assert record["exit_code"] == 0
    assert record["counts"] == {
        "written": 1,
        "skipped": 0,
        "mismatched": 0,
        "claimed": 0,
        "failed": 0,
        "ignored": 1,
        "interrupted": 0,
    }
    assert record["settings"] == {
        "sampling_steps": 3,
        "sampler": "ddpm",
        "seed": 0,
        "batch_size": 1,
        "postprocess": "brain_mask",
        "timestep_spacing": "linspace",
        "samples": 1,
    }
    assert record["cases"][0]["output"].endswith("BraTS-GLI-00001-000-t2f.nii.gz")
    assert record["cases"][1]["status"] == "ignored"
    assert _files(out) == ["BraTS-GLI-00001-000-t2f.nii.gz"]
    assert _files(path.parent) == ["run.json"]
    assert isinstance(report, RunReport)


def test_a_rerun_with_nothing_to_do_loads_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cwdm.inference.run import RunRequest, run_request
    from cwdm.weights.folder import WeightsDir

    for number, missing in ((1, "t2f"), (2, "t1n")):
        write_case(tmp_path / "data", f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    weights = write_tiny_weights(tmp_path / "weights")
    request = RunRequest(tmp_path / "data", tmp_path / "out", weights, RunParameters(device="cpu"))
    loaded: list[str] = []
    real_load = WeightsDir.load

    def load(self, target, *args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(str(target))
        return real_load(self, target, *args, **kwargs)

    monkeypatch.setattr(WeightsDir, "load", load)
    first = run_request(request).report
    assert [r.status for r in first.cases] == ["written", "written"] and sorted(loaded) == ["t1n", "t2f"]
    loaded.clear()
    again = run_request(request).report
    assert [r.status for r in again.cases] == ["skipped", "skipped"] and loaded == []
    # Other settings: the outputs are mismatched, kept, and still nothing needs a model...
    other = RunRequest(tmp_path / "data", tmp_path / "out", weights, RunParameters(device="cpu", seed=7))
    assert [r.status for r in run_request(other).report.cases] == [
        "mismatched",
        "mismatched",
    ] and loaded == []
    # ... until they are to be redone: then only the target of the case that changed is loaded.
    (tmp_path / "out" / "BraTS-GLI-00001-000-t2f.nii.gz").unlink()
    assert [r.status for r in run_request(other).report.cases] == ["written", "mismatched"] and loaded == [
        "t2f"
    ]


def test_model_yaml_gives_a_target_its_own_defaults_and_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from cwdm.inference import provenance

    weights = write_tiny_weights(tmp_path / "weights")
    spec = yaml.safe_load((weights / "model.yaml").read_text())
    spec["targets"] = {"t1c": {"sampling_steps": 3, "downstream_warning": "segments worse than a copy"}}
    (weights / "model.yaml").write_text(yaml.safe_dump(spec))
    for number, missing in ((1, "t1c"), (2, "t1c"), (3, "t2f")):
        write_case(tmp_path / "data", f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    cases = discover_cases(tmp_path / "data")
    synth = Synthesizer.from_weights(weights, RunParameters(device="cpu"), needed_targets(cases))
    with caplog.at_level(logging.WARNING, logger="cwdm"):
        report = synth.run(cases, tmp_path / "out")
    assert [r.status for r in report.cases] == ["written"] * 3
    steps = {r.case_id: provenance.read_record(r.output)["settings"]["sampling_steps"] for r in report.cases}
    assert steps == {"BraTS-GLI-00001-000": 3, "BraTS-GLI-00002-000": 3, "BraTS-GLI-00003-000": 2}
    assert caplog.text.count("segments worse than a copy") == 1  # once per run, not per case
    assert report.to_dict()["target_settings"]["t1c"]["sampling_steps"] == 3
    # The summary names both settings, not the file's alone.
    from cwdm.cli.infer import counts_line

    assert "(fp32, ddpm 2 steps (t1c: ddpm 3 steps), 1 draw a case)" in counts_line(report, None)
    again = synth.run(cases, tmp_path / "out")  # each target's outputs judged by its own settings
    assert [r.status for r in again.cases] == ["skipped"] * 3
    # An option given on the command line wins over the target's default.
    forced = Synthesizer.from_weights(weights, RunParameters(device="cpu", sampling_steps=3), ["t1c", "t2f"])
    assert forced.settings_for("t1c").sampling_steps == forced.settings_for("t2f").sampling_steps == 3
