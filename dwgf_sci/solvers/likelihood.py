r"""Data terms: the negative log-likelihood :math:`-\log p(y \mid x)` that solvers descend.

``gaussian``
    :math:`\frac{1}{2\sigma^2}\|y - A x\|^2` (deepinv :class:`~deepinv.optim.L2`), with
    :math:`\sigma` read from the physics' noise model unless given.
``poisson``
    Poisson negative log-likelihood with the physics' gain and background
    (deepinv :class:`~deepinv.optim.PoissonLikelihood`).
``mse``
    :math:`\frac{1}{2}\,\mathrm{mean}\,(y - A x)^2`, unweighted: the reference DWGF data term.
"""

from __future__ import annotations

import math

import torch
from deepinv.optim import L2, PoissonLikelihood
from deepinv.physics import Physics
from torch import Tensor

from ..errors import ConfigError, InvalidDataError
from ..operators.noise import noise_sigma, noise_spec

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
        self._fidelity = None

    def resolve(self, physics: Physics) -> DataTerm:
        """Fill in the noise parameters from ``physics`` (a new, bound :class:`DataTerm`)."""
        bound = DataTerm(self.kind, self.sigma)
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

    def __call__(self, ax: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood per sample, shape ``(n,)``; ``mse`` gives an element mean."""
        if self.kind == "mse":
            return 0.5 * (ax - y).pow(2).flatten(1).mean(1)
        if self.kind == "gaussian":
            return self._fidelity.d.fn(ax, y)
        # deepinv's Poisson distance sums over the whole batch; evaluate item by item
        positive = ax.clamp_min(1e-8 * self.gain)
        y = y + self.background
        return torch.stack(
            [self._fidelity.d.fn(positive[i : i + 1], y[i : i + 1]).sum() for i in range(len(ax))]
        )

    def reduced_chi2(self, ax: Tensor, y: Tensor) -> Tensor:
        r"""Reduced chi-square per sample, :math:`\frac{1}{m}\sum_i (y_i - (Ax)_i)^2 / v_i`.

        The variance is :math:`\sigma^2` (Gaussian), the model counts (Poisson) or 1 (``mse``).
        """
        r2 = (ax - y).pow(2)
        if self.kind == "gaussian":
            r2 = r2 / self.sigma**2
        elif self.kind == "poisson":
            r2 = r2 / (self.gain * (ax.clamp_min(0) + self.background)).clamp_min(1e-12)
        return r2.flatten(1).mean(1)


def chi2_limit(n: int) -> float:
    r"""Reduced chi-square above which a mean misses ``n`` measurements: five standard
    deviations of the statistic for exact data (:math:`\sqrt{2/n}` each), at least 0.25."""
    return 1.0 + max(0.25, 5.0 * math.sqrt(2.0 / max(n, 1)))
