"""QC that a radiologist reads: the display convention (flipped and named), colour scales fixed across
cases, the difference map and scores where the truth exists, the sheet's header and notice."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes

from cwdm.qc.previews import DIFFERENCE_SCALE, UNCERTAINTY_SCALE, Panel, render_preview
from cwdm.qc.run import _image_scores
from cwdm.qc.sheet import NOT_FOR_DIAGNOSIS, SheetEntry, write_sheet
from cwdm.version import __version__


def _drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, convention: str, panels: list[Panel]) -> list:
    shown: list[tuple[np.ndarray, dict]] = []
    real = Axes.imshow

    def imshow(self, image, **kwargs):  # type: ignore[no-untyped-def]
        shown.append((np.asarray(image), kwargs))
        return real(self, image, **kwargs)

    monkeypatch.setattr(Axes, "imshow", imshow)
    mask = panels[0].volume > 0
    render_preview(tmp_path / f"{convention}.png", panels, np.eye(4), mask, "case", convention)
    return shown


def test_the_radiological_convention_puts_the_patients_right_on_the_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    volume = np.zeros((20, 20, 20))
    volume[4:16, 4:16, 4:16] = 0.3
    volume[14:16, 8:12, 8:12] = 1.0  # a bright spot on the patient's right (RAS: high x)
    axial = {}
    for convention in ("neurological", "radiological"):
        image = _drawn(monkeypatch, tmp_path, convention, [Panel("t1n", volume)])[0][0]
        axial[convention] = int(np.argwhere(image == 1.0)[:, 1].mean())  # column of the spot
    assert axial["neurological"] > 10 > axial["radiological"]
    with pytest.raises(ValueError, match="radiological"):
        render_preview(tmp_path / "x.png", [Panel("t1n", volume)], np.eye(4), volume > 0, "c", "upside")


def test_colour_scales_are_fixed_across_cases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = np.zeros((16, 16, 16))
    base[3:13, 3:13, 3:13] = 0.5
    tops = []
    for spread in (0.01, 0.5):  # a calm and a wild case: the same scale
        panels = [Panel("t1n", base), Panel("sd", base * spread, colour=True)]
        shown = _drawn(monkeypatch, tmp_path, "neurological", panels)
        tops.append({kwargs["vmax"] for _, kwargs in shown if kwargs["cmap"] != "gray"})
    assert tops == [{UNCERTAINTY_SCALE}, {UNCERTAINTY_SCALE}]
    assert Panel("d", base, colour=True, scale=DIFFERENCE_SCALE).scale == DIFFERENCE_SCALE


def test_card_scores_match_psnr_by_hand() -> None:
    truth = np.zeros((10, 10, 10))
    truth[2:8, 2:8, 2:8] = 0.8
    synthesis = truth.copy()
    synthesis[2:8, 2:8, 2:5] = 0.6  # off by 0.2 in half the brain
    rows = dict(_image_scores(synthesis, truth, truth != 0))
    brain_mse = 0.5 * 0.2**2
    assert rows["PSNR / MSE (brain)"] == f"{-10 * math.log10(brain_mse):.2f} dB / {brain_mse:.5f}"
    full_mse = 108 * 0.2**2 / 1000
    assert rows["PSNR / MSE (full)"] == f"{-10 * math.log10(full_mse):.2f} dB / {full_mse:.5f}"


def test_the_sheet_header_names_version_weights_date_and_the_notice(tmp_path: Path) -> None:
    entries = [SheetEntry("BraTS-GLI-00001-000", "t2f", "written"), SheetEntry("B", "t1n", "written")]
    page = write_sheet(
        tmp_path / "index.html", entries, "cwdm infer: out", "1.0 s on cpu", weights="weights/demo"
    ).read_text()
    assert NOT_FOR_DIAGNOSIS in page
    assert f"cwdm {__version__}; weights: weights/demo;" in page
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC; neurological convention", page)
    assert page.count("2 written") == 1  # not repeated by the run's summary line


def test_previews_say_synthetic_and_name_the_convention(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from matplotlib.figure import Figure  # previews imports it lazily, from this module

    titles: list[str] = []
    real = Figure.suptitle

    def suptitle(self, text, **kwargs):  # type: ignore[no-untyped-def]
        titles.append(text)
        return real(self, text, **kwargs)

    monkeypatch.setattr(Figure, "suptitle", suptitle)
    volume = np.zeros((12, 12, 12))
    volume[3:9, 3:9, 3:9] = 0.5
    render_preview(tmp_path / "p.png", [Panel("t1n", volume)], np.eye(4), volume > 0, "c", "radiological")
    assert "radiological convention (patient's right on the left)" in titles[0]
    assert "SYNTHETIC, not for diagnosis" in titles[0]


def test_card_scores_are_cwdm_evaluates(tmp_path: Path) -> None:
    # A prediction that is right in shape but too bright overall (a level error, as the demo t1c has):
    # scoring it after a second normalisation would hide the error; the card must say what evaluate says.
    import nibabel as nib

    from cwdm.cases.preprocessing import normalise
    from cwdm.evaluation.evaluate import score_prediction
    from cwdm.qc.run import qc_folder

    from .segmentation.synthetic import write_case_folder

    case_id = "BraTS-GLI-00001-000"
    folder = write_case_folder(tmp_path / "cases", case_id, seed=3)
    truth_file = folder / f"{case_id}-t1c.nii.gz"
    truth = nib.load(truth_file)
    values = normalise(np.asarray(truth.dataobj, dtype=np.float64))
    brighter = np.where(values > 0, 0.3 + 0.5 * values, 0).astype(np.float32)  # at most 0.8
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    prediction = pred_dir / f"{case_id}-t1c.nii.gz"
    nib.save(nib.Nifti1Image(brighter, truth.affine), prediction)

    entries = qc_folder(pred_dir, tmp_path / "cases", tmp_path / "qc")
    card = dict(entries[0].scores)
    expected = score_prediction(prediction, truth_file, case_id).regions["full"]
    assert card["PSNR / MSE (full)"] == f"{expected.psnr:.2f} dB / {expected.mse:.5f}"


def test_a_preview_has_a_pixel_for_each_voxel_of_a_brats_axis(tmp_path: Path) -> None:
    """Four columns of 240-voxel panels: at least 240 pixels each, so nothing is lost to downsampling and
    the labels are drawn large enough to read at the picture's own size."""
    from PIL import Image

    volume = np.zeros((240, 240, 155))
    volume[40:200, 30:210, 20:135] = 0.5
    panels = [Panel(name, volume) for name in ("t1n", "t1c", "t2w", "t2f (prediction)")]
    path = render_preview(tmp_path / "p.png", panels, np.eye(4), volume > 0, "c")
    with Image.open(path) as image:
        assert image.width >= 4 * 240


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium")
def test_the_sheet_shows_each_preview_at_its_own_size(tmp_path: Path) -> None:
    """Rendered by Chromium in a 1650-pixel window: each preview as many pixels wide as the picture (a
    1000-pixel one is not shrunk to a thumbnail), and the card's text wrapped to it."""
    from PIL import Image

    for name, width in (("a.png", 1000), ("b.png", 700)):
        Image.new("RGB", (width, 300), "grey").save(tmp_path / name)
    entries = [
        SheetEntry("BraTS-GLI-00001-000", "t2f", "previewed", preview="a.png", error="x " * 400),
        SheetEntry("BraTS-GLI-00002-000", "t1n", "previewed", preview="b.png"),
        SheetEntry("BraTS-GLI-00003-000", "t1n", "failed", error="y " * 400),
    ]
    page = write_sheet(tmp_path / "index.html", entries, "t").read_text()
    probe = (
        "<script>window.onload = () => { document.body.dataset.widths = "
        "[...document.querySelectorAll('.card')].map(c => [c.querySelector('img')?.width ?? 0, "
        "c.getBoundingClientRect().width].join(':')).join(','); }</script>"
    )
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1650,1200",
            "--dump-dom",
            (tmp_path / "probe.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    widths = [
        [float(v) for v in card.split(":")] for card in re.search(r'data-widths="([^"]*)"', dom)[1].split(",")
    ]
    (image_a, card_a), (image_b, card_b), (none, card_c) = widths
    assert (image_a, image_b, none) == (1000, 700, 0)
    assert 1000 < card_a < 1040 and 700 < card_b < 740  # the image and the padding; long text wraps
    assert 420 <= card_c < 460  # a card without a preview keeps the narrow width
