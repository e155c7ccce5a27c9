r"""Classical reconstructions, returned as one-sample :class:`~dwgf_sci.solvers.Posterior`\ s.

- :class:`PseudoInverse`: :math:`A^\dagger y` (for :class:`~dwgf_sci.operators.SparseViewCT` this
  is filtered back-projection, see :class:`FBP`);
- :class:`Wiener`: the Tikhonov/Wiener estimate
  :math:`(A^\top A + \lambda I)^{-1} A^\top y` with :math:`\lambda = \sigma^2 / P_x` for white
  signal power :math:`P_x` estimated from the data (or given);
- :class:`RichardsonLucy`: the multiplicative EM iterations for non-negative images,
  :math:`x \leftarrow x \odot A^\top(y / Ax) / A^\top 1`;
- :class:`TVReconstruction`: total-variation regularised least squares,
  :math:`\arg\min_x \frac{1}{2}\|Ax - y\|^2 + \lambda\,\mathrm{TV}(x)`, solved by deepinv's
  proximal gradient descent with its :class:`~deepinv.optim.TVPrior`.

They share the deepinv :class:`~deepinv.models.Reconstructor` interface with the samplers.

With a per-pixel noise map on the physics (:class:`~dwgf_sci.operators.pixel_noise.PixelNoise`)
the data are weighted by their inverse variance relative to the mean one, :math:`w_i`, 0 at
masked pixels (NaN allowed there): Richardson-Lucy becomes
:math:`x \leftarrow x \odot A^\top(w\,y / Ax) / A^\top w` (the EM iteration with missing
data), TV minimises :math:`\frac12\|W^{1/2}(Ax - y)\|^2 + \lambda\,\mathrm{TV}(x)`, the
pseudo-inverse sees masked pixels as 0, and Wiener, whose filter assumes one noise level on every
pixel, refuses a map that is not one constant without masked pixels.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from deepinv.models import Reconstructor
from deepinv.optim import L2, PGD, TVPrior
from deepinv.physics import LinearPhysics, Physics
from torch import Tensor

from .._checks import check_finite
from ..errors import ConfigError
from ..operators.noise import noise_sigma, noise_spec
from ..operators.pixel_noise import PixelNoise
from .likelihood import DataTerm
from .posterior import Posterior


def relative_weights(y: Tensor, physics: Physics) -> Tensor | None:
    """Inverse-variance weights of the measurements relative to their mean (0 at masked
    pixels), from the physics' noise map; None without one."""
    if not isinstance(getattr(physics, "noise_model", None), PixelNoise):
        return None
    return DataTerm("gaussian").resolve(physics).relative_weights(y)


class ClassicalSolver(Reconstructor):
    """Base of the classical methods: checks, timing and the one-sample :class:`Posterior`."""

    name: ClassVar[str] = "classical"

    def settings(self) -> dict[str, Any]:
        """The method's settings (JSON-serialisable)."""
        return {"solver": self.name}

    def estimate(self, y: Tensor, physics: Physics) -> Tensor:
        """The reconstruction ``(B, C, H, W)``."""
        raise NotImplementedError

    def forward(self, y: Tensor, physics: Physics, **kwargs: Any) -> Posterior:
        """Reconstruct ``y``; the result is a :class:`Posterior` with one sample."""
        return self.sample(y, physics)

    def sample(self, y: Tensor, physics: Physics) -> Posterior:
        """Reconstruct ``y`` (measurements ``(B, ...)``) with ``physics``; with a noise map,
        masked pixels may hold anything (NaN included) and are set to 0 first."""
        weights = relative_weights(torch.nan_to_num(y), physics)
        if weights is not None:
            check_finite(torch.where(weights > 0, y, 0.0), "the measurement y (unmasked pixels)")
            y = torch.where(weights > 0, y, 0.0)
        check_finite(y, "the measurement y")
        start = time.perf_counter()
        with torch.no_grad():
            x = self.estimate(y, physics)
        x = x.real if torch.is_complex(x) else x
        elapsed = time.perf_counter() - start
        return Posterior(x[:, None], settings=self.settings(), timing={"total_s": elapsed})


class PseudoInverse(ClassicalSolver):
    """:math:`A^\\dagger y` through the physics' own ``A_dagger``."""

    name: ClassVar[str] = "pinv"

    def estimate(self, y: Tensor, physics: Physics) -> Tensor:
        r""":math:`\hat x = A^\dagger y` by ``physics.A_dagger(y)`` with its default settings.

        :param y: measurements ``(B, ...)`` in the physics' measurement layout.
        :param physics: the forward operator.
        :return: the estimate ``(B, C, H, W)``, in image units.
        """
        return physics.A_dagger(y)


class FBP(PseudoInverse):
    """Filtered back-projection: the pseudo-inverse of a CT operator (deepinv's FBP)."""

    name: ClassVar[str] = "fbp"


class Wiener(ClassicalSolver):
    r"""Tikhonov / Wiener deconvolution :math:`(A^\top A + \lambda I)^{-1} A^\top y`.

    :param float reg: :math:`\lambda`; ``None`` uses :math:`\sigma^2 / P_x`, with :math:`\sigma`
        from the physics' noise model (or ``noise_sigma``; for Poisson noise the mean photon
        variance :math:`g(\bar y + b)`) and the signal power
        :math:`P_x = \max(\mathrm{mean}(y^2) - \sigma^2, \sigma^2)`.
    :param float noise_sigma: noise level when the physics has none.
    """

    name: ClassVar[str] = "wiener"

    def __init__(self, reg: float | None = None, noise_sigma: float | None = None) -> None:
        super().__init__()
        if reg is not None and reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        self.reg = reg
        self.noise_sigma = noise_sigma

    def settings(self) -> dict[str, Any]:
        """``solver``, ``reg`` and ``noise_sigma`` as given (None: estimated per measurement)."""
        return {"solver": self.name, "reg": self.reg, "noise_sigma": self.noise_sigma}

    def regularisation(self, y: Tensor, physics: Physics) -> Tensor:
        r""":math:`\lambda_b` of each measurement ``y[b]``, a float64 tensor ``(B,)``.

        With ``reg`` given, every item gets it. Otherwise :math:`\lambda_b = \sigma_b^2 / P_b`
        with the item's noise level :math:`\sigma_b` (one per item when the noise model holds
        a batch of levels) and its signal power
        :math:`P_b = \max(\mathrm{mean}(|y_b|^2) - \sigma_b^2, \sigma_b^2)`.

        :raises ConfigError: if no noise level is known (pass ``reg`` or ``noise_sigma``).
        """
        batch = y.shape[0]
        model = getattr(physics, "noise_model", None)
        if isinstance(model, PixelNoise):
            var = model.variance
            if not bool(torch.isfinite(var).all()) or bool((var != var.flatten()[0]).any()):
                raise ConfigError(
                    "Wiener assumes one noise level on every pixel; this noise map varies or "
                    "masks pixels: use RichardsonLucy or TVReconstruction (both weigh the map)"
                )
        if self.reg is not None:
            return torch.full((batch,), float(self.reg), dtype=torch.float64)
        flat = y.detach().reshape(batch, -1)
        sigma = self.noise_sigma if self.noise_sigma is not None else noise_sigma(physics)
        if sigma is None and isinstance(model, PixelNoise):
            sigma = float(model.variance.flatten()[0]) ** 0.5
        if sigma is None or not bool((torch.as_tensor(sigma) > 0).all()):
            spec = noise_spec(getattr(physics, "noise_model", None))
            if spec["type"] not in ("poisson", "poisson-gaussian"):
                raise ConfigError("Wiener needs a noise level: pass reg=... or noise_sigma=...")
            # photon noise: its mean variance g (E[y] + sky) (+ sigma^2) as the noise power
            level = flat.real.clamp_min(0).double().mean(dim=1) + float(spec.get("sky", 0))
            var = float(spec["gain"]) * level + float(spec.get("sigma", 0.0)) ** 2
        else:
            var = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().flatten() ** 2
            if var.numel() not in (1, batch):
                raise ConfigError(f"{var.numel()} noise levels for a batch of {batch}")
        var = var.cpu().expand(batch)
        power = torch.maximum(flat.abs().double().pow(2).mean(dim=1).cpu() - var, var)
        return var / power

    def estimate(self, y: Tensor, physics: Physics) -> Tensor:
        r"""The Wiener estimate :math:`\hat x_b = (A^\top A + \lambda_b I)^{-1} A^\top y_b`.

        :math:`\lambda_b` comes from :meth:`regularisation`. The physics' ``A_dagger(y, reg=...)``
        solves the system: in closed form where the operator has one (for a circular PSF with
        transfer function :math:`P`, the Wiener filter :math:`\hat X = \bar P\,\hat Y /
        (|P|^2 + \lambda)` in Fourier), by damped CGLS otherwise. A physics whose ``A_dagger``
        takes no ``reg`` falls back on deepinv's ``prox_l2`` at 0 with step
        :math:`1/\lambda`, which solves the same system. Items with different
        :math:`\lambda_b` are solved with one batched call per distinct value (the whole batch
        goes through the physics, so per-item operators such as per-item PSFs stay aligned).

        :param y: measurements ``(B, ...)`` in the physics' measurement layout.
        :param physics: the forward operator (with its noise model when ``reg`` is None).
        :return: the estimate ``(B, C, H, W)``, in image units.
        :raises ConfigError: if ``reg`` is None and no noise level is known.
        """
        lam = self.regularisation(y, physics)
        values = torch.unique(lam)
        x = self._solve(y, physics, float(values[0]))
        for value in values[1:]:
            pick = (lam == value).to(x.device).view(-1, *[1] * (x.dim() - 1))
            x = torch.where(pick, self._solve(y, physics, float(value)), x)
        return x

    @staticmethod
    def _solve(y: Tensor, physics: Physics, reg: float) -> Tensor:
        r""":math:`(A^\top A + \mathrm{reg}\,I)^{-1} A^\top y` for the whole batch."""
        try:
            return physics.A_dagger(y, reg=reg)
        except TypeError:  # deepinv physics without a reg argument: generic prox of the L2 term
            z = torch.zeros_like(physics.A_adjoint(y))
            return physics.prox_l2(z, y, gamma=1.0 / max(reg, 1e-12))


class RichardsonLucy(ClassicalSolver):
    """Richardson-Lucy deconvolution for non-negative images and operators.

    :param int iterations: number of EM iterations (the regularisation: fewer is smoother).
    :param float floor: smallest value of the predicted data (avoids division by zero).
    """

    name: ClassVar[str] = "richardson-lucy"

    def __init__(self, iterations: int = 30, floor: float = 1e-6) -> None:
        super().__init__()
        if iterations < 1:
            raise ConfigError(f"iterations must be >= 1, found {iterations}")
        self.iterations = int(iterations)
        self.floor = float(floor)

    def settings(self) -> dict[str, Any]:
        """``solver``, ``iterations`` and ``floor``."""
        return {"solver": self.name, "iterations": self.iterations, "floor": self.floor}

    def estimate(self, y: Tensor, physics: Physics) -> Tensor:
        r"""Run the Richardson-Lucy iterations from a flat start.

        With :math:`y_+ = \max(y, 0)`, :math:`\epsilon` = ``floor`` and the start
        :math:`x^{(0)} = \mathrm{mean}(y_+) + \epsilon` (a constant image),

        .. math::

            x^{(k+1)} = x^{(k)} \odot \frac{A^\top\big(y_+ / \max(A x^{(k)}, \epsilon)\big)}
            {\max(A^\top 1, \epsilon)},

        the EM algorithm for Poisson data :math:`y \sim \mathcal{P}(Ax)`; non-negative
        iterates stay non-negative.

        :param y: measurements ``(B, ...)``, non-negative counts or physical units (negative
            values are clipped to 0).
        :param physics: a non-negative linear operator (e.g. a PSF convolution).
        :return: the estimate ``(B, C, H, W)``, in image units.
        """
        data = y.clamp_min(0)
        weights = relative_weights(y, physics)
        if weights is None:
            norm = physics.A_adjoint(torch.ones_like(y)).clamp_min(self.floor)
            x = torch.full_like(norm, float(data.mean()) + self.floor)
            for _ in range(self.iterations):
                ratio = data / physics.A(x).clamp_min(self.floor)
                x = x * physics.A_adjoint(ratio) / norm
            return x
        # weighted (missing-data) EM: masked pixels have weight 0
        norm = physics.A_adjoint(weights).clamp_min(self.floor)
        level = (data * weights).sum() / weights.sum().clamp_min(self.floor)
        x = torch.full_like(norm, float(level) + self.floor)
        for _ in range(self.iterations):
            ratio = weights * data / physics.A(x).clamp_min(self.floor)
            x = x * physics.A_adjoint(ratio) / norm
        return x


class TVReconstruction(ClassicalSolver):
    r"""TV-regularised least squares by proximal gradient descent (deepinv ``PGD`` + ``TVPrior``).

    :param float lam: weight :math:`\lambda` of the total variation (image units).
    :param int iterations: PGD iterations.
    :param float stepsize: PGD step; ``None`` uses :math:`1/\|A\|^2` (power iteration).
    """

    name: ClassVar[str] = "tv"

    def __init__(self, lam: float = 0.01, iterations: int = 200, stepsize: float | None = None):
        super().__init__()
        if lam < 0 or iterations < 1:
            raise ConfigError(f"need lam >= 0 and iterations >= 1, found {lam}, {iterations}")
        self.lam = float(lam)
        self.iterations = int(iterations)
        self.stepsize = stepsize

    def settings(self) -> dict[str, Any]:
        """``solver``, ``lam``, ``iterations`` and ``stepsize`` (None: from the operator norm)."""
        return {
            "solver": self.name,
            "lam": self.lam,
            "iterations": self.iterations,
            "stepsize": self.stepsize,
        }

    def estimate(self, y: Tensor, physics: Physics) -> Tensor:
        r"""Minimise the TV objective by proximal gradient descent.

        .. math::

            \hat x = \arg\min_x \tfrac12 \|Ax - y\|^2 + \lambda \|D x\|_{1,2},

        with :math:`D` the finite differences, i.e. the isotropic total variation of deepinv's
        ``TVPrior`` (its prox computed with at most 20 inner iterations). PGD runs
        ``iterations`` steps without early stopping from :math:`A^\dagger y`, with step
        ``stepsize`` or :math:`1/\|A\|^2` (power iteration on a random image).

        :param y: measurements ``(B, ...)`` in the physics' measurement layout.
        :param physics: the forward operator.
        :return: the estimate ``(B, C, H, W)``, in image units.
        """
        weights = relative_weights(y, physics)
        init = physics.A_dagger(y)
        if weights is not None:  # whitened operator W^1/2 A and data W^1/2 y
            root = weights.sqrt()
            physics = LinearPhysics(
                A=lambda x, _a=physics.A: root * _a(x),
                A_adjoint=lambda v, _t=physics.A_adjoint: _t(root * v),
            )
            y = root * y
        step = self.stepsize
        if step is None:
            x0 = physics.A_adjoint(y)
            norm = float(physics.compute_sqnorm(torch.randn_like(x0), verbose=False))
            step = 1.0 / max(norm, 1e-12)
        solver = PGD(
            data_fidelity=L2(),
            prior=TVPrior(n_it_max=20),
            lambda_reg=self.lam,
            stepsize=step,
            max_iter=self.iterations,
            early_stop=False,
        )
        return solver(y, physics, init=init)
