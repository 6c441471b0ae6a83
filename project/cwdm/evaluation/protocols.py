"""What each year's BraSyn organisers computed, as presets of ``cwdm evaluate --protocol``.

A :class:`Protocol` says, for one challenge year, which numbers ranked an entry (the columns of the
evaluation CSV that hold them), which SSIM that was, which segmenter the organisers ran on the completed
cases (named only: the user supplies it through ``--segmenter``, nothing is downloaded here), which
segmentation metrics they computed, and what of it cannot be reproduced offline. :func:`evaluate_protocol`
scores a folder of predictions the way a preset says and returns a :class:`ProtocolEvaluation`: the
usual :class:`~cwdm.evaluation.results.Evaluation` (CSV, summary) with the year's own columns added
(per-label Dice and HD95 for 2025, :mod:`cwdm.evaluation.labelwise`) and a block that reads the year's
numbers out, with the segmenter actually used and the notes.

The public sources of each preset (repositories at the commits read) are in :data:`Protocol.sources`
and docs/EVALUATION.md:

- 2023: MedPerf's ``examples/BraTS2023/synthesis_metrics`` (the metrics container): the FeTS tool's
  ``fets_singlet`` and ``fets_triplet`` models fused by STAPLE (built from FeTS-AI/Front-End at 25eb0ca),
  its label 4 turned into 3; the BraTS 2023 segmentation metrics (GaNDLF's ``generateBraTSMetrics -c
  BraTS-GLI``: lesion-wise and whole-volume Dice and HD95 of WT, TC, ET); an SSIM from a GaNDLF fork.
  The organisers' repository (hongweilibran/BraSyn, README of August 2023) names the FeTS consensus.
- 2024: MedPerf's ``examples/BraTS2024/global_synthesis_metrics``: nnU-Net v2 (3d_fullres, folds 0-4)
  models ``Dataset137_BraTS2021`` for glioma and ``Dataset133_BraTS_metasis_2024`` for metastases, the
  same segmentation metrics; the organisers' ``ssim.py`` (hongweilibran/BraSyn, commit ecdaf00, July
  2024) computes the SSIM inside and outside the tumour (:mod:`cwdm.evaluation.brasyn`).
- 2025: the organisers' tutorial (hongweilibran/BraSyn_tutorial, July 2025): ``segmentation.py`` runs the
  BraTS 2023 winners through the BrainLesion ``brats`` package (``BraTS23_1`` of the adult glioma,
  meningioma and metastases segmenters, chosen by GLI, MEN or MET in the case id) and
  ``get_segmentation_metric.py`` scores each raw label 1, 2, 3 with Dice and HD95.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

from ..choices import ProtocolName
from ..errors import ConfigError
from ..segmentation.case import Segmenter
from ..segmentation.labels import DICE_COLUMNS, ConventionName
from .downstream import DownstreamScorer, ExtraScores, combined_scores
from .evaluate import evaluate
from .labelwise import LABEL_COLUMNS, LABEL_TITLES, LabelScores
from .lesionwise import LESION_DICE_COLUMNS
from .results import BRASYN_COLUMNS, COLUMN_TITLES, Evaluation, PredictionOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    """What one BraSyn year's organisers computed, and how much of it ``cwdm evaluate`` reproduces.

    Attributes:
        name: The ``--protocol`` value (``brasyn2025``).
        year: The challenge year.
        image_columns: The evaluation CSV's columns that hold the year's image score.
        segmentation_columns: The columns that hold its segmentation scores (filled with ``--segmenter``).
        ssim: The image score, in words.
        segmenter: The segmenter the organisers ran on the completed cases, named.
        segmenter_hint: How to give that segmenter to ``--segmenter``.
        segmentation_metrics: The segmentation metrics, in words.
        not_offline: What cannot be reproduced offline, and why.
        sources: The public sources (repositories at the commits read, papers).
        extra_scores: Makes the scorer of the year's own segmentation columns (``None``: the Dice columns
            every evaluation has are the year's).
        extra_titles: Title of each column that ``extra_scores`` adds, for the printed tables.
    """

    name: ProtocolName
    year: int
    image_columns: tuple[str, ...]
    segmentation_columns: tuple[str, ...]
    ssim: str
    segmenter: str
    segmenter_hint: str
    segmentation_metrics: str
    not_offline: tuple[str, ...]
    sources: tuple[str, ...]
    extra_scores: Callable[[], ExtraScores] | None = None
    extra_titles: Mapping[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """The year's numbers: image columns, then segmentation columns."""
        return (*self.image_columns, *self.segmentation_columns)


_MEDPERF = "https://github.com/mlcommons/medperf/tree/main/examples"
_BRASYN = "https://github.com/hongweilibran/BraSyn"
_TUTORIAL = "https://github.com/hongweilibran/BraSyn_tutorial"
_PAPER = "https://arxiv.org/abs/2305.09011"
_BRATS_2023_METRICS = "https://github.com/rachitsaluja/BraTS-2023-Metrics"

_SSIM_2024 = (
    "SSIM inside and outside the tumour: each volume clipped to its own 0.5/99.5 percentiles and scaled "
    "to [0, 1], multiplied by the tumour mask (and by its complement), torchmetrics' SSIM at its defaults "
    "(11-voxel Gaussian window), the mean over the whole volume (ssim.py, July 2024)"
)
_REGION_METRICS = (
    "the BraTS 2023 metrics of WT, TC and ET (GaNDLF generateBraTSMetrics -c BraTS-GLI): lesion-wise and "
    "whole-volume Dice and HD95; here the whole-volume Dice (dice_wt, dice_tc, dice_et, the same rule for "
    "empty regions) and, with --lesion-wise, the lesion-wise Dice of the official BraTS metrics package"
)
_REGION_NOT_OFFLINE = (
    "HD95 of WT, TC and ET: the BraTS 2023 metrics compute it on surface elements (DeepMind's "
    "surface-distance), 374 where one side is empty; not computed here",
    "lesion-wise Dice: --lesion-wise computes it with the brats-evaluation package (panoptica), the "
    "successor of the 2023 code, whose lesion matching (ground truth dilated, lesions under 50 voxels "
    "left out) differs in detail",
)

PROTOCOLS: Mapping[str, Protocol] = {
    "brasyn2023": Protocol(
        name="brasyn2023",
        year=2023,
        image_columns=BRASYN_COLUMNS,
        segmentation_columns=(*DICE_COLUMNS, *LESION_DICE_COLUMNS),
        ssim=(
            "an SSIM per case from a fork of GaNDLF (MedPerf's 2023 metrics container); the organisers' "
            "ssim.py of August 2023 computed the SSIM inside and outside the tumour. Reported here: "
            + _SSIM_2024
        ),
        segmenter=(
            "FeTS consensus: the FeTS tool's fets_singlet and fets_triplet models fused by STAPLE "
            "(the tool built from FeTS-AI/Front-End at commit 25eb0ca, tagged 1.0.3; the organisers' "
            "README links release 1.0.1), its label 4 read as 3"
        ),
        segmenter_hint=(
            "a kind: command description running FeTS_CLI_Segment -a fets_singlet,fets_triplet -lF STAPLE "
            "on the case (the tool wants <case>_t1, _t1ce, _t2, _flair files), labels: brats2021"
        ),
        segmentation_metrics=_REGION_METRICS,
        not_offline=(
            "the 2023 SSIM: MedPerf's container computed it with GaNDLF's generate_metrics from the fork "
            "FelixSteinbauer/GaNDLF (commit bc0d3fa, the 2023 inpainting configuration, problem_type "
            "synthesis), not reproduced; the organisers' ssim.py of 9 August 2023 (d29c721) is the July "
            "2024 definition except that it doubles the normalised prediction first (a line commit "
            "ecdaf00 removed), and the same day's 4d9af6d, a mean over each region, does not run (it "
            "indexes the tuple torchmetrics returns); the brasyn_ssim columns hold the July 2024 "
            "definition",
            "the FeTS models are not shipped or downloaded: give them with --segmenter",
            *_REGION_NOT_OFFLINE,
        ),
        sources=(
            f"{_MEDPERF}/BraTS2023/synthesis_metrics",
            f"{_BRASYN} (README.md at commit 1c8635a; ssim.py at 4d9af6d and d29c721)",
            "https://github.com/FeTS-AI/Front-End/releases/tag/1.0.1",
            _BRATS_2023_METRICS,
            _PAPER,
        ),
    ),
    "brasyn2024": Protocol(
        name="brasyn2024",
        year=2024,
        image_columns=BRASYN_COLUMNS,
        segmentation_columns=(*DICE_COLUMNS, *LESION_DICE_COLUMNS),
        ssim=_SSIM_2024,
        segmenter=(
            "nnU-Net v2, 3d_fullres, folds 0-4: Dataset137_BraTS2021 for glioma, "
            "Dataset133_BraTS_metasis_2024 for metastases (image winstonhutiger/brasyn_nnunet:glioma_metasis)"
        ),
        segmenter_hint=(
            "a kind: nnunet description of the model folder with its channels and labels "
            "(examples/segmenters/nnunet-brats2021.yaml), one run per tumour type"
        ),
        segmentation_metrics=_REGION_METRICS,
        not_offline=(
            "the nnU-Net models of the organisers' image are not shipped or downloaded: give them with "
            "--segmenter",
            "MedPerf's 2024 container also computed an SSIM with the GaNDLF fork of 2023 (not reproduced)",
            *_REGION_NOT_OFFLINE,
        ),
        sources=(
            f"{_MEDPERF}/BraTS2024/global_synthesis_metrics",
            f"{_BRASYN}/blob/ecdaf00/ssim.py",
            _BRATS_2023_METRICS,
        ),
    ),
    "brasyn2025": Protocol(
        name="brasyn2025",
        year=2025,
        image_columns=BRASYN_COLUMNS,
        segmentation_columns=LABEL_COLUMNS,
        ssim=(
            "no image metric is published with the 2025 tutorial; reported here: the organisers' latest "
            "published one, " + _SSIM_2024
        ),
        segmenter=(
            "the BraTS 2023 winners through the BrainLesion brats package: BraTS23_1 of "
            "AdultGliomaPreTreatmentSegmenter (GLI cases), MeningiomaSegmenter (MEN), "
            "MetastasesSegmenter (MET)"
        ),
        segmenter_hint=(
            "examples/segmenters/brasyn2025.yaml (a command that runs the brats package; Docker and a GPU, "
            "the package fetches each algorithm's image the first time)"
        ),
        segmentation_metrics=(
            "Dice and HD95 of each raw label 1, 2, 3 (BraTS 2023 numbering: NCR, SNFH, ET), medpy's "
            "definitions, HD95 in voxels; both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 undefined "
            "(NaN: an empty cell, left out of the means)"
        ),
        not_offline=(
            "the brats package's algorithms run in container images it downloads: not shipped, not run "
            "offline; give them with --segmenter",
            "how the organisers aggregate and rank the per-label numbers (and an undefined HD95) is not "
            "in the public code",
            "labels are compared as structures after the segmenter's declared convention; the tutorial's "
            "script compares the raw numbers",
        ),
        sources=(
            f"{_TUTORIAL}/blob/ab43950/get_segmentation_metric.py",
            f"{_TUTORIAL}/blob/8fbab68/segmentation.py",
            "https://github.com/BrainLesion/BraTS",
        ),
        extra_scores=LabelScores,
        extra_titles=LABEL_TITLES,
    ),
}
#: The ``--protocol`` values.
PROTOCOL_NAMES: tuple[str, ...] = get_args(ProtocolName)


def get_protocol(name: str) -> Protocol:
    """The preset ``name`` (``brasyn2023``, ``brasyn2024``, ``brasyn2025``).

    Raises:
        ConfigError: an unknown name, listing the known ones.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol {name}: expected one of {', '.join(PROTOCOL_NAMES)}")
    return PROTOCOLS[name]


@dataclass(frozen=True)
class ProtocolEvaluation:
    """An evaluation made the way a :class:`Protocol` says.

    Attributes:
        protocol: The preset.
        evaluation: Every score and failure (its CSV has the protocol's extra columns).
        segmenter: The name of the segmenter that segmented the completed cases (``None``: none did).
    """

    protocol: Protocol
    evaluation: Evaluation
    segmenter: str | None = None

    @property
    def exit_code(self) -> int:
        return self.evaluation.exit_code

    def write_csv(self, path: Path) -> Path:
        return self.evaluation.write_csv(path)

    def notes(self) -> list[str]:
        """What this evaluation does not reproduce: the protocol's notes, and what was not computed."""
        notes = []
        if self.segmenter is None:
            notes.append(
                f"no --segmenter: the segmentation columns are empty; the organisers segmented with "
                f"{self.protocol.segmenter}; give {self.protocol.segmenter_hint}"
            )
        summary = self.evaluation.summary()
        empty = [
            key
            for key in self.protocol.columns
            if self.segmenter is not None and all(row.counts.get(key, 0) == 0 for row in summary)
        ]
        if any(key in LESION_DICE_COLUMNS for key in empty):
            notes.append("lesion-wise Dice not computed: add --lesion-wise (optional brats-metrics extra)")
        return notes + list(self.protocol.not_offline)

    def summary_table(self) -> str:
        """The evaluation's summary, then the year's own numbers: which they are, the segmenter used
        against the organisers', a table of the year's columns (those any case has), and the notes."""
        protocol = self.protocol
        titles = {**COLUMN_TITLES, **protocol.extra_titles}
        summary = self.evaluation.summary()
        # The year's own columns show even where every value is undefined ("-"); the optional ones
        # (lesion-wise Dice) only where computed.
        present = [
            (key, titles.get(key, key))
            for key in protocol.columns
            if any(row.counts.get(key, 0) for row in summary)
            or (self.segmenter is not None and key in protocol.extra_titles)
        ]
        lines = [
            f"BraSyn {protocol.year} (--protocol {protocol.name})",
            f"image score: {protocol.ssim}",
            f"segmentation metrics: {protocol.segmentation_metrics}",
            (
                f"segmented by: {self.segmenter}, standing in for the organisers' segmenter: "
                f"{protocol.segmenter}"
                if self.segmenter
                else f"segmented by: nothing (no --segmenter); the organisers used {protocol.segmenter}"
            ),
        ]
        blocks = [self.evaluation.summary_table(), "\n".join(lines)]
        if present:
            blocks.append(self.evaluation.table(present, summary))
        blocks.append("not reproduced here:\n" + "\n".join(f"- {note}" for note in self.notes()))
        return "\n\n".join(blocks)


def evaluate_protocol(
    pred_dir: Path,
    truth_dir: Path,
    protocol: Protocol | str,
    *,
    segmenter: Segmenter | None = None,
    segmentations_dir: Path | None = None,
    truth_convention: ConventionName | None = None,
    extra: ExtraScores | None = None,
    baseline: bool = False,
    on_case: Callable[[PredictionOutcome], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ProtocolEvaluation:
    """Score every prediction of ``pred_dir`` against ``truth_dir`` as ``protocol`` says.

    The image scores are :func:`cwdm.evaluation.evaluate.evaluate`'s (the organisers' SSIM among them);
    with a ``segmenter`` each completed case (and the real case, and with ``baseline`` each copy) is
    segmented and scored with the Dice columns and the protocol's own scores (per-label Dice and HD95 for
    ``brasyn2025``), which the CSV and the summary then carry.

    Args:
        pred_dir: Folder of predictions ``<case>-<seq>.nii.gz``.
        truth_dir: Folder of complete cases with their ``-seg``.
        protocol: A :class:`Protocol` or its name.
        segmenter: The segmenter standing in for the organisers' (``None``: no segmentation half; the
            notes say so).
        segmentations_dir: Keep every label volume made here (never the prediction folder).
        truth_convention: The ground truth's label convention (``None``: told by its values).
        extra: Further scores of each segmentation (the lesion-wise Dice of ``--lesion-wise``).
        baseline: Also score the copy baselines.
        on_case, on_start: Progress, as for :func:`~cwdm.evaluation.evaluate.evaluate`.

    Returns:
        The :class:`ProtocolEvaluation`.

    Raises:
        ConfigError: an unknown protocol name; ``segmentations_dir`` or ``extra`` without a segmenter; a
            segmentations folder that overlaps the predictions.
        CwdmError: a folder that does not exist.
    """
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    if segmenter is None and (segmentations_dir is not None or extra is not None):
        raise ConfigError("--segmentations and --lesion-wise need --segmenter")
    downstream = None
    if segmenter is not None:
        own = protocol.extra_scores() if protocol.extra_scores is not None else None
        downstream = DownstreamScorer(
            segmenter, segmentations_dir, truth_convention, combined_scores(own, extra)
        )
    result = evaluate(
        pred_dir, truth_dir, baseline=baseline, downstream=downstream, on_case=on_case, on_start=on_start
    )
    result = replace(result, extra_columns=dict(protocol.extra_titles))
    log.debug("protocol %s: %d scores, %d failures", protocol.name, len(result.scores), len(result.failures))
    return ProtocolEvaluation(protocol, result, None if segmenter is None else segmenter.name)
