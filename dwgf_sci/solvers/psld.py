r"""PSLD: posterior sampling with latent diffusion (Rout et al., NeurIPS 2023).

PSLD is latent DPS (:class:`~dwgf_sci.solvers.dps.LatentDPS`) with a second, "gluing" term that
asks the latent to be a fixed point of decode, replace the measured part, encode. With
:math:`x = \mathrm{from\_model}(D(\hat z_0(z_t)))` in physical units,

.. math::

    \tilde x = A^{+} y + (I - A^{+} A)\,x, \qquad
    \ell_{\mathrm{glue}} = \big\| E(\mathrm{to\_model}(\tilde x)) - \hat z_0(z_t) \big\|_2,

and the update after the DDIM step is

.. math::

    z_{t'} \leftarrow z_{t'} - \omega\,g_t - \gamma\,\nabla_{z_t}\ell_{\mathrm{glue}},
    \qquad g_t = \nabla_{z_t}\|y - A x\|_2,

one backward pass through the UNet, the decoder *and* the encoder per particle and step (the
encoder backward is what makes PSLD dearer than DPS). The paper writes :math:`A^\top` for
:math:`A^{+}` because its operators (inpainting, box down-sampling) have :math:`AA^\top = I`;
for a general operator the orthogonal projection onto the measured subspace is
:math:`A^{+}A`, so this implementation uses ``physics.A_dagger`` (closed form for every operator
of :mod:`dwgf_sci.operators`; FBP for CT, an approximate projection). :math:`A^{+}y` is computed
once per call.

**Step size in scale-free units** (``step_units="relative"``, the default). The two terms have
different units (the residual norm is in measurement units, the gluing term in latent units), so
the relative weight of :math:`\omega` and :math:`\gamma` in the PSLD code depends on the image's
and the measurements' units. Here the residual norm is measured in units of its noise level
:math:`\nu = \ell_\star = \sqrt{V}` (see :mod:`~dwgf_sci.solvers.dps`; where the noise is unknown,
in units of its own current value), the joint objective

.. math::

    L_i = \ell_i/\nu_i + \gamma\,\ell_{\mathrm{glue},i}, \qquad G_i = \nabla_{z_t} L_i

is differentiated in one backward pass, and the step is Polyak's step of :math:`L` towards the
noise level of its data part, as for latent DPS:

.. math::

    z_{t'} \leftarrow z_{t'} - \zeta\,\frac{(\ell_i/\nu_i - 1)_+}{\|G_i\|^2}\,G_i .

With :math:`\gamma = 0` this is latent DPS's step. Multiplying :math:`y`, the noise level and the
operator (or the image units, for a prior without stretch) by any :math:`c > 0` leaves
:math:`L` and the step unchanged. Default :math:`\zeta = 0.5`. ``step_units="absolute"`` is the
PSLD code's :math:`\omega` = ``zeta`` (its 1.0, for images in [-1, 1]) with the residual norm in
measurement units. A variant that took the data gradient apart from the gluing one (Polyak on
the data term alone, two backward passes) overshot on compressed sensing and was dropped
(``benchmarks/results/baseline_defaults.md``, exploration).

Other defaults follow the PSLD repository's Stable Diffusion script (``scripts/inverse.py``:
``gamma`` 0.1, 1000 DDIM steps, ``eta`` 0; its ``omega`` 1 in absolute units), both terms with
the residual norm (not squared), as in its code.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from ..errors import ConfigError
from ..priors.base import LatentPrior
from .base import Problem
from .dps import GuidedState, LatentDPS

__all__ = ["PSLD"]


class PSLD(LatentDPS):
    r"""Posterior sampling with latent diffusion (see the module doc).

    ``PSLD(prior)(y, physics)`` returns a :class:`~dwgf_sci.solvers.posterior.Posterior`. Needs a
    linear physics with ``A_dagger``. Options are those of
    :class:`~dwgf_sci.solvers.dps.LatentDPS` (``zeta`` sets the paper's :math:`\omega`: with
    ``step_units="relative"``, the default, the fraction of the way to the noise level that the
    data and gluing steps together take, see the module doc; with ``"absolute"`` :math:`\omega`
    itself), plus:

    :param float gamma: weight :math:`\gamma` of the gluing term (PSLD code: 0.1; 0 gives latent
        DPS).
    :param float eta: DDIM stochasticity (PSLD code: 0, deterministic DDIM).
    """

    name: ClassVar[str] = "psld"

    def __init__(
        self, prior: LatentPrior, *, gamma: float = 0.1, eta: float = 0.0, **kwargs: Any
    ) -> None:
        if not (math.isfinite(float(gamma)) and float(gamma) >= 0):
            raise ConfigError(f"gamma must be a finite number >= 0, found {gamma}")
        super().__init__(prior, eta=eta, **kwargs)
        self.gamma = float(gamma)

    def settings(self) -> dict[str, Any]:
        """Every setting (JSON-serialisable)."""
        return {**super().settings(), "gamma": self.gamma}

    def prepare(self, y: Tensor, physics: Any, **kwargs: Any) -> Problem:
        """As latent DPS, and check that the physics is linear (before any network call)."""
        if not isinstance(physics, LinearPhysics):
            raise ConfigError(
                "PSLD needs a linear physics with A_dagger (deepinv LinearPhysics), found "
                f"{type(physics).__name__}; use LatentDPS for non-linear operators"
            )
        return super().prepare(y, physics, **kwargs)

    def init_state(self, problem: Problem) -> GuidedState:
        """Start as DPS, and compute :math:`A^{+} y` once per measurement."""
        state = super().init_state(problem)
        state.extra["pinv_y"] = self.pseudo_inverse(problem).to(problem.dtype)
        return state

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
        """As DPS, with the gluing term in the objective (one encoder backward more)."""
        eps, grad, ax = super().guided_noise(z_t, t, a, s, rows, problem, state)
        state.extra.pop("_x", None), state.extra.pop("_z0", None)  # free the graph
        if self.gamma > 0:
            self.prior.calls["encoder_backward"] += z_t.shape[0]
        return eps, grad, ax

    def objective(
        self, ax: Tensor, rows: slice, a: float, s: float, problem: Problem, state: GuidedState
    ) -> Tensor:
        r"""The data term per particle: :math:`\|y - Ax\|_2`, divided by the noise level
        :math:`\nu = \ell_\star` with relative steps (by the detached value itself where the
        noise is unknown)."""
        loss = super().objective(ax, rows, a, s, problem, state)
        if self.step_units != "relative":
            return self.zeta * loss
        return loss / self.noise_unit(loss.detach(), ax.detach(), rows, problem)

    def noise_unit(self, loss: Tensor, ax: Tensor, rows: slice, problem: Problem) -> Tensor:
        r""":math:`\nu_i`: the loss at the noise level, or the loss itself without noise."""
        floor = self.loss_floor(ax, rows, problem).to(loss.dtype)
        return torch.where(floor > 0, floor, loss.clamp_min(1e-30))

    def data_factor(
        self, loss: Tensor, grad: Tensor, ax: Tensor, rows: slice, problem: Problem
    ) -> Tensor:
        r"""Relative units: Polyak's step of the joint gradient :math:`G_i` towards the noise
        level, :math:`\zeta\,(\ell_i/\nu_i - \ell_\star/\nu_i)_+ / \|G_i\|^2` (see the module
        doc); absolute units: 1 (:math:`\omega` = ``zeta`` is in the objective)."""
        if self.step_units != "relative":
            return torch.ones_like(loss)
        # the loss is already ell / nu: the noise level is 1 (0 where the noise is unknown)
        floor = self.loss_floor(ax, rows, problem).to(loss.dtype)
        excess = (loss - (floor > 0).to(loss.dtype)).clamp_min(0.0)
        g2 = grad.flatten(1).pow(2).sum(1)
        return torch.where(g2 > 0, self.zeta * excess / g2.clamp_min(1e-30), 0.0)

    def extra_objective(
        self, ax: Tensor, rows: slice, problem: Problem, state: GuidedState
    ) -> Tensor | None:
        r""":math:`\gamma\,\ell_{\mathrm{glue}}` per particle (None when :math:`\gamma = 0`)."""
        if self.gamma == 0:
            return None
        x, z0 = state.extra["_x"], state.extra["_z0"]
        physics = problem.physics
        pinv_y = state.extra["pinv_y"].repeat_interleave(problem.particles, 0)[rows]
        glued = pinv_y + x - physics.A_dagger(ax)
        glued = glued.real if torch.is_complex(glued) else glued
        z_glued = self.prior.encode(self.prior.to_model(glued))
        return self.gamma * (z_glued - z0).flatten(1).norm(dim=1)

    def render_for_guidance(self, z0: Tensor, state: GuidedState) -> Tensor:
        """Decode :math:`\\hat z_0` and keep it (and the image) for the gluing term."""
        x = self.render(z0)
        state.extra["_x"], state.extra["_z0"] = x, z0
        return x

    def coefficient(self, a: float, s: float, a_next: float, c2: float) -> float:
        """:math:`\\kappa_t = -1`: both weights are inside the objective."""
        return -1.0
