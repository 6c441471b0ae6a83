"""The voxel-wise error of one volume against another: MSE and PSNR, computed once for every caller (the
challenge's scores in :mod:`cwdm.evaluation.metrics`, the numbers on a QC card in :mod:`cwdm.qc.run`),
so that a card and ``cwdm evaluate`` cannot disagree."""

from __future__ import annotations

import math

import numpy as np


def mse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error over all voxels given, computed in float64."""
    diff = np.asarray(prediction, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.mean(diff * diff))


def psnr_of(error: float, data_range: float = 1.0) -> float:
    """The PSNR in dB of a mean squared error: ``10 log10(data_range^2 / error)``; ``inf`` for 0."""
    return math.inf if error == 0 else float(10.0 * math.log10(data_range**2 / error))


def psnr(prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of ``prediction`` against ``truth``; ``inf`` for identical inputs."""
    return psnr_of(mse(prediction, truth), data_range)
