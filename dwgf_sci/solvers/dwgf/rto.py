r"""The randomise-then-optimise core shared by every RTO step (latent, image, decoder error).

:func:`gauss_newton_rto` draws, for each row, :math:`u \propto \mathcal{N}(u; c, v I)\,
L(F(u))` for a differentiable map :math:`F` and a Gaussian (or Gaussian-approximated Poisson)
likelihood: perturb the centre and the data,

.. math::

    \tilde c = c + \sqrt v\,\xi_1, \qquad \tilde y = y + \Sigma^{1/2}\xi_2,

and take one Gauss-Newton step from :math:`u_0` on
:math:`\tfrac{1}{2v}\|u - \tilde c\|^2 + \tfrac12\|F(u) - \tilde y\|^2_{\Sigma^{-1}}`, i.e. solve
:math:`(I/v + J^\top\Sigma^{-1}J)\,d = (\tilde c - u_0)/v - J^\top\Sigma^{-1}(F(u_0) - \tilde y)`
by a few (optionally diagonally preconditioned) conjugate-gradient iterations, then backtrack
until the objective decreases. For an affine :math:`F` and a converged CG this is an exact
draw; otherwise it is the usual RTO approximation (no Metropolis correction).

Started from :math:`d_0 = \tilde c - u_0` (``start="centre"``) the first residual lies in the
range of :math:`J^\top`, which the CG matrix maps into itself: every iteration works on the
directions the data see, and the others keep the prior's draw, their exact conditional value.
From :math:`d_0 = 0` (``"current"``) they keep the current particle's values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem

__all__ = ["Jacobian", "gauss_newton_rto", "real_flat"]

#: Explicit products of :math:`J` at :math:`u_0`: ``(jd, jt, diagonal)`` with
#: ``jd(d) = J d``, ``jt(w) = J^T w`` and ``diagonal(noise_var, var)`` a CG preconditioner.
Jacobian = tuple[Callable[..., Tensor], ...]


def real_flat(t: Tensor) -> Tensor:
    """Flatten per item, complex values as (real, imaginary) pairs."""
    if torch.is_complex(t):
        t = torch.view_as_real(t)
    return t.reshape(t.shape[0], -1)


def gauss_newton_rto(
    solver: LatentSolver,
    problem: Problem,
    x_c: Tensor,
    centre: Tensor,
    var: float,
    apply: Callable[[Tensor, slice], Tensor],
    *,
    cg_steps: int,
    line_search: int,
    decoder: bool,
    perturb: bool = True,
    start: str = "centre",
    perturb_centre: bool = True,
    jacobian: Jacobian | None = None,
    tol: float = 0.0,
) -> tuple[Tensor, Tensor, float]:
    r"""One randomise-then-optimise draw per row (see the module documentation).

    :param solver: supplies the random draws (``randn``) and ``max_batch`` chunks.
    :param x_c: the linearisation point :math:`u_0`, rows flattened.
    :param centre: :math:`c`; ``var``: :math:`v`.
    :param apply: ``apply(u, rows)``, flattened real measurements :math:`F(u)` of rows ``u``.
    :param cg_steps: CG iterations; ``line_search``: most backtracking trials (step x 1/4).
    :param decoder: :math:`F` runs the decoder (its backward passes are counted).
    :param perturb: perturb centre and data (False: a step towards the conditional mode).
    :param start: ``"centre"`` or ``"current"`` (see the module documentation).
    :param perturb_centre: False perturbs the data only, for a centre that is a prior draw.
    :param jacobian: explicit products of :math:`J` replacing the stored graph and the forward
        difference, with a diagonal CG preconditioner.
    :param tol: stop CG once every row's residual is below ``tol`` times its first one.
    :return: the new rows, their data term :math:`\Phi` (unperturbed data) and the fraction of
        rows that moved.
    """
    n = x_c.shape[0]
    target = centre
    if perturb and perturb_centre:
        target = centre + math.sqrt(var) * solver.randn(tuple(centre.shape), problem)

    def measure(u: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([apply(u[sl], sl) for sl in solver.chunks(n)])

    graphs = []
    if jacobian is None:
        for sl in solver.chunks(n):
            zc = x_c[sl].detach().requires_grad_(True)
            with torch.enable_grad():
                graphs.append((sl, zc, apply(zc, sl)))
        ax_c = torch.cat([ax.detach() for *_, ax in graphs])
    else:
        ax_c = measure(x_c)
    y = real_flat(problem.y_rep)
    # sigma^2, the per-pixel map (inf where masked) or the Poisson approximation at u0
    noise_var = problem.data_term.variance(ax_c)
    y_pert = y
    if perturb:  # masked pixels (infinite variance) keep their (finite, ignored) value
        draw = noise_var.sqrt() * solver.randn(tuple(y.shape), problem)
        y_pert = y + torch.where(torch.isfinite(noise_var), draw, 0.0)

    def graph_jt(w: Tensor) -> Tensor:  # J^T w through the stored graph
        parts = [torch.autograd.grad(ax, zc, w[sl], retain_graph=True)[0] for sl, zc, ax in graphs]
        if decoder:
            solver.prior.calls["decoder_backward"] += n
        return torch.cat(parts)

    def difference_jd(d: Tensor) -> Tensor:  # J d, a forward difference of relative size 1e-3
        h = 1e-3 * x_c.norm(dim=1, keepdim=True).clamp_min(1.0)
        h = h / d.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return (measure(x_c + h * d) - ax_c) / h

    precond: Tensor | None = None
    if jacobian is None:
        jd, jt = difference_jd, graph_jt
    else:
        jd, jt, diagonal = jacobian
        precond = diagonal(noise_var, var)

    d, r = _start(start, target, x_c, var, ax_c, y_pert, noise_var, jd, jt)
    d = _conjugate_gradients(d, r, var, noise_var, jd, jt, precond, cg_steps, tol)

    def objective(x: Tensor, ax: Tensor) -> Tensor:
        prior_part = 0.5 * (x - target).pow(2).sum(1) / var
        return prior_part + 0.5 * ((ax - y_pert).pow(2) / noise_var).sum(1)

    best = objective(x_c, ax_c)
    new, ax_new = x_c.detach().clone(), ax_c.clone()
    todo = torch.ones(n, dtype=torch.bool, device=x_c.device)
    frac = 1.0
    for _ in range(line_search):
        cand = x_c + frac * d
        ax = measure(cand)
        ok = todo & (objective(cand, ax) < best)
        new[ok], ax_new[ok] = cand[ok], ax[ok]
        todo &= ~ok
        if not bool(todo.any()):
            break
        frac *= 0.25
    phi = 0.5 * ((ax_new - y).pow(2) / noise_var).sum(1)
    return new, phi, float((~todo).to(torch.float64).mean())


def _start(
    start: str,
    target: Tensor,
    x_c: Tensor,
    var: float,
    ax_c: Tensor,
    y_pert: Tensor,
    noise_var: Tensor,
    jd: Callable[[Tensor], Tensor],
    jt: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """CG's first iterate :math:`d_0` and residual :math:`r_0 = b - M d_0`."""
    if start == "centre":  # d0 = c~ - u0: r0 = -J^T S^-1 (F(u0) + J d0 - y~)
        d = target - x_c
        return d, -jt((ax_c + jd(d) - y_pert) / noise_var)
    d = torch.zeros_like(x_c)
    return d, (target - x_c) / var - jt((ax_c - y_pert) / noise_var)


def _conjugate_gradients(
    d: Tensor,
    r: Tensor,
    var: float,
    noise_var: Tensor,
    jd: Callable[[Tensor], Tensor],
    jt: Callable[[Tensor], Tensor],
    precond: Tensor | None,
    steps: int,
    tol: float,
) -> Tensor:
    r"""Batched (diagonally preconditioned) CG on :math:`M d = b` per row,
    :math:`M = I/v + J^\top\Sigma^{-1}J`, from ``d`` with residual ``r``."""
    z = r if precond is None else r / precond
    p = z.clone()
    rr = (r * z).sum(1, keepdim=True)  # r^T P^-1 r
    stop = (tol**2) * rr
    for _ in range(steps):
        if tol > 0 and bool((rr <= stop).all()):
            break
        q = p / var + jt(jd(p) / noise_var)
        alpha = rr / (p * q).sum(1, keepdim=True).clamp_min(1e-30)
        d = d + alpha * p
        r = r - alpha * q
        z = r if precond is None else r / precond
        rr_new = (r * z).sum(1, keepdim=True)
        p = z + (rr_new / rr.clamp_min(1e-30)) * p
        rr = rr_new
    return d
