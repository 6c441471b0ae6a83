"""A trained nnU-Net v2 model folder as a :class:`cwdm.segmentation.Segmenter` (optional extra ``nnunet``).

nnU-Net is what BraTS organisers and most participants segment with. The model runs through nnU-Net's
own predictor (``nnUNetPredictor``, loaded once), on the CPU or a GPU. The four sequences are read with
the image reader the model's ``plans.json`` names (the one it was trained with), in the channel order the
segmenter description declares, and the predicted label volume is written back through the same reader
and read as NIfTI, so that the result lies on the case's grid whatever axis order the reader uses. The
model's labels are mapped to the canonical BraTS labels as declared (:class:`NnUNetSegmenterSpec`).

nnU-Net loads its checkpoints with full unpickling (``weights_only=False``): use model folders you trust.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from ..config import NnUNetSegmenterSpec
from ..errors import CheckpointError, ConfigError
from ..runtime import resolve_device
from ..sequences import MRISequence
from .case import CompleteCase, SegmentationError, checked_labels
from .labels import mapping_from_structures

log = logging.getLogger(__name__)


def _quiet_import():  # noqa: ANN202 (nnU-Net's own types)
    """Import nnU-Net's predictor; it prints a note for each of its path variables that is unset, which
    prediction does not need, so they are set (to nothing) for the import only."""
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
    missing = [name for name in names if name not in os.environ]
    try:
        for name in missing:
            os.environ[name] = ""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as exc:
        raise ConfigError(
            "an nnU-Net segmenter needs the nnunet extra: pip install -e '.[nnunet]' (nnunetv2)"
        ) from exc
    finally:
        for name in missing:
            os.environ.pop(name, None)
    return nnUNetPredictor


class NnUNetSegmenter:
    """An nnU-Net v2 model folder, loaded once.

    Args:
        spec: The model folder, its channel order, its label meanings, folds, device.

    Raises:
        ConfigError: nnunetv2 is not installed, or the declared channels do not match the model's.
        CheckpointError: the folder is not a trained nnU-Net model (no plans, dataset.json or checkpoint).
    """

    def __init__(self, spec: NnUNetSegmenterSpec) -> None:
        import torch

        predictor_class = _quiet_import()
        self.spec = spec
        self.name = f"nnU-Net ({spec.model_folder.name})"
        folder = spec.model_folder
        for needed in ("plans.json", "dataset.json"):
            if not (folder / needed).is_file():
                raise CheckpointError(f"{folder}: not an nnU-Net model folder (no {needed})")
        folds = ("all",) if spec.folds == "all" else tuple(spec.folds)
        for fold in folds:
            checkpoint = folder / f"fold_{fold}" / spec.checkpoint
            if not checkpoint.is_file():
                raise CheckpointError(f"{folder}: no checkpoint {checkpoint.relative_to(folder)}")
        device = resolve_device(spec.device)
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints its set-up notes
            self.predictor = predictor_class(
                tile_step_size=spec.tile_step_size,
                use_mirroring=spec.use_mirroring,
                perform_everything_on_device=device.type == "cuda",
                device=torch.device(device),
                allow_tqdm=False,
            )
            self.predictor.initialize_from_trained_model_folder(str(folder), folds, spec.checkpoint)
        channels = self.predictor.dataset_json.get(
            "channel_names", self.predictor.dataset_json.get("modality")
        )
        if channels is not None and len(channels) != len(spec.channels):
            raise ConfigError(
                f"{folder}: the model takes {len(channels)} channels ({channels}); the description "
                f"declares {len(spec.channels)} ({', '.join(spec.channels)})"
            )
        self.mapping = mapping_from_structures(spec.labels, f"{folder} labels")
        model_labels = {int(v) for v in _label_values(self.predictor.dataset_json)}
        undeclared = sorted(model_labels - {0} - set(self.mapping))
        if undeclared:
            raise ConfigError(
                f"{folder}: the model predicts labels {sorted(model_labels)}; declare the structure of "
                f"{undeclared} in 'labels' (NCR, ED, ET or RC)"
            )
        self.reader_class = self.predictor.plans_manager.image_reader_writer_class
        log.info(
            "loaded %s: folds %s, channels %s, on %s", self.name, folds, ", ".join(spec.channels), device
        )

    def segment(self, case: CompleteCase) -> np.ndarray:
        """Canonical labels of ``case`` on its grid.

        Raises:
            SegmentationError: nnU-Net failed on the case, or returned another grid or unknown labels.
        """
        case.grid  # noqa: B018 (reads and checks the four volumes: one grid, readable files)
        files = [str(case.files[MRISequence(seq)]) for seq in self.spec.channels]
        reader = self.reader_class()
        try:
            with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
                image, properties = reader.read_images(files)
                labels = self.predictor.predict_single_npy_array(image, properties)
                written = Path(tmp) / "segmentation.nii.gz"
                reader.write_seg(np.asarray(labels), str(written), properties)
                result = np.asanyarray(nib.load(written).dataobj)
                result = np.array(result)
        except (RuntimeError, ValueError, OSError, AssertionError) as exc:
            raise SegmentationError(
                case.case_id, f"nnU-Net failed on the {case.label} case: {type(exc).__name__}: {exc}"
            ) from exc
        return checked_labels(result, case, self.name, self.mapping)


def _label_values(dataset_json: dict) -> list[int]:
    """The label values of an nnU-Net ``dataset.json`` (a region-based model lists tuples: their values)."""
    values: list[int] = []
    for value in dataset_json.get("labels", {}).values():
        values.extend(value if isinstance(value, list | tuple) else [value])
    return values
