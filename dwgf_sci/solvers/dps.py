r"""Latent diffusion posterior sampling (DPS) and the guided DDIM loop it shares with ΠGDM.

Guided DDIM
-----------
Both baselines run the reverse diffusion directly on the latent :math:`z_t` over the solver's
descending grid :math:`t_1 > t_2 > \dots > t_S`, starting from
:math:`z_{t_1} \sim \mathcal{N}(0, I)`. At timestep :math:`t` with next timestep :math:`t'`
(:math:`\bar\alpha_{t'} = 1` after the last one), :math:`a = \sqrt{\bar\alpha_t}`,
:math:`s = \sqrt{1-\bar\alpha_t}`, :math:`a' = \sqrt{\bar\alpha_{t'}}`:

.. math::

    \hat\epsilon = \epsilon_\theta(z_t, t), \qquad
    \hat z_0(z_t) = \frac{z_t - s\,\hat\epsilon}{a} \quad\text{(Tweedie, with gradient)},

    z_{t'} = a'\,\hat z_0 + c_2\,\hat\epsilon + c_1\,\xi + \kappa_t\, g_t, \qquad
    \xi \sim \mathcal{N}(0, I),

with the DDIM coefficients (Song, Meng & Ermon 2021)

.. math::

    c_1 = \eta \sqrt{\frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}
          \Big(1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}\Big)}, \qquad
    c_2 = \sqrt{1 - \bar\alpha_{t'} - c_1^2}.

``eta = 1`` is DDPM ancestral sampling on the grid, ``eta = 0`` the deterministic DDIM. The
guidance :math:`g_t` is the gradient with respect to :math:`z_t` of a data objective evaluated at
:math:`\mathrm{from\_model}(D(\hat z_0(z_t)))`; it needs one backward pass through the UNet and the
decoder per particle and step, counted in ``calls["unet_backward"]`` and
``calls["decoder_backward"]``. A subclass chooses the objective and the coefficient
:math:`\kappa_t`.

Latent DPS
----------
Chung et al., "Diffusion posterior sampling for general noisy inverse problems" (ICLR 2023), run on
latents as in the PSLD (Rout et al. 2023) and ReSample (Song et al. 2024) papers:

.. math::

    g_t = \nabla_{z_t} \big\| y - A(\mathrm{from\_model}(D(\hat z_0(z_t))))\big\|_2,
    \qquad \kappa_t = -\zeta,

the norm, not its square, as in the DPS reference code (``torch.linalg.norm`` of the residual,
step ``scale``, default 1.0, 0.3 in its super-resolution configuration), applied after the DDIM
update.
``loss="squared"`` uses :math:`\|\cdot\|_2^2` and ``loss="nll"`` the solver's noise-weighted data
term (:math:`\|y - Ax\|^2 / 2\sigma^2` for Gaussian noise, Poisson NLL, ...): then
:math:`-\zeta g_t` is :math:`\zeta` times DPS's approximation of
:math:`\nabla_{z_t}\log p(y \mid z_t)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from deepinv.physics import Physics
from torch import Tensor

from ..errors import ConfigError
from ..operators.noise import noise_sigma
from ..operators.pixel_noise import PixelNoise
from ..priors.base import LatentPrior
from .base import LatentSolver, Problem
from .likelihood import DataTerm

__all__ = ["GuidedDDIM", "GuidedState", "LatentDPS"]

INITS = ("random", "pinv")
DPS_LOSSES = ("norm", "squared", "nll")


@dataclass
class GuidedState:
    """State of a guided DDIM run: the current noisy latents and solver-specific extras."""

    z: Tensor
    extra: dict[str, Any] = field(default_factory=dict)


def ddim_coefficients(ab: float, ab_next: float, eta: float) -> tuple[float, float]:
    r"""DDIM coefficients :math:`(c_1, c_2)` from :math:`\bar\alpha_t` to :math:`\bar\alpha_{t'}`.

    :param ab: :math:`\bar\alpha_t`.
    :param ab_next: :math:`\bar\alpha_{t'} \ge \bar\alpha_t` (1 for the final, clean step).
    :param eta: stochasticity, 0 (deterministic) to 1 (DDPM ancestral).
    """
    ratio = max(0.0, 1.0 - ab / ab_next)
    c1 = eta * math.sqrt(max(0.0, (1.0 - ab_next) / (1.0 - ab) * ratio))
    c2 = math.sqrt(max(0.0, 1.0 - ab_next - c1 * c1))
    return c1, c2


class GuidedDDIM(LatentSolver):
    """Base of samplers that add a data-consistency gradient to latent DDIM (see module doc).

    Shared options (``particles``, ``steps``, ``grid``, ``data_term``, ``noise_sigma``,
    ``max_batch``, ``seed``...) are those of :class:`~dwgf_sci.solvers.base.LatentSolver`.

    :param float eta: DDIM stochasticity :math:`\\eta` (1: DDPM-like ancestral sampling).
    :param str init: ``"random"`` (:math:`z_{t_1} \\sim \\mathcal{N}(0, I)`) or ``"pinv"``
        (:math:`z_{t_1} = a\\,E(A^\\dagger y) + s\\,\\xi`, as the DPS/ΠGDM code in the RED-diff
        repository initialises; identical to ``"random"`` when :math:`\\bar\\alpha_{t_1} \\approx
        0`).
    """

    name: ClassVar[str] = "guided-ddim"

    def __init__(
        self, prior: LatentPrior, *, eta: float = 1.0, init: str = "random", **kwargs: Any
    ) -> None:
        super().__init__(prior, **kwargs)
        if not 0.0 <= float(eta) <= 1.0:
            raise ConfigError(f"eta must lie in [0, 1], found {eta}")
        if init not in INITS:
            raise ConfigError(f"unknown init {init!r}; choose one of {INITS}")
        self.eta = float(eta)
        self.init = init

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        return {**super().settings(), "eta": self.eta, "init": self.init}

    # ------------------------------------------------------------------ subclass hooks
    def objective(
        self, ax: Tensor, rows: slice, a: float, s: float, problem: Problem, state: GuidedState
    ) -> Tensor:
        """Per-particle objective ``(n,)`` whose gradient w.r.t. :math:`z_t` is the guidance."""
        raise NotImplementedError

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        r"""The factor :math:`\kappa_t` of the guidance gradient in the update."""
        raise NotImplementedError

    def render_for_guidance(self, z0: Tensor, state: GuidedState) -> Tensor:
        """The image (physical units) whose measurement enters the objective; a subclass may
        keep it in ``state.extra`` for its own terms."""
        return self.render(z0)

    # ------------------------------------------------------------------ loop hooks
    def init_state(self, problem: Problem) -> GuidedState:
        """Draw :math:`z_{t_1}` (pure noise, or the noised encoded pseudo-inverse)."""
        shape = (problem.n, *problem.latent_shape)
        noise = self.randn(shape, problem)
        if self.init == "random":
            return GuidedState(z=noise)
        ab = self.alpha_bar(int(problem.grid[0]), problem)
        z0 = self.encode_physical(self.pseudo_inverse(problem)).to(problem.dtype)
        z0 = z0.repeat_interleave(problem.particles, 0)
        return GuidedState(z=math.sqrt(ab) * z0 + math.sqrt(1.0 - ab) * noise)

    def final_latents(self, state: GuidedState, problem: Problem) -> Tensor:
        """The latents after the last (clean) step."""
        return state.z

    def guided_noise(
        self,
        z_t: Tensor,
        t: int,
        a: float,
        s: float,
        rows: slice,
        problem: Problem,
        state: GuidedState,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Noise prediction, guidance gradient and :math:`A\\,\\mathrm{from\\_model}(D(\\hat z_0))`.

        One UNet forward and backward, one decoder forward and backward; all outputs detached.
        """
        with torch.enable_grad():
            zt = z_t.detach().requires_grad_(True)
            eps = self.prior.predict_noise(zt, t)
            z0 = (zt - s * eps) / a
            ax = problem.physics.A(self.render_for_guidance(z0, state))
            loss = self.objective(ax, rows, a, s, problem, state)
            (grad,) = torch.autograd.grad(loss.sum(), zt)
        n = z_t.shape[0]
        self.prior.calls["unet_backward"] += n
        self.prior.calls["decoder_backward"] += n
        return eps.detach(), grad.detach(), ax.detach()

    def step(self, state: GuidedState, i: int, t: int, problem: Problem) -> dict[str, float]:
        """One guided DDIM step from :math:`t` to the next grid point (see the module doc)."""
        ab = self.alpha_bar(t, problem)
        grid = problem.grid
        ab_next = self.alpha_bar(int(grid[i + 1]), problem) if i + 1 < len(grid) else 1.0
        a, s, a_next = math.sqrt(ab), math.sqrt(1.0 - ab), math.sqrt(ab_next)
        c1, c2 = ddim_coefficients(ab, ab_next, self.eta)
        kappa = self.coefficient(a, s, a_next, c2)
        z = state.z
        # drawn once for all particles: the result does not depend on max_batch
        xi = self.randn(tuple(z.shape), problem) if c1 > 0 else None
        new = torch.empty_like(z)
        data_sum = chi2_sum = grad_norm_sum = 0.0
        for sl in self.chunks(problem.n):
            eps, grad, ax = self.guided_noise(z[sl], t, a, s, sl, problem, state)
            with torch.no_grad():
                z0 = (z[sl] - s * eps) / a
                upd = a_next * z0 + c2 * eps + kappa * grad
                if xi is not None:
                    upd = upd + c1 * xi[sl]
                new[sl] = upd
                y, term = problem.y_rep[sl], problem.data_term.rows(sl)
                data_sum += float(term(ax, y).sum())
                chi2_sum += float(term.reduced_chi2(ax, y).sum())
                grad_norm_sum += float(grad.flatten(1).norm(dim=1).sum())
        state.z = new
        n = problem.n
        return {
            "data": data_sum / n,
            "chi2": chi2_sum / n,
            "grad_norm": grad_norm_sum / n,
            "kappa": kappa,
        }


class LatentDPS(GuidedDDIM):
    r"""Latent diffusion posterior sampling (Chung et al., ICLR 2023, on latents).

    ``LatentDPS(prior)(y, physics)`` returns a :class:`~dwgf_sci.solvers.posterior.Posterior`.
    Works with any differentiable physics (linear or not). Per particle and step: one UNet
    forward and backward, one decoder forward and backward.

    :param float zeta: step size :math:`\zeta` of the guidance (DPS code default ``scale`` 1.0,
        0.3 in its super-resolution configuration, images in [-1, 1]). Its units follow ``loss``:
        with ``"norm"`` it is in latent units per unit of residual norm. The step does not shrink
        with the residual, so a :math:`\zeta` too large for the operator's norm over-disperses
        the samples (see ``tests/test_baselines.py``); tune it per problem class.
    :param str loss: ``"norm"`` (:math:`\|y - Ax\|_2`, DPS), ``"squared"``
        (:math:`\|y - Ax\|_2^2`) or ``"nll"`` (the noise-weighted data term of the solver).
    :param int steps: timesteps of the DDIM grid (default 1000, as the DPS paper's DDPM
        sampler).
    :param float eta: DDIM stochasticity (default 1.0: DDPM-like, as DPS).
    :param data_term: ``None`` (default) uses the Gaussian noise level of the physics when it has
        one and the unweighted ``"mse"`` otherwise; it only matters for ``loss="nll"`` and for the
        reported history.
    """

    name: ClassVar[str] = "latent-dps"

    def __init__(
        self,
        prior: LatentPrior,
        *,
        zeta: float = 1.0,
        loss: str = "norm",
        steps: int = 1000,
        eta: float = 1.0,
        data_term: str | None = None,
        **kwargs: Any,
    ) -> None:
        if loss not in DPS_LOSSES:
            raise ConfigError(f"unknown DPS loss {loss!r}; choose one of {DPS_LOSSES}")
        if not (math.isfinite(float(zeta)) and float(zeta) >= 0):
            raise ConfigError(f"zeta must be a finite number >= 0, found {zeta}")
        self._auto_data_term = data_term is None
        super().__init__(prior, steps=steps, eta=eta, data_term=data_term or "mse", **kwargs)
        self.zeta = float(zeta)
        self.loss = loss

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        out = {**super().settings(), "zeta": self.zeta, "loss": self.loss}
        if self._auto_data_term:
            out["data_term"] = "auto"
        return out

    def resolve_data_term(self, physics: Physics) -> DataTerm:
        """An automatic data term becomes Gaussian when the noise is known (one level or a
        per-pixel map), else the unweighted ``"mse"``."""
        if self._auto_data_term:
            sigma = noise_sigma(physics)
            known = not torch.is_tensor(sigma) and sigma is not None and sigma > 0
            mapped = isinstance(getattr(physics, "noise_model", None), PixelNoise)
            if known or mapped or self.data_term.sigma is not None:
                return DataTerm("gaussian", self.data_term.sigma).resolve(physics)
        return super().resolve_data_term(physics)

    def objective(
        self, ax: Tensor, rows: slice, a: float, s: float, problem: Problem, state: GuidedState
    ) -> Tensor:
        """The DPS loss of each particle at :math:`\\hat z_0(z_t)`."""
        y, term = problem.y_rep[rows], problem.data_term.rows(rows)
        if self.loss == "nll":
            return term(ax, y)
        resid = y - ax
        if term.variance_map is not None:  # masked pixels drop out
            resid = resid * term.relative_weights(ax).sqrt()
        resid = resid.flatten(1)
        if self.loss == "norm":
            return torch.linalg.vector_norm(resid, dim=1)
        return resid.abs().pow(2).sum(1)

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        r""":math:`\kappa_t = -\zeta` (constant, as in DPS)."""
        return -self.zeta
