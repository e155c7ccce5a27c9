"""What :func:`~dwgf_sci.training.train_prior` returns (below the trainer and its report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..priors.base import LatentPrior
from .units import UnitMap

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What :func:`train_prior` returns.

    :param Path out: the output folder (a loadable prior).
    :param LatentPrior prior: the trained prior (EMA weights, eval mode) on the training device.
    :param dict metrics: validation metrics (see the model card).
    :param dict history: loss per step, per stage; with ``eval_every``, also
        ``"<stage>_val"``: ``[step, value]`` pairs of the validation metric (VAE PSNR in dB,
        denoiser loss) of the EMA weights.
    :param dict timings: seconds per stage (summed over resumed runs) and in total.
    :param UnitMap unit_map: the fitted physical <-> model map.
    """

    out: Path
    prior: LatentPrior
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    unit_map: UnitMap | None = None
