r"""RED-diff (Mardani, Song, Kautz & Vahdat, "A variational perspective on solving inverse problems
with diffusion models", ICLR 2024), on latents, as a special case of DWGF.

RED-diff fits one point :math:`\mu` (here a latent) by Adam on the loss, at timesteps swept from
:math:`T` down to 0,

.. math::

    \ell_t(\mu) = \tfrac12\,\mathrm{mean}\big(y - A(\mathrm{from\_model}(D(\mu)))\big)^2
      + \lambda\,\frac{\sqrt{1-\bar\alpha_t}}{\sqrt{\bar\alpha_t}}\,
        \mathrm{mean}\big(\mathrm{sg}(\epsilon_\theta(z_t, t) - \epsilon)\odot \mu\big),
    \qquad z_t = \sqrt{\bar\alpha_t}\,\mu + \sqrt{1-\bar\alpha_t}\,\epsilon,

with a fresh :math:`\epsilon` per step. DWGF's prior drift is
:math:`w_t\,(s/a)(\hat\epsilon - \epsilon)` (plus the particle interaction), applied through the
surrogate :math:`\mathrm{mean}(z \odot \mathrm{drift})`, and with ``data_term="mse"`` its data term
is the same element mean; so RED-diff is DWGF with ``prior_weight`` :math:`w = \lambda`, a
``"constant"`` weight schedule (the :math:`s/a` factor is DWGF's own), no interaction, no encoder
term, no decoder noise, ``score_noise=True`` and no Langevin noise.

Settings of the reference code (``NVlabs/RED-diff``, ``algos/reddiff.py`` and
``_configs/algo/reddiff.yaml``): :math:`\lambda` = ``grad_term_weight`` = 0.25, ``lr`` 0.1, Adam
betas (0.9, 0.99), ``obs_weight`` 1, ``sigma_x0`` 0 (no decoder noise), the ``"linear"`` weight
:math:`\sqrt{1-\bar\alpha_t}/\sqrt{\bar\alpha_t}`, and :math:`\mu` initialised at
:math:`A^\dagger y` (here :math:`E(A^\dagger y)`, DWGF's ``init="pinv"`` without perturbation).
The number of steps is a run option there (configuration default 50); we default to 1000 steps on
the linear grid, as DWGF's reference.

**Data term in noise units** (``data_units="noise"``, the default). Adam's step (``lr``) does not
depend on the scale of the loss, but the balance between the data term and the regulariser
does: with :math:`x = c\,D(\mu) + b` in physical units, the element mean of the squared
residual grows as :math:`c^2` (and as :math:`\|A\|^2`) while the regulariser, in latent units,
does not, so the same :math:`\lambda` and ``lr`` weigh the data a hundred times more for
galaxies in counts than for CT in 1/cm. Here the data term is divided by the mean noise
variance :math:`\bar v` (:math:`\sigma^2`; for a noise map, :math:`1/\bar v` is the mean inverse
variance of the informative pixels),

.. math::

    \tfrac12\,\mathrm{mean}\big(y - A(\mathrm{from\_model}(D(\mu)))\big)^2 / \bar v,

the Gaussian negative log-likelihood per measurement, as the RED-diff paper writes its loss
(:math:`\|y - f(\mu)\|^2 / 2\sigma_v^2`): multiplying :math:`y`, the noise level and the image
units (or the operator) by any :math:`c` leaves the loss, hence the run, unchanged. A physics
without a noise level keeps the unscaled term; ``data_units="absolute"`` restores the reference
code's unscaled element mean. With a Poisson data term (``data_term="poisson"``) the data term is
the Poisson likelihood, in counts, and is not rescaled.

Batching: the reference averages the loss over the batch, so one run's gradient shrinks with the
number of images in it; Adam is scale invariant except for its :math:`\epsilon`. With
``independent_runs=True`` (default) Adam's :math:`\epsilon` is divided by the number of particles
of the call, which makes each particle behave exactly as a separate RED-diff run of one image.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from deepinv.physics import Physics
from torch import Tensor

from ..errors import ConfigError
from ..operators.noise import noise_sigma
from ..priors.base import LatentPrior
from .base import Problem
from .dwgf import DWGF
from .likelihood import DataTerm

__all__ = ["REDDIFF", "REDDiff"]

#: RED-diff's settings, as DWGF options (see the module doc for their sources).
REDDIFF: dict[str, Any] = {
    "particles": 1,
    "steps": 1000,
    "grid": "linear",
    "optimizer": "adam",
    "lr": 0.1,
    "betas": (0.9, 0.99),
    "prior_weight": 0.25,
    "prior_weight_schedule": "constant",
    "encoder_weight": 0.0,
    "decoder_noise": 0.0,
    "data_term": "mse",
    "interaction": False,
    "score_noise": True,
    "temperature": 0.0,
    "init": "pinv",
    "init_noise": 0.0,
    "refine_steps": 0,
}

#: Adam's default epsilon (PyTorch, used by the reference code).
ADAM_EPS = 1e-8


DATA_UNITS = ("noise", "absolute")


class NoiseScaledMSE(DataTerm):
    r"""The ``"mse"`` data term divided by the mean noise variance: per row
    :math:`\tfrac12\,\mathrm{mean}_i\,(y_i - (Ax)_i)^2 / \bar v`, with
    :math:`1/\bar v` the mean inverse variance of the row's informative measurements. It keeps
    the kind ``"mse"`` (element means everywhere in DWGF's flow) and only changes the scale."""

    inv_var: float = 1.0

    @classmethod
    def wrap(cls, term: DataTerm, inv_var: float) -> NoiseScaledMSE:
        """A copy of the bound ``"mse"`` term ``term`` scaled by ``inv_var`` (a scalar level; a
        noise map's own mean inverse variance is used per row instead)."""
        out = cls.__new__(cls)
        out.__dict__.update(term.__dict__)
        out.inv_var = float(inv_var)
        return out

    def scale(self, ax: Tensor) -> Tensor | float:
        """:math:`1/\bar v` per row of ``ax`` (a float without a noise map)."""
        if self.variance_map is None:
            return self.inv_var
        w = 1.0 / self.variance_like(ax)
        return w.flatten(1).sum(1) / self.informative(ax).clamp_min(1)

    def __call__(self, ax: Tensor, y: Tensor) -> Tensor:
        """The ``"mse"`` value times :math:`1/\bar v`."""
        return super().__call__(ax, y) * self.scale(ax)


class REDDiff(DWGF):
    """RED-diff as DWGF with one particle per run and RED-diff's settings (see the module doc).

    Any DWGF option can be overridden by keyword, e.g. ``REDDiff(prior, lr=0.05,
    init="random")``. Several particles are independent RED-diff runs, batched.

    :param bool independent_runs: scale Adam's epsilon so that batched particles (and batched
        measurements) behave as separate single-image runs of the reference code.
    :param str data_units: ``"noise"`` (default: the ``"mse"`` data term divided by the mean
        noise variance, scale-free) or ``"absolute"`` (the reference code's element mean).
        ``lr`` (default 0.1, the reference's) is Adam's step in latent units either way.
    :param overrides: DWGF and :class:`~dwgf_sci.solvers.base.LatentSolver` options.
    """

    name: ClassVar[str] = "reddiff"

    def __init__(
        self,
        prior: LatentPrior,
        *,
        independent_runs: bool = True,
        data_units: str = "noise",
        **overrides: Any,
    ) -> None:
        if "preset" in overrides:
            raise ConfigError("REDDiff has no preset; pass DWGF options as keywords instead")
        if data_units not in DATA_UNITS:
            raise ConfigError(f"unknown data_units {data_units!r}; choose one of {DATA_UNITS}")
        self.data_units = data_units
        cfg = {**REDDIFF, **overrides}
        # built on the reference preset so that DWGF options we do not set keep their
        # reference-implementation (switched-off) values
        super().__init__(prior, preset="reference", **cfg)
        self.preset = "reddiff"
        self.independent_runs = bool(independent_runs)

    def settings(self) -> dict[str, Any]:
        """Every setting, with ``preset="reddiff"``."""
        return {
            **super().settings(),
            "independent_runs": self.independent_runs,
            "data_units": self.data_units,
        }

    def resolve_data_term(self, physics: Physics) -> DataTerm:
        """DWGF's data term; with ``data_units="noise"`` an ``"mse"`` term is divided by the
        mean noise variance (the physics' Gaussian level, the solver's ``noise_sigma`` or the
        noise map's), and left as it is when the physics has no noise level."""
        term = super().resolve_data_term(physics)
        if self.data_units != "noise" or term.kind != "mse":
            return term
        if term.variance_map is not None:
            return NoiseScaledMSE.wrap(term, 1.0)
        sigma = term.sigma if term.sigma is not None else noise_sigma(physics)
        if sigma is None or torch.is_tensor(sigma) or not float(sigma) > 0:
            return term
        return NoiseScaledMSE.wrap(term, 1.0 / float(sigma) ** 2)

    def init_state(self, problem: Problem) -> Any:
        """DWGF's start; Adam's epsilon scaled for independent runs (element-mean data term)."""
        state = super().init_state(problem)
        opt = getattr(state, "optimizer", None)
        if (
            self.independent_runs
            and isinstance(opt, torch.optim.Adam)
            and problem.data_term.kind == "mse"
        ):
            for group in opt.param_groups:
                group["eps"] = ADAM_EPS / problem.n
        return state
