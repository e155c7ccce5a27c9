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
latents as in the PSLD (Rout et al. 2023) and ReSample (Song et al. 2024) papers, with the loss
:math:`\ell = \|y - A(\mathrm{from\_model}(D(\hat z_0(z_t))))\|_2` (the norm, not its square, as
in the DPS reference code), :math:`g_t = \nabla_{z_t}\ell` and the step applied after the DDIM
update.

**Step size in scale-free units** (``step_units="relative"``, the default). The DPS code's
constant step :math:`\kappa_t = -\zeta` is not scale-free: with :math:`x = c\,D(z) + b` in
physical units, :math:`\|g_t\| \propto c\,\|A\|`, so a :math:`\zeta` that works for galaxies in
counts (pixels up to ~800) is a hundred times too small for CT in 1/cm, and in between it
diverges (validation PSNR falls from 36 dB to 1.5 dB for a factor 3 in :math:`\zeta`). Here the
step of particle :math:`i` is Polyak's step size towards the noise level,

.. math::

    \kappa_{t,i}\, g_{t,i} = -\zeta\,\frac{(\ell_i - \ell_\star)_+}{\|g_{t,i}\|^2}\, g_{t,i},
    \qquad \ell_\star = \sqrt{V}, \quad V = \sum_j w_j v_j ,

with :math:`v_j` the noise variance of measurement :math:`j` (:math:`\sigma^2`, a noise map's,
or for Poisson data :math:`g(Ax + b)`), :math:`w_j` the relative weights of a noise map (1
without one): :math:`V` is the expected :math:`\|y - Ax\|^2` at the truth. To first order
:math:`\ell(z_t - \eta g) = \ell - \eta\|g\|^2`, so :math:`\zeta = 1` is the step that would bring
the residual norm down to the noise level if :math:`\ell` were linear along :math:`g`, and
:math:`\zeta = 0.5` (the default) goes half way; the step vanishes once the fit reaches the
noise. For a linear physics and decoder :math:`\ell` is convex, its tangent lies below it, and a
step with :math:`\zeta \le 1` cannot overshoot the noise level. Multiplying :math:`y`, the noise
level and the image units (or the operator) by any :math:`c > 0` multiplies
:math:`\ell, \ell_\star` and :math:`g` by :math:`c` and leaves the step unchanged; it does not
depend on the number of measurements either. ``step_units="absolute"`` restores the DPS code's
:math:`\kappa_t = -\zeta` (its default 1.0, 0.3 for super-resolution, for images in [-1, 1]).

``loss="squared"`` uses :math:`\|\cdot\|_2^2` (:math:`\ell_\star = V`) and ``loss="nll"`` the
solver's noise-weighted data term (:math:`\|y - Ax\|^2 / 2\sigma^2` for Gaussian noise,
:math:`\ell_\star = m/2`; Poisson NLL, :math:`\ell_\star = 0`); in absolute units
:math:`-\zeta g_t` is then :math:`\zeta` times DPS's approximation of
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
STEP_UNITS = ("relative", "absolute")


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

    def data_factor(
        self, loss: Tensor, grad: Tensor, ax: Tensor, rows: slice, problem: Problem
    ) -> Tensor:
        """Per-particle factor ``(n,)`` of the guidance gradient ``grad`` (of the objective plus
        :meth:`extra_objective`), from the objective's value ``loss`` (here 1: the objective's
        own scale); :class:`LatentDPS` sets its step size here."""
        return torch.ones_like(loss)

    def extra_objective(
        self, ax: Tensor, rows: slice, problem: Problem, state: GuidedState
    ) -> Tensor | None:
        """A second per-particle objective added to :meth:`objective` before the backward pass
        (PSLD's gluing term), or None."""
        return None

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
            extra = self.extra_objective(ax, rows, problem, state)
            total = loss if extra is None else loss + extra
            (grad,) = torch.autograd.grad(total.sum(), zt)
            factor = self.data_factor(loss.detach(), grad, ax.detach(), rows, problem)
            grad = grad * factor.reshape(-1, *[1] * (grad.ndim - 1))
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
        data_sum = chi2_sum = grad_norm_sum = kick_sum = 0.0
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
                kick_sum += abs(kappa) * float(grad.flatten(1).norm(dim=1).sum())
        state.z = new
        n = problem.n
        return {
            "data": data_sum / n,
            "chi2": chi2_sum / n,
            "grad_norm": grad_norm_sum / n,
            "kick": kick_sum / n,
            "kappa": kappa,
        }


class LatentDPS(GuidedDDIM):
    r"""Latent diffusion posterior sampling (Chung et al., ICLR 2023, on latents).

    ``LatentDPS(prior)(y, physics)`` returns a :class:`~dwgf_sci.solvers.posterior.Posterior`.
    Works with any differentiable physics (linear or not). Per particle and step: one UNet
    forward and backward, one decoder forward and backward.

    :param float zeta: step size of the guidance. With ``step_units="relative"`` (default) a
        fraction of Polyak's step to the noise level (see the module doc): 1 would bring the
        linearised residual norm to the noise level in one step, the default 0.5 half way;
        scale-free (units of the image, the measurements and the operator's norm drop out).
        With ``"absolute"`` the DPS code's constant step in latent units per unit of residual
        norm (its default 1.0 for images in [-1, 1]), which must be tuned per problem class.
    :param str step_units: ``"relative"`` (Polyak's step, the default) or ``"absolute"`` (the
        DPS code's constant step).
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
        zeta: float = 0.5,
        loss: str = "norm",
        step_units: str = "relative",
        steps: int = 1000,
        eta: float = 1.0,
        data_term: str | None = None,
        **kwargs: Any,
    ) -> None:
        if loss not in DPS_LOSSES:
            raise ConfigError(f"unknown DPS loss {loss!r}; choose one of {DPS_LOSSES}")
        if not (math.isfinite(float(zeta)) and float(zeta) >= 0):
            raise ConfigError(f"zeta must be a finite number >= 0, found {zeta}")
        if step_units not in STEP_UNITS:
            raise ConfigError(f"unknown step_units {step_units!r}; choose one of {STEP_UNITS}")
        self._auto_data_term = data_term is None
        super().__init__(prior, steps=steps, eta=eta, data_term=data_term or "mse", **kwargs)
        self.zeta = float(zeta)
        self.loss = loss
        self.step_units = step_units

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        out = {
            **super().settings(),
            "zeta": self.zeta,
            "step_units": self.step_units,
            "loss": self.loss,
        }
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

    def noise_energy(self, ax: Tensor, rows: slice, problem: Problem) -> Tensor:
        r"""Expected :math:`\|y - Ax\|^2` of each row at the truth, :math:`V = \sum_i w_i v_i`
        (noise variances :math:`v_i`, relative weights :math:`w_i` of a noise map, 0 where
        masked); 0 for the unweighted ``"mse"`` data term (noise unknown)."""
        term = problem.data_term.rows(rows)
        if term.kind == "mse" and term.variance_map is None:
            return torch.zeros(ax.shape[0], device=ax.device, dtype=ax.real.dtype)
        if term.variance_map is not None:
            w = term.relative_weights(ax)
            v = term.variance_like(ax)
            wv = torch.where(w > 0, w * v, torch.zeros_like(v))
            return wv.flatten(1).sum(1)
        return term.variance(ax.real if torch.is_complex(ax) else ax).flatten(1).sum(1)

    def loss_floor(self, ax: Tensor, rows: slice, problem: Problem) -> Tensor:
        """The value of the DPS loss at the noise level, per row (see :meth:`noise_energy`)."""
        energy = self.noise_energy(ax, rows, problem)
        if self.loss == "norm":
            return energy.sqrt()
        if self.loss == "squared":
            return energy
        term = problem.data_term.rows(rows)
        if term.kind == "gaussian":
            return 0.5 * term.informative(ax).to(energy.dtype)
        return torch.zeros_like(energy)

    def data_factor(
        self, loss: Tensor, grad: Tensor, ax: Tensor, rows: slice, problem: Problem
    ) -> Tensor:
        r"""Relative units: Polyak's step :math:`(\ell_i - \ell_\star)_+ / \|g_i\|^2` per
        particle (see the module doc); absolute units: 1."""
        if self.step_units == "absolute":
            return torch.ones_like(loss)
        g2 = grad.flatten(1).pow(2).sum(1)
        floor = self.loss_floor(ax, rows, problem).to(loss.dtype)
        excess = (loss - floor).clamp_min(0.0)
        return torch.where(g2 > 0, excess / g2.clamp_min(1e-30), 0.0)

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        r""":math:`\kappa_t = -\zeta` (constant, as in DPS)."""
        return -self.zeta
