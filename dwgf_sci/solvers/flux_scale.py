r"""Flux units: put the data into the prior's intensity range and the result back.

A learned prior knows images in its training units (:mod:`dwgf_sci.priors.intensity`). Data in
other units ask it about images it has never seen, and the reconstruction suffers (on real galaxy
cutouts 14.7 dB in the file's units against 27.3 dB rescaled by hand). For a linear operator
:math:`A` the change of units :math:`x = s\,x'`, :math:`y = s\,y'` maps the problem onto itself:

.. math::

    y = A x + n \iff y' = A x' + n / s,

Gaussian noise of variance :math:`v` becoming :math:`v / s^2` (one level or a per-pixel map),
Poisson noise of gain :math:`g` (:math:`y = g\,\mathrm{Poisson}(Ax / g)`) gain :math:`g / s`
and its background :math:`b / s`; all exact. With ``flux_scale="auto"`` the solver solves the
problem in primed units, where the data's total flux is the training images' median, and returns
:math:`s` times its samples.

**The factor.** :math:`s = \hat F(y) / F_{50}`, with :math:`F_{50}` the training images' median
total flux and :math:`\hat F` the linear estimate of the image's total flux :math:`1^\top x` from
the data:

.. math::

    \hat F(y) = \frac{N}{\langle u, 1\rangle}\,\mathrm{Re}\,\langle w, y\rangle, \qquad
    (M A A^\top M)\, w = M A 1, \qquad u = A^\top M w,

where :math:`M` keeps the measurements that carry information (not masked) and :math:`N` is the
number of pixels. :math:`A^\top M w = u` is the least-squares fit of the constant image within
what the data see, so :math:`\langle w, Ax\rangle = \langle u, x\rangle`: the flux exactly for a
normalised PSF (:math:`w = 1`, the sum of the data) and a Fourier sampling with the zero
frequency; the flux of the seen pixels extrapolated to all (inpainting); the flux to within the
operator's coverage otherwise (tomography, random sensing). :math:`w` does not depend on
:math:`y`, so :math:`\hat F(c\,y) = c\,\hat F(y)` and :math:`s` scales with the data: the
reconstruction of :math:`c\,y` is :math:`c` times that of :math:`y` for every :math:`c > 0`
(up to floating-point rounding). One factor serves a call (the median over its measurements);
solve measurements of very different flux one at a time.

**Absolute units.** A prior whose values are physical quantities (``units="absolute"`` in its
record, e.g. attenuation in 1/cm) keeps data already within :data:`RANGE_FACTOR` of its
training range as they are and rescales only data outside; equivariance then holds among the
rescaled scales, not across the edge of that band.

**When it does nothing.** A prior that records no intensity range (Stable Diffusion, a prior
built in code), a non-linear physics, or data whose flux is not detected (:math:`\hat F` below
five times its noise, or not positive): the data stay in their units and the reason is recorded.
Passing a number fixes :math:`s`; ``None`` (or ``"off"``) switches the rescaling off.

**The warning.** Independently of the rescaling, data whose estimated flux lies more than a
factor :data:`RANGE_FACTOR` outside the training images' 5-95% range get one warning line naming
both ranges, before any work.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from deepinv.optim.utils import conjugate_gradient
from deepinv.physics import LinearPhysics, Physics
from torch import Tensor

from ..errors import ConfigError
from ..priors.intensity import IntensityRange, training_intensity
from .likelihood import DataTerm

__all__ = ["RANGE_FACTOR", "FluxScale", "check_flux_scale", "choose_flux_scale", "flux_estimate"]

#: Data whose flux is this factor outside the training range get a warning.
RANGE_FACTOR = 3.0
#: A flux below this many standard deviations of its noise is not detected.
DETECTION_SIGMA = 5.0
#: CG iterations (and relative tolerance) of the weights :math:`w`.
_CG_ITER, _CG_TOL = 50, 1e-6


def check_flux_scale(value: Any) -> str | float | None:
    """The ``flux_scale`` option checked: ``"auto"``, ``None`` (``"off"``) or a factor > 0."""
    if value is None or value == "off":
        return None
    if value == "auto":
        return "auto"
    try:
        factor = float(value)
    except (TypeError, ValueError):
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise ConfigError(
            f"flux_scale must be 'auto', None/'off' or a positive number, found {value!r}"
        )
    return factor


@dataclass
class FluxScale:
    """The factor a call solves with: it works on :math:`y / s` and returns :math:`s\\,x`.

    :param float factor: :math:`s` (1: the data's own units).
    :param str how: ``"auto"``, ``"fixed"`` or ``"off"``.
    :param list estimate: the data's estimated total flux per measurement (when computed).
    :param str note: why the factor is what it is, for the provenance.
    """

    factor: float = 1.0
    how: str = "off"
    estimate: list[float] = field(default_factory=list)
    note: str = ""
    reference: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form, stored in the result's provenance."""
        out: dict[str, Any] = {"factor": self.factor, "how": self.how, "note": self.note}
        if self.estimate:
            out["estimated_total_flux"] = self.estimate
        if self.reference is not None:
            out["prior_total_flux"] = self.reference
        return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of the per-row inner product :math:`\\langle a, b\\rangle`."""
    return (a.conj() * b).real.flatten(1).sum(1) if a.is_complex() else (a * b).flatten(1).sum(1)


def flux_estimate(
    y: Tensor,
    physics: LinearPhysics,
    data_term: DataTerm,
    shape: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor | None]:
    r""":math:`\hat F(y)` per measurement (see the module doc) and its noise standard deviation
    (None for the unweighted ``"mse"`` data term, which has no noise level), float64.

    The operator runs in ``dtype`` (the solver's: a physics need not take float64); the weights
    :math:`w` do not depend on ``y`` and the inner products are summed in float64, so
    :math:`\hat F(c\,y) = c\,\hat F(y)` to float rounding."""
    ones = torch.ones((1, *shape), dtype=dtype, device=y.device)
    with torch.no_grad():
        a1 = physics.A(ones)
        if data_term.variance_map is not None:
            keep = torch.isfinite(data_term.variance_like(y)).to(dtype)
        else:
            keep = torch.ones((1, *y.shape[1:]), dtype=dtype, device=y.device)
        rhs = keep * a1

        def normal(v: Tensor) -> Tensor:
            return keep * physics.A(physics.A_adjoint(keep * v))

        w = keep * conjugate_gradient(normal, rhs, max_iter=_CG_ITER, tol=_CG_TOL)
        u = physics.A_adjoint(w)
        u = (u.real if u.is_complex() else u).double()
        norm = float(ones[0].numel()) / u.flatten(1).sum(1)
        wide = torch.complex128 if (w.is_complex() or y.is_complex()) else torch.float64
        w = w.to(wide).expand(y.shape[0], *w.shape[1:])
        flux = norm * _dot(w, y.to(wide))
        if data_term.kind == "mse":
            return flux, None
        var = data_term.variance(y.abs().double() if y.is_complex() else y.double())
        var = torch.where(torch.isfinite(var), var, 0.0)
        noise = norm * (w.abs().pow(2) * var).flatten(1).sum(1).sqrt()
    return flux, noise


def choose_flux_scale(
    mode: str | float | None,
    y: Tensor,
    physics: Physics,
    data_term: DataTerm,
    prior: Any,
    shape: tuple[int, int, int],
    dtype: torch.dtype = torch.float32,
) -> FluxScale:
    """The :class:`FluxScale` of one call, warning (once, before any work) when the data lie
    outside the prior's training range whatever ``mode`` is; see the module doc."""
    try:
        reference = training_intensity(prior)
        if reference is not None:  # images of another size than the training images'
            reference = reference.per_area(int(shape[-2] * shape[-1]))
        why = "the prior records no training intensity range"
    except ConfigError as exc:
        reference, why = None, str(exc)
    flux = noise = None
    if reference is not None:
        if isinstance(physics, LinearPhysics):
            flux, noise = flux_estimate(y, physics, data_term, shape, dtype)
        else:
            why = "a non-linear physics: no flux estimate"
    estimate = [] if flux is None else [float(f) for f in flux]
    ref = None
    if reference is not None:
        ref = {"median": reference.flux_median, "range_5_95": list(reference.flux_range)}
    if mode is None:
        chosen = FluxScale(how="off", note="flux_scale=None: the data's own units")
    elif not isinstance(mode, str):
        chosen = FluxScale(factor=float(mode), how="fixed", note="given")
    elif flux is None or reference is None:
        chosen = FluxScale(how="auto", note=why)
    elif reference.units == "absolute" and not _far(estimate, reference):
        chosen = FluxScale(
            how="auto", note="absolute units, data within the training range: solved as given"
        )
    else:
        detected = (flux > 0) if noise is None else (flux > DETECTION_SIGMA * noise)
        if bool(detected.any()):
            factor = float(flux[detected].median()) / reference.flux_median
            chosen = FluxScale(factor, "auto", note="data total flux / median training flux")
        else:
            chosen = FluxScale(
                how="auto",
                note=f"the data's total flux is not detected above {DETECTION_SIGMA:g} sigma "
                "of its noise: the data's own units",
            )
    chosen.estimate, chosen.reference = estimate, ref
    if reference is not None and estimate:
        _warn_out_of_range(estimate, reference, chosen)
    return chosen


def _far(estimate: list[float], reference: IntensityRange) -> list[float]:
    """The estimated fluxes more than :data:`RANGE_FACTOR` outside the 5-95% training range."""
    lo, hi = reference.flux_range
    return [f for f in estimate if f > RANGE_FACTOR * hi or f < lo / RANGE_FACTOR]


def _warn_out_of_range(estimate: list[float], reference: IntensityRange, chosen: FluxScale) -> None:
    """One warning line when an estimated flux lies :data:`RANGE_FACTOR` outside the prior's
    5-95% range, saying what the solver does about it."""
    far = _far(estimate, reference)
    if not far:
        return
    if chosen.how == "auto" and chosen.factor != 1.0:
        action = (
            f"flux_scale='auto' solves in units {chosen.factor:.3g} times the data's and "
            "scales the result back"
        )
    elif chosen.how == "fixed":
        lands = [f / chosen.factor for f in far]
        action = f"flux_scale={chosen.factor:g} brings it to {', '.join(f'{f:.3g}' for f in lands)}"
    else:
        action = "it is not rescaled (" + chosen.note + "): check the units or pass flux_scale="
    warnings.warn(
        f"the data imply a total flux of {', '.join(f'{f:.3g}' for f in far)} per image, more "
        f"than {RANGE_FACTOR:g}x outside what the prior was trained on ({reference.describe()}); "
        + action,
        stacklevel=5,
    )
