r"""Data terms: the negative log-likelihood :math:`-\log p(y \mid x)` that solvers descend.

``gaussian``
    :math:`\frac{1}{2\sigma^2}\|y - A x\|^2` (deepinv :class:`~deepinv.optim.L2`), with
    :math:`\sigma` read from the physics' noise model unless given; with a per-pixel variance
    map (:class:`~dwgf_sci.operators.pixel_noise.PixelNoise`),
    :math:`\frac12\sum_i (y_i - (Ax)_i)^2 / v_i`, where a masked pixel (:math:`v_i = \infty`)
    contributes nothing.
``poisson``
    Poisson negative log-likelihood with the physics' gain and background
    (deepinv :class:`~deepinv.optim.PoissonLikelihood`).
``mse``
    :math:`\frac{1}{2}\,\mathrm{mean}\,(y - A x)^2`, unweighted: the reference DWGF data term
    (with a noise map: the mean over unmasked pixels, each weighted by its inverse variance
    relative to the mean one).
"""

from __future__ import annotations

import copy
import math

import torch
from deepinv.optim import L2, PoissonLikelihood
from deepinv.physics import Physics
from torch import Tensor

from ..errors import ConfigError, InvalidDataError
from ..operators.noise import noise_sigma, noise_spec
from ..operators.pixel_noise import PixelNoise

KINDS = ("gaussian", "poisson", "mse")


class DataTerm:
    """Per-sample negative log-likelihood of measurements.

    :param str kind: ``"gaussian"``, ``"poisson"`` or ``"mse"``.
    :param float sigma: Gaussian noise standard deviation; ``None`` reads it from the physics.
    """

    def __init__(self, kind: str = "gaussian", sigma: float | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown data term {kind!r}; choose one of {KINDS}")
        if sigma is not None and not (float(sigma) > 0 and torch.isfinite(torch.tensor(sigma))):
            raise InvalidDataError(f"the noise level must be positive and finite, found {sigma}")
        self.kind = kind
        self.sigma = None if sigma is None else float(sigma)
        self.gain = 1.0
        self.background = 0.0
        #: Per-pixel noise variance ``(1 or B, ...)`` (``inf``: masked), or None for one sigma.
        self.variance_map: Tensor | None = None
        #: Particles per measurement of the rows a solver evaluates (set by :meth:`bind`).
        self.particles = 1
        self._fidelity = None

    def resolve(self, physics: Physics) -> DataTerm:
        """Fill in the noise parameters from ``physics`` (a new, bound :class:`DataTerm`)."""
        bound = DataTerm(self.kind, self.sigma)
        model = getattr(physics, "noise_model", None)
        if isinstance(model, PixelNoise) and (
            self.kind == "mse" or (self.kind == "gaussian" and self.sigma is None)
        ):
            bound.variance_map = model.variance
            return bound
        if self.kind == "gaussian":
            if bound.sigma is None:
                found = noise_sigma(physics)
                if found is None or (not torch.is_tensor(found) and found == 0):
                    raise ConfigError(
                        "the physics has no Gaussian noise level to weight the data term with; "
                        "pass noise_sigma=... (in measurement units) to the solver"
                    )
                if torch.is_tensor(found):
                    raise ConfigError(
                        "the physics has one noise level per batch item; pass a single "
                        "noise_sigma=... or solve the measurements one at a time"
                    )
                bound.sigma = float(found)
            if not bound.sigma > 0:
                raise InvalidDataError(
                    f"the noise level must be positive, found sigma={bound.sigma}"
                )
            bound._fidelity = L2(sigma=bound.sigma)
        elif self.kind == "poisson":
            spec = noise_spec(getattr(physics, "noise_model", None))
            if spec["type"] not in ("poisson", "poisson-gaussian"):
                raise ConfigError(
                    "data_term='poisson' needs a Poisson noise model, the physics has "
                    f"{spec['type']!r}"
                )
            bound.gain, bound.background = float(spec["gain"]), float(spec.get("sky", 0.0))
            # sky-subtracted data: (y + b) / g ~ Poisson((Ax + b) / g); deepinv's bkg is in photons
            bound._fidelity = PoissonLikelihood(
                gain=bound.gain, bkg=bound.background / bound.gain, denormalize=True
            )
        return bound

    def scaled(self, factor: float) -> DataTerm:
        r"""The data term of the measurements :math:`y / s` (``factor`` :math:`s`): noise
        standard deviation :math:`\sigma / s`, variance map :math:`v / s^2`, Poisson gain and
        background :math:`g / s`, :math:`b / s` (exact for these noise models); ``"mse"`` is
        unchanged. Used by :mod:`~dwgf_sci.solvers.flux_scale`."""
        if factor == 1.0:
            return self
        part = copy.copy(self)
        if self.variance_map is not None:
            part.variance_map = self.variance_map / factor**2
        if self.kind == "gaussian" and self.sigma is not None:
            part.sigma = self.sigma / factor
            part._fidelity = L2(sigma=part.sigma)
        elif self.kind == "poisson":
            part.gain, part.background = self.gain / factor, self.background / factor
            part._fidelity = PoissonLikelihood(
                gain=part.gain, bkg=part.background / part.gain, denormalize=True
            )
        return part

    def __call__(self, ax: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood per sample, shape ``(n,)``; ``mse`` gives an element mean."""
        if self.kind == "mse":
            if self.variance_map is not None:  # relative weights: masked pixels drop out
                return 0.5 * self._relative(ax, (ax - y).pow(2))
            return 0.5 * (ax - y).pow(2).flatten(1).mean(1)
        if self.kind == "gaussian":
            if self.variance_map is not None:
                return 0.5 * ((ax - y).pow(2) / self.variance_like(ax)).flatten(1).sum(1)
            return self._fidelity.d.fn(ax, y)
        # deepinv's Poisson distance sums over the whole batch; evaluate item by item
        positive = ax.clamp_min(1e-8 * self.gain)
        y = y + self.background
        return torch.stack(
            [self._fidelity.d.fn(positive[i : i + 1], y[i : i + 1]).sum() for i in range(len(ax))]
        )

    def reduced_chi2(self, ax: Tensor, y: Tensor) -> Tensor:
        r"""Reduced chi-square per sample, :math:`\frac{1}{m}\sum_i |y_i - (Ax)_i|^2 / v_i`.

        The variance is :math:`\sigma^2` (Gaussian), the map's (then :math:`m` counts the
        unmasked measurements), the model counts (Poisson) or 1 (``mse``; with a map, the
        :meth:`relative_weights` take its place).
        """
        r2 = (ax - y).abs().pow(2)
        if self.kind == "mse" and self.variance_map is not None:
            return self._relative(ax, r2)
        if self.kind == "gaussian" and self.variance_map is not None:
            r2 = r2 / self.variance_like(ax)
            return r2.flatten(1).sum(1) / self.informative(ax).clamp_min(1)
        if self.kind == "gaussian":
            r2 = r2 / self.sigma**2
        elif self.kind == "poisson":
            r2 = r2 / (self.gain * (ax.clamp_min(0) + self.background)).clamp_min(1e-12)
        return r2.flatten(1).mean(1)

    def bind(self, y: Tensor, particles: int) -> None:
        """Check the noise map against the measurements ``y`` (one map, or one per
        measurement, each with at least one unmasked pixel) and record the particles per
        measurement of the rows the solver evaluates."""
        self.particles = int(particles)
        if self.variance_map is None:
            return
        if torch.is_complex(y):
            raise ConfigError("a per-pixel noise map needs real measurements")
        var, per_row = self.variance_map, y[0].numel()
        maps = 1 if var.numel() == per_row else var.shape[0]
        if maps * per_row != var.numel() or maps not in (1, y.shape[0]):
            raise ConfigError(
                f"the noise map has shape {tuple(var.shape)}, which fits neither one measurement "
                f"of shape {tuple(y.shape[1:])} nor {y.shape[0]} of them"
            )
        self.variance_map = var.reshape(maps, *y.shape[1:])
        empty = (self.informative(y) == 0).nonzero().flatten().tolist()
        if empty:
            raise InvalidDataError(
                f"every pixel of measurement(s) {empty} is masked: there is nothing to fit"
            )

    def rows(self, sl: slice) -> DataTerm:
        """The data term of the particle rows ``sl`` (a slice of the ``batch * particles``
        rows): with a map per measurement, each row keeps its own measurement's map."""
        if self.variance_map is None or self.variance_map.shape[0] == 1:
            return self
        part = copy.copy(self)
        part.variance_map = self.variance_map.repeat_interleave(self.particles, 0)[sl]
        part.particles = 1
        return part

    def variance_like(self, ax: Tensor) -> Tensor:
        """The per-pixel variance map for the rows of ``ax``, ``inf`` at masked pixels: one
        shared map, one per measurement (``ax`` has a row per measurement, or per particle
        in measurement order); a slice of particle rows goes through :meth:`rows`."""
        assert self.variance_map is not None
        if torch.is_complex(ax):
            raise ConfigError("a per-pixel noise map needs real measurements")
        var = self.variance_map.to(device=ax.device, dtype=ax.dtype)
        maps = 1 if var.numel() == ax[0].numel() else var.shape[0]
        var = var.reshape(maps, *ax.shape[1:])
        if maps == 1 or ax.shape[0] == maps:
            return var.expand(ax.shape[0], *ax.shape[1:])
        if ax.shape[0] == maps * self.particles:
            return var.repeat_interleave(self.particles, 0)
        raise ConfigError(
            f"{ax.shape[0]} rows for {maps} noise maps of {self.particles} particle(s) each: "
            "evaluate a slice of particle rows through DataTerm.rows"
        )

    def relative_weights(self, ax: Tensor) -> Tensor:
        """Inverse variances of the rows of ``ax`` over their mean on informative pixels: 1
        everywhere for a constant map, 0 at masked pixels. Unweighted losses (``"mse"``,
        DPS's residual norm) use them to drop masked pixels and weigh the others without
        changing their scale."""
        w = 1.0 / self.variance_like(ax)
        mean_w = w.flatten(1).sum(1) / self.informative(ax).clamp_min(1)
        return w / mean_w.reshape(-1, *[1] * (w.ndim - 1))

    def _relative(self, ax: Tensor, r2: Tensor) -> Tensor:
        """Per row, the mean over informative pixels of ``r2`` with :meth:`relative_weights`."""
        weighted = (r2 * self.relative_weights(ax)).flatten(1).sum(1)
        return weighted / self.informative(ax).clamp_min(1)

    def informative(self, ax: Tensor) -> Tensor:
        """Number of measurements per row that carry information (not masked)."""
        if self.variance_map is None:
            return torch.full((ax.shape[0],), ax[0].numel(), device=ax.device)
        return torch.isfinite(self.variance_like(ax)).flatten(1).sum(1)

    def variance(self, ax: Tensor) -> Tensor:
        r"""Noise variance of each measurement of the rows ``ax``: :math:`\sigma^2`, the map
        (``inf`` where masked), or for Poisson data the Gaussian approximation
        :math:`g\,(Ax + b)` at ``ax``, at least one count (:math:`g`)."""
        if self.kind == "gaussian":
            if self.variance_map is not None:
                return self.variance_like(ax)
            return torch.full_like(ax, float(self.sigma) ** 2)
        if self.kind == "mse":
            raise ConfigError("the unweighted 'mse' data term has no noise variance")
        return (self.gain * (ax.clamp_min(0) + self.background)).clamp_min(self.gain)


def chi2_limit(n: int) -> float:
    r"""Reduced chi-square above which a mean misses ``n`` measurements: five standard
    deviations of the statistic for exact data (:math:`\sqrt{2/n}` each), at least 0.25."""
    return 1.0 + max(0.25, 5.0 * math.sqrt(2.0 / max(n, 1)))
