"""Posterior samplers on latent-diffusion priors (DWGF and baselines) and their result type."""

from __future__ import annotations

from .base import LatentSolver, Problem
from .classical import FBP, ClassicalSolver, PseudoInverse, RichardsonLucy, TVReconstruction, Wiener
from .dps import GuidedDDIM, LatentDPS
from .dwgf import DWGF
from .likelihood import DataTerm
from .pigdm import PiGDM
from .posterior import Posterior
from .psld import PSLD
from .reddiff import REDDiff
from .resample import ReSample
from .schedule import timestep_grid

__all__ = [
    "FBP",
    "ClassicalSolver",
    "PseudoInverse",
    "RichardsonLucy",
    "TVReconstruction",
    "Wiener",
    "DWGF",
    "DataTerm",
    "GuidedDDIM",
    "LatentDPS",
    "LatentSolver",
    "PSLD",
    "PiGDM",
    "Posterior",
    "Problem",
    "REDDiff",
    "ReSample",
    "timestep_grid",
]
