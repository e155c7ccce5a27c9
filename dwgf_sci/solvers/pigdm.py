r"""ΠGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz, ICLR 2023), on latents.

ΠGDM approximates the denoising posterior by a Gaussian around Tweedie's estimate,
:math:`p(z_0 \mid z_t) \approx \mathcal{N}(\hat z_0(z_t), r_t^2 I)`, so that for
:math:`y = A x + \sigma n` with :math:`x = \mathrm{from\_model}(D(z_0))` and a decoder treated as
locally isometric (model units; :math:`c` = the prior's ``data_scale``, physical per model unit)

.. math::

    p(y \mid z_t) \approx \mathcal{N}\big(y;\; A\hat x_0,\; C_t\big), \qquad
    \hat x_0 = \mathrm{from\_model}(D(\hat z_0(z_t))), \qquad
    C_t = c^2 r_t^2\, A A^\top + \sigma^2 I,

and the guidance is the gradient of its logarithm (:math:`C_t` held fixed),

.. math::

    g_t = \nabla_{z_t} \log p(y \mid z_t)
        = \Big(\frac{\partial \hat x_0}{\partial z_t}\Big)^{\!\top} A^\top C_t^{-1}
          (y - A\hat x_0),

a vector-Jacobian product through the decoder and the UNet (one backward pass each).
:math:`C_t^{-1}` is applied exactly from the eigendecomposition of :math:`AA^\top` when the physics
is a :class:`~dwgf_sci.operators.matrix.MatrixOperator`, and by conjugate gradients with
``physics.A`` / ``physics.A_adjoint`` otherwise (deepinv's
:func:`~deepinv.optim.utils.conjugate_gradient`, batched over particles).

The variance :math:`r_t^2`: the paper writes the VP process in its variance-exploding form
:math:`z_t / \sqrt{\bar\alpha_t} = z_0 + \sigma_t \epsilon`, :math:`\sigma_t = s/a`, and uses
:math:`r_t^2 = \sigma_t^2 / (1 + \sigma_t^2)`, the posterior variance of :math:`z_0` for data
with unit variance; here :math:`r_t^2 = v\,\sigma_t^2/(v + \sigma_t^2) = v s^2/(s^2 + v a^2)`
with ``data_variance`` :math:`v` (default 1, the paper's value, giving :math:`r_t^2 = 1 -
\bar\alpha_t`). For a Gaussian prior :math:`\mathcal{N}(m, vI)` and a linear decoder that is an
isometry this Gaussian approximation is exact.

The guidance enters the score, :math:`\nabla\log p_t(z_t \mid y) \approx -\hat\epsilon/s +
\lambda g_t` with ``guidance_scale`` :math:`\lambda`, i.e. the noise prediction becomes
:math:`\tilde\epsilon = \hat\epsilon - \lambda s\, g_t` in the DDIM step of
:class:`~dwgf_sci.solvers.dps.GuidedDDIM`; expanded, the update adds
:math:`\kappa_t g_t` with :math:`\kappa_t = \lambda (a' s^2 / a - c_2 s)` to the unguided DDIM
step. With :math:`\lambda = 1`, ``eta=1`` and a Gaussian prior this is ancestral sampling with the
exact noisy-posterior score, so the samples converge to the posterior as the grid is refined.
Implementations differ in the time factor of the guidance (the RED-diff repository's
``algos/pgdm.py`` adds it with the factor :math:`\sqrt{\bar\alpha_{t'}}\sqrt{\bar\alpha_t}\lambda`
and uses a noiseless pseudo-inverse form); the factor here is the one that makes the update the
DDIM step of the guided score.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from deepinv.optim.utils import conjugate_gradient
from deepinv.physics import LinearPhysics
from torch import Tensor

from ..errors import ConfigError
from ..operators.matrix import MatrixOperator
from ..priors.base import LatentPrior
from .base import Problem
from .dps import GuidedDDIM, GuidedState

__all__ = ["PiGDM"]

SOLVES = ("auto", "dense", "cg")
IMAGE_SCALES = ("decoder", "prior")


class PiGDM(GuidedDDIM):
    r"""Pseudoinverse-guided diffusion model sampler on latents (see the module doc).

    ``PiGDM(prior)(y, physics)`` returns a :class:`~dwgf_sci.solvers.posterior.Posterior`.
    Needs a linear physics (``A`` and ``A_adjoint``) with Gaussian noise; the noise level is read
    from the physics unless ``noise_sigma`` is given. Per particle and step: one UNet forward and
    backward, one decoder forward and backward, and the solve with :math:`C_t`.

    :param float guidance_scale: :math:`\lambda` (1: the ΠGDM likelihood score itself).
    :param float data_variance: :math:`v` in :math:`r_t^2 = v s^2 / (s^2 + v a^2)` (paper: 1).
    :param str solve: how :math:`C_t^{-1}` is applied: ``"auto"`` (dense for a
        :class:`~dwgf_sci.operators.matrix.MatrixOperator`, else CG), ``"dense"`` or ``"cg"``.
    :param int cg_iters: most conjugate-gradient iterations per step.
    :param float cg_tol: relative residual tolerance of conjugate gradients.
    :param int steps: timesteps of the DDIM grid (default 100, as in the paper's experiments).
    :param float eta: DDIM stochasticity (default 1.0: DDPM-like ancestral sampling).
    """

    name: ClassVar[str] = "pigdm"
    #: one noise level is built into its data step (a per-pixel map is refused)
    supports_noise_map: ClassVar[bool] = False

    def __init__(
        self,
        prior: LatentPrior,
        *,
        guidance_scale: float = 1.0,
        data_variance: float = 1.0,
        solve: str = "auto",
        cg_iters: int = 50,
        cg_tol: float = 1e-6,
        image_scale: str = "decoder",
        steps: int = 100,
        eta: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("data_term", "gaussian") != "gaussian":
            raise ConfigError(
                "PiGDM needs a Gaussian likelihood (data_term='gaussian'), found "
                f"{kwargs['data_term']!r}"
            )
        if not (math.isfinite(float(guidance_scale)) and float(guidance_scale) >= 0):
            raise ConfigError(
                f"guidance_scale must be a finite number >= 0, found {guidance_scale}"
            )
        if not float(data_variance) > 0:
            raise ConfigError(f"data_variance must be positive, found {data_variance}")
        if solve not in SOLVES:
            raise ConfigError(f"unknown solve {solve!r}; choose one of {SOLVES}")
        if int(cg_iters) < 1 or not float(cg_tol) > 0:
            raise ConfigError(f"need cg_iters >= 1 and cg_tol > 0, found {cg_iters}, {cg_tol}")
        if image_scale not in IMAGE_SCALES:
            raise ConfigError(f"unknown image_scale {image_scale!r}; choose one of {IMAGE_SCALES}")
        super().__init__(prior, steps=steps, eta=eta, **kwargs)
        self.image_scale = image_scale
        self.guidance_scale = float(guidance_scale)
        self.data_variance = float(data_variance)
        self.solve = solve
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        return {
            **super().settings(),
            "guidance_scale": self.guidance_scale,
            "data_variance": self.data_variance,
            "solve": self.solve,
            "cg_iters": self.cg_iters,
            "cg_tol": self.cg_tol,
            "image_scale": self.image_scale,
        }

    # ------------------------------------------------------------------ covariance solves
    def prepare(self, y: Tensor, physics: Any, **kwargs: Any) -> Problem:
        """As the base class, and check that the physics is linear (before any network call)."""
        problem = super().prepare(y, physics, **kwargs)
        if not isinstance(physics, LinearPhysics):
            raise ConfigError(
                "PiGDM needs a linear physics with A_adjoint (deepinv LinearPhysics), found "
                f"{type(physics).__name__}; use LatentDPS for non-linear operators"
            )
        if self.solve == "dense" and not isinstance(physics, MatrixOperator):
            raise ConfigError(
                "solve='dense' needs a MatrixOperator physics, found "
                f"{type(physics).__name__}; use solve='cg'"
            )
        return problem

    def init_state(self, problem: Problem) -> GuidedState:
        """Start as :class:`GuidedDDIM` and factor :math:`AA^\\top` once for dense solves."""
        state = super().init_state(problem)
        gen = torch.Generator(device=problem.device)
        gen.manual_seed(int(problem.generator.initial_seed()) + 1)  # probes: their own stream
        state.extra["probe_generator"] = gen
        physics = problem.physics
        if self.solve != "cg" and isinstance(physics, MatrixOperator):
            mat = physics.matrix.to(device=problem.device, dtype=torch.float64)
            lam, vec = torch.linalg.eigh(mat @ mat.T)
            state.extra["eig"] = (lam.clamp_min(0.0), vec)
        return state

    def r2(self, a: float, s: float) -> float:
        r""":math:`r_t^2 = v s^2 / (s^2 + v a^2)`."""
        v = self.data_variance
        return v * s * s / (s * s + v * a * a)

    def image_scale2(self, z0: Tensor, x: Tensor, problem: Problem, state: GuidedState) -> Tensor:
        r""":math:`c_i^2` per particle: the image variance per unit of latent variance.

        For an affine decoder (the prior declares ``affine_decoder``) or ``image_scale="prior"``
        it is the prior's ``data_scale`` squared. Otherwise it is the trace-matched isotropic
        approximation of :math:`J J^\top` at :math:`\hat z_0`, :math:`J` the Jacobian of
        :math:`z \mapsto \mathrm{from\_model}(D(z))` (the decoder and the prior's stretch):
        :math:`c^2 = \mathrm{tr}(J J^\top)/n \approx (d/n)\,\|J u\|^2/\|u\|^2`
        for one probe :math:`u \sim \mathcal{N}(0, I_d)` (a finite difference: one decoder
        forward more per particle and step); :math:`d`, :math:`n` the latent and image sizes.
        It follows the image's units, so the guidance does not depend on them."""
        c2 = torch.full((z0.shape[0],), float(self.prior.data_scale) ** 2, device=z0.device)
        if self.image_scale == "prior" or getattr(self.prior, "affine_decoder", False):
            return c2.to(x.dtype)
        gen = state.extra["probe_generator"]
        u = torch.randn(z0.shape, generator=gen, device=gen.device).to(z0)
        h = 1e-2
        with torch.no_grad():
            dx = (self.render(z0 + h * u) - x) / h
        d, n = z0[0].numel(), x[0].numel()
        ratio = dx.flatten(1).pow(2).sum(1) / u.flatten(1).pow(2).sum(1)
        return (ratio * d / n).to(x.dtype)

    def solve_covariance(
        self,
        u: Tensor,
        a: float,
        s: float,
        problem: Problem,
        state: GuidedState,
        scale2: Tensor | None = None,
    ) -> Tensor:
        r""":math:`C_t^{-1} u` for a batch of measurement-space vectors ``u``, with
        :math:`c^2` = ``scale2`` per row (default: the prior's ``data_scale`` squared)."""
        sigma2 = problem.data_term.sigma**2
        if scale2 is None:
            scale2 = torch.full((u.shape[0],), float(self.prior.data_scale) ** 2)
        k = scale2.to(device=u.device, dtype=torch.float64) * self.r2(a, s)
        if "eig" in state.extra:
            lam, vec = state.extra["eig"]
            flat = u.reshape(u.shape[0], -1).to(torch.float64)
            coef = (flat @ vec) / (k[:, None] * lam + sigma2)
            return (coef @ vec.T).to(u.dtype).reshape(u.shape)
        physics = problem.physics
        k = k.to(u.real.dtype).reshape(-1, *[1] * (u.ndim - 1))

        def cov(v: Tensor) -> Tensor:
            return k * physics.A(physics.A_adjoint(v)) + sigma2 * v

        return conjugate_gradient(cov, u, max_iter=self.cg_iters, tol=self.cg_tol, parallel_dim=0)

    # ------------------------------------------------------------------ guidance
    def objective(
        self, ax: Tensor, rows: slice, a: float, s: float, problem: Problem, state: GuidedState
    ) -> Tensor:
        r""":math:`\langle \mathrm{sg}(C_t^{-1}(y - A\hat x_0)),\, A\hat x_0 \rangle` per particle;
        its gradient is :math:`g_t`."""
        z0, x = state.extra.pop("_z0"), state.extra.pop("_x")
        scale2 = self.image_scale2(z0.detach(), x.detach(), problem, state)
        with torch.no_grad():
            v = self.solve_covariance(problem.y_rep[rows] - ax, a, s, problem, state, scale2)
        prod = torch.conj(v) * ax if torch.is_complex(ax) else v * ax
        return prod.real.flatten(1).sum(1) if torch.is_complex(prod) else prod.flatten(1).sum(1)

    def render_for_guidance(self, z0: Tensor, state: GuidedState) -> Tensor:
        r"""Decode :math:`\hat z_0` and keep it and its image for :meth:`image_scale2`."""
        x = self.render(z0)
        state.extra["_z0"], state.extra["_x"] = z0, x
        return x

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        r""":math:`\kappa_t = \lambda (a' s^2 / a - c_2 s)`: the guided score inside DDIM."""
        return self.guidance_scale * (a_next * s * s / a - c2 * s)
