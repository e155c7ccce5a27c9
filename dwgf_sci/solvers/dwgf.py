r"""DWGF: Diffusion-regularized Wasserstein Gradient Flow (Wang & Akyildiz, arXiv 2509.19276).

Particles :math:`z^{(1..N)}` in the latent space of a prior are moved by a first-order optimiser
over a descending grid of diffusion timesteps. At timestep :math:`t`, with
:math:`a = \sqrt{\bar\alpha_t}`, :math:`s = \sqrt{1 - \bar\alpha_t}`, each particle gets

1. a noisy copy :math:`z_t^{(i)} = a z^{(i)} + s \epsilon^{(i)}` and the network's noise estimate
   :math:`\hat\epsilon^{(i)} = \epsilon_\theta(z_t^{(i)}, t)` (one UNet forward, no gradient);
2. the prior drift, the gradient of the diffusion-regularised KL term,

   .. math::

      g^{(i)} = w_t \, \frac{s^2}{a}\big(s_{\mathrm{mix}}(z_t^{(i)}) - s_\theta(z_t^{(i)})\big)
              = w_t \Big[\frac{s}{a}\big(\hat\epsilon^{(i)} - \epsilon^{(i)}\big)
                - \big(z^{(i)} - \bar z^{(i)}\big)\Big],

   where :math:`s_{\mathrm{mix}}` is the score of the Gaussian mixture centred on the (detached)
   particles and :math:`\bar z^{(i)} = \sum_j r_{ij} z^{(j)}` with responsibilities
   :math:`r_{ij} \propto \exp(-\|z_t^{(i)} - a z^{(j)}\|^2 / 2s^2)`: the particles' interaction;
3. the data term :math:`\ell(y, A(\mathrm{from\_model}(D(z) + \xi)))`, :math:`\xi \sim
   \mathcal{N}(0, \sigma_d^2)`, differentiated through the decoder only;
4. optionally the encoder term, the surrogate :math:`\gamma\, \langle x, \mathrm{sg}(x - D(E(x +
   \xi)))\rangle` pulling :math:`x = D(z)` towards its auto-encoded copy.

One optimiser step is taken with the sum of the terms. With ``data_term="mse"`` every term is an
element mean (as in the reference code); otherwise terms are sums, so the data term is the
negative log-likelihood and ``prior_weight_schedule="score"`` (:math:`w_t = w\,a^2/s^2`) makes the
prior drift an unbiased estimate of :math:`-\nabla_z \mathbb{E}_\epsilon \log p_t(a z + s\epsilon)`.
``temperature > 0`` adds the Langevin diffusion term of the Wasserstein gradient flow of the KL
divergence (preconditioned SGLD), turning the flow into an approximate posterior sampler.

No gradient flows through the UNet: per step the cost is one UNet forward, one decoder
forward and backward, and (encoder term on) one encoder and one decoder forward per particle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..priors.base import LatentPrior
from .base import LatentSolver, Problem

#: Settings of the reference implementation (Adam lr 1.0, 4 particles, a 1000-step DDIM grid,
#: w = 0.15, encoder weight 0.1, decoder noise 0.01, unweighted mean-squared data term).
REFERENCE: dict[str, Any] = {
    "particles": 4,
    "steps": 1000,
    "grid": "linear",
    "optimizer": "adam",
    "lr": 1.0,
    "betas": (0.9, 0.999),
    "prior_weight": 0.15,
    "prior_weight_schedule": "constant",
    "encoder_weight": 0.1,
    "decoder_noise": 0.01,
    "data_term": "mse",
    "interaction": True,
    "score_noise": True,
    "temperature": 0.0,
    "init": "random",
    "refine_steps": 0,
}

#: The toolkit's default: noise-level weighted likelihood, score-weighted prior drift and a
#: Langevin diffusion term; see ``benchmarks/results/`` for the measurements behind it.
DEFAULT: dict[str, Any] = {
    "particles": 4,
    "steps": 200,
    "grid": "linear",
    "optimizer": "psgld",
    "lr": 0.03,
    "betas": (0.9, 0.999),
    "prior_weight": 1.0,
    "prior_weight_schedule": "score",
    "encoder_weight": 0.0,
    "decoder_noise": 0.0,
    "data_term": "gaussian",
    "interaction": False,
    "score_noise": False,
    "temperature": 1.0,
    "init": "random",
    "refine_steps": 0,
}

PRESETS: dict[str, dict[str, Any]] = {"reference": REFERENCE, "default": DEFAULT}
OPTIMIZERS = ("adam", "sgd", "psgld")
WEIGHT_SCHEDULES = ("constant", "score")
INITS = ("random", "pinv")


@dataclass
class DWGFState:
    """Particles and optimiser state of one DWGF run."""

    z: Tensor
    optimizer: torch.optim.Optimizer | None
    sq_avg: Tensor | None = None


class DWGF(LatentSolver):
    """Diffusion-regularized Wasserstein Gradient Flow posterior sampler.

    ``DWGF(prior)`` uses the toolkit's default preset; ``DWGF.reference(prior)`` (or
    ``preset="reference"``) the reference implementation's settings. Any keyword overrides the
    preset. Shared options (``particles``, ``steps``, ``grid``, ``data_term``, ``noise_sigma``,
    ``max_batch``, ``seed``, ``progress``, ``callback``...) are described in
    :class:`~dwgf_sci.solvers.base.LatentSolver`.

    :param str preset: ``"default"`` or ``"reference"``.
    :param str optimizer: ``"adam"``, ``"sgd"`` or ``"psgld"`` (RMSprop-preconditioned SGD,
        the preconditioned-Langevin integrator when ``temperature > 0``).
    :param float lr: learning rate (step size).
    :param tuple betas: Adam betas; ``betas[1]`` is also pSGLD's squared-gradient decay.
    :param float prior_weight: :math:`w`.
    :param str prior_weight_schedule: ``"constant"`` (:math:`w_t = w`, reference) or ``"score"``
        (:math:`w_t = w\\,\\bar\\alpha_t / (1 - \\bar\\alpha_t)`).
    :param float encoder_weight: :math:`\\gamma` of the encoder term (0 switches it off and saves
        its passes).
    :param float decoder_noise: :math:`\\sigma_d`, std of the noise added to decoded images
        (model units).
    :param bool interaction: include the particle-mixture score (particle interaction).
    :param bool score_noise: estimate the prior drift at a noisy copy :math:`a z + s\\epsilon`
        (reference). ``False`` evaluates the network at :math:`a z` (:math:`\\epsilon = 0`): the
        drift is then the exact score of the prior smoothed by :math:`\\mathcal{N}(0, s^2/a^2)`,
        without the estimator noise that grows like :math:`a/s` as :math:`t \\to 0`.
    :param float temperature: scale of the Langevin noise (0: deterministic flow).
    :param str init: ``"random"`` (:math:`\\mathcal{N}(0, I)`) or ``"pinv"`` (encode
        :math:`A^\\dagger y`, plus ``init_noise`` per particle).
    :param float init_noise: std of the per-particle perturbation of a ``"pinv"`` start.
    :param int refine_steps: extra steps at the grid's last timestep (a final refinement).
    """

    name: ClassVar[str] = "dwgf"

    def __init__(
        self,
        prior: LatentPrior,
        preset: str = "default",
        *,
        optimizer: str | None = None,
        lr: float | None = None,
        betas: tuple[float, float] | None = None,
        prior_weight: float | None = None,
        prior_weight_schedule: str | None = None,
        encoder_weight: float | None = None,
        decoder_noise: float | None = None,
        interaction: bool | None = None,
        score_noise: bool | None = None,
        temperature: float | None = None,
        init: str | None = None,
        init_noise: float = 1.0,
        refine_steps: int | None = None,
        precond_power: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown DWGF preset {preset!r}; choose one of {sorted(PRESETS)}")
        given = {
            "optimizer": optimizer,
            "lr": lr,
            "betas": betas,
            "prior_weight": prior_weight,
            "prior_weight_schedule": prior_weight_schedule,
            "encoder_weight": encoder_weight,
            "decoder_noise": decoder_noise,
            "interaction": interaction,
            "score_noise": score_noise,
            "temperature": temperature,
            "init": init,
            "refine_steps": refine_steps,
        }
        cfg = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        for key in ("particles", "steps", "grid", "data_term"):
            kwargs.setdefault(key, cfg[key])
        super().__init__(prior, **kwargs)
        self.preset = preset
        self.optimizer = cfg["optimizer"]
        self.lr = float(cfg["lr"])
        self.betas = tuple(float(b) for b in cfg["betas"])
        self.prior_weight = float(cfg["prior_weight"])
        self.prior_weight_schedule = cfg["prior_weight_schedule"]
        self.encoder_weight = float(cfg["encoder_weight"])
        self.decoder_noise = float(cfg["decoder_noise"])
        self.interaction = bool(cfg["interaction"])
        self.score_noise = bool(cfg["score_noise"])
        self.temperature = float(cfg["temperature"])
        self.init = cfg["init"]
        self.init_noise = float(init_noise)
        self.refine_steps = int(cfg["refine_steps"])
        self.precond_power = float(precond_power)
        self._check()

    @classmethod
    def reference(cls, prior: LatentPrior, **overrides: Any) -> DWGF:
        """DWGF with the reference implementation's settings (see :data:`REFERENCE`)."""
        return cls(prior, preset="reference", **overrides)

    def _check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.prior_weight_schedule not in WEIGHT_SCHEDULES:
            raise ConfigError(
                f"unknown prior_weight_schedule {self.prior_weight_schedule!r}; "
                f"choose one of {WEIGHT_SCHEDULES}"
            )
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose one of {INITS}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, found {self.lr}")
        for name in ("prior_weight", "encoder_weight", "decoder_noise", "temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, found {getattr(self, name)}")
        if self.temperature > 0 and self.optimizer == "adam":
            raise ConfigError("temperature > 0 needs optimizer 'sgd' or 'psgld', not 'adam'")
        if self.refine_steps < 0:
            raise ConfigError(f"refine_steps must be >= 0, found {self.refine_steps}")

    def settings(self) -> dict[str, Any]:
        """Every setting, including the preset it started from."""
        return {
            **super().settings(),
            "preset": self.preset,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "betas": list(self.betas),
            "prior_weight": self.prior_weight,
            "prior_weight_schedule": self.prior_weight_schedule,
            "encoder_weight": self.encoder_weight,
            "decoder_noise": self.decoder_noise,
            "interaction": self.interaction,
            "score_noise": self.score_noise,
            "temperature": self.temperature,
            "init": self.init,
            "init_noise": self.init_noise,
            "refine_steps": self.refine_steps,
        }

    # ------------------------------------------------------------------ loop hooks
    def prepare(self, y: Tensor, physics: Any, **kwargs: Any) -> Problem:
        """As the base class, with ``refine_steps`` repeats of the last timestep appended."""
        problem = super().prepare(y, physics, **kwargs)
        if self.refine_steps:
            tail = problem.grid[-1:].repeat(self.refine_steps)
            problem.grid = torch.cat([problem.grid, tail])
        return problem

    def init_state(self, problem: Problem) -> DWGFState:
        """Start the particles (random or pseudo-inverse) and the optimiser."""
        shape = (problem.n, *problem.latent_shape)
        if self.init == "random":
            z = self.randn(shape, problem)
        else:
            z0 = self.encode_physical(self.pseudo_inverse(problem)).to(problem.dtype)
            z = z0.repeat_interleave(problem.particles, 0)
            z = z + self.init_noise * self.randn(shape, problem)
        z.requires_grad_(True)
        opt: torch.optim.Optimizer | None = None
        if self.optimizer == "adam":
            opt = torch.optim.Adam([z], lr=self.lr, betas=self.betas)
        elif self.optimizer == "sgd":
            opt = torch.optim.SGD([z], lr=self.lr)
        return DWGFState(z=z, optimizer=opt)

    def final_latents(self, state: DWGFState, problem: Problem) -> Tensor:
        """The particles after the last step."""
        return state.z

    def weight(self, ab: float) -> float:
        """Prior weight :math:`w_t` at :math:`\\bar\\alpha_t = ab`."""
        if self.prior_weight_schedule == "score":
            return self.prior_weight * ab / (1.0 - ab)
        return self.prior_weight

    def mixture_offset(self, z: Tensor, z_t: Tensor, a: float, s: float, groups: int) -> Tensor:
        """:math:`z^{(i)} - \\bar z^{(i)}`, the particle-interaction part of the prior drift."""
        n = z.shape[0] // groups
        flat = z.reshape(groups, n, -1)
        noisy = z_t.reshape(groups, n, -1)
        d2 = torch.cdist(noisy, a * flat).pow(2)
        resp = torch.softmax(-d2 / (2 * s * s), dim=-1)
        return (flat - resp @ flat).reshape(z.shape)

    def step(self, state: DWGFState, i: int, t: int, problem: Problem) -> dict[str, float]:
        """One DWGF iteration at timestep ``t`` (see the module docstring)."""
        z = state.z
        ab = self.alpha_bar(t, problem)
        a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
        with torch.no_grad():
            if self.score_noise:
                eps = self.randn(tuple(z.shape), problem)
            else:
                eps = torch.zeros_like(z)
            z_t = a * z + s * eps
            drift = (s / a) * (self.predict_noise(z_t, t) - eps)
            if self.interaction and problem.particles > 1:
                drift -= self.mixture_offset(z, z_t, a, s, problem.batch)
            drift *= self.weight(ab)
        mean_mode = problem.data_term.kind == "mse"

        def reduce(v: Tensor) -> Tensor:
            v = v.flatten(1)
            return v.mean(1) if mean_mode else v.sum(1)

        xi = None
        if self.decoder_noise > 0:  # drawn once for all particles: chunking changes nothing
            xi = self.decoder_noise * self.randn((problem.n, *problem.image_shape), problem)
        z.grad = None
        data_sum = chi2_sum = 0.0
        for sl in self.chunks(problem.n):
            zc = z[sl]
            x = self.prior.decode(zc)
            x_noisy = x if xi is None else x + xi[sl]
            ax = problem.physics.A(self.prior.from_model(x_noisy))
            data = problem.data_term(ax, problem.y_rep[sl])
            loss = data + reduce(zc * drift[sl])
            if self.encoder_weight > 0:
                with torch.no_grad():
                    x_re = self.prior.decode(self.prior.encode(x_noisy))
                loss = loss + self.encoder_weight * reduce(x * (x - x_re))
            total = loss.sum() / problem.n if mean_mode else loss.sum()
            total.backward()
            self.prior.calls["decoder_backward"] += zc.shape[0]
            with torch.no_grad():
                data_sum += float(data.sum())
                chi2_sum += float(problem.data_term.reduced_chi2(ax, problem.y_rep[sl]).sum())
        self._update(state, problem)
        return {
            "data": data_sum / problem.n,
            "chi2": chi2_sum / problem.n,
            "weight": self.weight(ab),
        }

    def _update(self, state: DWGFState, problem: Problem) -> None:
        z = state.z
        if state.optimizer is not None and self.temperature == 0:
            state.optimizer.step()
            return
        with torch.no_grad():
            g = z.grad
            if self.optimizer == "psgld":
                # squared gradients averaged over time and over the particles of a measurement:
                # a preconditioner that hardly depends on any one particle keeps the Langevin
                # dynamics' stationary law (no divergence correction needed)
                beta = self.betas[1]
                groups = g.reshape(problem.batch, problem.particles, *g.shape[1:])
                sq = groups.pow(2).mean(dim=1, keepdim=True)
                if state.sq_avg is None:
                    state.sq_avg = sq
                else:
                    state.sq_avg.mul_(beta).add_(sq, alpha=1 - beta)
                scale = state.sq_avg.pow(0.5 * self.precond_power) + 1e-12
                precond = (1.0 / scale).expand_as(groups).reshape(g.shape)
            else:
                precond = torch.ones_like(z)
            step = self.lr * precond
            z -= step * g
            if self.temperature > 0:
                z += self.temperature * torch.sqrt(2 * step) * self.randn(tuple(z.shape), problem)
