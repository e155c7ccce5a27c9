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

Annealed split-Gibbs SMC (``scheme="smc"``, the toolkit's default)
----------------------------------------------------------------
The flow above is an optimiser: its particles collapse onto modes and do not weigh them. The
``"smc"`` scheme keeps DWGF's ingredients (the drift :math:`(s/a)\,\epsilon_\theta(a u, t)`
evaluated without injected noise, and the data term differentiated through the decoder only) but
arranges them into a sampler whose target is known at every step. With
:math:`\rho_t = s_t / a_t` (the variance-exploding noise level of timestep :math:`t`) and
:math:`p_\rho = p_0 * \mathcal{N}(0, \rho^2 I)` the smoothed latent prior, the particles
:math:`u^{(i)}` target the sequence

.. math::

    \pi_\rho(u) \propto p_\rho(u)\, L(u), \qquad L(u) = p\big(y \mid A(D(u))\big),

along the descending timestep grid; :math:`\pi_\rho` tends to the posterior as
:math:`\rho \to 0`. Its prior score is the network's,
:math:`\nabla \log p_\rho(u) = -\epsilon_\theta(a u, t)/\rho`. Each level does

1. **Reweighting** (the particles' interaction). The incremental weight
   :math:`\pi_{\rho_n}(u)/\pi_{\rho_{n-1}}(u) = p_{\rho_n}(u)/p_{\rho_{n-1}}(u)` (the likelihood
   cancels) is the expectation
   :math:`\mathbb{E}_{x \sim p(x \mid u; \rho_n)}\big[\mathcal{N}(u; x, \rho_{n-1}^2)
   / \mathcal{N}(u; x, \rho_n^2)\big]^{-1}`; with the Tweedie approximation
   :math:`x \mid u \sim \mathcal{N}(u - \rho_n \hat\epsilon, v_n I)`,
   :math:`v_n = \rho_n^2/(1+\rho_n^2)` (exact for unit-variance Gaussian data), the Gaussian
   integral gives

   .. math::

      \log w_n(u) = -\frac{c_n\, \rho_n^2\, \|\hat\epsilon\|^2}{2 (1 - c_n v_n)},
      \qquad c_n = \rho_n^{-2} - \rho_{n-1}^{-2},
      \qquad \hat\epsilon = \epsilon_\theta(a_n u, t_n),

   the same network call as the move below, so reweighting is free. Particles of a measurement
   are resampled (systematic resampling) when the effective sample size falls below
   ``resample_ess`` times their number.
2. **Prior half-step** (DWGF's drift with learning rate :math:`\kappa`, plus noise). Split
   :math:`\rho^2 = \rho'^2 + \delta^2` with :math:`\delta^2 = \kappa\rho^2` (``split``) and
   write :math:`\pi_\rho(u) = \int p_{\rho'}(v)\,\mathcal{N}(u; v, \delta^2 I)\,dv\; L(u)`.
   Draw the auxiliary :math:`v \mid u \propto p_{\rho'}(v)\mathcal{N}(u; v, \delta^2)` by its
   Tweedie-Gaussian approximation

   .. math::

      v = u - \kappa \rho\, \hat\epsilon + \sqrt{\delta^2 (1 + \rho'^2)/(1 + \rho^2)}\;\xi,

   (mean exact, variance exact for unit-variance Gaussian data; :math:`\kappa = 1` is the one-step
   Tweedie denoiser).
3. **Likelihood half-step**: draw :math:`u \mid v \propto \mathcal{N}(u; v, \delta^2 I)\, L(u)`.
   For a Gaussian likelihood, a linear physics and an affine decoder (``likelihood_step="exact"``)
   this is a Gaussian, sampled exactly from one eigendecomposition of :math:`J^\top J` with
   :math:`J` the matrix of :math:`u \mapsto A(D(u))` (found once by probing the decoder). Its
   condition number is :math:`1 + \delta^2 \lambda_{\max}(J^\top J)/\sigma^2`, far better
   than the posterior's. Otherwise (``"mala"``) ``mala_steps`` Metropolis-adjusted Langevin steps
   target it (both factors are tractable), each one decoder forward and backward per particle;
   the step size :math:`\tau = \eta \delta^2` adapts :math:`\eta` per measurement towards the
   acceptance rate ``mala_accept``.

The output are the particles after the last level (resampled once more if their weights are
not uniform). Per level and particle the cost is ``sweeps`` UNet forwards and, with
``"mala"``, ``mala_steps`` decoder forwards and backwards; ``"exact"`` needs ``dim(u) + 1``
decoder forwards once per call and no decoder pass per level. No gradient flows through the UNet.

Diffused-posterior Gibbs sampler (``scheme="gibbs"``; ``"auto"`` for learned decoders)
-----------------------------------------------------------------------------------
The split-Gibbs SMC evaluates the likelihood at the *noisy* latent :math:`u`. With a learned
decoder this goes wrong: at :math:`\rho \gg 1` a noisy latent lies far outside the data the
decoder was trained on (for ``galaxy-64``, decoding :math:`10\,\xi` gives fluxes ~10^4 times the
data's), and the likelihood there is meaningless and extremely stiff. The ``"gibbs"`` scheme
attaches the likelihood to the *clean* latent instead. It targets the joint density

.. math::

    \pi_\rho(u_0, u) \propto p_0(u_0)\, L(u_0)\, \mathcal{N}(u; u_0, \rho^2 I),

whose :math:`u_0`-marginal is the posterior at *every* level, and alternates its two conditionals:

1. :math:`u \mid u_0 = \mathcal{N}(u_0, \rho^2 I)`, exact;
2. :math:`u_0 \mid u \propto p(u_0 \mid u)\, L(u_0)` with the Tweedie-Gaussian
   :math:`p(u_0 \mid u) \approx \mathcal{N}(u - \rho\,\hat\epsilon, v_\rho I)`,
   :math:`v_\rho = \rho^2/(1+\rho^2)`, :math:`\hat\epsilon = \epsilon_\theta(a u, t)` (one UNet
   forward), drawn by the likelihood step.

Each level is thus a Markov kernel that leaves the posterior invariant up to the Tweedie-Gaussian
approximation (exact for unit-variance Gaussian data, increasingly accurate as
:math:`\rho \to 0`); the descending levels only serve mixing, so no weights are needed. The
particles stay clean latents, where the decoder is trained. The same construction underlies DAPS
(Zhang et al., 2024), here with the Tweedie variance instead of a hand-set schedule.

Likelihood step ``"rto"`` (randomise-then-optimise)
--------------------------------------------------
The conditional :math:`\mathcal{N}(u; c, v I)\, L(u)` is very ill-conditioned for real data: for
``galaxy-deconv`` (1% noise) the Gauss-Newton Hessian :math:`I/v + J^\top J/\sigma^2` at
:math:`v = 1` has condition number ~3e5, so a MALA chain hardly moves (reduced chi-square 50-400
after 50 levels). ``"rto"`` perturbs the centre and the data and takes one damped Gauss-Newton
step, solved by a few conjugate-gradient iterations (:meth:`DWGF._rto`): CG resolves the few
stiff, data-dominated directions first, and the rest keep the prior's draw. For an affine
:math:`u \mapsto A(D(u))` and a converged CG it is an exact draw; for a learned decoder it is the
usual RTO approximation (no Metropolis correction). Poisson data use the Gaussian approximation of
their likelihood at the current particle (variance :math:`g(Ax + b)`). ``likelihood_step="auto"``
uses ``"exact"`` where it applies, else ``"rto"`` (Gaussian or Poisson data term), else
``"mala"``.

Likelihood step ``"image"`` (the fast preset's)
----------------------------------------------
The latent RTO step costs ``cg_steps + 1`` decoder backward passes per level, and on these priors
the decoder is the dearest network. ``"image"`` solves the same conditional in image space:
decode the prior's draw :math:`\tilde c` (and, for one particle per measurement, the centre, to
measure the decoder's local gain), fit the data there with the image-space prior
:math:`\mathcal{N}(D(\tilde c), g I)` by CG iterations that apply only the operator, and map
the result back with the encoder, differenced against :math:`E(D(\tilde c))`
(:meth:`DWGF._image_rto`). Per particle and level: one UNet forward, :math:`1 + 1/N` decoder
and two encoder forwards, no backward pass. It is exact when decoder and encoder are the
identity, and an approximation otherwise (the decoder's :math:`JJ^\top` taken to be a multiple
of the identity on its range). The final decoder-error step continues from the last level's
image-space draw. Below noise level ``image_until`` (default 0) the latent RTO step takes over.
With ``image_retry`` (the fast preset's 0.1), the run checks the posterior mean's data fit at
the end and, for a measurement whose mean misses its data, reruns the levels below that noise
level with the latent RTO step from the state kept before them (:meth:`DWGF.finish`).

For a linear physics with real measurements the image-space CG (this step's and the final
decoder-error step's) applies :math:`A` and :math:`A^\top` directly and is preconditioned by the
diagonal :math:`1/v + c\,(m s)^2` (:meth:`DWGF._image_jacobian`): the prior's per-pixel scale
:math:`s` (the decoder error :math:`\sigma_p`, 3e-4 on the sky to 5e-2 on bright galaxy pixels)
and the asinh stretch's slope :math:`m` otherwise spread the matrix's spectrum over orders of
magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from ..errors import ConfigError
from ..priors.base import LatentPrior
from ..priors.decoder_error import DecoderErrorModel
from ..priors.gaussian_mixture import GaussianMixturePrior
from .base import LatentSolver, Problem
from .likelihood import chi2_limit

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
    "scheme": "flow",
}

#: The toolkit's default. ``scheme="auto"``: for a learned decoder the diffused-posterior Gibbs
#: sampler with the RTO likelihood step (5 CG iterations) and the decoder-error step, 50 levels;
#: for an affine decoder the annealed split-Gibbs SMC with the exact likelihood step. On 4
#: validation galaxies (``galaxy-deconv``) 50 levels gave 43.95 dB against 43.64 dB for 20 levels
#: with 3 CG iterations and 44.28 dB for 100 levels (before the decoder-error step), at 67 / 15 /
#: 112 s per image; the Gibbs-RTO combination fits the data at the noise level (reduced chi2
#: ~1, against 15-400 for the SMC with MALA it replaces on these priors). The SMC path was tuned
#: with 200 levels (``benchmarks/tune_dwgf_default.py``): on the Gaussian closed form, mean
#: within Monte Carlo error and variance ratio 0.99-1.03; on the mixture benchmark see
#: ``benchmarks/results/mixture_benchmark.md`` (run with 200 levels). The flow options
#: (optimiser, lr, prior weight) only matter with ``scheme="flow"``. The CG iterations start
#: from the perturbed prior centre at the levels with noise level above 3 and from the current
#: particle below (``cg_start="switch"``, ``cg_switch=3``). On validation problems
#: (``benchmarks/tune_dwgf_fast.py``, 2-4 per task), in dB against starting from the current
#: particle at every level / from the centre at every level: limited-angle CT +3.27 / +0.70,
#: random sensing +2.63 / +0.78, inpainting +0.79 / -0.17, Fourier sampling +0.66 / +0.41,
#: 60-view CT +0.09 / +0.15, galaxy deconvolution +0.08 / +0.37, 20-view CT -0.01 / +0.16,
#: Poisson deconvolution -0.29 / -0.41.
DEFAULT: dict[str, Any] = {
    "particles": 4,
    "steps": 50,
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
    "scheme": "auto",
    "split": 0.5,
    "resample_ess": 0.5,
    "sweeps": 1,
    "likelihood_step": "auto",
    "mala_steps": 2,
    "mala_accept": 0.6,
    "mala_start": "reference",
    "laplacian_probes": 0,
    "cg_steps": 5,
    "cg_start": "switch",
    "cg_switch": 3.0,
    "line_search": 3,
    "decoder_error": "auto",
    "refine_cg_steps": 20,
    "refine_cg_tol": 0.0,
    "image_until": 0.0,
    "image_retry": 0.0,
    "image_error": "auto",
}

#: SMC settings used when a preset does not name them (the reference preset is a flow).
SMC_DEFAULTS: dict[str, Any] = {
    key: DEFAULT[key]
    for key in (
        "split",
        "resample_ess",
        "sweeps",
        "likelihood_step",
        "mala_steps",
        "mala_accept",
        "mala_start",
        "laplacian_probes",
        "cg_steps",
        "cg_start",
        "cg_switch",
        "line_search",
        "decoder_error",
        "refine_cg_steps",
        "refine_cg_tol",
        "image_until",
        "image_retry",
        "image_error",
    )
}

#: The fast preset: the default with the image-space likelihood step (``likelihood_step=
#: "image"``, :meth:`DWGF._image_rto`) at every level. A level runs one UNet forward, decoder
#: and encoder forwards and CG iterations that apply only the operator; no backward pass at
#: all. Chosen on validation problems (``benchmarks/tune_dwgf_fast.py``, configuration
#: ``fast-image``; 2-4 problems per task; figures in that script's docstring): within about
#: 0.7 dB of the default on every task but limited-angle CT (-4.6 dB), at a fifth to a half
#: of its time per image. With the decoder's error in the image prior (``image_error=True``)
#: limited-angle CT lost only 1.5 dB and Fourier sampling gained 5.7, but galaxy deconvolution
#: lost 2.8 dB (4 dB on 20 test problems). The previous fast preset (20 levels of the latent
#: RTO step with 8 CG iterations) was 0.2 dB below the default on galaxy deconvolution and
#: 20-view CT and 2.0 dB below on limited-angle CT, at about half the default's time and three
#: times this one's. On some galaxies the chain ends with a latent whose decoded image misses
#: the data (reduced chi2 1.3-1.6, 5-12 dB below the default; 4 of 20 test problems): there
#: the latent RTO step at the last two levels (``image_until=0.1``, about 1 s more per 64 px
#: galaxy) fits them (chi2 ~1), but on every problem it lost 0.4 dB on average over 16
#: validation galaxies (2.6 dB on inpainting). So the fast preset reruns those two levels with
#: the latent step only where the posterior mean misses the data (``image_retry=0.1``,
#: :meth:`DWGF.finish`): on the validation problems that retried 2 of 16 galaxies (+3.3 and
#: +2.6 dB), 1 of 2 Fourier-sampling (+1.0) and 1 of 2 random-sensing problems (+0.3), and
#: left every other result unchanged. Its ``image_error`` is the prior's choice (``"auto"``):
#: on the CT prior's validation problems the decoder's error in the image prior gained 2.8 dB on
#: limited-angle CT and 0.4 dB on 20-view CT (60 views: unchanged), so ``ct-64`` turns it on;
#: on galaxy deconvolution it lost 2.3 dB, so ``galaxy-64`` does not.
FAST: dict[str, Any] = {
    **DEFAULT,
    "likelihood_step": "image",
    "image_retry": 0.1,
}

PRESETS: dict[str, dict[str, Any]] = {"reference": REFERENCE, "default": DEFAULT, "fast": FAST}
OPTIMIZERS = ("adam", "sgd", "psgld")
SCHEMES = ("flow", "smc", "gibbs", "auto")
LIKELIHOOD_STEPS = ("auto", "exact", "image", "rto", "mala")
#: Largest latent dimension for which ``likelihood_step="auto"`` builds the dense matrix J.
EXACT_MAX_DIM = 4096
WEIGHT_SCHEDULES = ("constant", "score")
INITS = ("random", "pinv")
CG_STARTS = ("current", "centre", "switch")
DECODER_ERRORS = ("auto", "white")


@dataclass
class DWGFState:
    """Particles and optimiser state of one DWGF run."""

    z: Tensor
    optimizer: torch.optim.Optimizer | None
    sq_avg: Tensor | None = None


@dataclass
class SMCState:
    """Particles, log-weights and likelihood-step caches of one split-Gibbs SMC run.

    ``z`` are the particles :math:`u` (flattened latents, ``(n, dim)``), ``log_w`` their
    log-weights ``(batch, particles)``; ``gauss`` holds the exact Gaussian step's
    eigendecomposition, ``phi``/``grad`` the data term and its gradient at ``z`` (MALA) and
    ``eta`` the MALA step-size factor per measurement; ``image`` and ``image_base`` the
    ``"image"`` likelihood step's last draw and decoded prior draw (model units, flattened;
    None after a latent level); ``snapshot`` a copy of the state before level ``i`` that
    :meth:`DWGF.finish` may rerun from with the latent step (``latent_only``, see
    ``image_retry``).
    """

    z: Tensor
    log_w: Tensor
    rho2_prev: float | None = None
    gauss: dict[str, Tensor] | None = None
    phi: Tensor | None = None
    grad: Tensor | None = None
    eta: Tensor | None = None
    curv: Tensor | None = None
    mode: str = "mala"
    resamples: int = 0
    image: Tensor | None = None
    image_base: Tensor | None = None
    latent_only: bool = False
    snapshot: tuple[int, SMCState] | None = None


def _copy_state(state: SMCState) -> SMCState:
    """A copy of ``state`` whose tensors do not share memory with it (no snapshot inside)."""
    fields = {
        name: value.clone() for name, value in vars(state).items() if isinstance(value, Tensor)
    }
    return replace(state, snapshot=None, **fields)


def _real_flat(t: Tensor) -> Tensor:
    """Flatten per item, complex values as (real, imaginary) pairs."""
    if torch.is_complex(t):
        t = torch.view_as_real(t)
    return t.reshape(t.shape[0], -1)


class DWGF(LatentSolver):
    """Diffusion-regularized Wasserstein Gradient Flow posterior sampler.

    ``DWGF(prior)`` uses the toolkit's default preset; ``DWGF.reference(prior)`` (or
    ``preset="reference"``) the reference implementation's settings. Any keyword overrides the
    preset. Shared options (``particles``, ``steps``, ``grid``, ``data_term``, ``noise_sigma``,
    ``max_batch``, ``seed``, ``progress``, ``callback``...) are described in
    :class:`~dwgf_sci.solvers.base.LatentSolver`.

    :param str preset: ``"default"``, ``"fast"`` (:data:`FAST`) or ``"reference"``.
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
    :param str scheme: ``"flow"`` (the optimiser-driven flow of the reference, with the options
        above), ``"smc"`` (the annealed split-Gibbs SMC sampler of the module documentation),
        ``"gibbs"`` (the diffused-posterior Gibbs sampler) or ``"auto"`` (``"smc"`` for a prior
        with an affine decoder, ``"gibbs"`` otherwise; see :meth:`resolved_scheme`). The flow
        options are unused by the last three.
    :param float split: :math:`\\kappa \\in (0, 1]`, the share :math:`\\delta^2 = \\kappa\\rho^2`
        of the noise level handled by the prior half-step (``"smc"``).
    :param float resample_ess: resample a measurement's particles when their effective sample
        size falls below this fraction of them; ``0`` switches the reweighting off (an annealed
        split-Gibbs sampler without weights). ``"smc"`` only: the ``"gibbs"`` scheme needs no
        weights.
    :param int sweeps: Gibbs sweeps per level (one UNet forward each).
    :param str likelihood_step: ``"exact"`` (Gaussian data term, linear physics and an affine
        decoder: exact Gaussian draw), ``"rto"`` (randomise-then-optimise, Gaussian or Poisson
        data term, any differentiable physics and decoder), ``"image"`` (the same in image
        space, mapped back by the encoder, with no decoder backward pass: the fast preset's;
        see :meth:`_image_rto`), ``"mala"`` (any data term, physics and decoder) or ``"auto"``
        (``"exact"`` where it applies and the latent has at most :data:`EXACT_MAX_DIM`
        entries, else ``"rto"``, else ``"mala"``).
    :param float image_until: with ``likelihood_step="image"``, the noise level :math:`\\rho`
        below which the levels use the latent ``"rto"`` step instead (default 0: the image
        step at every level; 0.3 would hand the last 5 of 50 levels of the linear grid to the
        latent step).
    :param float image_retry: with ``likelihood_step="image"``, the noise level :math:`\\rho`
        from which the levels are run again with the latent ``"rto"`` step when the posterior
        mean of a measurement misses its data (reduced chi-square above
        :func:`~dwgf_sci.solvers.likelihood.chi2_limit`; :meth:`finish`). 0 (default) never
        retries; the fast preset uses 0.1 (the last two of 50 levels).
    :param image_error: whether the ``"image"`` step's image-space prior adds the
        decoder's per-pixel error variance (:meth:`decoder_error_map`) to the decoder's gain:
        True, False, or ``"auto"`` (default), the prior's choice
        (``prior.solver_hints["image_error"]``, chosen on its validation problems; False
        when the prior has none). On validation problems it gained 2.8 dB on limited-angle CT,
        0.4 dB on 20-view CT and 6 dB on Fourier sampling and lost 2.3 dB on galaxy
        deconvolution (``benchmarks/tune_dwgf_fast.py``), so the shipped ``ct-64`` prior
        turns it on and ``galaxy-64`` leaves it off.
    :param int mala_steps: MALA steps per level and sweep (one decoder forward and backward
        each).
    :param float mala_accept: MALA acceptance rate the step size adapts to. The step is
        :math:`\\tau = \\eta / (1/\\delta^2 + h)`, :math:`h` the data term's mean curvature
        tracked from the proposals' gradients, so a stiff likelihood does not need
        :math:`\\eta` to change by orders of magnitude between levels.
    :param str mala_start: where each level's MALA chain starts: ``"reference"`` (a draw of
        :math:`\\mathcal{N}(v, \\delta^2 I)`, exact where the data say nothing; one more decoder
        forward and backward per level) or ``"previous"`` (the particle itself: an exactly
        invariant Metropolis-within-Gibbs step, but it follows :math:`v` slowly when a stiff
        likelihood forces small steps).
    :param int cg_steps: conjugate-gradient iterations of the ``"rto"`` likelihood step (each one
        decoder forward and one backward per particle).
    :param str cg_start: where those iterations start: ``"current"`` (no move; directions that
        CG has not reached keep the particle's current values), ``"centre"`` (the move to the
        perturbed prior centre :math:`\\tilde c`; unreached directions take the prior's draw,
        which is exact in the directions the data do not see; one more decoder forward per
        particle) or ``"switch"`` (the default: ``"centre"`` at the levels with
        :math:`\\rho >` ``cg_switch``, ``"current"`` below; validation figures at
        :data:`DEFAULT`). See :meth:`_gauss_newton_rto`.
        ``"centre"`` restarts the data fit from each prior draw, so with few CG iterations it
        fits the data slowly: on two galaxy-deconvolution validation problems the decoded
        particles' PSNR was still rising at the last level, while from ``"current"`` it
        reached its plateau within 10 levels. ``"current"`` accumulates the fit over the
        levels but never gives the directions the data do not see their prior draw (limited-
        angle CT: 2.6 dB below ``"centre"``). At low noise levels the two starts differ only
        by :math:`O(\\rho)` in those directions, so ``"switch"`` takes the prior's structure
        from the high levels and accumulates the fit in the low ones.
    :param float cg_switch: the noise level :math:`\\rho` at which ``"switch"`` changes start
        (default 3; 1 did about as well on two galaxy and two limited-angle problems). The
        test is on the conditional's prior variance, :math:`v = \\rho^2/(1+\\rho^2)` in the
        ``"gibbs"`` scheme (:math:`\\delta^2` in ``"smc"``), against
        ``cg_switch**2 / (1 + cg_switch**2)``.
    :param int line_search: most objective evaluations of the ``"rto"`` step's backtracking.
    :param decoder_error: how the final image-space step (:meth:`finalize_images`) models the
        decoder's error :math:`e = x - D(z)`, in model units: ``"auto"`` (default) uses the
        prior's per-pixel :class:`~dwgf_sci.priors.DecoderErrorModel` (measured on held-out
        images; :math:`e_p \\sim \\mathcal{N}(0, \\sigma^2(D(z))_p)`), or its single
        ``decoder_sigma`` if it has no such model; ``"white"`` uses ``decoder_sigma`` at every
        pixel, :math:`\\mathcal{N}(0, \\sigma_D^2 I)`; a number is such a :math:`\\sigma_D`;
        ``0`` turns the step off. Off for the flow scheme under ``"auto"``/``"white"``, and
        for priors that measured nothing. On 4+4 validation problems of galaxy deconvolution
        and 20-view CT the per-pixel model gave +5.5 / +1.4 dB over ``"white"``, and +0.5 to
        +2.8 dB on 2 problems of each other task (``benchmarks/tune_decoder_error.py``).
    :param int refine_cg_steps: CG iterations of that image-space step, and of the ``"image"``
        likelihood step's (no network call;
        default 20: on validation, +1.0 to +1.2 dB over 10 on the two compressed-sensing tasks,
        within 0.2 dB on the others).
    :param float refine_cg_tol: those CG iterations stop early once every row's residual, in
        the preconditioner's norm, is below this fraction of its starting value (0: never;
        the CG of a linear physics is preconditioned, see :meth:`_image_jacobian`). On
        validation, 1e-2 saved about a tenth of the fast preset's time on CT at no loss there,
        but lost 0.9 dB on galaxy deconvolution; 1e-3 hardly ever stopped early.
    :param int laplacian_probes: Hutchinson probes of the weights' Laplacian correction (0: off;
        each costs one more UNet forward per level, no backward; see
        :meth:`_laplacian_correction`).
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
        scheme: str | None = None,
        split: float | None = None,
        resample_ess: float | None = None,
        sweeps: int | None = None,
        likelihood_step: str | None = None,
        mala_steps: int | None = None,
        mala_accept: float | None = None,
        mala_start: str | None = None,
        laplacian_probes: int | None = None,
        cg_steps: int | None = None,
        cg_start: str | None = None,
        cg_switch: float | None = None,
        line_search: int | None = None,
        decoder_error: str | float | None = None,
        refine_cg_steps: int | None = None,
        refine_cg_tol: float | None = None,
        image_until: float | None = None,
        image_retry: float | None = None,
        image_error: bool | str | None = None,
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
            "scheme": scheme,
            "split": split,
            "resample_ess": resample_ess,
            "sweeps": sweeps,
            "likelihood_step": likelihood_step,
            "mala_steps": mala_steps,
            "mala_accept": mala_accept,
            "mala_start": mala_start,
            "laplacian_probes": laplacian_probes,
            "cg_steps": cg_steps,
            "cg_start": cg_start,
            "cg_switch": cg_switch,
            "line_search": line_search,
            "decoder_error": decoder_error,
            "refine_cg_steps": refine_cg_steps,
            "refine_cg_tol": refine_cg_tol,
            "image_until": image_until,
            "image_retry": image_retry,
            "image_error": image_error,
        }
        cfg = {
            **SMC_DEFAULTS,
            **PRESETS[preset],
            **{k: v for k, v in given.items() if v is not None},
        }
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
        self.scheme = cfg["scheme"]
        self.split = float(cfg["split"])
        self.resample_ess = float(cfg["resample_ess"])
        self.sweeps = int(cfg["sweeps"])
        self.likelihood_step = cfg["likelihood_step"]
        self.mala_steps = int(cfg["mala_steps"])
        self.mala_accept = float(cfg["mala_accept"])
        self.mala_start = cfg["mala_start"]
        self.laplacian_probes = int(cfg["laplacian_probes"])
        self.cg_steps = int(cfg["cg_steps"])
        self.cg_start = str(cfg["cg_start"])
        self.cg_switch = float(cfg["cg_switch"])
        self.line_search = int(cfg["line_search"])
        self.decoder_error = cfg["decoder_error"]
        self.refine_cg_steps = int(cfg["refine_cg_steps"])
        self.refine_cg_tol = float(cfg["refine_cg_tol"])
        self.image_until = float(cfg["image_until"])
        self.image_retry = float(cfg["image_retry"])
        self.image_error = self._resolve_image_error(cfg["image_error"])
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
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {self.scheme!r}; choose one of {SCHEMES}")
        if self.likelihood_step not in LIKELIHOOD_STEPS:
            raise ConfigError(
                f"unknown likelihood_step {self.likelihood_step!r}; "
                f"choose one of {LIKELIHOOD_STEPS}"
            )
        if not 0 < self.split <= 1:
            raise ConfigError(f"split must lie in (0, 1], found {self.split}")
        if not 0 <= self.resample_ess <= 1:
            raise ConfigError(f"resample_ess must lie in [0, 1], found {self.resample_ess}")
        if self.sweeps < 1 or self.mala_steps < 1:
            raise ConfigError(
                f"sweeps and mala_steps must be >= 1, found {self.sweeps}, {self.mala_steps}"
            )
        if self.decoder_error not in DECODER_ERRORS:
            try:
                ok = float(self.decoder_error) >= 0 and math.isfinite(float(self.decoder_error))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(
                    f"decoder_error must be one of {DECODER_ERRORS} or a number >= 0, found "
                    f"{self.decoder_error!r}"
                )
        if self.cg_start not in CG_STARTS:
            raise ConfigError(f"cg_start must be one of {CG_STARTS}, found {self.cg_start!r}")
        if not self.cg_switch >= 0:
            raise ConfigError(f"cg_switch must be >= 0, found {self.cg_switch}")
        if not self.image_until >= 0:
            raise ConfigError(f"image_until must be >= 0, found {self.image_until}")
        if not self.image_retry >= 0:
            raise ConfigError(f"image_retry must be >= 0, found {self.image_retry}")
        if self.refine_cg_steps < 1:
            raise ConfigError(f"refine_cg_steps must be >= 1, found {self.refine_cg_steps}")
        if not 0 <= self.refine_cg_tol < 1:
            raise ConfigError(f"refine_cg_tol must be in [0, 1), found {self.refine_cg_tol}")
        if self.cg_steps < 1 or self.line_search < 1:
            raise ConfigError(
                f"cg_steps and line_search must be >= 1, found {self.cg_steps}, {self.line_search}"
            )
        if self.laplacian_probes < 0:
            raise ConfigError(f"laplacian_probes must be >= 0, found {self.laplacian_probes}")
        if self.mala_start not in ("reference", "previous"):
            raise ConfigError(
                f"unknown mala_start {self.mala_start!r}; choose 'reference' or 'previous'"
            )
        if not 0 < self.mala_accept < 1:
            raise ConfigError(f"mala_accept must lie in (0, 1), found {self.mala_accept}")

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
            "scheme": self.scheme,
            "split": self.split,
            "resample_ess": self.resample_ess,
            "sweeps": self.sweeps,
            "likelihood_step": self.likelihood_step,
            "mala_steps": self.mala_steps,
            "mala_accept": self.mala_accept,
            "mala_start": self.mala_start,
            "laplacian_probes": self.laplacian_probes,
            "cg_steps": self.cg_steps,
            "cg_start": self.cg_start,
            "cg_switch": self.cg_switch,
            "line_search": self.line_search,
            "decoder_error": self.decoder_error,
            "decoder_sigma": self.decoder_sigma(),
            "decoder_error_model": self._error_model() is not None,
            "refine_cg_steps": self.refine_cg_steps,
            "refine_cg_tol": self.refine_cg_tol,
            "image_until": self.image_until,
            "image_retry": self.image_retry,
            "image_error": self.image_error,
        }

    # ------------------------------------------------------------------ loop hooks
    def prepare(self, y: Tensor, physics: Any, **kwargs: Any) -> Problem:
        """As the base class, with ``refine_steps`` repeats of the last timestep appended."""
        problem = super().prepare(y, physics, **kwargs)
        if self.refine_steps:
            tail = problem.grid[-1:].repeat(self.refine_steps)
            problem.grid = torch.cat([problem.grid, tail])
        return problem

    def init_state(self, problem: Problem) -> DWGFState | SMCState:
        """Start the particles (random or pseudo-inverse) and the optimiser."""
        if self.resolved_scheme() != "flow":
            return self._smc_init(problem)
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

    def final_latents(self, state: DWGFState | SMCState, problem: Problem) -> Tensor:
        """The particles after the last step (SMC: resampled once more if weighted)."""
        if isinstance(state, SMCState):
            if bool((state.log_w != 0).any()):
                self._resample(state, problem, torch.ones(problem.batch, dtype=torch.bool))
            if state.image is not None and state.image_base is not None:
                problem.extras.update(image=state.image, image_base=state.image_base)
            return state.z.reshape(problem.n, *problem.latent_shape).to(problem.dtype)
        return state.z

    def _resolve_image_error(self, value: bool | str) -> bool:
        """``image_error`` as a bool: ``"auto"`` takes the prior's ``solver_hints``."""
        if value == "auto":
            hints = getattr(self.prior, "solver_hints", None) or {}
            return bool(hints.get("image_error", False))
        if not isinstance(value, bool):
            raise ConfigError(f"image_error must be True, False or 'auto', found {value!r}")
        return value

    def _arms_retry(self, state: SMCState, t: int, problem: Problem) -> bool:
        """Whether the level at timestep ``t`` is the first one with noise level at most
        ``image_retry`` on an image-step run that can check its data fit (the state before it
        is then kept for :meth:`finish`)."""
        if not self.image_retry > 0 or state.mode != "image" or state.latent_only:
            return False
        if state.snapshot is not None or problem.data_term.kind == "mse":
            return False
        ab = self.alpha_bar(t, problem)
        return (1.0 - ab) / ab <= self.image_retry**2

    def finish(
        self, state: DWGFState | SMCState, problem: Problem, history: list[dict[str, float]]
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        r"""The final latents, samples and conditional means; with ``image_retry``, the image
        step's data fit is checked first. When the posterior mean of a measurement misses its
        data (reduced chi-square above :func:`~dwgf_sci.solvers.likelihood.chi2_limit` of
        the number of measurements), the levels from noise level ``image_retry`` on are run
        again from the state kept before them, with the latent RTO step, and that
        measurement's particles are replaced by the new ones (the levels run for the whole
        batch; a measurement that fits keeps its first result). ``history`` gets one entry
        ``{"retry": number of measurements redone, "chi2_before": their worst chi2}``."""
        z, x, means = super().finish(state, problem, history)
        if not isinstance(state, SMCState) or state.snapshot is None:
            return z, x, means
        b, p = problem.batch, problem.particles
        mean = (x if means is None else means).reshape(b, p, *x.shape[1:]).mean(1)
        with torch.no_grad():
            ax = _real_flat(problem.physics.A(mean))
            chi2 = problem.data_term.reduced_chi2(ax, _real_flat(problem.y))
        bad = chi2 > chi2_limit(ax.shape[1])
        if not bool(bad.any()):
            return z, x, means
        start, again = state.snapshot
        again.latent_only = True
        for key in ("image", "image_base"):
            problem.extras.pop(key, None)
        for t in problem.grid.tolist()[start:]:
            self._gibbs_step(again, int(t), problem)
        z2, x2, means2 = super().finish(again, problem, history)
        rows = bad.repeat_interleave(p)
        z[rows], x[rows] = z2[rows], x2[rows]
        if means is not None and means2 is not None:
            means[rows] = means2[rows]
        history.append({"retry": float(bad.sum()), "chi2_before": float(chi2[bad].max())})
        return z, x, means

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

    def step(
        self, state: DWGFState | SMCState, i: int, t: int, problem: Problem
    ) -> dict[str, float]:
        """One DWGF iteration at timestep ``t`` (see the module docstring)."""
        if isinstance(state, SMCState):
            if self.resolved_scheme() == "gibbs":
                if self._arms_retry(state, t, problem):
                    state.snapshot = (i, _copy_state(state))
                return self._gibbs_step(state, t, problem)
            return self._smc_step(state, t, problem)
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

    # ------------------------------------------------------------------ split-Gibbs SMC
    def _likelihood_mode(self, problem: Problem, dim: int) -> str:
        """Resolve ``likelihood_step`` (``"auto"``) for this problem; raise if ``"exact"`` cannot
        apply. Called before any network call."""
        reasons = []
        if problem.data_term.kind != "gaussian":
            reasons.append(f"the data term is {problem.data_term.kind!r}, not 'gaussian'")
        if not isinstance(problem.physics, LinearPhysics):
            reasons.append("the physics is not a deepinv LinearPhysics")
        if not isinstance(self.prior, GaussianMixturePrior):
            reasons.append("the prior's decoder is not known to be affine")
        if self.likelihood_step == "exact":
            if reasons:
                raise ConfigError("likelihood_step='exact' needs " + "; ".join(reasons))
            return "exact"
        if self.likelihood_step == "auto" and not reasons and dim <= EXACT_MAX_DIM:
            return "exact"
        if self.likelihood_step in ("rto", "image") and problem.data_term.kind == "mse":
            raise ConfigError(
                f"likelihood_step={self.likelihood_step!r} needs a Gaussian or Poisson data "
                "term, found 'mse'; use 'mala'"
            )
        if self.likelihood_step == "image":
            return "image"
        if self.likelihood_step in ("auto", "rto") and problem.data_term.kind != "mse":
            return "rto"
        return "mala"

    def resolved_scheme(self) -> str:
        """The scheme a run uses: ``"auto"`` is ``"smc"`` for a prior with an affine decoder
        (the likelihood of a noisy latent is then meaningful) and ``"gibbs"`` otherwise."""
        if self.scheme != "auto":
            return self.scheme
        return "smc" if isinstance(self.prior, GaussianMixturePrior) else "gibbs"

    def _likelihood_move(
        self, state: SMCState, centre: Tensor, var: float, problem: Problem
    ) -> float:
        """Draw the particles from :math:`\\mathcal{N}(u; c, v I)\\, L(u)` by the resolved
        likelihood step; returns its acceptance statistic (NaN for the exact draw)."""
        if state.mode == "exact":
            state.z = self._exact_draw(state, centre, 1.0 / var, problem)
            return float("nan")
        if (
            state.mode == "image"
            and not state.latent_only
            and var > self.image_until**2 / (1.0 + self.image_until**2)
        ):
            return self._image_rto(state, centre, var, problem)
        if state.mode in ("rto", "image"):  # "image" below image_until: the latent RTO step
            state.image = state.image_base = None
            return self._rto(state, centre, var, problem)
        return self._mala(state, centre, var, problem)

    def _gaussian_factors(self, problem: Problem, dim: int) -> dict[str, Tensor]:
        """Matrix :math:`J` of :math:`u \\mapsto A(D(u))` by probing (``dim + 1`` decoder
        forwards), the eigendecomposition of :math:`J^\\top J/\\sigma^2` and
        :math:`J^\\top (y - c)/\\sigma^2` per measurement, :math:`c = A(D(0))`."""
        f64 = torch.float64
        basis = torch.eye(dim + 1, dim, device=problem.device, dtype=problem.dtype)
        basis = basis.roll(1, 0).reshape(dim + 1, *problem.latent_shape)  # row 0: the origin
        images = self.render_no_grad(basis)
        with torch.no_grad():
            ax = torch.cat([problem.physics.A(images[sl]) for sl in self.chunks(dim + 1)])
        ax = ax.real if torch.is_complex(ax) else ax
        ax = ax.flatten(1).to(f64)
        offset, jac = ax[:1], (ax[1:] - ax[:1]).T  # (1, m), (m, dim)
        sigma = float(problem.data_term.sigma)
        lam, q = torch.linalg.eigh(jac.T @ jac / sigma**2)
        y = problem.y.real if torch.is_complex(problem.y) else problem.y
        jty = (y.flatten(1).to(f64) - offset) @ jac / sigma**2
        return {"J": jac, "offset": offset, "lam": lam.clamp_min(0), "Q": q, "jty": jty}

    def _exact_draw(self, state: SMCState, v: Tensor, prec0: float, problem: Problem) -> Tensor:
        """Exact draw of :math:`u \\propto \\mathcal{N}(u; v, \\mathrm{prec0}^{-1} I)\\, L(u)`
        (Gaussian likelihood, affine :math:`u \\mapsto A(D(u))`)."""
        g = state.gauss
        assert g is not None
        jty = g["jty"].repeat_interleave(problem.particles, 0)
        prec = prec0 + g["lam"]
        coef = (v.to(torch.float64) * prec0 + jty) @ g["Q"] / prec
        noise = self.randn(tuple(v.shape), problem).to(torch.float64)
        return ((coef + noise / prec.sqrt()) @ g["Q"].T).to(v.dtype)

    def _data_and_grad(self, u: Tensor, problem: Problem) -> tuple[Tensor, Tensor]:
        """Data term :math:`\\Phi(u)` per particle and its gradient, through the decoder only
        (one decoder forward and backward per particle)."""
        phis, grads = [], []
        for sl in self.chunks(problem.n):
            zc = u[sl].detach().reshape(-1, *problem.latent_shape).requires_grad_(True)
            with torch.enable_grad():
                ax = problem.physics.A(self.render(zc))
                phi = problem.data_term(ax, problem.y_rep[sl])
                (grad,) = torch.autograd.grad(phi.sum(), zc)
            self.prior.calls["decoder_backward"] += zc.shape[0]
            phis.append(phi.detach().to(u.dtype))
            grads.append(grad.reshape(zc.shape[0], -1).to(u.dtype))
        return torch.cat(phis), torch.cat(grads)

    def _smc_init(self, problem: Problem) -> SMCState:
        """Particles from :math:`\\mathcal{N}(m, (1 + \\rho_0^2) I)` (conditioned exactly on the
        data with the exact likelihood step), uniform weights; :math:`m = 0`, or the encoded
        :math:`A^\\dagger y` with the variance scaled by ``init_noise**2`` (``init="pinv"``)."""
        dim = math.prod(problem.latent_shape)
        mode = self._likelihood_mode(problem, dim)
        ab = self.alpha_bar(int(problem.grid[0]), problem)
        # smc: the particles are noisy latents at the first level; gibbs: clean latents
        var0 = 1.0 + (1.0 - ab) / ab if self.resolved_scheme() == "smc" else 1.0
        centre = torch.zeros((problem.n, dim), device=problem.device, dtype=problem.dtype)
        if self.init == "pinv":
            z0 = self.encode_physical(self.pseudo_inverse(problem)).to(problem.dtype)
            centre = z0.reshape(problem.batch, dim).repeat_interleave(problem.particles, 0)
            var0 *= self.init_noise**2
        z = centre + math.sqrt(var0) * self.randn((problem.n, dim), problem)
        log_w = torch.zeros(problem.batch, problem.particles, device=problem.device)
        state = SMCState(z=z, log_w=log_w.to(torch.float64), mode=mode)
        if mode == "exact":
            state.gauss = self._gaussian_factors(problem, dim)
            state.z = self._exact_draw(state, centre, 1.0 / var0, problem)
        elif mode == "mala":  # the RTO step needs no data term or gradient carried over
            state.phi, state.grad = self._data_and_grad(z, problem)
            state.eta = torch.full((problem.batch,), 0.1, dtype=torch.float64, device=z.device)
            state.curv = torch.full((problem.batch,), -1.0, dtype=torch.float64, device=z.device)
        return state

    def _resample(self, state: SMCState, problem: Problem, which: Tensor) -> Tensor:
        """Systematic resampling of the measurements flagged in ``which``; returns the particle
        index map (identity elsewhere) and resets those measurements' weights."""
        b, p = problem.batch, problem.particles
        w = torch.softmax(state.log_w, dim=1)
        offset = torch.rand(b, 1, generator=problem.generator, device=problem.device)
        pos = (torch.arange(p, device=problem.device) + offset.to(w.dtype)) / p
        idx = torch.searchsorted(torch.cumsum(w, 1), pos).clamp_max(p - 1)
        keep = torch.arange(p, device=problem.device).expand(b, p)
        mask = which.to(problem.device)[:, None]
        idx = torch.where(mask, idx, keep)
        flat = (idx + p * torch.arange(b, device=problem.device)[:, None]).reshape(-1)
        state.z = state.z[flat]
        if state.phi is not None and state.grad is not None:
            state.phi, state.grad = state.phi[flat], state.grad[flat]
        if state.image is not None and state.image_base is not None:
            state.image, state.image_base = state.image[flat], state.image_base[flat]
        state.log_w = torch.where(mask, torch.zeros_like(state.log_w), state.log_w)
        state.resamples += int(which.sum())
        return flat

    def _rto(self, state: SMCState, centre: Tensor, var: float, problem: Problem) -> float:
        """Randomise-then-optimise draw of :math:`u \\propto \\mathcal{N}(u; c, v I)\\,
        L(A(D(u)))` (see the module documentation and :meth:`_gauss_newton_rto`), started from
        the current particles. Returns the fraction of particles that moved."""
        shape = problem.latent_shape

        def apply(u: Tensor, sl: slice) -> Tensor:
            return _real_flat(problem.physics.A(self.render(u.reshape(-1, *shape))))

        start = "centre" if self._start_at_centre(var) else "current"
        new, phi, moved = self._gauss_newton_rto(
            state.z.detach(), centre, var, apply, problem, self.cg_steps, True, start=start
        )
        state.z, state.phi = new, phi
        return moved

    def _start_at_centre(self, var: float) -> bool:
        """Whether a likelihood step with prior variance ``var`` starts from the prior's draw
        (``cg_start``; ``"switch"``: above noise level ``cg_switch``, where the Gibbs scheme's
        :math:`v = \rho^2/(1+\rho^2)` exceeds ``cg_switch**2 / (1 + cg_switch**2)``)."""
        if self.cg_start == "switch":
            return var > self.cg_switch**2 / (1.0 + self.cg_switch**2)
        return self.cg_start == "centre"

    def _image_rto(self, state: SMCState, centre: Tensor, var: float, problem: Problem) -> float:
        r"""Likelihood step ``"image"``: a randomise-then-optimise draw of
        :math:`u \propto \mathcal{N}(u; c, v I)\, L(A(D(u)))` taken in image space and
        mapped back with the encoder, without a decoder backward pass.

        Draw the prior's :math:`\tilde c = c + \sqrt v\,\xi` and decode it (and, for the
        first particle of each measurement, the centre: one batched decoder forward). Near
        :math:`\tilde c` the decoded image :math:`x = D(u) + e` has covariance
        :math:`v JJ^\top + S^2` under the prior factor, :math:`J = \partial D/\partial u`,
        :math:`S = \mathrm{diag}(\sigma_p)` the decoder's error (:meth:`decoder_error_map`,
        with ``image_error``; else :math:`S = 0` and the error enters only the final step);
        :math:`v JJ^\top` is replaced by :math:`g I` with
        :math:`g = \|D(\tilde c) - D(c)\|^2/\dim u`, one draw of
        :math:`v\,\mathrm{tr}(JJ^\top)` over the rank of :math:`J` (the mean of its non-zero
        eigenvalues), taken from the measurement's first particle. With
        :math:`T^2 = g I + S^2`, one randomise-then-optimise step in image space,

        .. math::

            x^\star = \arg\min_x \tfrac12\|T^{-1}(x - D(\tilde c))\|^2
                       + \tfrac12\|A(x) - \tilde y\|^2_{\Sigma^{-1}},

        with perturbed data :math:`\tilde y` (``refine_cg_steps`` CG iterations, which apply
        only the operator, started from the previous level's :math:`x^\star` below noise level
        ``cg_switch``), is an exact draw of this linearised conditional. The encoder, the
        decoder's approximate inverse, brings it back:
        :math:`u = \tilde c + E(x^\star) - E(D(\tilde c))` (one batched encoder forward; the
        difference cancels the autoencoder's round-trip error at :math:`\tilde c`, and
        :math:`E` discards what the decoder cannot represent). The last level's
        :math:`x^\star` and :math:`D(\tilde c)` are where :meth:`finalize_images` continues.
        Per particle and level: one UNet forward, :math:`1 + 1/N` decoder forwards and two
        encoder forwards, no backward pass. Returns the fraction of particles whose image step
        moved."""
        n, b, p, shape = problem.n, problem.batch, problem.particles, problem.latent_shape
        drawn = centre + math.sqrt(var) * self.randn(tuple(centre.shape), problem)
        # the decoder's gain is measured on the first particle of each measurement only
        rows = torch.cat([drawn, centre.reshape(b, p, -1)[:, 0]]).reshape(n + b, *shape)
        with torch.no_grad():
            decoded = torch.cat([self.prior.decode(rows[sl]) for sl in self.chunks(n + b)])
        base = decoded[:n].flatten(1)
        first = base.reshape(b, p, -1)[:, 0]
        gain = (first - decoded[n:].flatten(1)).pow(2).sum(1, keepdim=True) / centre.shape[1]
        tau = gain.repeat_interleave(p, 0)
        err = self.decoder_error_map(decoded[:n]) if self.image_error else None
        if err is not None:  # x = D(u) + e: the decoder's error adds its variance per pixel
            tau = tau + err.flatten(1).pow(2)
        tau = tau.clamp_min(1e-24).sqrt()
        start = torch.zeros_like(base)
        if state.image is not None and not self._start_at_centre(var):
            start = (state.image - base) / tau
        w, phi, moved = self._white_image_rto(
            base, tau, start, problem, cg_from="current", perturb_centre=False
        )
        state.image = base + tau * w
        state.image_base = base
        images = torch.cat([state.image, base]).reshape(2 * n, *problem.image_shape)
        with torch.no_grad():
            encoded = torch.cat([self.prior.encode(images[sl]) for sl in self.chunks(2 * n)])
        state.z = drawn + (encoded[:n] - encoded[n:]).reshape(n, -1).to(drawn.dtype)
        state.phi = phi
        return moved

    def _white_image_rto(
        self,
        base: Tensor,
        scale: Tensor,
        start: Tensor,
        problem: Problem,
        *,
        cg_from: str,
        perturb: bool = True,
        perturb_centre: bool = True,
    ) -> tuple[Tensor, Tensor, float]:
        """:meth:`_gauss_newton_rto` on :math:`x = \\mathrm{base} + \\mathrm{scale}\\odot w`
        (model units, rows flattened) with the white prior :math:`w \\sim \\mathcal{N}(0, I)`,
        from ``start``, in ``refine_cg_steps`` CG iterations: the image-space steps."""

        def apply(w: Tensor, sl: slice) -> Tensor:
            shaped = (base[sl] + scale[sl] * w).reshape(-1, *problem.image_shape)
            return _real_flat(problem.physics.A(self.prior.from_model(shaped)))

        zero = torch.zeros_like(base)
        return self._gauss_newton_rto(
            start,
            zero,
            1.0,
            apply,
            problem,
            self.refine_cg_steps,
            False,
            perturb,
            start=cg_from,
            perturb_centre=perturb_centre,
            jacobian=self._image_jacobian(base + scale * start, scale, problem),
            tol=self.refine_cg_tol,
        )

    def _image_jacobian(
        self, x: Tensor, scale: Tensor, problem: Problem
    ) -> tuple[Callable[..., Tensor], ...] | None:
        r"""Explicit Jacobian products of :math:`w \mapsto A(\mathrm{from\_model}(x + s
        \odot w))` at :math:`w = 0` for a linear physics with real measurements:
        :math:`J d = A(m \odot s \odot d)` and :math:`J^\top v = m \odot s \odot A^\top v`,
        :math:`m = \mathrm{from\_model}'(x)` (the unit map acts per pixel; its slope is taken
        by one autograd pass). One operator application per product instead of an autograd
        backward through the stored graph and a forward difference. None (the generic path)
        for a nonlinear physics or complex measurements.

        The third function gives a diagonal preconditioner of the CG matrix
        :math:`I/v + J^\top\Sigma^{-1}J`: :math:`1/v + c\,(m s)^2` per pixel, where
        :math:`c = \|\Sigma^{-1/2} A\xi\|^2/\|\xi\|^2` (one probe :math:`\xi`, drawn from
        a fixed seed: one more operator application) estimates the mean diagonal of
        :math:`A^\top\Sigma^{-1}A`. The stretch's slope spreads :math:`(m s)^2` over orders of
        magnitude between faint and bright pixels; this scaling takes that spread out of the
        matrix's conditioning."""
        physics = problem.physics
        if not isinstance(physics, LinearPhysics) or torch.is_complex(problem.y):
            return None
        image_shape = problem.image_shape
        with torch.enable_grad():
            xs = x.detach().reshape(-1, *image_shape).requires_grad_(True)
            (slope,) = torch.autograd.grad(self.prior.from_model(xs).sum(), xs)
        gain = (slope.reshape(x.shape) * scale).detach()
        meas_shape = tuple(problem.y.shape[1:])
        chunks = list(self.chunks(x.shape[0]))

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

    def _gauss_newton_rto(
        self,
        x_c: Tensor,
        centre: Tensor,
        var: float,
        apply: Any,
        problem: Problem,
        cg_steps: int,
        decoder: bool,
        perturb: bool = True,
        start: str = "centre",
        perturb_centre: bool = True,
        jacobian: tuple[Callable[..., Tensor], ...] | None = None,
        tol: float = 0.0,
    ) -> tuple[Tensor, Tensor, float]:
        """One randomise-then-optimise draw of :math:`u \\propto \\mathcal{N}(u; c, v I)\\,
        L(F(u))` per row, for a differentiable map :math:`F` (``apply(u, rows)``, flattened real
        measurements of the rows ``u``).

        Perturb the centre and the data, :math:`\\tilde c = c + \\sqrt v\\,\\xi_1`,
        :math:`\\tilde y = y + \\Sigma^{1/2}\\xi_2`, and take one Gauss-Newton step from
        :math:`u_0 = ` ``x_c`` on :math:`\\tfrac{1}{2v}\\|u - \\tilde c\\|^2
        + \\tfrac12\\|F(u) - \\tilde y\\|^2_{\\Sigma^{-1}}`:
        solve :math:`(I/v + J^\\top \\Sigma^{-1} J)\\,d = (\\tilde c - u_0)/v
        - J^\\top\\Sigma^{-1}(F(u_0) - \\tilde y)` by ``cg_steps`` conjugate-gradient
        iterations (``start="current"``: from :math:`d_0 = 0`; ``"centre"``: from
        :math:`d_0 = \\tilde c - u_0`), then backtrack (``line_search`` trials, step x 1/4 each)
        until the objective decreases; a row whose step never does stays put. For an affine
        :math:`F` and a converged CG this is an exact draw. :math:`\\Sigma` is the noise covariance
        (:meth:`_noise_variance`).

        :math:`J = \\partial F/\\partial u` at :math:`u_0` is never formed: one forward with graph
        at :math:`u_0` gives :math:`J^\\top w` by backward passes through it, and :math:`J d` is a
        forward difference. Per row: ``cg_steps + 1`` backward passes and ``cg_steps + 1`` to
        ``cg_steps + line_search + 1`` forwards (one more from the centre).

        Started from :math:`d_0 = \\tilde c - u_0`, the first residual
        :math:`-J^\\top\\Sigma^{-1}(F(u_0) + J d_0 - \\tilde y)` lies in the range of
        :math:`J^\\top`, which :math:`I/v + J^\\top\\Sigma^{-1}J` maps into itself: every
        iteration then works on the directions the data see, and the others keep the prior's
        draw :math:`\\tilde c`, their exact conditional value. From :math:`d_0 = 0` they move
        only as far as the Krylov space reaches, and keep the current particle's values
        otherwise.

        ``perturb=False`` skips the perturbations: the step then moves towards the conditional
        mode (for an affine :math:`F`, the conditional mean).
        ``perturb_centre=False`` perturbs the data only, for a ``centre`` that is already a
        prior draw (the ``"image"`` likelihood step). ``jacobian``: functions
        :math:`d \\mapsto J d`, :math:`w \\mapsto J^\\top w` at :math:`u_0` (rows flattened) that
        replace the stored graph and the forward difference, and the diagonal of a
        preconditioner for CG (:meth:`_image_jacobian`). ``tol > 0`` stops CG once every row's
        residual (preconditioned norm) is below ``tol`` times its first one.

        :return: the new rows, their data term :math:`\\Phi` (unperturbed data) and the
            fraction of rows that moved.
        """
        n = x_c.shape[0]
        target = centre
        if perturb and perturb_centre:
            target = centre + math.sqrt(var) * self.randn(tuple(centre.shape), problem)

        def measure(u: Tensor) -> Tensor:
            with torch.no_grad():
                return torch.cat([apply(u[sl], sl) for sl in self.chunks(n)])

        graphs = []
        if jacobian is None:
            for sl in self.chunks(n):
                zc = x_c[sl].detach().requires_grad_(True)
                with torch.enable_grad():
                    graphs.append((sl, zc, apply(zc, sl)))
            ax_c = torch.cat([ax.detach() for *_, ax in graphs])
        else:
            ax_c = measure(x_c)
        y = _real_flat(problem.y_rep)
        noise_var = self._noise_variance(ax_c, problem)
        y_pert = y
        if perturb:
            y_pert = y + noise_var.sqrt() * self.randn(tuple(y.shape), problem)

        def graph_jt(w: Tensor) -> Tensor:  # J^T w through the stored graph
            parts = [
                torch.autograd.grad(ax, zc, w[sl], retain_graph=True)[0] for sl, zc, ax in graphs
            ]
            if decoder:
                self.prior.calls["decoder_backward"] += n
            return torch.cat(parts)

        def difference_jd(d: Tensor) -> Tensor:  # J d, a forward difference of relative size 1e-3
            h = 1e-3 * x_c.norm(dim=1, keepdim=True).clamp_min(1.0)
            h = h / d.norm(dim=1, keepdim=True).clamp_min(1e-30)
            return (measure(x_c + h * d) - ax_c) / h

        if jacobian is None:
            jd, jt, precond = difference_jd, graph_jt, None
        else:
            jd, jt, diagonal = jacobian
            precond = diagonal(noise_var, var)

        # batched conjugate gradients, one system M d = b per row, M = I/v + J^T S^-1 J
        if start == "centre":  # d0 = c~ - u0: r0 = b - M d0 = -J^T S^-1 (F(u0) + J d0 - y~)
            d = target - x_c
            r = -jt((ax_c + jd(d) - y_pert) / noise_var)
        else:
            d = torch.zeros_like(x_c)
            r = (target - x_c) / var - jt((ax_c - y_pert) / noise_var)
        # (preconditioned with a diagonal P where one is given: rr is then r^T P^-1 r)
        z = r if precond is None else r / precond
        p = z.clone()
        rr = (r * z).sum(1, keepdim=True)
        stop = (tol**2) * rr
        for _ in range(cg_steps):
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

        def objective(x: Tensor, ax: Tensor) -> Tensor:
            prior_part = 0.5 * (x - target).pow(2).sum(1) / var
            return prior_part + 0.5 * ((ax - y_pert).pow(2) / noise_var).sum(1)

        best = objective(x_c, ax_c)
        new, ax_new = x_c.detach().clone(), ax_c.clone()
        todo = torch.ones(n, dtype=torch.bool, device=x_c.device)
        frac = 1.0
        for _ in range(self.line_search):
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

    def finalize_images(
        self, x: Tensor, z: Tensor, problem: Problem
    ) -> tuple[Tensor, Tensor | None]:
        r"""Model the decoder's error (``decoder_error``): draw each sample from
        :math:`x = \mathrm{from\_model}(D(z) + e)`, :math:`e \propto \mathcal{N}(0,
        S^2)\, L(A(x))` with :math:`S = \mathrm{diag}(\sigma_p)`, by one
        randomise-then-optimise step in image space on :math:`w = S^{-1} e` (whose prior is
        white, so CG converges as fast as for a single :math:`\sigma_D`; ``refine_cg_steps``
        iterations, no network call). :math:`\sigma_p` is the prior's per-pixel
        :class:`~dwgf_sci.priors.DecoderErrorModel` of :math:`D(z)`, or one :math:`\sigma_D`
        (the autoencoder's RMS error on held-out images) everywhere. The samples can then hold
        the detail the autoencoder cannot represent, and their spread includes its error.

        The same step without perturbations gives each particle's conditional mean
        :math:`\mathbb{E}[x \mid z, y]`; their average is the posterior mean returned (a
        Rao-Blackwellised estimate: the per-particle image noise of the draws does not enter
        it)."""
        if problem.data_term.kind == "mse":
            return x, None
        with torch.no_grad():
            decoded = self.prior.to_model(x)
            if "image_base" in problem.extras:  # the last level was an image step
                decoded = problem.extras["image_base"].reshape(x.shape)
            scale = self.decoder_error_map(decoded)
        if scale is None:
            return x, None
        base, scale = decoded.flatten(1), scale.flatten(1)
        start, cg_from = torch.zeros_like(base), "centre"
        if "image" in problem.extras:  # continue from the last level's draw
            start, cg_from = (problem.extras["image"] - base) / scale, "current"
        images = []
        for perturb in (True, False):
            w, _, _ = self._white_image_rto(
                base, scale, start, problem, cg_from=cg_from, perturb=perturb
            )
            with torch.no_grad():
                images.append(self.prior.from_model((base + scale * w).reshape(x.shape)))
        return images[0], images[1]

    def _error_model(self) -> DecoderErrorModel | None:
        """The prior's per-pixel decoder error model, if ``decoder_error`` uses it."""
        if self.decoder_error != "auto" or self.resolved_scheme() == "flow":
            return None
        return getattr(self.prior, "decoder_error_model", None)

    def decoder_error_map(self, decoded: Tensor) -> Tensor | None:
        """Standard deviation of the decoder's error at each pixel of ``decoded`` (model
        units), or None when the image-space step is off (see ``decoder_error``)."""
        model = self._error_model()
        if model is not None:
            return model(decoded)
        sigma_d = self.decoder_sigma()
        return None if sigma_d <= 0 else torch.full_like(decoded, sigma_d)

    def decoder_sigma(self) -> float:
        r"""The single :math:`\sigma_D` of ``decoder_error`` (0: none; see
        :meth:`decoder_error_map` for the per-pixel model)."""
        if self.decoder_error in DECODER_ERRORS:
            if self.resolved_scheme() == "flow":
                return 0.0
            return float(getattr(self.prior, "decoder_sigma", 0.0) or 0.0)
        return float(self.decoder_error)

    @staticmethod
    def _noise_variance(ax: Tensor, problem: Problem) -> Tensor:
        """Measurement noise variance for the RTO step: :math:`\\sigma^2` (Gaussian), or the
        Gaussian approximation of the Poisson likelihood, variance
        :math:`g\\,(A(D(u_0)) + b)` at the current particle, at least one count
        (:math:`g`)."""
        term = problem.data_term
        if term.kind == "gaussian":
            return torch.full_like(ax, float(term.sigma) ** 2)
        return (term.gain * (ax.clamp_min(0) + term.background)).clamp_min(term.gain)

    def _mala(self, state: SMCState, v: Tensor, delta2: float, problem: Problem) -> float:
        """``mala_steps`` MALA steps on :math:`\\mathcal{N}(u; v, \\delta^2 I)\\, e^{-\\Phi(u)}`;
        returns the mean acceptance rate."""
        b, p = problem.batch, problem.particles
        assert state.eta is not None and state.phi is not None and state.grad is not None
        if self.mala_start == "reference":  # exact in the directions the data do not see
            u = v + math.sqrt(delta2) * self.randn(tuple(v.shape), problem)
            phi, grad = self._data_and_grad(u, problem)
        else:
            u, phi, grad = state.z, state.phi, state.grad

        def log_target(u: Tensor, phi: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
            return -(u - v).pow(2).sum(1) / (2 * delta2) - phi, -(u - v) / delta2 - grad

        lg, gl = log_target(u, phi, grad)
        rates = []
        for _ in range(self.mala_steps):
            assert state.curv is not None
            tau_b = state.eta / (1.0 / delta2 + state.curv.clamp_min(0.0))
            tau = tau_b.repeat_interleave(p).to(u.dtype)[:, None]
            prop = u + tau * gl + (2 * tau).sqrt() * self.randn(tuple(u.shape), problem)
            phi_p, grad_p = self._data_and_grad(prop, problem)
            self._update_curvature(state, prop - u, grad_p - grad, problem)
            lg_p, gl_p = log_target(prop, phi_p, grad_p)
            fwd = -(prop - u - tau * gl).pow(2).sum(1) / (4 * tau[:, 0])
            bwd = -(u - prop - tau * gl_p).pow(2).sum(1) / (4 * tau[:, 0])
            log_alpha = torch.nan_to_num(lg_p - lg + bwd - fwd, nan=-math.inf)
            unif = torch.rand(u.shape[0], generator=problem.generator, device=problem.device)
            acc = torch.log(unif.to(u.dtype)) < log_alpha
            a2 = acc[:, None]
            u, phi, grad = torch.where(a2, prop, u), torch.where(acc, phi_p, phi), grad
            grad = torch.where(a2, grad_p, grad)
            lg, gl = torch.where(acc, lg_p, lg), torch.where(a2, gl_p, gl)
            rate = acc.reshape(b, p).to(torch.float64).mean(1)
            state.eta = (state.eta * torch.exp(2.0 * (rate - self.mala_accept))).clamp(1e-6, 1.0)
            rates.append(float(rate.mean()))
        state.z, state.phi, state.grad = u, phi, grad
        return sum(rates) / len(rates)

    @staticmethod
    def _update_curvature(state: SMCState, du: Tensor, dg: Tensor, problem: Problem) -> None:
        """Track the data term's mean curvature :math:`h` per measurement from the secant
        :math:`\\Delta u \\cdot \\Delta\\nabla\\Phi / \\|\\Delta u\\|^2` of each proposal (a
        Rayleigh quotient of the Hessian along a random direction: :math:`\\mathrm{tr}\\,H /
        \\dim u` on average). Free: both gradients are computed anyway."""
        b, p = problem.batch, problem.particles
        num = (du * dg).to(torch.float64).sum(1)
        den = du.to(torch.float64).pow(2).sum(1).clamp_min(1e-300)
        new = torch.nan_to_num((num / den).reshape(b, p).mean(1), nan=0.0).clamp_min(0.0)
        assert state.curv is not None
        first = state.curv < 0
        state.curv = torch.where(first, new, 0.5 * state.curv + 0.5 * new)

    @staticmethod
    def log_weight_increment(eps: Tensor, rho2: float, rho2_prev: float) -> Tensor:
        """:math:`\\log p_{\\rho_n}(u) - \\log p_{\\rho_{n-1}}(u)` up to a constant, from
        :math:`\\hat\\epsilon = \\epsilon_\\theta(a_n u, t_n)` (exact for unit-variance Gaussian
        data; see the module documentation).

        :param Tensor eps: noise predictions ``(n, ...)`` at the new level.
        :param float rho2: :math:`\\rho_n^2`; ``rho2_prev``: :math:`\\rho_{n-1}^2 > \\rho_n^2`.
        :return: ``(n,)`` float64.
        """
        c, v_n = 1.0 / rho2 - 1.0 / rho2_prev, rho2 / (1.0 + rho2)
        sq = eps.to(torch.float64).flatten(1).pow(2).sum(1)
        return -c * rho2 * sq / (2.0 * (1.0 - c * v_n))

    def _laplacian_correction(
        self, state: SMCState, eps: Tensor, a: float, t: int, rho2: float, prev: float, problem
    ) -> Tensor:
        """Correction of :meth:`log_weight_increment` for non-Gaussian data.

        :meth:`log_weight_increment` takes :math:`\\mathrm{tr}\\,\\mathrm{Cov}[x \\mid u]` to be
        :math:`D v_n`. With the heat equation
        :math:`\\partial_\\tau \\log p_\\tau = \\tfrac12(\\Delta \\log p_\\tau + \\|\\nabla
        \\log p_\\tau\\|^2)`, :math:`\\tau = \\rho^2`, and
        :math:`\\Delta \\log p_\\rho
        = (\\mathrm{tr}\\,\\mathrm{Cov}[x \\mid u] - D\\rho^2)/\\rho^4`,
        the missing term is :math:`-\\tfrac{\\Delta\\tau}{2}(\\mathrm{tr}\\,\\mathrm{Cov}[x \\mid u]
        - D v_n)/\\rho^4`. The trace comes from Tweedie's second identity,
        :math:`\\mathrm{Cov}[x \\mid u] = \\rho^2\\, \\partial \\hat x / \\partial u`, with
        :math:`\\hat x(u) = u - \\rho\\,\\epsilon_\\theta(a u, t)`, by a Hutchinson estimate with
        Rademacher probes :math:`r` and a forward finite difference of step
        :math:`h = 0.1\\rho`:
        :math:`\\mathrm{tr}\\,\\partial\\hat x/\\partial u \\approx D - \\rho\\, r \\cdot
        (\\epsilon_\\theta(a(u + h r)) - \\epsilon_\\theta(a u))/h`. One UNet forward per probe
        and particle; no backward pass."""
        dim = state.z.shape[1]
        rho = math.sqrt(rho2)
        h = 0.1 * rho
        trace = torch.zeros(state.z.shape[0], dtype=torch.float64, device=state.z.device)
        for _ in range(self.laplacian_probes):
            r = torch.randint(
                0, 2, tuple(state.z.shape), generator=problem.generator, device=problem.device
            )
            r = (2 * r - 1).to(state.z.dtype)
            z_t = (a * (state.z + h * r)).reshape(problem.n, *problem.latent_shape)
            eps_h = self.predict_noise(z_t.to(problem.dtype), t).reshape(problem.n, -1)
            diff = (r * (eps_h.to(eps.dtype) - eps)).to(torch.float64).sum(1)
            trace += (dim - rho * diff / h) / self.laplacian_probes
        v_n = rho2 / (1.0 + rho2)
        return -0.5 * (prev - rho2) * (rho2 * trace - dim * v_n) / rho2**2

    def _gibbs_step(self, state: SMCState, t: int, problem: Problem) -> dict[str, float]:
        """One level of the diffused-posterior Gibbs sampler (see the module documentation):
        noise the clean particles to level :math:`\\rho`, denoise them with the network
        (Tweedie mean and variance) and draw them again from the Tweedie Gaussian times the
        likelihood."""
        ab = self.alpha_bar(t, problem)
        a, rho2 = math.sqrt(ab), (1.0 - ab) / ab
        rho = math.sqrt(rho2)
        var = rho2 / (1.0 + rho2)
        accept = float("nan")
        for _ in range(self.sweeps):
            u = state.z + rho * self.randn(tuple(state.z.shape), problem)
            z_t = (a * u).reshape(problem.n, *problem.latent_shape).to(problem.dtype)
            eps = self.predict_noise(z_t, t).reshape(problem.n, -1).to(state.z.dtype)
            centre = u - rho * eps
            accept = self._likelihood_move(state, centre, var, problem)
        info = {"rho": rho, **self._misfit(state, problem)}
        if state.gauss is None:
            info["accept"] = accept
        return info

    def _misfit(self, state: SMCState, problem: Problem) -> dict[str, float]:
        """Mean data term and reduced chi-square of the particles, without a network call."""
        if state.gauss is not None:  # A(D(u)) = J u + c
            g = state.gauss
            y = problem.y_rep.real if torch.is_complex(problem.y_rep) else problem.y_rep
            resid = state.z.to(torch.float64) @ g["J"].T + g["offset"] - y.flatten(1)
            r2 = resid.pow(2) / float(problem.data_term.sigma) ** 2
            return {"data": float(0.5 * r2.sum(1).mean()), "chi2": float(r2.mean())}
        assert state.phi is not None
        return {"data": float(state.phi.mean())}

    def _smc_step(self, state: SMCState, t: int, problem: Problem) -> dict[str, float]:
        """One level of the annealed split-Gibbs SMC sampler (see the module documentation)."""
        ab = self.alpha_bar(t, problem)
        a, rho2 = math.sqrt(ab), (1.0 - ab) / ab
        rho = math.sqrt(rho2)
        b, p = problem.batch, problem.particles
        ess, accept = 1.0, float("nan")
        for sweep in range(self.sweeps):
            z_t = (a * state.z).reshape(problem.n, *problem.latent_shape).to(problem.dtype)
            eps = self.predict_noise(z_t, t).reshape(problem.n, -1).to(state.z.dtype)
            prev = state.rho2_prev
            if sweep == 0 and self.resample_ess > 0 and prev is not None and rho2 < prev:
                inc = self.log_weight_increment(eps, rho2, prev)
                if self.laplacian_probes:
                    inc = inc + self._laplacian_correction(state, eps, a, t, rho2, prev, problem)
                state.log_w = state.log_w + inc.reshape(b, p)
                w = torch.softmax(state.log_w, dim=1)
                ess_b = 1.0 / w.pow(2).sum(1) / p
                ess = float(ess_b.mean())
                low = ess_b < self.resample_ess
                if bool(low.any()):
                    eps = eps[self._resample(state, problem, low)]
            delta2 = self.split * rho2
            rest2 = rho2 - delta2
            noise = self.randn(tuple(state.z.shape), problem)
            v = state.z - self.split * rho * eps
            v = v + math.sqrt(delta2 * (1.0 + rest2) / (1.0 + rho2)) * noise
            accept = self._likelihood_move(state, v, delta2, problem)
        state.rho2_prev = rho2
        info = {"ess": ess, "resamples": float(state.resamples), "rho": rho}
        info.update(self._misfit(state, problem))
        if state.gauss is None:
            info["accept"] = accept
        return info
