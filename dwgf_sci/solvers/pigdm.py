r"""ΠGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz, ICLR 2023), on latents.

ΠGDM approximates the denoising posterior by a Gaussian around Tweedie's estimate,
:math:`p(z_0 \mid z_t) \approx \mathcal{N}(\hat z_0(z_t), r_t^2 I)`, so that for
:math:`y = A x + \sigma n` with :math:`x = \mathrm{from\_model}(D(z_0))` and the image
covariance :math:`r_t^2 J J^\top` (:math:`J` the Jacobian of :math:`z \mapsto x` at
:math:`\hat z_0`) approximated by :math:`r_t^2\,\mathrm{diag}(c^2)` (see below)

.. math::

    p(y \mid z_t) \approx \mathcal{N}\big(y;\; A\hat x_0,\; C_t\big), \qquad
    \hat x_0 = \mathrm{from\_model}(D(\hat z_0(z_t))), \qquad
    C_t = r_t^2\, A\,\mathrm{diag}(c^2) A^\top + \Sigma,

with :math:`\Sigma = \sigma^2 I`, or :math:`\mathrm{diag}(v)` for a per-pixel noise map
(:class:`~dwgf_sci.operators.pixel_noise.PixelNoise`; masked pixels, :math:`v = \infty`, get no
weight), and the guidance is the gradient of its logarithm (:math:`C_t` held fixed),

.. math::

    g_t = \nabla_{z_t} \log p(y \mid z_t)
        = \Big(\frac{\partial \hat x_0}{\partial z_t}\Big)^{\!\top} A^\top C_t^{-1}
          (y - A\hat x_0),

a vector-Jacobian product through the decoder and the UNet (one backward pass each).
:math:`C_t^{-1}` is applied exactly from the eigendecomposition of :math:`AA^\top` when the physics
is a :class:`~dwgf_sci.operators.matrix.MatrixOperator`, and by conjugate gradients with
``physics.A`` / ``physics.A_adjoint`` otherwise (deepinv's
:func:`~deepinv.optim.utils.conjugate_gradient`, batched over particles).

**Scale-free guidance** (the defaults). Two approximations make :math:`C_t` and :math:`g_t`
follow the units of the problem and stay stable with a learned latent prior:

* ``image_scale="decoder"``: the image covariance is
  :math:`r_t^2\,\mathrm{diag}(\phi')\,J_D J_D^\top\mathrm{diag}(\phi')` with :math:`J_D` the
  decoder's Jacobian and :math:`\phi'` the per-pixel slope of the prior's map ``from_model``
  (its asinh stretch, or ``data_scale``); :math:`J_D J_D^\top` is replaced by the isotropic
  :math:`\kappa I` with the same trace, :math:`\kappa = \mathrm{tr}(J_D J_D^\top)/n`, estimated
  per particle and step by one finite-difference probe
  :math:`(d/n)\,\|J_D u\|^2/\|u\|^2`, :math:`u \sim \mathcal{N}(0, I_d)` (one decoder forward
  more; :math:`d`, :math:`n` the latent and image sizes). So
  :math:`C_t = r_t^2 A\,\mathrm{diag}(\kappa\phi'^2) A^\top + \sigma^2 I`, applied by conjugate
  gradients (exactly from the eigendecomposition when :math:`\phi'` is constant and the physics
  is a :class:`~dwgf_sci.operators.matrix.MatrixOperator`). It carries the image's units:
  multiplying :math:`y`, :math:`\sigma` and the image units (or the operator) by :math:`c`
  leaves the guidance unchanged. ``image_scale="prior"`` uses :math:`c^2` = ``data_scale``
  squared, as before; for the shipped galaxy prior, whose asinh stretch makes the slope of
  bright pixels ~100x ``data_scale``, that under-states :math:`C_t` and the run diverges. A
  prior that declares ``affine_decoder`` always uses ``data_scale`` (exact for an isometry).
* ``jacobian="gaussian"``: :math:`\partial\hat z_0/\partial z_t` is taken as its value under the
  same Gaussian approximation, :math:`a r_t^2/s^2` (exact for a Gaussian prior), instead of the
  UNet's vector-Jacobian product (``"network"``), whose errors at high noise are amplified by
  :math:`1/a` (~160 at the first step) and blew the first step up on both shipped priors. No
  backward pass through the UNet.

**Capped guidance** (``zeta``, the default 1). ``guidance_scale`` :math:`\lambda = 1` is the
ΠGDM score itself; with a fixed :math:`\lambda` and 50 steps on the shipped priors the best value
was ~1 on the galaxy tasks and 0.1-0.3 on CT, where 1 overshoots. So the scale is capped per
particle and step, as Polyak caps a gradient step: with
:math:`\varphi = \tfrac12 r^\top C_t^{-1} r` (:math:`r = y - A\hat x_0`), whose value at the
truth is :math:`m/2` under ΠGDM's approximation (:math:`m` measurements), the update's linearised
decrease of :math:`\varphi` is at most :math:`\zeta(\varphi - m/2)_+`:

.. math::

    \lambda_i = \min\Big(\lambda,\;
        \frac{\zeta\,(\varphi_i - m/2)_+\; s^2 a'}{\kappa_1\, a\, r_t^2\, \|h_i\|^2}\Big),

with :math:`h_i = \nabla_{\hat z_0}` of the objective (the guidance is
:math:`g = (a r_t^2/s^2)\,h`), :math:`\kappa_1` the update's factor at :math:`\lambda = 1`, and
a step :math:`\kappa g` in :math:`z_{t'}` moving the next :math:`\hat z_0` by about
:math:`\kappa g / a'`. Dimensionless and scale-free as :math:`\varphi` is; ``zeta=None`` gives
the constant :math:`\lambda` (the exact ΠGDM sampler for a Gaussian prior). Measured default
against tuned: ``benchmarks/results/baseline_defaults.md``.

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
JACOBIANS = ("gaussian", "network")


class PiGDM(GuidedDDIM):
    r"""Pseudoinverse-guided diffusion model sampler on latents (see the module doc).

    ``PiGDM(prior)(y, physics)`` returns a :class:`~dwgf_sci.solvers.posterior.Posterior`.
    Needs a linear physics (``A`` and ``A_adjoint``) with Gaussian noise: one level, read from
    the physics unless ``noise_sigma`` is given, or a per-pixel noise map. Per particle and
    step: one UNet forward and backward, one decoder forward and backward, and the solve with
    :math:`C_t`.

    :param float guidance_scale: :math:`\lambda`, the largest guidance (1, the default: the
        ΠGDM likelihood score itself); dimensionless, scale-free with
        ``image_scale="decoder"``.
    :param zeta: the cap of the guidance per particle and step (default 1: the linearised data
        fit may move at most all the way to the noise level; see the module doc); ``None``: the
        constant ``guidance_scale``.
    :param str image_scale: :math:`c^2` in :math:`C_t`: ``"decoder"`` (default: per pixel,
        from the decoder's Jacobian and the slope of the prior's stretch at :math:`\hat z_0`,
        see the module doc) or ``"prior"`` (the prior's ``data_scale`` squared).
    :param str jacobian: :math:`\partial\hat z_0/\partial z_t` in the guidance:
        ``"gaussian"`` (default: :math:`a r_t^2/s^2`, its value under ΠGDM's Gaussian
        approximation; a backward pass through the decoder only) or ``"network"`` (the
        vector-Jacobian product through the UNet, as the paper).
    :param float data_variance: :math:`v` in :math:`r_t^2 = v s^2 / (s^2 + v a^2)` (paper: 1).
    :param str solve: how :math:`C_t^{-1}` is applied: ``"auto"`` (dense for a
        :class:`~dwgf_sci.operators.matrix.MatrixOperator`, else CG), ``"dense"`` or ``"cg"``.
    :param int cg_iters: most conjugate-gradient iterations per step.
    :param float cg_tol: relative residual tolerance of conjugate gradients.
    :param int steps: timesteps of the DDIM grid (default 100, as in the paper's experiments).
    :param float eta: DDIM stochasticity (default 1.0: DDPM-like ancestral sampling).
    """

    name: ClassVar[str] = "pigdm"

    def __init__(
        self,
        prior: LatentPrior,
        *,
        guidance_scale: float = 1.0,
        zeta: float | None = 1.0,
        data_variance: float = 1.0,
        solve: str = "auto",
        cg_iters: int = 50,
        cg_tol: float = 1e-6,
        image_scale: str = "decoder",
        jacobian: str = "gaussian",
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
        if zeta is not None and not (math.isfinite(float(zeta)) and float(zeta) > 0):
            raise ConfigError(f"zeta must be a positive number or None, found {zeta}")
        if not float(data_variance) > 0:
            raise ConfigError(f"data_variance must be positive, found {data_variance}")
        if solve not in SOLVES:
            raise ConfigError(f"unknown solve {solve!r}; choose one of {SOLVES}")
        if int(cg_iters) < 1 or not float(cg_tol) > 0:
            raise ConfigError(f"need cg_iters >= 1 and cg_tol > 0, found {cg_iters}, {cg_tol}")
        if image_scale not in IMAGE_SCALES:
            raise ConfigError(f"unknown image_scale {image_scale!r}; choose one of {IMAGE_SCALES}")
        super().__init__(prior, steps=steps, eta=eta, **kwargs)
        if jacobian not in JACOBIANS:
            raise ConfigError(f"unknown jacobian {jacobian!r}; choose one of {JACOBIANS}")
        self.image_scale = image_scale
        self.jacobian = jacobian
        self.guidance_scale = float(guidance_scale)
        self.zeta = None if zeta is None else float(zeta)
        self._ddim: tuple[float, float, float, float] | None = None
        self.data_variance = float(data_variance)
        self.solve = solve
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        return {
            **super().settings(),
            "guidance_scale": self.guidance_scale,
            "zeta": self.zeta,
            "data_variance": self.data_variance,
            "solve": self.solve,
            "cg_iters": self.cg_iters,
            "cg_tol": self.cg_tol,
            "image_scale": self.image_scale,
            "jacobian": self.jacobian,
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
            gram = mat @ mat.T
            lam, vec = torch.linalg.eigh(gram)
            state.extra["eig"], state.extra["gram"] = (lam.clamp_min(0.0), vec), gram
        return state

    def r2(self, a: float, s: float) -> float:
        r""":math:`r_t^2 = v s^2 / (s^2 + v a^2)`."""
        v = self.data_variance
        return v * s * s / (s * s + v * a * a)

    def image_weights(self, z0: Tensor, problem: Problem, state: GuidedState) -> Tensor:
        r"""The image variance per unit of latent variance, per pixel, :math:`c^2`: shape
        ``(n, 1, 1, 1)`` (one value) or ``(n, C, H, W)``.

        For an affine decoder (the prior declares ``affine_decoder``) or ``image_scale="prior"``
        it is the prior's ``data_scale`` squared. Otherwise it is
        :math:`\kappa\,\phi'(D(\hat z_0))^2`: the decoder's Jacobian :math:`J_D` replaced by
        the isotropic one with the same trace, :math:`\kappa = \mathrm{tr}(J_D J_D^\top)/n
        \approx (d/n)\,\|J_D u\|^2/\|u\|^2` for one probe :math:`u \sim \mathcal{N}(0, I_d)`
        (a finite difference: one decoder forward more per particle and step; :math:`d`,
        :math:`n` the latent and image sizes), times the squared slope of the prior's map
        :math:`\phi` = ``from_model`` at each pixel (constant without a stretch). It carries
        the image's units, so the guidance does not depend on them."""
        n = z0.shape[0]
        if self.image_scale == "prior" or getattr(self.prior, "affine_decoder", False):
            c2 = float(self.prior.data_scale) ** 2
            return torch.full((n, 1, 1, 1), c2, device=z0.device, dtype=problem.dtype)
        x_model = state.extra["_x_model"].detach()
        gen = state.extra["probe_generator"]
        u = torch.randn(z0.shape, generator=gen, device=gen.device).to(z0)
        h = 1e-2
        with torch.enable_grad():
            xm = x_model.clone().requires_grad_(True)
            (slope,) = torch.autograd.grad(self.prior.from_model(xm).sum(), xm)
        with torch.no_grad():
            dx = (self.prior.decode(z0 + h * u) - x_model) / h
        d, pixels = z0[0].numel(), x_model[0].numel()
        kappa = dx.flatten(1).pow(2).sum(1) / u.flatten(1).pow(2).sum(1) * d / pixels
        return (kappa.reshape(-1, 1, 1, 1) * slope.pow(2)).to(problem.dtype)

    def solve_covariance(
        self,
        u: Tensor,
        a: float,
        s: float,
        problem: Problem,
        state: GuidedState,
        weights: Tensor | None = None,
        rows: slice = slice(None),
    ) -> Tensor:
        r""":math:`C_t^{-1} u` for a batch of measurement-space vectors ``u`` (the particle
        ``rows``), with :math:`C_t = r_t^2 A\,\mathrm{diag}(c^2) A^\top + \Sigma` and
        :math:`c^2` = ``weights`` (see :meth:`image_weights`; default the prior's
        ``data_scale`` squared). :math:`\Sigma = \sigma^2 I`, or with a per-pixel noise map
        :math:`\Sigma = \mathrm{diag}(v)`, applied in whitened form with the precisions
        :math:`w = 1/v` (0 at masked pixels, :math:`v = \infty`):

        .. math::

            C_t^{-1} = W^{1/2}\big(W^{1/2} K W^{1/2} + I\big)^{-1} W^{1/2}, \qquad
            K = r_t^2 A\,\mathrm{diag}(c^2) A^\top,

        exact where :math:`v` is finite and its limit where a pixel is masked: that pixel's
        residual gets no weight."""
        if weights is None:
            weights = torch.full((u.shape[0], 1, 1, 1), float(self.prior.data_scale) ** 2)
        r2 = self.r2(a, s)
        term = problem.data_term
        if term.variance_map is not None:
            var = term.rows(rows).variance_like(u)
            return self._solve_whitened(u, r2, weights, var, problem, state)
        sigma2 = term.sigma**2
        if "eig" in state.extra and weights[0].numel() == 1:
            k = weights.reshape(-1, 1).to(device=u.device, dtype=torch.float64) * r2
            lam, vec = state.extra["eig"]
            flat = u.reshape(u.shape[0], -1).to(torch.float64)
            coef = (flat @ vec) / (k * lam + sigma2)
            return (coef @ vec.T).to(u.dtype).reshape(u.shape)
        physics = problem.physics
        # in noise units, C / sigma^2 and u / |u|: CG's absolute epsilon then sees the same
        # numbers whatever the units of the problem
        w = (r2 * weights / sigma2).to(device=u.device, dtype=u.real.dtype)
        norm = u.abs().flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (u.ndim - 1))

        def cov(v: Tensor) -> Tensor:
            back = physics.A_adjoint(v)
            back = back.real if torch.is_complex(back) and not torch.is_complex(v) else back
            return physics.A(w * back) + v

        if torch.is_complex(u):
            # A^T of a real image is only real-linear on complex measurements: CG on the
            # real and imaginary parts, with the real inner product the objective uses
            def cov_real(v: Tensor) -> Tensor:
                return torch.view_as_real(cov(torch.view_as_complex(v.contiguous())))

            sol = conjugate_gradient(
                cov_real,
                torch.view_as_real(u / norm),
                max_iter=self.cg_iters,
                tol=self.cg_tol,
                parallel_dim=0,
            )
            return torch.view_as_complex(sol.contiguous()) * (norm / sigma2)
        v = conjugate_gradient(
            cov, u / norm, max_iter=self.cg_iters, tol=self.cg_tol, parallel_dim=0
        )
        return v * (norm / sigma2)

    def _solve_whitened(
        self,
        u: Tensor,
        r2: float,
        weights: Tensor,
        var: Tensor,
        problem: Problem,
        state: GuidedState,
    ) -> Tensor:
        r""":math:`C_t^{-1} u` with a per-pixel variance ``var`` (rows of ``u``; ``inf`` at
        masked pixels) in the whitened form of :meth:`solve_covariance`: by one dense solve per
        row where the matrix is at hand (:math:`c^2` one value per row), else by conjugate
        gradients on the dimensionless :math:`W^{1/2} K W^{1/2} + I`."""
        root = torch.where(torch.isfinite(var), var.rsqrt(), torch.zeros_like(var))
        if "gram" in state.extra and weights[0].numel() == 1:
            n = u.shape[0]
            k = weights.reshape(n, 1, 1).to(device=u.device, dtype=torch.float64) * r2
            sw = root.reshape(n, -1).to(torch.float64)
            mat = k * sw[:, :, None] * state.extra["gram"] * sw[:, None, :]
            mat = mat + torch.eye(sw.shape[1], dtype=mat.dtype, device=mat.device)
            rhs = (sw * u.reshape(n, -1).to(torch.float64))[..., None]
            sol = torch.linalg.solve(mat, rhs)[..., 0]
            return (sw * sol).to(u.dtype).reshape(u.shape)
        physics = problem.physics
        scale = (r2 * weights).to(device=u.device, dtype=u.dtype)

        def cov(v: Tensor) -> Tensor:
            return root * physics.A(scale * physics.A_adjoint(root * v)) + v

        rhs = root * u
        norm = rhs.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, *[1] * (u.ndim - 1))
        v = conjugate_gradient(
            cov, rhs / norm, max_iter=self.cg_iters, tol=self.cg_tol, parallel_dim=0
        )
        return root * v * norm

    # ------------------------------------------------------------------ guidance
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
        r"""With ``jacobian="gaussian"``: :math:`\partial\hat z_0/\partial z_t` replaced by its
        value under the Gaussian approximation, :math:`a r_t^2 / s^2`, so the guidance is a
        backward pass through the decoder only; else the network's (see the base class)."""
        if self.jacobian == "network":
            return super().guided_noise(z_t, t, a, s, rows, problem, state)
        eps = self.predict_noise(z_t, t)
        with torch.enable_grad():
            z0 = ((z_t - s * eps) / a).detach().requires_grad_(True)
            ax = problem.physics.A(self.render_for_guidance(z0, state))
            loss = self.objective(ax, rows, a, s, problem, state)
            (grad,) = torch.autograd.grad(loss.sum(), z0)
        self.prior.calls["decoder_backward"] += z_t.shape[0]
        grad = grad.detach()
        factor = self.capped_scale(grad, ax.detach(), rows, a, s, problem, state)
        return eps, grad * factor * (a * self.r2(a, s) / (s * s)), ax.detach()

    def capped_scale(
        self,
        h: Tensor,
        ax: Tensor,
        rows: slice,
        a: float,
        s: float,
        problem: Problem,
        state: GuidedState,
    ) -> Tensor:
        r"""Per particle :math:`\lambda_i / \lambda` (see ``zeta``): the guidance scale capped
        so that the linearised decrease of :math:`\varphi = \tfrac12 r^\top C_t^{-1} r` is at
        most :math:`\zeta` times its excess over :math:`m/2`, its value at the truth under
        ΠGDM's approximation. ``h`` is :math:`\nabla_{\hat z_0}` of the objective; a step
        :math:`\kappa g` in :math:`z_{t'}` moves the next :math:`\hat z_0` by about
        :math:`\kappa g / a'`, so the decrease at scale 1 is
        :math:`\kappa_1 a r_t^2 \|h\|^2 / (s^2 a')`."""
        phi = state.extra.pop("_phi", None)
        ones = torch.ones(h.shape[0], dtype=h.dtype, device=h.device)
        if self.zeta is None or phi is None or self._ddim is None or self.guidance_scale == 0:
            return ones.reshape(-1, *[1] * (h.ndim - 1))
        _, _, a_next, c2 = self._ddim
        k1 = a_next * s * s / a - c2 * s
        m = problem.data_term.rows(rows).informative(ax).to(h.dtype)
        excess = (phi.to(h.dtype) - 0.5 * m).clamp_min(0.0)
        decrease = k1 * a * self.r2(a, s) / (s * s * a_next) * h.flatten(1).pow(2).sum(1)
        lam = torch.where(
            decrease > 0, self.zeta * excess / decrease.clamp_min(1e-30), self.guidance_scale
        )
        return (lam.clamp(max=self.guidance_scale) / self.guidance_scale).reshape(
            -1, *[1] * (h.ndim - 1)
        )

    def objective(
        self, ax: Tensor, rows: slice, a: float, s: float, problem: Problem, state: GuidedState
    ) -> Tensor:
        r""":math:`\langle \mathrm{sg}(C_t^{-1}(y - A\hat x_0)),\, A\hat x_0 \rangle` per particle;
        its gradient is :math:`g_t`."""
        z0 = state.extra.pop("_z0")
        weights = self.image_weights(z0.detach(), problem, state)
        state.extra.pop("_x_model")
        with torch.no_grad():
            v = self.solve_covariance(
                problem.y_rep[rows] - ax, a, s, problem, state, weights, rows=rows
            )
        resid = problem.y_rep[rows] - ax.detach()
        quad = (torch.conj(resid) * v).real if torch.is_complex(v) else resid * v
        state.extra["_phi"] = 0.5 * quad.flatten(1).sum(1)
        prod = torch.conj(v) * ax if torch.is_complex(ax) else v * ax
        return prod.real.flatten(1).sum(1) if torch.is_complex(prod) else prod.flatten(1).sum(1)

    def render_for_guidance(self, z0: Tensor, state: GuidedState) -> Tensor:
        r"""Decode :math:`\hat z_0` and keep it and its image for :meth:`image_scale2`."""
        x_model = self.prior.decode(z0)
        state.extra["_z0"], state.extra["_x_model"] = z0, x_model
        return self.prior.from_model(x_model)

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        r""":math:`\kappa_t = \lambda (a' s^2 / a - c_2 s)`: the guided score inside DDIM."""
        self._ddim = (a, s, a_next, c2)
        return self.guidance_scale * (a_next * s * s / a - c2 * s)
