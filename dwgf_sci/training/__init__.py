"""Training latent-diffusion priors on scientific images, and fine-tuning Stable Diffusion.

The entry point is :func:`train_prior` (command line: ``dwgf-sci train-prior``) with a
:class:`TrainConfig`. Stage 1 trains a diffusers ``AutoencoderKL``, stage 2 a ``UNet2DModel``
noise predictor on its latents (or, with ``init_from``, fine-tunes the UNet of a Stable Diffusion
folder); the result is a folder that :func:`dwgf_sci.priors.load_prior` loads. See
:mod:`dwgf_sci.training.trainer` for the method, :mod:`~dwgf_sci.training.units` for the map
between physical units and the model range, :mod:`~dwgf_sci.training.checkpoint` for the
checkpoint format, :mod:`~dwgf_sci.training.sampling` for unconditional DDIM sampling and
:mod:`~dwgf_sci.training.evaluate` for the acceptance metrics.
"""

from __future__ import annotations

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import TrainingData, load_training_data
from .ema import EMA
from .evaluate import evaluate_prior, ks_statistics, reconstruction_psnr, write_metrics
from .sampling import ddim_sample_latents, sample_prior
from .trainer import TrainingStopped, TrainResult, train_prior
from .units import UnitMap, fit_unit_map

__all__ = [
    "EMA",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "TrainingStopped",
    "UnitMap",
    "ddim_sample_latents",
    "evaluate_prior",
    "fit_unit_map",
    "ks_statistics",
    "list_checkpoints",
    "load_checkpoint",
    "load_training_data",
    "reconstruction_psnr",
    "sample_prior",
    "save_checkpoint",
    "train_prior",
    "write_metrics",
]
