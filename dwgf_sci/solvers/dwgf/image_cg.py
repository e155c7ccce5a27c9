r"""Randomise-then-optimise in image space, shared by the image likelihood step and the final
decoder-error step.

Both solve for an image :math:`x = b + s \odot w` (model units, rows flattened) with a white
prior :math:`w \sim \mathcal{N}(0, I)` around a base image :math:`b` with per-pixel scale
:math:`s`, by :func:`~.rto.gauss_newton_rto` with ``refine_cg_steps`` CG iterations that apply
only the operator. For a linear physics with real measurements :func:`image_jacobian` gives the
products :math:`J d = A(m \odot s \odot d)` and :math:`J^\top v = m \odot s \odot A^\top v`
directly (:math:`m = \mathrm{from\_model}'(x)`, the unit map's slope per pixel) and the diagonal
preconditioner :math:`1/v + c\,(m s)^2`, where :math:`c = \|\Sigma^{-1/2} A\xi\|^2/\|\xi\|^2`
(one probe :math:`\xi` from a fixed seed) estimates the mean diagonal of
:math:`A^\top\Sigma^{-1}A`: the stretch's slope and the decoder error spread :math:`(m s)^2`
over orders of magnitude, and this scaling takes that spread out of CG's conditioning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from .rto import Jacobian, gauss_newton_rto, real_flat

if TYPE_CHECKING:
    from ..base import LatentSolver, Problem
    from .config import DWGFConfig

__all__ = ["image_jacobian", "white_image_rto"]


def white_image_rto(
    solver: LatentSolver,
    problem: Problem,
    config: DWGFConfig,
    base: Tensor,
    scale: Tensor,
    start: Tensor,
    *,
    cg_from: str,
    perturb: bool = True,
    perturb_centre: bool = True,
) -> tuple[Tensor, Tensor, float]:
    """:func:`~.rto.gauss_newton_rto` on :math:`x = \\mathrm{base} + \\mathrm{scale}\\odot w`
    with the white prior on :math:`w`, from ``start`` (``cg_from``: ``"current"`` or
    ``"centre"``): returns :math:`w`, the data term and the fraction of rows moved."""
    refine = config.refine

    def apply(w: Tensor, sl: slice) -> Tensor:
        shaped = (base[sl] + scale[sl] * w).reshape(-1, *problem.image_shape)
        return real_flat(problem.physics.A(solver.prior.from_model(shaped)))

    zero = torch.zeros_like(base)
    return gauss_newton_rto(
        solver,
        problem,
        start,
        zero,
        1.0,
        apply,
        cg_steps=refine.cg_steps,
        line_search=config.rto.line_search,
        decoder=False,
        perturb=perturb,
        start=cg_from,
        perturb_centre=perturb_centre,
        jacobian=image_jacobian(solver, base + scale * start, scale, problem),
        tol=refine.cg_tol,
    )


def image_jacobian(
    solver: LatentSolver, x: Tensor, scale: Tensor, problem: Problem
) -> Jacobian | None:
    """Explicit products of :math:`w \\mapsto A(\\mathrm{from\\_model}(x + s \\odot w))` at
    :math:`w = 0` and the CG preconditioner (see the module documentation), or None (the
    generic path) for a nonlinear physics or complex measurements."""
    physics = problem.physics
    if not isinstance(physics, LinearPhysics) or torch.is_complex(problem.y):
        return None
    image_shape = problem.image_shape
    with torch.enable_grad():
        xs = x.detach().reshape(-1, *image_shape).requires_grad_(True)
        (slope,) = torch.autograd.grad(solver.prior.from_model(xs).sum(), xs)
    gain = (slope.reshape(x.shape) * scale).detach()
    meas_shape = tuple(problem.y.shape[1:])
    chunks = list(solver.chunks(x.shape[0]))

    def jd(d: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    physics.A((gain[sl] * d[sl]).reshape(-1, *image_shape)).flatten(1)
                    for sl in chunks
                ]
            )

    def jt(v: Tensor) -> Tensor:
        with torch.no_grad():
            parts = [physics.A_adjoint(v[sl].reshape(-1, *meas_shape)) for sl in chunks]
        return gain * torch.cat(parts).flatten(1)

    def diagonal(noise_var: Tensor, var: float) -> Tensor:
        probe = torch.randn(
            x.shape, generator=torch.Generator(device=x.device).manual_seed(0),
            device=x.device, dtype=x.dtype,
        )  # fmt: skip
        with torch.no_grad():
            a = torch.cat(
                [physics.A(probe[sl].reshape(-1, *image_shape)).flatten(1) for sl in chunks]
            )
        c = (a.pow(2) / noise_var).sum(1, keepdim=True) / probe.pow(2).sum(1, keepdim=True)
        return 1.0 / var + c * gain.pow(2)

    return jd, jt, diagonal
