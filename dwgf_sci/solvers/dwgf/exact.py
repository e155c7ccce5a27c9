r"""The exact Gaussian likelihood step (``likelihood_step="exact"``).

For a Gaussian likelihood, a linear physics and an affine decoder the map
:math:`u \mapsto A(D(u)) = J u + c` is affine, so
:math:`\mathcal{N}(u; v_c, \lambda_0^{-1} I)\, L(u)` is Gaussian with precision
:math:`\lambda_0 I + J^\top J/\sigma^2`. One eigendecomposition :math:`J^\top J/\sigma^2 =
Q \Lambda Q^\top` per call (``dim + 1`` decoder forwards to probe :math:`J`) makes every level's
draw exact and free of network calls:

.. math::

    u = Q\Big(\frac{Q^\top(\lambda_0 v_c + J^\top(y - c)/\sigma^2)}{\lambda_0 + \Lambda}
        + \frac{Q^\top\xi}{\sqrt{\lambda_0 + \Lambda}}\Big), \qquad \xi \sim \mathcal{N}(0, I).

The noise goes through the symmetric square root :math:`Q(\lambda_0 + \Lambda)^{-1/2}Q^\top` of
the covariance (:math:`Q^\top\xi` has the law of :math:`\xi`), which, unlike :math:`Q` alone,
does not depend on the basis LAPACK picks inside a repeated eigenvalue (the null space of
:math:`J`, for one): the same seed gives the same draw on every machine, up to rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from .state import ExactCache, ParticleState
from .steps import LikelihoodStep

if TYPE_CHECKING:
    from ..base import Problem

__all__ = ["ExactStep"]


class ExactStep(LikelihoodStep):
    """Exact Gaussian draw from the eigendecomposition of :math:`J^\\top J`."""

    name: ClassVar[str] = "exact"
    reports_accept: ClassVar[bool] = False

    def new_cache(self) -> ExactCache:
        return ExactCache()

    def start(self, state: ParticleState, centre: Tensor, var0: float, problem: Problem) -> None:
        """Probe :math:`J` and condition the initial particles exactly on the data."""
        assert isinstance(state.cache, ExactCache)
        state.cache.factors = self.factors(problem, state.z.shape[1])
        state.z = self.exact_draw(state, centre, 1.0 / var0, problem)

    def draw(self, state: ParticleState, centre: Tensor, var: float, problem: Problem) -> float:
        state.z = self.exact_draw(state, centre, 1.0 / var, problem)
        return float("nan")

    def factors(self, problem: Problem, dim: int) -> dict[str, Tensor]:
        """Matrix :math:`J` of :math:`u \\mapsto A(D(u))` by probing (``dim + 1`` decoder
        forwards), the eigendecomposition of :math:`J^\\top J/\\sigma^2` and
        :math:`J^\\top (y - c)/\\sigma^2` per measurement, :math:`c = A(D(0))`."""
        solver = self.ops
        f64 = torch.float64
        basis = torch.eye(dim + 1, dim, device=problem.device, dtype=problem.dtype)
        basis = basis.roll(1, 0).reshape(dim + 1, *problem.latent_shape)  # row 0: the origin
        images = solver.render_no_grad(basis)
        with torch.no_grad():
            ax = torch.cat([problem.physics.A(images[sl]) for sl in solver.chunks(dim + 1)])
        ax = ax.real if torch.is_complex(ax) else ax
        ax = ax.flatten(1).to(f64)
        offset, jac = ax[:1], (ax[1:] - ax[:1]).T  # (1, m), (m, dim)
        y = problem.y.real if torch.is_complex(problem.y) else problem.y
        resid = y.flatten(1).to(f64) - offset
        term = problem.data_term
        if term.variance_map is not None:  # W = diag(1/v), 0 where masked
            w = 1.0 / term.variance_like(y).flatten(1).to(f64)  # (B, m)
            if term.variance_map.shape[0] == 1:  # one map for all: one factorisation
                lam, q = torch.linalg.eigh(jac.T @ (w[0, :, None] * jac))
            else:  # one per measurement
                lam, q = torch.linalg.eigh(torch.einsum("mi,bm,mj->bij", jac, w, jac))
            jty = (resid * w) @ jac
        else:
            sigma = float(term.sigma)
            lam, q = torch.linalg.eigh(jac.T @ jac / sigma**2)
            jty = resid @ jac / sigma**2
        return {"J": jac, "offset": offset, "lam": lam.clamp_min(0), "Q": q, "jty": jty}

    def exact_draw(self, state: ParticleState, v: Tensor, prec0: float, problem: Problem) -> Tensor:
        """Exact draw of :math:`u \\propto \\mathcal{N}(u; v, \\mathrm{prec0}^{-1} I)\\, L(u)`."""
        assert isinstance(state.cache, ExactCache)
        g = state.cache.factors
        jty = g["jty"].repeat_interleave(problem.particles, 0)
        noise = self.ops.randn(tuple(v.shape), problem).to(torch.float64)
        if g["Q"].ndim == 3:  # one factorisation per measurement (a per-pixel noise map)
            b, p = problem.batch, problem.particles
            q = g["Q"]
            prec = (prec0 + g["lam"])[:, None]  # (B, 1, dim)
            rhs = (v.to(torch.float64) * prec0 + jty).reshape(b, p, -1)
            coef = torch.bmm(rhs, q) / prec
            white = torch.bmm(noise.reshape(b, p, -1), q) / prec.sqrt()
            out = torch.bmm(coef + white, q.transpose(1, 2))
            return out.reshape(v.shape).to(v.dtype)
        prec = prec0 + g["lam"]
        coef = (v.to(torch.float64) * prec0 + jty) @ g["Q"] / prec
        return ((coef + noise @ g["Q"] / prec.sqrt()) @ g["Q"].T).to(v.dtype)

    def misfit(self, state: ParticleState, problem: Problem) -> dict[str, float]:
        """Data term and reduced chi-square from :math:`A(D(u)) = J u + c`."""
        assert isinstance(state.cache, ExactCache)
        g = state.cache.factors
        y = problem.y_rep.real if torch.is_complex(problem.y_rep) else problem.y_rep
        resid = state.z.to(torch.float64) @ g["J"].T + g["offset"] - y.flatten(1)
        term = problem.data_term
        if term.variance_map is not None:
            r2 = resid.pow(2) / term.variance_like(resid)
            chi2 = r2.sum(1) / term.informative(resid)
            return {"data": float(0.5 * r2.sum(1).mean()), "chi2": float(chi2.mean())}
        r2 = resid.pow(2) / float(term.sigma) ** 2
        return {"data": float(0.5 * r2.sum(1).mean()), "chi2": float(r2.mean())}
