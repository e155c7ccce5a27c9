r"""ReSample: latent diffusion with hard data consistency (Song et al., ICLR 2024).

ReSample runs latent DDIM with a DPS-style guidance step and, every few steps of the second and
third part of the trajectory, replaces the sample by one that is consistent with the data:

1. **DDIM + guidance** (every step): the guided DDIM step of
   :class:`~dwgf_sci.solvers.dps.LatentDPS` with its step times :math:`\bar\alpha_t` (the
   ReSample code scales DPS by ``0.5 * alpha_bar``). With ``step_units="relative"`` (the
   default) :math:`\zeta` is latent DPS's scale-free fraction of Polyak's step to the noise
   level, :math:`\kappa_{t,i} g_{t,i} = -\zeta\,\bar\alpha_t\,(\ell_i - \ell_\star)_+
   \,g_{t,i}/\|g_{t,i}\|^2` (default 0.5); with ``"absolute"`` the code's constant
   :math:`\kappa_t = -\zeta\,\bar\alpha_t` (``zeta`` 0.5 there, for images in [-1, 1]).
2. **Hard data consistency** (every ``every`` steps, for the steps in the last two thirds of the
   grid but the final one): from the new latent :math:`z_{t'}`, ``time_travel`` unconditional
   DDIM steps further down the grid give the Tweedie estimate :math:`\hat z_0`; then

   * in the second third, *pixel* optimisation: :math:`x^\star = \arg\min_x \|y - A x\|^2` by
     Adam started at :math:`D(\hat z_0)` (model units, lr ``pixel_lr``), and
     :math:`z_0^\star = E(x^\star)`;
   * in the last third, *latent* optimisation: :math:`z_0^\star = \arg\min_z \|y - A D(z)\|^2` by
     Adam started at :math:`\hat z_0` (lr ``latent_lr``);

   both stop early once the mean squared residual is below ``tol`` (default: the Gaussian noise
   variance of the physics, the discrepancy principle, where the ReSample code uses a fixed
   :math:`10^{-6}` on [-1, 1] images).
3. **Stochastic resampling** back to the noise level :math:`\bar\alpha' = \bar\alpha_{t'}`:

   .. math::

       z_{t'} \sim \mathcal{N}\Big(
           \frac{\sigma_t^2 \sqrt{\bar\alpha'}\, z_0^\star + (1-\bar\alpha')\, z_{t'}}
                {\sigma_t^2 + 1 - \bar\alpha'},\;
           \frac{\sigma_t^2 (1-\bar\alpha')}{\sigma_t^2 + 1 - \bar\alpha'} I\Big),
       \qquad
       \sigma_t^2 = \gamma\,\frac{1-\bar\alpha'}{1-\bar\alpha_t}
           \Big(1 - \frac{\bar\alpha_t}{\bar\alpha'}\Big),

   with :math:`\gamma` = ``resample_gamma`` (40 in the paper and its code).

After the last step the final latents get one more latent optimisation. Defaults are the ReSample
code's (500 DDIM steps, ``eta`` 0, ``every`` 10, ``time_travel`` 5, 2000 pixel and 500 latent
iterations, lr 1e-2 and 5e-3); on a CPU the iteration counts are the cost to lower first.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..priors.base import LatentPrior
from .base import Problem
from .dps import GuidedState, LatentDPS, ddim_coefficients

__all__ = ["ReSample"]


def _positive_int(name: str, value: int, minimum: int = 0) -> int:
    if int(value) != value or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, found {value}")
    return int(value)


class ReSample(LatentDPS):
    r"""ReSample posterior sampler on latents (see the module doc).

    ``ReSample(prior)(y, physics)`` returns a :class:`~dwgf_sci.solvers.posterior.Posterior`.
    Works with any differentiable physics. Options of
    :class:`~dwgf_sci.solvers.dps.LatentDPS` apply (``zeta`` and ``step_units`` set the
    guidance step, here times :math:`\bar\alpha_t`; default 0.5 of Polyak's step), plus:

    :param int every: a consistency step every ``every`` grid steps (ReSample: 10).
    :param int time_travel: unconditional DDIM steps taken ahead to estimate :math:`\hat z_0`
        (ReSample: 5; 0 uses Tweedie at the current step).
    :param int pixel_iters: most Adam iterations of the pixel optimisation (ReSample: 2000).
    :param int latent_iters: most Adam iterations of the latent optimisation (ReSample: 500).
    :param float pixel_lr: Adam step of the pixel optimisation, model units (ReSample: 1e-2);
        scale-free as it is (Adam's step does not depend on the residual's units).
    :param float latent_lr: Adam step of the latent optimisation (ReSample: 5e-3), latent
        units, scale-free as it is.
    :param float resample_gamma: :math:`\gamma` of the resampling variance (ReSample: 40).
    :param tol: early-stopping level of the mean squared residual, measurement units squared;
        ``None`` uses the Gaussian noise variance of the physics (0 when it has none).
    """

    name: ClassVar[str] = "resample"

    def __init__(
        self,
        prior: LatentPrior,
        *,
        zeta: float = 0.5,
        steps: int = 500,
        eta: float = 0.0,
        every: int = 10,
        time_travel: int = 5,
        pixel_iters: int = 2000,
        latent_iters: int = 500,
        pixel_lr: float = 1e-2,
        latent_lr: float = 5e-3,
        resample_gamma: float = 40.0,
        tol: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prior, zeta=zeta, steps=steps, eta=eta, **kwargs)
        self.every = _positive_int("every", every, 1)
        self.time_travel = _positive_int("time_travel", time_travel)
        self.pixel_iters = _positive_int("pixel_iters", pixel_iters)
        self.latent_iters = _positive_int("latent_iters", latent_iters)
        for name, value in (("pixel_lr", pixel_lr), ("latent_lr", latent_lr)):
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ConfigError(f"{name} must be a positive number, found {value}")
        if not (math.isfinite(float(resample_gamma)) and float(resample_gamma) > 0):
            raise ConfigError(f"resample_gamma must be a positive number, found {resample_gamma}")
        if tol is not None and not float(tol) >= 0:
            raise ConfigError(f"tol must be >= 0 or None, found {tol}")
        self.pixel_lr = float(pixel_lr)
        self.latent_lr = float(latent_lr)
        self.resample_gamma = float(resample_gamma)
        self.tol = None if tol is None else float(tol)

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        return {
            **super().settings(),
            "every": self.every,
            "time_travel": self.time_travel,
            "pixel_iters": self.pixel_iters,
            "latent_iters": self.latent_iters,
            "pixel_lr": self.pixel_lr,
            "latent_lr": self.latent_lr,
            "resample_gamma": self.resample_gamma,
            "tol": self.tol,
        }

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        r""":math:`\kappa_t = -\zeta\,\bar\alpha_t`."""
        return -self.zeta * a * a

    # ------------------------------------------------------------------ consistency steps
    def phase(self, i: int, n_steps: int) -> str | None:
        """``"pixel"``, ``"latent"`` or ``None``: the consistency step after grid step ``i``."""
        third = n_steps // 3
        remaining = n_steps - 1 - i  # the reference counts its step index down to 0
        if i < third or remaining <= 0 or remaining % self.every != 0:
            return None
        return "pixel" if remaining >= third else "latent"

    def threshold(self, problem: Problem) -> float:
        """Early-stopping level of the mean squared residual."""
        if self.tol is not None:
            return self.tol
        term = problem.data_term
        if term.variance_map is not None:  # the harmonic mean of the informative variances
            inv = 1.0 / term.variance_like(problem.y)
            return float((inv.flatten(1).sum(1) / term.informative(problem.y)).reciprocal().max())
        sigma = term.sigma
        if sigma is None:
            return 0.0
        level = float(sigma.max()) if torch.is_tensor(sigma) else float(sigma)
        return level**2 if level > 0 else 0.0

    def residual(self, x_model: Tensor, rows: slice, problem: Problem) -> Tensor:
        """Mean squared residual per particle of a model-unit image; with a noise map, weighted
        by the inverse variances relative to their mean, masked pixels left out."""
        ax = problem.physics.A(self.prior.from_model(x_model))
        r2 = (problem.y_rep[rows] - ax).abs().pow(2)
        term = problem.data_term.rows(rows)
        if term.variance_map is not None:
            weighted = (r2 * term.relative_weights(ax)).flatten(1).sum(1)
            return weighted / term.informative(ax).clamp_min(1)
        return r2.flatten(1).mean(1)

    def optimise(self, var: Tensor, rows: slice, problem: Problem, latent: bool) -> Tensor:
        """Adam on ``var`` (latents or model-unit images) until the residual is small."""
        iters = self.latent_iters if latent else self.pixel_iters
        lr = self.latent_lr if latent else self.pixel_lr
        tol = self.threshold(problem)
        var = var.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([var], lr=lr)
        done = torch.zeros(var.shape[0], dtype=torch.bool, device=var.device)
        with torch.enable_grad():
            for _ in range(iters):
                x = self.prior.decode(var) if latent else var
                res = self.residual(x, rows, problem)
                done |= res.detach() <= tol  # a particle stops for good once consistent
                if bool(done.all()):
                    break
                opt.zero_grad()
                res.sum().backward()  # particles are independent (Adam is per element)
                kept = var.detach()[done].clone()
                opt.step()
                with torch.no_grad():
                    var[done] = kept
                if latent:
                    self.prior.calls["decoder_backward"] += var.shape[0]
        return var.detach()

    def look_ahead(self, z: Tensor, i: int, problem: Problem) -> Tensor:
        r"""Tweedie's :math:`\hat z_0` after ``time_travel`` unconditional DDIM steps from
        :math:`z_{t'}` (``t'`` = grid point ``i + 1``)."""
        grid = problem.grid
        last = min(i + 1 + self.time_travel, len(grid) - 1)
        z0 = z
        for k in range(i + 1, last + 1):
            ab = self.alpha_bar(int(grid[k]), problem)
            a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
            eps = self.predict_noise(z, int(grid[k]))
            z0 = (z - s * eps) / a
            if k < last:
                ab_next = self.alpha_bar(int(grid[k + 1]), problem)
                _, c2 = ddim_coefficients(ab, ab_next, 0.0)
                z = math.sqrt(ab_next) * z0 + c2 * eps
        return z0

    def consistency(self, state: GuidedState, i: int, kind: str, problem: Problem) -> None:
        """Hard data consistency and stochastic resampling of ``state.z`` (see the module doc)."""
        grid = problem.grid
        ab = self.alpha_bar(int(grid[i]), problem)
        ab_next = self.alpha_bar(int(grid[i + 1]), problem)
        z = state.z
        z0_hat = self.look_ahead(z, i, problem)
        target = torch.empty_like(z)
        for sl in self.chunks(problem.n):
            if kind == "latent":
                target[sl] = self.optimise(z0_hat[sl], sl, problem, latent=True)
            else:
                with torch.no_grad():
                    x0 = self.prior.decode(z0_hat[sl])
                x_star = self.optimise(x0, sl, problem, latent=False)
                with torch.no_grad():
                    target[sl] = self.prior.encode(x_star)
        sigma2 = self.resample_gamma * (1 - ab_next) / (1 - ab) * (1 - ab / ab_next)
        denom = sigma2 + 1 - ab_next
        mean = (sigma2 * math.sqrt(ab_next) * target + (1 - ab_next) * z) / denom
        std = math.sqrt(sigma2 * (1 - ab_next) / denom)
        state.z = mean + std * self.randn(tuple(z.shape), problem)

    # ------------------------------------------------------------------ loop hooks
    def step(self, state: GuidedState, i: int, t: int, problem: Problem) -> dict[str, float]:
        """A guided DDIM step, then a consistency step where :meth:`phase` says so."""
        out = super().step(state, i, t, problem)
        kind = self.phase(i, len(problem.grid))
        if kind is not None:
            self.consistency(state, i, kind, problem)
        out["consistency"] = {"pixel": 1.0, "latent": 2.0}.get(kind or "", 0.0)
        return out

    def final_latents(self, state: GuidedState, problem: Problem) -> Tensor:
        """The last latents after a final latent optimisation."""
        out = torch.empty_like(state.z)
        for sl in self.chunks(problem.n):
            out[sl] = self.optimise(state.z[sl], sl, problem, latent=True)
        return out
