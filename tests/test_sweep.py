"""cwdm sweep: the grid, one scored row per setting, case and target, resuming after an interruption,
the summary (Pareto front, recommendation), the report files."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import cwdm.evaluation.sweep.analysis as sweep_analysis
import cwdm.evaluation.sweep.report as sweep_report
import cwdm.evaluation.sweep.run as sweep_run
import cwdm.inference.run as front_door
from cwdm.cli import app
from cwdm.config import SweepSetting, expand_sweep_grid
from cwdm.errors import ConfigError
from cwdm.evaluation.sweep import SettingSummary, SweepRow, recommend, summarise
from cwdm.evaluation.timing import Timing

from .conftest import AFFINE, write_case, write_tiny_weights

SHAPE = (30, 28, 16)  # the crop region keeps 14 x 12 x 16 voxels: room for the 7-voxel SSIM window

GRID = [
    {"sampler": "ddim", "timestep_spacing": "trailing", "sampling_steps": [1, 2]},
    {"sampler": "ddpm", "sampling_steps": 2},
]


def test_a_grid_expands_every_combination_of_its_lists() -> None:
    settings = expand_sweep_grid(
        [{"sampler": "ddim", "sampling_steps": [1, 2], "samples": [1, 4]}, {"sampler": "ddpm"}]
    )
    assert [s.name for s in settings] == [
        "ddim-1-linspace-brain_mask-fp32-k1",
        "ddim-1-linspace-brain_mask-fp32-k4",
        "ddim-2-linspace-brain_mask-fp32-k1",
        "ddim-2-linspace-brain_mask-fp32-k4",
        "ddpm-1000-linspace-brain_mask-fp32-k1",
    ]
    with pytest.raises(ConfigError, match="entry 2"):
        expand_sweep_grid([{"sampler": "ddim"}, {"sampler": "euler"}])
    with pytest.raises(ConfigError, match="unknown key 'steps'"):
        expand_sweep_grid([{"steps": 3}])


@pytest.fixture
def sweep_inputs(tmp_path: Path) -> tuple[Path, Path]:
    for number in (1, 2):
        case = f"BraTS-GLI-0000{number}-000"
        write_case(tmp_path / "cases", case, missing=None, seed=number, shape=SHAPE)
        seg = np.zeros(SHAPE, dtype=np.uint8)
        seg[8:16, 6:13, 4:10] = 2
        seg[10:13, 8:11, 6:8] = 4
        nib.save(nib.Nifti1Image(seg, AFFINE), tmp_path / "cases" / case / f"{case}-seg.nii.gz")
    return tmp_path / "cases", write_tiny_weights(tmp_path / "weights")


def _command(cases: Path, weights: Path, out: Path, grid: Path) -> list[str]:
    return [
        "sweep",
        str(cases),
        str(out),
        "--weights",
        str(weights),
        "--grid",
        str(grid),
        "--targets",
        "t1n,t2f",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]


def test_an_interrupted_sweep_goes_on_where_it_stopped(
    sweep_inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases, weights = sweep_inputs
    grid = tmp_path / "grid.yaml"
    import yaml

    grid.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "sweep"
    real_run = front_door.run_cases
    calls = {"n": 0}

    def run_then_stop(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 6:  # the sixth synthesis is cut short by Ctrl-C
            signal.raise_signal(signal.SIGINT)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(front_door, "run_cases", run_then_stop)
    result = CliRunner().invoke(app, _command(cases, weights, out, grid))
    assert result.exit_code == 130, result.output
    first = list(csv.DictReader((out / "sweep.csv").open()))
    assert 1 <= len(first) <= 5  # what was scored before the stop is kept

    monkeypatch.setattr(front_door, "run_cases", real_run)
    result = CliRunner().invoke(app, _command(cases, weights, out, grid))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    keys = [(r["setting"], r["case"], r["target"]) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 2 * 2  # settings x cases x targets, each once
    assert rows[: len(first)] == first  # earlier rows untouched
    for row in rows:
        assert float(row["seconds"]) > 0 and 0 < float(row["full_ssim"]) <= 1
        assert 0 < float(row["brasyn_ssim_non_tumor"]) < float(row["brasyn_ssim_tumor"]) <= 1
    assert (out / "sweep.md").is_file() and (out / "sweep.png").stat().st_size > 10_000
    assert "recommended:" in result.output
    assert not (out / "work" / "predictions").exists()  # scored predictions are not kept
    assert (
        "## Missing t1n" in (out / "sweep.md").read_text()
        and "## Missing t2f" in (out / "sweep.md").read_text()
    )


def test_scoring_in_turn_gives_the_rows_of_a_scoring_pool(
    sweep_inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases, weights = sweep_inputs
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {sampler: ddim, timestep_spacing: trailing, sampling_steps: 1}\n")
    pooled = _command(cases, weights, tmp_path / "pooled", grid)
    inline = [*pooled[:-4], "--workers", "0", "--device", "cpu"]
    inline[2] = str(tmp_path / "inline")

    def no_pool(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("--workers 0 must not start a process pool")

    assert CliRunner().invoke(app, pooled).exit_code == 0
    monkeypatch.setattr(sweep_run, "ProcessPoolExecutor", no_pool)
    result = CliRunner().invoke(app, inline)
    assert result.exit_code == 0, result.output

    def scores(folder: str) -> list[dict[str, str]]:
        rows = csv.DictReader((tmp_path / folder / "sweep.csv").open())
        timing = {"seconds", *sweep_analysis.TIMING_COLUMNS}
        return [{k: v for k, v in row.items() if k not in timing} for row in rows]

    assert scores("inline") == scores("pooled") and len(scores("inline")) == 2 * 2


def _summary(name: str, seconds: float, psnr: float, ssim: float) -> SettingSummary:
    scores = {key: float("nan") for key in sweep_analysis.SUMMARY_SCORES} | {
        "full_psnr": psnr,
        "full_ssim": ssim,
    }
    return SettingSummary(name, None, 1, seconds, scores)


def test_pareto_front_and_recommendation() -> None:
    rows = []
    for name, seconds, psnr, ssim in (
        ("slow-best", 100.0, 26.0, 0.930),
        ("fast-close", 5.0, 25.6, 0.925),
        ("fast-bad", 4.0, 24.0, 0.900),
        ("dominated", 50.0, 25.0, 0.910),
    ):
        setting = SweepSetting(sampling_steps=int(seconds))
        rows.append(
            {
                "setting": name,
                **{k: str(v) for k, v in setting.model_dump().items()},
                "seconds": str(seconds),
                "full_psnr": str(psnr),
                "full_ssim": str(ssim),
                **{k: "" for k in sweep_analysis.SUMMARY_SCORES if k not in ("full_psnr", "full_ssim")},
                "target": "t1n",
            }
        )
    summaries = summarise([SweepRow.from_csv(row) for row in rows])
    assert [s.setting for s in summaries] == ["fast-bad", "fast-close", "dominated", "slow-best"]
    assert {s.setting for s in summaries if s.pareto_psnr} == {"fast-bad", "fast-close", "slow-best"}
    assert recommend(summaries).setting == "fast-close"  # within 0.5 dB and 0.01 of the best, fastest
    assert recommend(summaries, psnr_tolerance=0.1).setting == "slow-best"


def _row(setting: str, case: str, target: str, seconds: float, psnr: float) -> dict[str, str]:
    fields = SweepSetting(sampling_steps=int(seconds)).model_dump()
    return {
        "setting": setting,
        **{k: str(v) for k, v in fields.items()},
        "case": case,
        "target": target,
        "seconds": str(seconds),
        "full_psnr": str(psnr),
        "full_ssim": "0.9",
        **{k: "" for k in sweep_analysis.SUMMARY_SCORES if k not in ("full_psnr", "full_ssim")},
    }


def test_a_setting_measured_on_one_target_only_is_compared_on_that_target_only(tmp_path: Path) -> None:
    rows = [
        _row(name, case, target, seconds, psnr)
        for name, seconds, psnr in (("fast", 2.0, 25.0), ("medium", 4.0, 25.2))
        for case in ("a", "b")
        for target in ("t1n", "t1c")
    ]
    # The slow reference, measured on t1c only: best there, but its mean is not one over all targets.
    rows += [_row("reference", case, "t1c", 900.0, 30.0) for case in ("a", "b")]
    rows.append(_row("one-case", "a", "t1n", 3.0, 26.0))
    rows = [SweepRow.from_csv(row) for row in rows]

    assert {row.name for row in sweep_analysis.comparable(rows)} == {"fast", "medium"}
    assert {row.name for row in sweep_analysis.comparable(rows, "t1c")} == {
        "fast",
        "medium",
        "reference",
    }
    assert {row.name for row in sweep_analysis.comparable(rows, "t1n")} == {"fast", "medium"}
    assert recommend(summarise(sweep_analysis.comparable(rows))).setting == "fast"
    assert recommend(summarise(sweep_analysis.comparable(rows, "t1c"))).setting == "reference"

    table, _, choice = sweep_report.write_report(rows, tmp_path, "test")
    assert choice.setting == "fast"
    text = table.read_text()
    assert "- `reference`: a t1c, b t1c" in text and "- `one-case`: a t1n" in text
    assert (tmp_path / "sweep-t1c.png").is_file() and (tmp_path / "sweep-t1n.png").is_file()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "docs" / "quality").glob("grid-*.yaml")))
def test_the_shipped_grids_load(path: Path) -> None:
    from cwdm.config import load_sweep_grid

    settings = load_sweep_grid(path)
    assert settings and len({s.name for s in settings}) == len(settings), f"{path.name}: a repeated setting"


def test_by_default_no_scoring_runs_while_a_synthesis_is_timed(
    sweep_inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The isolation: each synthesis (and its repeats) ends before its scoring starts, no pool is made,
    each row has its runs and the load, and the recommendation loads as a parameters.yaml."""
    cases, weights = sweep_inputs
    grid = tmp_path / "grid.yaml"
    grid.write_text("- {sampler: ddim, timestep_spacing: trailing, sampling_steps: [1, 2]}\n")
    events: list[str] = []
    real_run, real_score = front_door.run_cases, sweep_run._score

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("synthesis start")
        try:
            return real_run(*args, **kwargs)
        finally:
            events.append("synthesis end")

    def score(*args, **kwargs):  # type: ignore[no-untyped-def]
        events.append("scoring start")
        try:
            return real_score(*args, **kwargs)
        finally:
            events.append("scoring end")

    def no_pool(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the default must not start a scoring pool")

    monkeypatch.setattr(front_door, "run_cases", run)
    monkeypatch.setattr(sweep_run, "_score", score)
    monkeypatch.setattr(sweep_run, "ProcessPoolExecutor", no_pool)
    command = [c for c in _command(cases, weights, tmp_path / "sweep", grid) if c not in ("--workers", "1")]
    result = CliRunner().invoke(app, [*command, "--targets", "t1n"])
    assert result.exit_code == 0, result.output
    # Strictly alternating: nothing scores while something synthesises.
    depth = 0
    for event in events:
        depth += 1 if event.endswith("start") else -1
        assert depth in (0, 1), events
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert len(rows) == 2 * 2 and events.count("scoring start") == 4
    for row in rows:
        runs = [float(v) for v in row["seconds_runs"].split()]
        assert len(runs) == 3  # tiny syntheses are cheap: timed three times
        assert float(row["seconds"]) == pytest.approx(sorted(runs)[1], abs=1e-3)  # their median
        assert float(row["other_cores"]) >= 0 and float(row["load_1min"]) >= 0
    assert events.count("synthesis start") == 3 * 4
    assert "## Timing" in (tmp_path / "sweep" / "sweep.md").read_text()

    from cwdm.config import load_run_parameters

    params = load_run_parameters(tmp_path / "sweep" / "recommended.yaml")
    chosen = summarise([SweepRow.from_csv(row) for row in rows])
    best = recommend(chosen)
    assert params.sampler == best.fields.sampler == "ddim"
    assert params.sampling_steps == best.fields.sampling_steps
    assert params.timestep_spacing == "trailing" and params.samples == 1
    assert "recommended.yaml" in result.output


def test_measure_repeats_while_cheap_and_keeps_the_median() -> None:
    from cwdm.evaluation.timing import measure

    seconds = iter([5.0, 1.0, 3.0, 100.0])
    timing = measure(lambda: next(seconds), repeats=3, cheap_s=20.0)
    assert timing.runs == (5.0, 1.0, 3.0) and timing.seconds == 3.0
    expensive = iter([30.0, 1.0])
    assert measure(lambda: next(expensive), repeats=3, cheap_s=20.0).runs == (30.0,)


def test_a_busy_machine_is_seen_and_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    from cwdm.evaluation import timing as timing_module

    busy = iter([100.0, 100.0 + 2 * 4.0])  # all cores' busy time grows by 8 s in a 4 s call
    own = iter([10.0, 10.0])  # of which this process did nothing
    clock = iter([0.0, 4.0])
    monkeypatch.setattr(timing_module, "_machine_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(timing_module, "_own_seconds", lambda: next(own))
    monkeypatch.setattr(timing_module.time, "perf_counter", lambda: next(clock))
    timing = timing_module.measure(lambda: 4.0, repeats=1)
    assert timing.other_cores == pytest.approx(2.0)
    assert timing.busy(cpus=2) and not timing.busy(cpus=16)
    row = SweepRow("s", SweepSetting(), "a", "t1n", 4.0, timing=Timing(4.0, (4.0,), 2.0, 0.5))
    assert any("**Warning**" in line for line in sweep_report.timing_notes([row], cpus=2))
    assert not any("**Warning**" in line for line in sweep_report.timing_notes([row], cpus=16))


def _summary(
    sampler: str, steps: int, spacing: str, seconds: float, psnr: float, **extra: object
) -> SettingSummary:
    fields = SweepSetting(sampler=sampler, sampling_steps=steps, timestep_spacing=spacing, **extra)
    scores = {"full_psnr": psnr, "full_ssim": psnr / 30}
    return SettingSummary(fields.name, fields, 4, seconds, scores, pareto_psnr=True, pareto_ssim=True)


def _legend_texts(figure) -> list[str]:  # noqa: ANN001
    (legend,) = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    return [text.get_text() for text in legend.get_texts()]


def test_the_plot_legend_lists_only_what_the_plot_shows() -> None:
    """Settings at 5-9 s a case of one kind: the legend has that kind and the front, the reference lines
    only where a score of theirs is drawn, and the title explains only the point labels present."""
    summaries = [
        _summary("ddim", steps, "trailing", 4.0 + steps, 25.0 + steps / 10) for steps in (1, 2, 3, 4)
    ]
    figure = sweep_report.draw(summaries, "t")
    assert _legend_texts(figure) == ["DDIM, trailing", "Pareto front"]
    assert figure._suptitle.get_text() == "t (labels: sampling steps)"

    nan = float("nan")
    references = {
        "real": {"full_psnr": nan, "full_ssim": nan},
        "copy-t2w": {"full_psnr": 21.0, "full_ssim": 0.8},
    }
    mixed = [*summaries, _summary("ddpm", 2, "linspace", 6.5, 24.0, samples=4)]
    figure = sweep_report.draw(mixed, "t", references)
    assert _legend_texts(figure) == [
        "DDIM, trailing",
        "DDPM, linspace",
        "several draws",
        "Pareto front",
        "best copy baseline",  # the real case has no PSNR or SSIM here: no line, no entry
    ]
    assert figure._suptitle.get_text() == "t (labels: sampling steps; xK: K draws averaged)"
    psnr_axis = figure.axes[0]
    drawn = sorted(line.get_ydata()[0] for line in psnr_axis.get_lines() if len(set(line.get_ydata())) == 1)
    assert drawn == [21.0]  # the copy's line, and no other horizontal line
    assert [tick.get_text() for tick in psnr_axis.get_xticklabels()] == ["4", "5", "6", "7", "8", "9", "10"]

    skip = {"missing": {"full_psnr": 20.0, "full_ssim": 0.7}}  # the case segmented without the sequence
    assert _legend_texts(sweep_report.draw(summaries, "t", skip))[-1] == "sequence left out (skip synthesis)"


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0.5, 300.0, [0.5, 1, 2, 5, 10, 20, 50, 100, 200]),
        (3.9, 11.4, [4, 5, 6, 7, 8, 9, 10]),
        (0.24, 0.47, [0.25, 0.3, 0.35, 0.4, 0.45]),
    ],
)
def test_the_seconds_axis_has_at_least_three_round_ticks(low: float, high: float, ticks: list[float]) -> None:
    assert sweep_report._seconds_ticks(low, high) == pytest.approx(ticks)
