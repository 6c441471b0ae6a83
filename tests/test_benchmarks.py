"""benchmarks/run.py stays runnable: its CPU part at a tiny size, and the counted FLOPs of the published
U-Net against docs/PERFORMANCE.md, "Status" (about 7.2 TFLOP for one full-resolution forward)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _benchmark_script("run")


def _benchmark_script(name: str) -> ModuleType:
    """A script of benchmarks/ loaded as a module (the folder is not a package)."""
    spec_file = importlib.util.spec_from_file_location(
        f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py"
    )
    assert spec_file is not None and spec_file.loader is not None
    module = importlib.util.module_from_spec(spec_file)
    spec_file.loader.exec_module(module)
    return module


@pytest.mark.parametrize("native_bf16", [False, True], ids=["no-bf16", "native-bf16"])
def test_cpu_part_runs_and_reports_ratios(
    bench: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    native_bf16: bool,
) -> None:
    # Pretending native bf16 on a CPU without it still runs: PyTorch emulates bf16 there (slowly).
    monkeypatch.setattr(bench, "cpu_has_native_bf16", lambda: native_bf16)
    out = tmp_path / "results.json"
    args = ["--cpu-only", "--cpu-size", "16,16,16", "--cpu-width", "8", "--cpu-reps", "2", "--json", str(out)]
    assert bench.main(args) == 0
    results = json.loads(out.read_text())
    assert "gpu" not in results  # --cpu-only, and nothing is reported that did not run
    cpu = results["cpu"]
    assert cpu["input_shape"] == [1, 32, 16, 16, 16] and cpu["repetitions"] == 2
    assert set(cpu["results"]) == {"baseline", "ours", "channels_last"} | ({"bf16"} if native_bf16 else set())
    assert cpu["results"]["baseline"]["median_ratio_wall"] == 1.0
    assert cpu["results"]["ours"]["max_abs_diff_vs_baseline"] == 0.0  # the CPU fast path is plain fp32
    assert cpu["results"]["ours"]["relative_error_vs_baseline"] == 0.0
    if native_bf16:  # bf16 keeps 8 mantissa bits: a real but small error (0 would mean no autocast)
        assert 0 < cpu["results"]["bf16"]["relative_error_vs_baseline"] < 3e-2
    assert all(len(times) == 2 for times in cpu["raw_wall_s"].values())
    text = capsys.readouterr().out
    assert "| ours |" in text and "load average" in text and "torch 2." in text


def test_cpu_part_times_a_real_weights_folder_in_its_own_architecture(
    bench: ModuleType, tmp_path: Path
) -> None:
    from cwdm.config import ModelSpec
    from cwdm.method.denoiser import Denoiser
    from cwdm.weights.checkpoints import write_state_dict

    spec = ModelSpec(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.yaml").write_text(spec.to_yaml())
    write_state_dict(Denoiser(spec.architecture).state_dict(), folder / "t2f.safetensors")
    out = tmp_path / "results.json"
    args = ["--cpu-only", "--cpu-size", "16,16,16", "--cpu-reps", "1", "--json", str(out)]
    assert bench.main([*args, "--cpu-weights", str(folder), "--target", "t2f"]) == 0
    config = json.loads(out.read_text())["cpu"]["config"]
    assert config["channel_mult"] == [1, 2] and config["num_res_blocks"] == 1
    assert config["weights"] == f"{folder} (t2f)"


@pytest.mark.parametrize(
    "case", [pytest.param(False, id="no-case"), pytest.param(True, id="case", marks=pytest.mark.slow)]
)
def test_gpu_part_runs_as_a_labelled_dry_run_on_the_cpu(
    bench: ModuleType, tmp_path: Path, case: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The GPU code (variants, errors, PSNR, end-to-end case) without a GPU: a check of the script."""
    out = tmp_path / "results.json"
    args = ["--dry-run-cpu", "--gpu-only", "--gpu-steps", "2", "--psnr-steps", "2", "--json", str(out)]
    args += ["--case-steps", "1"] if case else ["--skip-case"]
    assert bench.main(args) == 0
    gpu = json.loads(out.read_text())["gpu"]
    assert gpu["dry_run"] and gpu["input_shape"] == [1, 32, 16, 16, 16]
    rows = {row["variant"]: row for row in gpu["variants"]}
    assert rows["fp32 eager, IEEE (reference)"]["relative_error_vs_fp32"] == 0.0
    fast = rows["fast path: bf16 + cudnn (default)"]
    assert 0 < fast["relative_error_vs_fp32"] < 0.05  # bf16 autocast on the CPU: rounding, not garbage
    assert fast["peak_memory_gib"] is None  # no memory figure is made up on a CPU
    assert gpu["sample_psnr"]["psnr_db"] > 20
    assert ("end_to_end" in gpu) == case
    # Each figure is also reported as soon as it exists, for runs cut short by a time limit.
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[benchmark] ")]
    assert len(progress) == len(gpu["variants"]) + 1 + (2 if case else 0)
    assert f"{gpu['sample_psnr']['psnr_db']:.2f} dB" in progress[len(gpu["variants"])]


def test_counted_flops_of_the_published_network_match_the_reference(bench: ModuleType) -> None:
    flops = bench.count_flops(bench.DenoiserConfig(), bench.FULL_SHAPE)
    assert abs(flops / 7.2e12 - 1) < 0.01


def test_flop_count_matches_the_textbook_count_of_every_layer(bench: ModuleType) -> None:
    """Oracle: 2 x C_in x C_out x kernel volume per output voxel for each convolution, 2 x in x out per
    row for each linear layer, summed over the layers a real forward visits (shapes from hooks)."""
    config = bench.DenoiserConfig(model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_groups=8)
    shape = (2, 32, 8, 8, 8)
    model = bench.Denoiser(config).eval()
    textbook = 0

    def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal textbook
        if isinstance(module, torch.nn.Conv3d):
            kernel = module.in_channels // module.groups * math.prod(module.kernel_size)
            textbook += 2 * kernel * output.numel()
        else:
            textbook += 2 * module.in_features * output.numel()

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(shape), torch.zeros(2, dtype=torch.long))
    assert textbook > 0 and bench.count_flops(config, shape) == textbook


def test_heldout_table_marks_which_rows_beat_every_copy(tmp_path: Path) -> None:
    module = _benchmark_script("heldout_vs_copies")

    def row(case: str, target: str, psnr: float, ssim: float, source: str = "") -> dict[str, str]:
        extra = {"source": source} if source else {}
        return {"case": case, "target": target, "full_psnr": str(psnr), "full_ssim": str(ssim)} | extra

    model = [row("A", "t1c", 25.0, 0.93), row("A", "t2f", 22.0, 0.92), row("B", "t1c", 20.0, 0.80)]
    copies = [
        row("A", "t1c", 24.0, 0.92, "copy-t2f"),
        row("A", "t1c", 18.0, 0.94, "copy-t1n"),  # better SSIM than the model: not every copy beaten
        row("A", "t2f", 23.0, 0.90, "copy-t1c"),  # better PSNR
        row("B", "t1c", 19.0, 0.70, "copy-t1n"),
    ]
    text = module.table(model, copies)
    lines = [line for line in text.splitlines() if line.startswith("| A") or line.startswith("| B")]
    assert [line.rsplit("|", 2)[-2].strip() for line in lines] == ["PSNR only", "SSIM only", "yes"]
    assert "1 of 3 beat every copy" in text and "PSNR 22.33 dB, SSIM 0.8833" in text


def test_the_held_out_downstream_evaluation_runs_end_to_end(tmp_path: Path) -> None:
    from cwdm.config import ReferenceSegmenterSpec
    from cwdm.segmentation.training import SegmenterTrainingConfig, train_segmenter

    from .conftest import write_tiny_weights
    from .segmentation.synthetic import write_case_folder

    for index in range(3):
        write_case_folder(tmp_path / "cases", f"BraTS-GLI-0000{index}-000", seed=index, shape=(32, 32, 16))
    spec = ReferenceSegmenterSpec(
        init_filters=8, blocks_down=(1, 1), blocks_up=(1,), downsample=2, accepts_absent_sequence=True
    )
    config = SegmenterTrainingConfig(
        spec=spec, iterations=1, crop_size=(16, 16, 16), save_every=1, sequence_dropout=0.5
    )
    segmenter = train_segmenter(tmp_path / "cases", tmp_path / "seg", config).weights_dir
    weights = write_tiny_weights(tmp_path / "weights")
    module = _benchmark_script("downstream_heldout")
    held = "BraTS-GLI-00000-000,BraTS-GLI-00001-000"
    args = [
        str(tmp_path / "cases"),
        str(tmp_path / "out"),
        "--weights",
        f"tiny={weights}",
        "--weights",
        f"again={weights}",
    ]
    args += ["--segmenter", str(segmenter), "--heldout", held, "--targets", "t2f"]
    assert module.main(args) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "tiny" / "scores.csv").open()))
    sources = {row["source"] for row in rows}
    assert sources == {"prediction", "real", "copy-t1n", "copy-t1c", "copy-t2w", "missing"}
    assert {row["case"] for row in rows} == set(held.split(","))  # the third case is not held out
    verdict = json.loads((tmp_path / "out" / "tiny" / "verdict.json").read_text())
    assert verdict["t2f"]["cases"] == held.split(",") and verdict["t2f"]["best_copy"].startswith("copy-")
    assert "| t2f | 2 |" in (tmp_path / "out" / "tiny" / "verdict.md").read_text()
    seconds = list(csv.DictReader((tmp_path / "out" / "tiny" / "seconds.csv").open()))
    assert sorted(row["case"] for row in seconds) == held.split(",")  # one row per synthesis written
    assert all(row["target"] == "t2f" and float(row["elapsed_s"]) > 0 for row in seconds)
    # The second folder (the same weights) reuses the baselines and reaches the same verdict.
    again = json.loads((tmp_path / "out" / "again" / "verdict.json").read_text())
    assert again["t2f"]["means"] == verdict["t2f"]["means"]
    # A later process takes the baselines from the first run's scores instead of scoring them again.
    later = [str(tmp_path / "cases"), str(tmp_path / "later"), "--weights", f"third={weights}"]
    later += ["--segmenter", str(segmenter), "--heldout", held, "--targets", "t2f"]
    assert module.main([*later, "--baselines", str(tmp_path / "out" / "tiny" / "scores.csv")]) == 0
    third = json.loads((tmp_path / "later" / "third" / "verdict.json").read_text())
    for source, regions in verdict["t2f"]["means"].items():
        for region, values in regions.items():
            assert third["t2f"]["means"][source][region] == pytest.approx(values), (source, region)


def test_the_downstream_plot_draws_each_source_at_its_mean_with_its_interval(tmp_path: Path) -> None:
    module = _benchmark_script("plot_downstream")

    def means(base: float) -> dict:
        return {
            key: [base + i / 10, base + i / 10 - 0.05, base + i / 10 + 0.02]
            for i, key in enumerate(module.REGIONS)
        }

    def verdict(synthesis: float, with_missing: bool) -> dict:
        sources = {"real": means(0.6), "prediction": means(synthesis), "copy-t2w": means(0.3)}
        if with_missing:
            sources["missing"] = means(0.4)
        return {"t2f": {"cases": ["a", "b"], "best_copy": "copy-t2w", "means": sources}}

    for number, with_missing in enumerate((True, False)):
        first = tmp_path / f"first{number}.json"
        first.write_text(json.dumps(verdict(0.5, with_missing)))
        second = tmp_path / f"second{number}.json"
        second.write_text(json.dumps(verdict(0.1, with_missing)))
        out = tmp_path / f"plot{number}.png"
        assert module.main([str(out), f"a={first}", f"b={second}"]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        figure = module.draw([("a", json.loads(first.read_text())), ("b", json.loads(second.read_text()))])
        (ax,) = figure.axes
        heights = sorted(round(patch.get_height(), 6) for patch in ax.patches)
        bases = [0.6, 0.5, 0.1, 0.3] + ([0.4] if with_missing else [])
        assert heights == sorted(round(b + i / 10, 6) for b in bases for i in range(3))
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert labels[:3] == ["real case", "synthesis (a)", "synthesis (b)"]
        assert labels[3] == "best copy (t2w)" and ("left out" in labels) == with_missing
        assert ax.get_title() == "missing t2f (2 cases)"


def test_the_steps_plot_recommends_by_the_sweeps_rule_and_pairs_cases(tmp_path: Path) -> None:
    module = _benchmark_script("plot_steps")
    cases = ["a", "b", "c"]

    def write(steps: int, dice: dict[str, list[float]], psnr: float) -> str:
        rows = []
        for number, case in enumerate(cases):
            for target, values in dice.items():
                rows.append(
                    {
                        "case": case,
                        "target": target,
                        "source": "prediction",
                        "full_psnr": psnr,
                        "full_ssim": 0.9,
                        "dice_wt": values[number],
                        "dice_tc": values[number],
                        "dice_et": values[number],
                    }
                )
                for source, level in (("real", 0.8), ("copy-t2w", 0.3), ("copy-t1c", 0.2), ("missing", 0.4)):
                    rows.append(
                        {
                            "case": case,
                            "target": target,
                            "source": source,
                            "full_psnr": "",
                            "full_ssim": "",
                            "dice_wt": level,
                            "dice_tc": level,
                            "dice_et": level,
                        }
                    )
        path = tmp_path / f"steps{steps}" / "scores.csv"
        path.parent.mkdir()
        seconds = [f"{case},t2f,{steps + number}" for number, case in enumerate(cases)]
        path.with_name("seconds.csv").write_text("\n".join(["case,target,elapsed_s", *seconds]) + "\n")
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return f"{steps}={path}"

    # t2f: one step loses 0.05 Dice in every region (beyond the 0.02 tolerance): two steps are kept.
    # t1c: one step loses 0.01 (within it) and ten steps gain nothing: the fewest steps win.
    runs = [
        write(1, {"t2f": [0.45, 0.55, 0.65], "t1c": [0.49, 0.59, 0.69]}, 25.0),
        write(2, {"t2f": [0.5, 0.6, 0.7], "t1c": [0.5, 0.6, 0.7]}, 25.2),
        write(10, {"t2f": [0.5, 0.6, 0.7], "t1c": [0.5, 0.6, 0.7]}, 25.1),
    ]
    measured = module.measure({int(r.split("=")[0]): module.read(Path(r.split("=")[1])) for r in runs})
    assert [module.recommended_steps(measured[t])[0] for t in ("t1c", "t2f")] == [1, 2]
    assert measured["t2f"]["best_copy"] == "copy-t2w"  # the better of the two copies
    assert measured["t2f"]["steps"][1]["dice_et"].mean == pytest.approx(0.55)
    versus = module._versus(measured["t2f"], 1, 2)
    assert versus.mean == pytest.approx(-0.05) and versus.high < 0  # the same loss on every case
    out = tmp_path / "steps.png"
    assert module.main([str(out), *runs]) == 0
    seconds = module.case_seconds(tmp_path / "steps10" / "scores.csv")
    assert list(seconds) == ["t2f"] and seconds["t2f"].mean == 11  # 10, 11 and 12 s
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure = module.draw(measured)
    wt_line = figure.axes[0].lines[0]  # missing t1c: WT of the synthesis at 1, 2, 10 steps
    assert list(wt_line.get_ydata()) == pytest.approx([0.59, 0.6, 0.6])
