"""Typed, validated configuration: ``parameters.yaml`` (run parameters), ``model.yaml`` (a weights
directory's architecture and sampling defaults), sweep grids and segmenter descriptions.

The only YAML reader of the package (:mod:`.reading`: within bounds, errors naming file, key, value and
what is allowed); validation uses pydantic (strict types: ``"100"`` is not an integer here). The run's
settings (:mod:`.run`) and the segmenters' descriptions (:mod:`.segmenters`) are validated once, on
loading, before any case runs.
"""

from __future__ import annotations

from .reading import MAX_SWEEP_SETTINGS, MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, shown
from .run import (
    ARCHITECTURE_KEYS,
    MODEL_SPEC_NAME,
    PUBLISHED_STEPS,
    ModelSpec,
    RunParameters,
    SamplingSettings,
    SweepSetting,
    TargetDefaults,
    expand_sweep_grid,
    load_model_spec,
    load_run_parameters,
    load_sweep_grid,
    override_run_parameters,
    parse_run_parameters,
)
from .segmenters import (
    SEGMENTER_SPEC_NAME,
    CommandSegmenterSpec,
    NnUNetSegmenterSpec,
    ReferenceSegmenterSpec,
    SegmenterSpec,
    load_segmenter_spec,
)

__all__ = [
    "ARCHITECTURE_KEYS",
    "MAX_SWEEP_SETTINGS",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "MODEL_SPEC_NAME",
    "PUBLISHED_STEPS",
    "SEGMENTER_SPEC_NAME",
    "CommandSegmenterSpec",
    "ModelSpec",
    "NnUNetSegmenterSpec",
    "ReferenceSegmenterSpec",
    "RunParameters",
    "SamplingSettings",
    "SegmenterSpec",
    "SweepSetting",
    "TargetDefaults",
    "expand_sweep_grid",
    "load_model_spec",
    "load_run_parameters",
    "load_segmenter_spec",
    "load_sweep_grid",
    "override_run_parameters",
    "parse_run_parameters",
    "shown",
]
