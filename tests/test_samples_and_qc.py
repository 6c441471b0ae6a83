"""Several draws a case (mean written, standard deviation as the uncertainty map), the QC folder
(previews, contact sheet, uncertainty maps) of `cwdm infer --qc`, and `cwdm qc`."""

from __future__ import annotations

import hashlib
import html.parser
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cwdm.cases.discovery import discover_cases
from cwdm.cases.preprocessing import NetworkLayout, brain_mask_postprocess, normalise
from cwdm.cli import app
from cwdm.config import SamplingSettings
from cwdm.errors import ConfigError
from cwdm.inference.synthesizer import Synthesizer
from cwdm.method.sampling import sample
from cwdm.method.schedule import NoiseSchedule
from cwdm.method.wavelets import build_condition, decode
from cwdm.runtime import Runtime, case_generator, sample_generator
from cwdm.sequences import condition_order
from cwdm.weights.folder import WeightsDir

from .conftest import write_case, write_tiny_weights

CPU = Runtime(torch.device("cpu"), "fp32")
CASE = "BraTS-GLI-00001-000"


def _settings(**changes: object) -> SamplingSettings:
    values = {"sampling_steps": 3, "sampler": "ddpm", "seed": 7, "batch_size": 1, "postprocess": "brain_mask"}
    return SamplingSettings(**(values | changes))  # type: ignore[arg-type]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def weights(tmp_path: Path) -> WeightsDir:
    return WeightsDir.open(write_tiny_weights(tmp_path / "weights"))


def test_draw_seeds_keep_the_first_draw_of_a_single_sample_run() -> None:
    first = torch.randn(4, generator=sample_generator(3, CASE, 0, torch.device("cpu")))
    assert torch.equal(first, torch.randn(4, generator=case_generator(3, CASE, torch.device("cpu"))))
    second = torch.randn(4, generator=sample_generator(3, CASE, 1, torch.device("cpu")))
    assert not torch.equal(first, second)


def test_three_draws_are_the_mean_and_sd_of_three_single_samplings(
    tmp_path: Path, weights: WeightsDir
) -> None:
    """Oracle: the three draws recomputed one by one through the public sampler with the documented
    per-draw generators, post-processed, then averaged (mean written, sd in the QC folder)."""
    write_case(tmp_path / "data", CASE, missing="t2f", seed=4)
    model = weights.load("t2f")
    synth = Synthesizer({"t2f": model}, _settings(samples=3), CPU, weights.schedule())
    report = synth.run(discover_cases(tmp_path / "data"), tmp_path / "out", qc_dir=tmp_path / "qc")
    assert report.exit_code == 0

    folder = tmp_path / "data" / CASE
    order = condition_order("t2f")
    present = [nib.load(folder / f"{CASE}-{seq}.nii.gz").get_fdata() for seq in order]
    layout = NetworkLayout.for_shape(present[0].shape, 2 * model.config.size_multiple)
    cond_volumes = np.stack([layout.to_network(normalise(v)) for v in present])
    cond = build_condition(torch.from_numpy(cond_volumes)[None])
    draws = []
    for index in range(3):
        with torch.inference_mode():
            coeffs = sample(
                model, cond, steps=3, generator=sample_generator(7, CASE, index, torch.device("cpu"))
            )
        volume = decode(coeffs)[0, 0].numpy()
        draws.append(layout.to_grid(brain_mask_postprocess(volume, cond_volumes[0])))
    written = nib.load(tmp_path / "out" / f"{CASE}-t2f.nii.gz").get_fdata()
    np.testing.assert_allclose(written, np.mean(draws, axis=0), atol=1e-5)
    spread = nib.load(tmp_path / "qc" / f"{CASE}-t2f-std.nii.gz").get_fdata()
    np.testing.assert_allclose(spread, np.std(draws, axis=0, ddof=1), atol=1e-5)
    assert spread.max() > 1e-3  # the draws really differ
    brain = layout.to_grid(cond_volumes[0]) > 0
    assert report.cases[0].uncertainty == pytest.approx(float(spread[brain].mean()), rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{CASE}-t2f.nii.gz"]  # nothing else


def test_one_draw_writes_the_same_bytes_as_before_and_no_uncertainty(
    tmp_path: Path, weights: WeightsDir
) -> None:
    write_case(tmp_path / "data", CASE, missing="t2f", seed=4)
    cases = discover_cases(tmp_path / "data")
    plain = Synthesizer({"t2f": weights.load("t2f")}, _settings(), CPU, weights.schedule())
    one = Synthesizer({"t2f": weights.load("t2f")}, _settings(samples=1), CPU, weights.schedule())
    first = plain.run(cases, tmp_path / "a")
    second = one.run(cases, tmp_path / "b", qc_dir=tmp_path / "qc")
    assert _sha(tmp_path / "a" / f"{CASE}-t2f.nii.gz") == _sha(tmp_path / "b" / f"{CASE}-t2f.nii.gz")
    assert first.cases[0].uncertainty is None and second.cases[0].uncertainty is None
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == [f"{CASE}-t2f.png"]  # no sd map of one draw


def test_draws_are_batched_and_split_like_cases(tmp_path: Path, weights: WeightsDir) -> None:
    """Two cases x two draws in one batch of four, or one at a time: the same outputs (per-draw
    generators), and the network sees the batch size asked for."""
    for number in (1, 2):
        write_case(tmp_path / "data", f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number)
    cases = discover_cases(tmp_path / "data")
    sizes = []
    model = weights.load("t2f")
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    together = Synthesizer({"t2f": model}, _settings(samples=2, batch_size=2), CPU, weights.schedule())
    together.run(cases, tmp_path / "together")
    assert set(sizes) == {4}
    sizes.clear()
    alone = Synthesizer({"t2f": model}, _settings(samples=2), CPU, weights.schedule())
    alone.draw_limit = 1
    alone.run(cases, tmp_path / "alone")
    assert set(sizes) == {1}
    for number in (1, 2):
        name = f"BraTS-GLI-0000{number}-000-t2f.nii.gz"
        a, b = (nib.load(tmp_path / run / name).get_fdata() for run in ("together", "alone"))
        np.testing.assert_allclose(a, b, atol=1e-5)


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and "://" in value:
                self.external.append(value)
            if tag == "img" and name == "src" and value:
                self.images.append(value)


def test_cli_qc_folder_holds_previews_sheet_and_maps_for_good_and_failed_cases(tmp_path: Path) -> None:
    weights_dir = write_tiny_weights(tmp_path / "weights")
    write_case(tmp_path / "data", "BraTS-GLI-00001-000", missing="t2f", seed=1)
    write_case(tmp_path / "data", "BraTS-GLI-00002-000", missing="t1c", seed=2)
    broken = tmp_path / "data" / "BraTS-GLI-00003-000"
    write_case(tmp_path / "data", broken.name, missing="t2w", seed=3)
    (broken / f"{broken.name}-t1n.nii.gz").write_bytes(b"not a volume")
    out, qc = tmp_path / "out", tmp_path / "qc"
    command = ["infer", str(tmp_path / "data"), str(out), "--weights", str(weights_dir), "--qc", str(qc)]
    result = CliRunner().invoke(app, [*command, "--samples", "2"])
    assert result.exit_code == 1, result.output  # one case failed
    assert sorted(p.name for p in out.iterdir()) == [
        "BraTS-GLI-00001-000-t2f.nii.gz",
        "BraTS-GLI-00002-000-t1c.nii.gz",
    ]
    names = sorted(p.name for p in qc.iterdir())
    assert names == [
        "BraTS-GLI-00001-000-t2f-std.nii.gz",
        "BraTS-GLI-00001-000-t2f.png",
        "BraTS-GLI-00002-000-t1c-std.nii.gz",
        "BraTS-GLI-00002-000-t1c.png",
        "index.html",
    ]
    with Image.open(qc / "BraTS-GLI-00001-000-t2f.png") as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # a picture, not a blank canvas
    page = (qc / "index.html").read_text()
    links = _Links()
    links.feed(page)
    assert links.external == []  # nothing fetched from the network
    assert links.images == ["BraTS-GLI-00001-000-t2f.png", "BraTS-GLI-00002-000-t1c.png"]
    assert "BraTS-GLI-00003-000" in page and "failed" in page and "cannot use the t1n volume" in page
    assert "mean sd in the brain" in page
    # The header says the settings once each, in words: "ddim 2 steps, linspace timesteps, 2 draw(s)".
    assert re.search(r"\b(ddim|ddpm) \d+ steps?, (linspace|trailing) timesteps, 2 draw\(s\) a case", page)


def test_the_qc_folder_may_not_overlap_the_output_or_the_inputs(tmp_path: Path) -> None:
    weights_dir = write_tiny_weights(tmp_path / "weights")
    write_case(tmp_path / "data", CASE, missing="t2f", seed=1)
    for qc, words in (
        (tmp_path / "out", "overlaps the output folder"),
        (tmp_path / "data" / "qc", "inside the input"),
    ):
        command = ["infer", str(tmp_path / "data"), str(tmp_path / "out"), "--weights", str(weights_dir)]
        result = CliRunner().invoke(app, [*command, "--qc", str(qc)])
        assert result.exit_code == 2 and words in result.output, result.output


def test_cli_qc_draws_existing_predictions_with_the_truth_and_lists_missing_ones(tmp_path: Path) -> None:
    for number, missing in ((1, None), (2, None)):
        write_case(tmp_path / "complete", f"BraTS-GLI-0000{number}-000", missing=missing, seed=number)
    pred = tmp_path / "pred"
    pred.mkdir()
    source = tmp_path / "complete" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t2f.nii.gz"
    image = nib.load(source)
    nib.save(
        nib.Nifti1Image(image.get_fdata() * 3.0 + 10.0, image.affine), pred / "BraTS-GLI-00001-000-t2f.nii.gz"
    )
    (pred / "BraTS-GLI-00009-000-t1n.nii.gz").write_bytes(source.read_bytes())  # no such case
    before = {p: _sha(p) for p in sorted((tmp_path / "complete").rglob("*.nii.gz"))}
    result = CliRunner().invoke(app, ["qc", str(pred), str(tmp_path / "complete"), str(tmp_path / "qc")])
    assert result.exit_code == 1, result.output
    assert "BraTS-GLI-00001-000  t2f  previewed" in result.output
    assert "BraTS-GLI-00002-000  -  missing" in result.output
    assert "BraTS-GLI-00009-000  t1n  failed" in result.output
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == [
        "BraTS-GLI-00001-000-t2f.png",
        "index.html",
    ]
    assert before == {p: _sha(p) for p in before}


def test_single_step_needs_the_trailing_spacing_and_then_returns_the_networks_x0(tmp_path: Path) -> None:
    """One DDIM step with trailing spacing: the network is asked once, at t = 999, and its (clipped)
    x0 is the result; the published linspace spacing asks at t = 0."""
    seen = []

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.append(int(t[0]))
            return torch.full_like(x[:, :8], 0.1)

    cond = torch.zeros(1, 24, 4, 4, 4)
    out = sample(Constant(), cond, steps=1, sampler="ddim", spacing="trailing", clip=False)
    assert seen == [999] and torch.allclose(out, torch.full_like(out, 0.1))
    sample(Constant(), cond, steps=1, sampler="ddpm", spacing="linspace", clip=False)
    assert seen[-1] == 0
    with pytest.raises(ConfigError, match="unknown timestep spacing"):
        NoiseSchedule.linear(1000).respaced(10, "leading")  # type: ignore[arg-type]


def test_cli_qc_takes_the_truth_from_a_folder_of_complete_cases(tmp_path: Path) -> None:
    """DATA the inputs, --truth the complete cases: the truth shown (and scored as cwdm evaluate scores it)
    where the truth folder has it, the inputs alone with a "no truth" note where it does not."""
    shape = (32, 32, 16)  # large enough for cwdm evaluate's centre crop
    for number in (1, 2):
        write_case(tmp_path / "data", f"BraTS-GLI-0000{number}-000", missing="t2f", seed=number, shape=shape)
    write_case(tmp_path / "truth", "BraTS-GLI-00001-000", missing=None, seed=1, shape=shape)  # case 1 only
    pred = tmp_path / "pred"
    pred.mkdir()
    for number in (1, 2):
        case = f"BraTS-GLI-0000{number}-000"
        source = tmp_path / "data" / case / f"{case}-t2w.nii.gz"
        image = nib.load(source)
        nib.save(nib.Nifti1Image(image.get_fdata() / 1000.0, image.affine), pred / f"{case}-t2f.nii.gz")
    command = [
        "qc",
        str(pred),
        str(tmp_path / "data"),
        str(tmp_path / "qc"),
        "--truth",
        str(tmp_path / "truth"),
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "BraTS-GLI-00001-000  t2f  previewed\n" in result.output
    truth_dir = tmp_path / "truth"
    assert f"BraTS-GLI-00002-000  t2f  previewed: no truth in {truth_dir}, drawn with its inputs only\n" in (
        result.output
    )
    page = (tmp_path / "qc" / "index.html").read_text()
    from cwdm.evaluation.evaluate import evaluate

    (scores,) = evaluate(pred, truth_dir).scores
    assert f"{scores.full.psnr:.2f} dB / {scores.full.mse:.5f}" in page  # the truth folder's t2f
    with (
        Image.open(tmp_path / "qc" / "BraTS-GLI-00001-000-t2f.png") as with_truth,
        Image.open(tmp_path / "qc" / "BraTS-GLI-00002-000-t2f.png") as inputs_only,
    ):
        assert with_truth.width > 1.3 * inputs_only.width  # truth and difference columns
    assert f"truth {truth_dir}" in page


def test_cli_qc_says_why_a_prediction_failed_on_its_line(tmp_path: Path) -> None:
    write_case(tmp_path / "data", CASE, missing="t2f", seed=1)
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / f"{CASE}-t2f.nii.gz").write_bytes(b"not a volume")
    (pred / "BraTS-GLI-00009-000-t1n.nii.gz").write_bytes(b"no case")
    result = CliRunner().invoke(app, ["qc", str(pred), str(tmp_path / "data"), str(tmp_path / "qc")])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    (broken,) = [line for line in lines if line.startswith(f"{CASE}  t2f  failed: ")]
    assert "cannot" in broken and f"{CASE}-t2f.nii.gz" in broken
    (orphan,) = [line for line in lines if line.startswith("BraTS-GLI-00009-000  t1n  failed: ")]
    assert f"no case folder BraTS-GLI-00009-000 in {tmp_path / 'data'}" in orphan and "--truth" in orphan


def test_cli_qc_names_the_weights_the_predictions_record(tmp_path: Path) -> None:
    """Without --weights the sheet's header names each checkpoint the previewed predictions' provenance
    records hold (file name, first 12 hex digits of its SHA-256), and counts those without a record."""
    weights_dir = write_tiny_weights(tmp_path / "weights")
    write_case(tmp_path / "data", "BraTS-GLI-00001-000", missing="t2f", seed=1)
    write_case(tmp_path / "data", "BraTS-GLI-00002-000", missing="t1c", seed=2)
    write_case(tmp_path / "data", "BraTS-GLI-00003-000", missing="t2f", seed=3)
    out = tmp_path / "out"
    infer = ["infer", str(tmp_path / "data"), str(out), "--weights", str(weights_dir), "--device", "cpu"]
    assert CliRunner().invoke(app, infer).exit_code == 0
    recorded = out / "BraTS-GLI-00003-000-t2f.nii.gz"  # replaced by a copy without a record
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(recorded).dataobj), nib.load(recorded).affine), recorded)
    result = CliRunner().invoke(app, ["qc", str(out), str(tmp_path / "data"), str(tmp_path / "qc")])
    assert result.exit_code == 0, result.output
    expected = ", ".join(
        f"{name} (sha256 {_sha(weights_dir / name)[:12]})" for name in ("t1c.safetensors", "t2f.safetensors")
    )
    page = (tmp_path / "qc" / "index.html").read_text()
    assert f"weights: {expected}; 1 prediction without a record;" in page

    named = ["qc", str(out), str(tmp_path / "data"), str(tmp_path / "qc2"), "--weights", "my weights"]
    assert CliRunner().invoke(app, named).exit_code == 0
    assert "weights: my weights;" in (tmp_path / "qc2" / "index.html").read_text()


def test_recorded_weights_lists_each_distinct_checkpoint() -> None:
    from cwdm.qc.run import recorded_weights

    one, other = {"file": "t2f.pt", "sha256": "a" * 64}, {"file": "t2f.pt", "sha256": "b" * 64}
    assert recorded_weights([{"model": one}, {"model": one}]) == f"t2f.pt (sha256 {'a' * 12})"
    assert recorded_weights([{"model": other}, {"model": one}, None, None]) == (
        f"t2f.pt (sha256 {'a' * 12}), t2f.pt (sha256 {'b' * 12}); 2 predictions without a record"
    )
    assert recorded_weights([None]) == "not recorded in the predictions"
