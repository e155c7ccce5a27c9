"""Posterior samplers on latent-diffusion priors (DWGF and baselines) and their result type."""

from __future__ import annotations

from .base import LatentSolver, Problem
from .dwgf import DWGF
from .likelihood import DataTerm
from .posterior import Posterior
from .schedule import timestep_grid

__all__ = ["DWGF", "DataTerm", "LatentSolver", "Posterior", "Problem", "timestep_grid"]
