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

Batching: the reference averages the loss over the batch, so one run's gradient shrinks with the
number of images in it; Adam is scale invariant except for its :math:`\epsilon`. With
``independent_runs=True`` (default) Adam's :math:`\epsilon` is divided by the number of particles
of the call, which makes each particle behave exactly as a separate RED-diff run of one image.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..priors.base import LatentPrior
from .base import Problem
from .dwgf import DWGF

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


class REDDiff(DWGF):
    """RED-diff as DWGF with one particle per run and RED-diff's settings (see the module doc).

    Any DWGF option can be overridden by keyword, e.g. ``REDDiff(prior, lr=0.05,
    init="random")``. Several particles are independent RED-diff runs, batched.

    :param bool independent_runs: scale Adam's epsilon so that batched particles (and batched
        measurements) behave as separate single-image runs of the reference code.
    :param overrides: DWGF and :class:`~dwgf_sci.solvers.base.LatentSolver` options.
    """

    name: ClassVar[str] = "reddiff"

    def __init__(
        self, prior: LatentPrior, *, independent_runs: bool = True, **overrides: Any
    ) -> None:
        if "preset" in overrides:
            raise ConfigError("REDDiff has no preset; pass DWGF options as keywords instead")
        cfg = {**REDDIFF, **overrides}
        # built on the reference preset so that DWGF options we do not set keep their
        # reference-implementation (switched-off) values
        super().__init__(prior, preset="reference", **cfg)
        self.preset = "reddiff"
        self.independent_runs = bool(independent_runs)

    def settings(self) -> dict[str, Any]:
        """Every setting, with ``preset="reddiff"``."""
        return {**super().settings(), "independent_runs": self.independent_runs}

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
