"""The official BraTS metrics' lesion-wise Dice, where the optional package is installed.

The BraTS segmentation challenges since 2023 rank on lesion-wise Dice: each connected lesion of the truth
matched to the prediction, unmatched lesions and false positives counted as 0. Their official package
(``brats-evaluation`` on PyPI, built on ``panoptica``) computes it; it is licensed under the AGPL, so it
is only an optional extra here (``pip install -e '.[brats-metrics]'``), imported when asked for. Its
bundled glioma configuration numbers labels as the BraTS 2024 convention does (1 NETC, 2 SNFH, 3 ET,
4 RC), which is this package's canonical numbering. The lesion-wise Dice is its ``sq_dsc`` of the WT,
TC and ET groups (the figure its own results parser reports as ``lesionwise_dsc_mean``), and its
``global_bin_dsc`` is the plain Dice that :mod:`cwdm.segmentation.labels` computes (the tests compare
the two).
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import ConfigError

#: The CSV columns of the lesion-wise Dice.
LESION_DICE_COLUMNS = ("lesion_dice_wt", "lesion_dice_tc", "lesion_dice_et")
_GROUPS = ("wt", "tc", "et")


class OfficialMetrics:
    """The official package's evaluator, loaded once with its bundled glioma configuration.

    Raises:
        ConfigError: ``brats-evaluation`` is not installed.
    """

    def __init__(self) -> None:
        try:
            from importlib.resources import files

            from panoptica import Panoptica_Evaluator

            config = Path(str(files("brats_evaluation").joinpath("configs", "config_gli.yaml")))
        except ImportError as exc:
            raise ConfigError(
                "lesion-wise Dice needs the official BraTS metrics (AGPL licence, optional): "
                "pip install -e '.[brats-metrics]' (brats-evaluation)"
            ) from exc
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner and notes
            self._evaluator = Panoptica_Evaluator.load_from_config(str(config))

    def group_results(self, prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
        """Every number the evaluator gives, by group (``wt``, ``tc``, ``et``, ...), for canonical labels."""
        with tempfile.TemporaryDirectory(prefix="cwdm-brats-metrics-") as tmp:
            paths = []
            for name, labels in (("prediction", prediction), ("truth", truth)):
                path = Path(tmp) / f"{name}.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine), path)
                paths.append(str(path))
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                results = self._evaluator.evaluate(paths[0], paths[1])
        return {group: result.to_dict(True) for group, result in results.items()}

    def __call__(self, prediction: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> dict[str, float]:
        """The lesion-wise Dice of WT, TC and ET by column (:data:`LESION_DICE_COLUMNS`)."""
        results = self.group_results(prediction, truth, affine)
        out = {}
        for column, group in zip(LESION_DICE_COLUMNS, _GROUPS, strict=True):
            value = results.get(group, {}).get("sq_dsc", math.nan)
            out[column] = math.nan if value is None else float(value)
        return out
