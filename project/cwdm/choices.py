"""The names every setting may take, defined once: YAML validation (:mod:`cwdm.config`), the method
(:mod:`cwdm.method`) and the command line's ``--help`` all use these, and importing them costs nothing
(no torch, no pydantic), so that ``cwdm --help`` stays fast."""

from __future__ import annotations

from typing import Literal

#: The reverse-diffusion step: ``ddpm`` (published, stochastic) or ``ddim`` (deterministic).
SamplerName = Literal["ddpm", "ddim"]
#: Which timesteps respacing keeps: ``linspace`` (published) or ``trailing`` (needed for one or two steps).
TimestepSpacing = Literal["linspace", "trailing"]
#: The training noise schedule.
ScheduleName = Literal["linear", "cosine"]
#: The post-processing of a synthesis: ``brain_mask`` (published evaluation) or ``threshold``.
PostprocessName = Literal["brain_mask", "threshold"]
DeviceName = Literal["auto", "cuda", "cpu"]
#: Network arithmetic at inference; ``auto`` is bf16 on a GPU that has it, else fp32.
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
#: Network arithmetic in training (no ``auto``: the precision is part of a run's identity).
TrainPrecisionName = Literal["fp32", "bf16", "fp16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
SequenceName = Literal["t1n", "t1c", "t2w", "t2f"]
StructureName = Literal["NCR", "ED", "ET", "RC"]
LabelConventionName = Literal["brats2021", "brats2023", "brats2024"]
#: The BraSyn years whose scoring ``cwdm evaluate --protocol`` reproduces (:mod:`cwdm.evaluation.protocols`).
ProtocolName = Literal["brasyn2023", "brasyn2024", "brasyn2025"]
