r"""The Gaussian-mixture benchmark of MCGdiff (Cardoso et al., ICLR 2024).

A linear inverse problem whose posterior is known exactly, so that a sampler's output can be
compared with exact posterior samples rather than with a single ground truth.

Problem (``make_mixture_problem(d, d_y, seed)``)
------------------------------------------------
* **Prior**: 25 unit-covariance Gaussians in :math:`\mathbb{R}^d` (``d`` even) with means
  :math:`(8i, 8j, 8i, 8j, \dots)`, :math:`i, j \in \{-2, \dots, 2\}` (the 2-D grid point repeated
  ``d/2`` times), and weights :math:`w_k \propto \xi_k^2`, :math:`\xi_k \sim \mathcal{N}(0, 1)`
  (normalised :math:`\chi^2_1` draws).
* **Operator**: :math:`A = U \operatorname{diag}(s) V_{:d_y}` (``d_y x d``), where :math:`U, V` are
  the singular vectors of a standard Gaussian ``d_y x d`` matrix (Haar-distributed orthogonal
  factors) and :math:`s` are ``d_y`` draws of :math:`\mathcal{U}(0, 1)` sorted in descending order.
* **Noise**: :math:`\sigma = u\, s_{\max}`, :math:`u \sim \mathcal{U}(0, 1)` (override the range
  with ``noise_fraction``).
* **Observation**: :math:`x_0 \sim p`, :math:`y = A x_0 + \sigma n`,
  :math:`n \sim \mathcal{N}(0, I)`.
* **Posterior**: exact, a 25-component Gaussian mixture
  (:meth:`~dwgf_sci.priors.gaussian_mixture.GaussianMixture.condition`).

Provenance of the choices: the paper's text could not be consulted here (offline), so every
choice follows the public code by the paper's first author, ``gabrielvc/mcg_diff``
(``scripts/viz_gaussian.py``) and the benchopt benchmark
``gabrielvc/benchopts_inverse_problem_diffusion_prior`` (``datasets/gaussian_mixture.py``): means
:math:`(-8i, -8j)` tiled ``d/2`` times (the same set of 25 points), identity covariances,
``weights = randn(25) ** 2`` normalised, ``A`` from the SVD of ``randn(d_y, d)`` with the singular
values replaced by sorted ``rand(d_y)``, ``std = rand() * max(s)``, ``y`` from one prior draw, and
``(d_y, d)`` in ``{(1, 8), (2, 8), (4, 8)}`` there (the paper also reports ``d = 80, 800``). Note
that the weights are :math:`\chi^2_1` draws, not uniform ones. Everything here is re-implemented and
drawn from one seeded ``torch.Generator`` in float64, so problems are identical per seed but not
draw-for-draw identical to the reference code.

Evaluation
----------
* :func:`noise_floor`: mean sliced Wasserstein (SW) distance between two independent sets of ``n``
  exact posterior samples; a perfect sampler scores this much on average.
* :func:`evaluate`: SW between a sampler's ``n`` samples and ``n`` fresh exact samples, its ratio to
  the floor (1.0 is perfect), and the total-variation error of the mode weights (each sample is
  assigned to the nearest prior mean and the histogram is compared with the posterior weights).
* :func:`oracle_ancestral_sampler`: DDPM ancestral sampling driven by the exact noisy-posterior
  score :math:`\nabla \log p(z_t \mid y)`, unavailable in practice; a sanity check whose ratio
  should be about 1.

When the posterior has several modes the SW of one set of samples is noisy: it is dominated by the
multinomial fluctuation of how many samples fall in each mode, and single values of a perfect
sampler spread over a factor of about 4 around the floor (independently of ``n``). Compare
averages over several runs (seeds) with the floor, not single runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from deepinv.physics import GaussianNoise
from torch import Tensor

from ..errors import ConfigError, InvalidDataError, ShapeError
from ..metrics import sliced_wasserstein
from ..operators.matrix import MatrixOperator
from ..priors.gaussian_mixture import GaussianMixture, GaussianMixturePrior

__all__ = [
    "MixtureProblem",
    "evaluate",
    "exact_samples",
    "make_mixture_problem",
    "mixture_means",
    "mode_weights",
    "noise_floor",
    "oracle_ancestral_sampler",
]

_GRID = (-2, -1, 0, 1, 2)
_SPACING = 8.0


@dataclass
class MixtureProblem:
    """A Gaussian-mixture linear inverse problem with its exact posterior.

    :ivar prior: the mixture prior (identity decoder: images are ``(B, d, 1, 1)``).
    :ivar operator: ``A`` as a :class:`~dwgf_sci.operators.matrix.MatrixOperator` on
        ``(d, 1, 1)`` images, carrying ``GaussianNoise(sigma)``.
    :ivar A: the ``(d_y, d)`` matrix.
    :ivar y: the observation, ``(1, d_y)`` (the operator's measurement layout).
    :ivar sigma: noise standard deviation.
    :ivar posterior: exact posterior :math:`p(x \\mid y)`, a mixture on :math:`\\mathbb{R}^d`.
    :ivar x0: the prior draw that produced ``y``, ``(1, d, 1, 1)``.
    :ivar seed: seed the problem was drawn with.
    """

    prior: GaussianMixturePrior
    operator: MatrixOperator
    A: Tensor
    y: Tensor
    sigma: float
    posterior: GaussianMixture
    x0: Tensor
    seed: int

    @property
    def d(self) -> int:
        """Signal dimension."""
        return int(self.A.shape[1])

    @property
    def d_y(self) -> int:
        """Number of measurements."""
        return int(self.A.shape[0])

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (sizes, seed, noise level, singular values, posterior weights)."""
        return {
            "d": self.d,
            "d_y": self.d_y,
            "seed": self.seed,
            "sigma": self.sigma,
            "singular_values": self.operator.singular_values.tolist(),
            "posterior_weights": self.posterior.weights.tolist(),
        }


def _generator(generator: torch.Generator | int | None) -> torch.Generator | None:
    """An int seeds a fresh CPU generator; a generator or ``None`` (global RNG) passes through."""
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    return generator


def mixture_means(d: int, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The 25 prior means :math:`(8i, 8j)`, :math:`i, j \in \{-2, \dots, 2\}`, tiled ``d/2`` times.

    Row :math:`5(i+2) + (j+2)` holds the grid point :math:`(8i, 8j)` repeated, so every mean is
    :math:`(8i, 8j, 8i, 8j, \dots)`.

    :param d: signal dimension, even (an odd ``d`` is not checked here and gives ``d - 1``
        columns).
    :param dtype: dtype of the result.
    :return: the means, shape ``(25, d)``.
    """
    pts = torch.tensor([[_SPACING * i, _SPACING * j] for i in _GRID for j in _GRID], dtype=dtype)
    return pts.repeat(1, d // 2)


def make_mixture_problem(
    d: int,
    d_y: int,
    seed: int,
    noise_fraction: tuple[float, float] = (0.0, 1.0),
    dtype: torch.dtype = torch.float64,
) -> MixtureProblem:
    r"""Draw the MCGdiff Gaussian-mixture problem (see the module documentation).

    :param d: signal dimension, even (the paper uses 8, 80, 800).
    :param d_y: number of measurements, ``1 <= d_y <= d`` (the paper uses 1, 2, 4).
    :param seed: seed of the single generator all draws come from.
    :param noise_fraction: :math:`\sigma / s_{\max}` is drawn uniformly in this range
        (reference: ``(0, 1)``).
    :param dtype: dtype of the prior, operator and posterior (float64 recommended).
    :raises ConfigError: for an odd or non-positive ``d``, or ``d_y`` outside ``[1, d]``.
    """
    d, d_y, seed = int(d), int(d_y), int(seed)
    if d < 2 or d % 2:
        raise ConfigError(f"d: expected an even dimension >= 2, found {d}")
    if not 1 <= d_y <= d:
        raise ConfigError(f"d_y: expected 1 <= d_y <= d = {d}, found {d_y}")
    lo, hi = (float(v) for v in noise_fraction)
    if not 0 <= lo <= hi or hi <= 0:
        raise ConfigError(f"noise_fraction: expected 0 <= low <= high, high > 0, found {(lo, hi)}")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    weights = torch.randn(25, generator=g, dtype=f64) ** 2
    weights = weights / weights.sum()
    prior64 = GaussianMixturePrior(weights, mixture_means(d), 1.0, dtype=f64)

    gauss = torch.randn(d_y, d, generator=g, dtype=f64)
    u, _, vh = torch.linalg.svd(gauss, full_matrices=False)
    s = torch.sort(torch.rand(d_y, generator=g, dtype=f64), descending=True).values
    a = u @ torch.diag(s) @ vh
    frac = lo + (hi - lo) * float(torch.rand((), generator=g, dtype=f64))
    sigma = frac * float(s[0])
    if not sigma > 0:
        raise ConfigError("noise_fraction: the drawn noise level is 0; use a positive lower bound")

    x0 = prior64.sample(1, g).reshape(1, d)
    y = x0 @ a.T + sigma * torch.randn(1, d_y, generator=g, dtype=f64)
    posterior = prior64.posterior(a, y, sigma)

    prior = (
        prior64
        if dtype == f64
        else GaussianMixturePrior(weights, mixture_means(d), 1.0, dtype=dtype)
    )
    operator = MatrixOperator(a.to(dtype), (d, 1, 1), noise_model=GaussianNoise(sigma=sigma))
    return MixtureProblem(
        prior=prior,
        operator=operator,
        A=a.to(dtype),
        y=y.to(dtype),
        sigma=sigma,
        posterior=posterior.to(dtype=dtype),
        x0=x0.to(dtype).reshape(1, d, 1, 1),
        seed=seed,
    )


def exact_samples(
    problem: MixtureProblem, n: int, generator: torch.Generator | int | None = None
) -> Tensor:
    """Draw exact samples from the problem's posterior mixture.

    :param problem: the problem whose :attr:`~MixtureProblem.posterior` is sampled.
    :param n: number of samples.
    :param generator: a ``torch.Generator``, an int (seeds a fresh CPU generator) or None (the
        global RNG).
    :return: ``n`` samples, ``(n, d, 1, 1)`` (the prior's image layout), in the posterior's dtype.
    """
    return problem.posterior.sample(n, _generator(generator)).reshape(int(n), problem.d, 1, 1)


def mode_weights(samples: Tensor, problem: MixtureProblem) -> Tensor:
    """Histogram of the samples over the prior modes.

    Each sample is assigned to its nearest prior mean (Euclidean distance, computed in float64)
    and the counts are divided by the number of samples.

    :param samples: ``(n, d)`` or ``(n, d, 1, 1)`` samples (any shape ``(n, ...)`` with ``d``
        entries per sample).
    :param problem: the problem that supplies the prior means.
    :return: the fraction of samples per mode, ``(25,)`` float64, on the samples' device.
    :raises InvalidDataError: if ``samples`` is not a tensor.
    :raises ShapeError: if a sample does not hold ``d`` entries.
    """
    x = _flat_samples(samples, problem.d)
    means = problem.prior.means.to(device=x.device, dtype=torch.float64)
    nearest = torch.cdist(x, means).argmin(dim=1)
    counts = torch.bincount(nearest, minlength=means.shape[0]).to(torch.float64)
    return counts / max(1, x.shape[0])


def _flat_samples(samples: Tensor, d: int) -> Tensor:
    if not torch.is_tensor(samples):
        raise InvalidDataError(f"samples: expected a torch.Tensor, found {type(samples).__name__}")
    if samples.ndim < 2 or math.prod(samples.shape[1:]) != d:
        raise ShapeError(
            f"samples: expected (n, {d}) or (n, {d}, 1, 1), found {tuple(samples.shape)}"
        )
    return samples.detach().reshape(samples.shape[0], d).to(torch.float64)


def _direction_seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def noise_floor(
    problem: MixtureProblem,
    n: int,
    n_directions: int = 256,
    generator: torch.Generator | int | None = None,
    repeats: int = 16,
) -> float:
    """Mean over ``repeats`` of the SW distance between two independent sets of ``n`` exact
    posterior samples: the expected score of a perfect sampler with ``n`` samples.

    One pair is a very noisy estimate when the posterior is multimodal: the distance is then
    dominated by the multinomial fluctuation of the number of samples per mode, and single values
    spread over a factor of about 4 (this does not shrink with ``n``). Average sampler scores over
    several runs as well before taking their ratio to this floor.

    :param problem: the problem whose exact posterior is sampled.
    :param n: number of samples in each of the two sets (use the sampler's sample count).
    :param n_directions: number of random projection directions of each SW estimate.
    :param generator: a ``torch.Generator``, an int (seeds a fresh CPU generator) or None (the
        global RNG); it drives both the samples and the projection directions.
    :param repeats: number of independent pairs averaged (at least 1).
    :return: the mean SW distance, in the signal's units.
    """
    g = _generator(generator)
    vals = []
    for _ in range(max(1, int(repeats))):
        a = exact_samples(problem, n, g)
        b = exact_samples(problem, n, g)
        vals.append(float(sliced_wasserstein(a, b, n_directions, _direction_seed(g))))
    return sum(vals) / len(vals)


def evaluate(
    samples: Tensor,
    problem: MixtureProblem,
    n_directions: int = 256,
    generator: torch.Generator | int | None = None,
    floor: float | None = None,
) -> dict[str, float]:
    r"""Score a sampler's output against the exact posterior.

    :param samples: ``(n, d)`` or ``(n, d, 1, 1)`` samples.
    :param floor: a precomputed :func:`noise_floor` for the same ``n``; computed if ``None``.
    :return: ``sw`` (SW to ``n`` fresh exact samples), ``floor``, ``ratio`` = sw / floor,
        ``mode_tv`` = :math:`\tfrac12 \sum_k |\hat w_k - \tilde w_k|` with :math:`\hat w` from
        :func:`mode_weights` and :math:`\tilde w` the posterior weights, ``mode_tv_floor`` (the
        same for ``n`` exact samples) and ``n``.
    """
    g = _generator(generator)
    x = _flat_samples(samples, problem.d)
    n = x.shape[0]
    if n < 2:
        raise ShapeError(f"samples: expected at least 2 samples, found {n}")
    if not bool(torch.isfinite(x).all()):
        nonfinite = int((~torch.isfinite(x)).any(dim=1).sum())
        return {
            "sw": math.inf,
            "floor": float("nan") if floor is None else float(floor),
            "ratio": math.inf,
            "mode_tv": 1.0,
            "mode_tv_floor": float("nan"),
            "n": float(n),
            "nonfinite": float(nonfinite),
        }
    ref = exact_samples(problem, n, g)
    sw = float(sliced_wasserstein(x, ref, n_directions, _direction_seed(g)))
    if floor is None:
        floor = noise_floor(problem, n, n_directions, g)
    target = problem.posterior.weights.to(torch.float64)
    tv = 0.5 * float((mode_weights(x, problem) - target).abs().sum())
    tv_floor = 0.5 * float((mode_weights(ref, problem) - target).abs().sum())
    return {
        "sw": sw,
        "floor": float(floor),
        "ratio": sw / float(floor),
        "mode_tv": tv,
        "mode_tv_floor": tv_floor,
        "n": float(n),
    }


def oracle_ancestral_sampler(
    problem: MixtureProblem,
    n: int,
    steps: int = 200,
    generator: torch.Generator | int | None = None,
    init: str = "exact",
) -> Tensor:
    r"""DDPM ancestral sampling with the exact noisy-posterior score (an oracle, not a method).

    On a descending grid :math:`t_1 > \dots > t_S` of the prior's training timesteps
    (``steps`` points evenly spaced over ``[0, T-1]``), starting from :math:`z_{t_1}` drawn from
    the exact noised posterior :math:`p(z_{t_1} \mid y)` (``init="exact"``, the default) or from
    :math:`\mathcal{N}(0, I)` (``init="gaussian"``, what practical samplers do):

    .. math::

        \hat z_0 &= \big(z_t + (1-\bar\alpha_t)\nabla\log p(z_t \mid y)\big)/\sqrt{\bar\alpha_t},\\
        z_s &\sim \mathcal{N}\Big(\tfrac{\sqrt{\bar\alpha_s}\,\beta_{t|s}}{1-\bar\alpha_t}\hat z_0
        + \tfrac{\sqrt{\alpha_{t|s}}(1-\bar\alpha_s)}{1-\bar\alpha_t} z_t,\;
        \tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}\beta_{t|s}\Big),
        \quad \alpha_{t|s} = \bar\alpha_t/\bar\alpha_s,\ \beta_{t|s} = 1 - \alpha_{t|s},

    and the last step returns :math:`\hat z_0`. The score is that of the VP-noised exact
    posterior (equal to :meth:`GaussianMixturePrior.noisy_posterior_score`, without recomputing
    the posterior at each step).

    Why the exact start is the default: with the linear 1000-step schedule
    :math:`\sqrt{\bar\alpha_{T-1}} \approx 0.006`, and the means have norm up to
    :math:`16\sqrt{d}`, so at ``d = 80`` the terminal marginal is off-centre by up to ~0.9 and a
    standard-normal start biases the mode weights (measured on ``make_mixture_problem(80, 2, 1)``
    with 3200 samples: total-variation error 0.063 from ``N(0, I)`` against 0.016 from the exact
    start, the sampling noise being ~0.015). The exact start isolates what this oracle checks:
    the score, the discretisation and the metric.

    :param init: ``"exact"`` or ``"gaussian"``.
    :return: ``(n, d, 1, 1)`` samples in the posterior's dtype.
    """
    g = _generator(generator)
    n, steps = int(n), int(steps)
    if steps < 1:
        raise ConfigError(f"steps: expected a positive number of steps, found {steps}")
    post = problem.posterior
    abar_all = problem.prior.alphas_cumprod.to(torch.float64)
    t_max = abar_all.numel() - 1
    grid = torch.unique(torch.linspace(t_max, 0, steps).round().long(), sorted=True).flip(0)
    gdev = g.device if g is not None else post.device
    if init == "gaussian":
        z = torch.randn(n, problem.d, generator=g, dtype=torch.float64, device=gdev)
        z = z.to(post.device)
    elif init == "exact":
        z = post.diffuse(float(abar_all[int(grid[0])])).sample(n, g).to(torch.float64)
    else:
        raise ConfigError(f"init: expected 'gaussian' or 'exact', found {init!r}")
    for i, t in enumerate(grid.tolist()):
        ab_t = float(abar_all[t])
        score = post.score(z.to(post.dtype), ab_t).to(torch.float64)
        x0 = (z + (1.0 - ab_t) * score) / math.sqrt(ab_t)
        if i + 1 == grid.numel():
            z = x0
            break
        ab_s = float(abar_all[int(grid[i + 1])])
        alpha = ab_t / ab_s
        beta = 1.0 - alpha
        mean = (math.sqrt(ab_s) * beta * x0 + math.sqrt(alpha) * (1.0 - ab_s) * z) / (1.0 - ab_t)
        std = math.sqrt((1.0 - ab_s) / (1.0 - ab_t) * beta)
        noise = torch.randn(n, problem.d, generator=g, dtype=torch.float64, device=gdev)
        z = mean + std * noise.to(post.device)
    return z.to(post.dtype).reshape(n, problem.d, 1, 1)
