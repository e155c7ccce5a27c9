r"""What the sampling schemes share: the particles' start, resampling and the final latents.

A scheme kernel runs one level of the shared loop skeleton: :class:`~.smc.SMCKernel` (the
annealed split-Gibbs SMC), :class:`~.gibbs.GibbsKernel` (the diffused-posterior Gibbs sampler)
and :class:`~.flow.FlowKernel` (the optimiser-driven flow). The two sampling kernels start their
particles here (:meth:`SamplingKernel.init_state`) and move them with the likelihood step the
run resolved (:mod:`.steps`), which they hold one of each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .exact import ExactStep
from .image_rto import ImageRTOStep
from .latent_rto import LatentRTOStep
from .mala import MALAStep
from .state import ParticleState
from .steps import LikelihoodStep, resolve_step_name

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem
    from .config import DWGFConfig
    from .refine import DecoderErrorStep

__all__ = ["SamplingKernel"]


class SamplingKernel:
    """Base of the particle-sampling kernels (``"smc"``, ``"gibbs"``).

    :param LatentSolver ops: the solver whose networks, chunks and random draws it uses.
    :param DWGFConfig config: the run's options.
    :param DecoderErrorStep errors: the decoder-error model (the image step may use it).
    """

    #: The ``scheme`` value of this kernel.
    name: ClassVar[str] = ""

    def __init__(self, ops: LatentSolver, config: DWGFConfig, errors: DecoderErrorStep) -> None:
        self.ops = ops
        self.config = config
        self.steps: dict[str, LikelihoodStep] = {
            "exact": ExactStep(ops, config),
            "rto": LatentRTOStep(ops, config),
            "image": ImageRTOStep(ops, config, errors),
            "mala": MALAStep(ops, config),
        }

    def initial_variance(self, problem: Problem) -> float:
        """Variance of the initial particles around their centre."""
        raise NotImplementedError

    def init_state(self, problem: Problem) -> ParticleState:
        r"""Particles from :math:`\mathcal{N}(m, v_0 I)` conditioned on the data where the
        likelihood step can, uniform weights; :math:`m = 0`, or the encoded
        :math:`A^\dagger y` with :math:`v_0` scaled by ``init_noise**2`` (``init="pinv"``).
        The likelihood step is resolved first, before any network call."""
        ops, cfg = self.ops, self.config
        dim = math.prod(problem.latent_shape)
        name = resolve_step_name(cfg, ops.prior, problem, dim)
        var0 = self.initial_variance(problem)
        centre = torch.zeros((problem.n, dim), device=problem.device, dtype=problem.dtype)
        if cfg.init == "pinv":
            z0 = ops.encode_physical(ops.pseudo_inverse(problem)).to(problem.dtype)
            centre = z0.reshape(problem.batch, dim).repeat_interleave(problem.particles, 0)
            var0 *= cfg.init_noise**2
        z = centre + math.sqrt(var0) * ops.randn((problem.n, dim), problem)
        log_w = torch.zeros(problem.batch, problem.particles, device=problem.device)
        step = self.steps[name]
        state = ParticleState(z, log_w.to(torch.float64), name, step.new_cache())
        step.start(state, centre, var0, problem)
        return state

    def move(self, state: ParticleState, centre: Tensor, var: float, problem: Problem) -> float:
        """Draw the particles from the level's conditional with the run's likelihood step."""
        return self.steps[state.step].draw(state, centre, var, problem)

    def level_info(self, state: ParticleState, accept: float, problem: Problem) -> dict:
        """Misfit of the particles and, where the step has one, its acceptance statistic."""
        step = self.steps[state.step]
        info = step.misfit(state, problem)
        if step.reports_accept:
            info["accept"] = accept
        return info

    def step(self, state: ParticleState, t: int, problem: Problem) -> dict[str, float]:
        """One level at timestep ``t``."""
        raise NotImplementedError

    def resample(self, state: ParticleState, problem: Problem, which: Tensor) -> Tensor:
        """Systematic resampling of the measurements flagged in ``which``; returns the particle
        index map (identity elsewhere) and resets those measurements' weights."""
        b, p = problem.batch, problem.particles
        w = torch.softmax(state.log_w, dim=1)
        offset = torch.rand(b, 1, generator=problem.generator, device=problem.device)
        pos = (torch.arange(p, device=problem.device) + offset.to(w.dtype)) / p
        idx = torch.searchsorted(torch.cumsum(w, 1), pos).clamp_max(p - 1)
        keep = torch.arange(p, device=problem.device).expand(b, p)
        mask = which.to(problem.device)[:, None]
        idx = torch.where(mask, idx, keep)
        flat = (idx + p * torch.arange(b, device=problem.device)[:, None]).reshape(-1)
        state.take(flat)
        state.log_w = torch.where(mask, torch.zeros_like(state.log_w), state.log_w)
        state.resamples += int(which.sum())
        return flat

    def final_latents(self, state: ParticleState, problem: Problem) -> Tensor:
        """The particles after the last level, resampled once more if weighted."""
        if bool((state.log_w != 0).any()):
            self.resample(state, problem, torch.ones(problem.batch, dtype=torch.bool))
        return state.z.reshape(problem.n, *problem.latent_shape).to(problem.dtype)
