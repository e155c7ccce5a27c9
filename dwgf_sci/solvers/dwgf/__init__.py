"""DWGF as composable pieces: configuration, scheme kernels, likelihood steps, stages.

``from dwgf_sci.solvers.dwgf import DWGF`` is the user's entry point; the modules below it are
for those who build their own sampler from the same parts (see :mod:`.solver`).
"""

from __future__ import annotations

from .config import (
    DEFAULT,
    FAST,
    PRESETS,
    REFERENCE,
    DWGFConfig,
    FlowConfig,
    ImageStepConfig,
    MALAConfig,
    Preset,
    RefineConfig,
    RTOConfig,
    SMCConfig,
    keywords,
)
from .smc import log_weight_increment
from .solver import DWGF
from .state import FlowState, ParticleState

__all__ = [
    "DEFAULT",
    "DWGF",
    "DWGFConfig",
    "FAST",
    "FlowConfig",
    "FlowState",
    "ImageStepConfig",
    "MALAConfig",
    "PRESETS",
    "ParticleState",
    "Preset",
    "REFERENCE",
    "RTOConfig",
    "RefineConfig",
    "SMCConfig",
    "keywords",
    "log_weight_increment",
]
