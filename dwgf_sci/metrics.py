r"""Metrics: distances between sample sets and image-quality scores.

Sliced Wasserstein distance
---------------------------
For sample sets :math:`a = \{a_i\}_{i=1}^{n}` and :math:`b = \{b_j\}_{j=1}^{m}` in
:math:`\mathbb{R}^d`,

.. math::

    \mathrm{SW}_p(a, b) = \Big( \mathbb{E}_{\theta \sim \mathcal{U}(S^{d-1})}
    W_p^p(\theta_\# a, \theta_\# b) \Big)^{1/p},

estimated with ``n_directions`` random directions. In one dimension
:math:`W_p^p = \int_0^1 |F_a^{-1}(u) - F_b^{-1}(u)|^p\, du` with the empirical (step) quantile
functions: for :math:`n = m` this is the mean of :math:`|a_{(i)} - b_{(i)}|^p` over the sorted
projections; for :math:`n \ne m` the integral is computed exactly on the merged grid of quantile
levels :math:`\{i/n\} \cup \{j/m\}`, on each cell of which both quantile functions are constant.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .errors import InvalidDataError, ShapeError

__all__ = [
    "coverage",
    "coverage_reference",
    "data_range",
    "psnr",
    "seam_ratio",
    "sliced_wasserstein",
    "ssim",
]


def _as_sample_set(x: Tensor, name: str) -> Tensor:
    """``(n, d)`` float64 view of ``(n, d)``, ``(n,)`` or ``(n, d, 1, 1)`` samples."""
    if not torch.is_tensor(x):
        raise InvalidDataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim == 4 and tuple(x.shape[2:]) == (1, 1):
        x = x.reshape(x.shape[0], x.shape[1])
    elif x.ndim != 2:
        raise ShapeError(f"{name}: expected samples (n, d) or (n, d, 1, 1), found {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ShapeError(f"{name}: expected at least one sample, found shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise InvalidDataError(f"{name}: samples contain NaN or Inf values")
    return x


def _wasserstein_1d_pp(pa: Tensor, pb: Tensor, p: float) -> Tensor:
    r""":math:`W_p^p` between row-wise empirical laws: ``(L, n)``, ``(L, m)`` -> ``(L,)``."""
    sa = torch.sort(pa, dim=1).values
    sb = torch.sort(pb, dim=1).values
    n, m = sa.shape[1], sb.shape[1]
    if n == m:
        return (sa - sb).abs().pow(p).mean(dim=1)
    dev = sa.device
    cuts = torch.cat(
        [
            torch.arange(1, n + 1, device=dev, dtype=torch.float64) / n,
            torch.arange(1, m + 1, device=dev, dtype=torch.float64) / m,
        ]
    )
    cuts = torch.sort(cuts).values
    lengths = torch.diff(cuts, prepend=cuts.new_zeros(1))
    mids = cuts - 0.5 * lengths
    ia = torch.clamp((mids * n).floor().long(), max=n - 1)
    ib = torch.clamp((mids * m).floor().long(), max=m - 1)
    return ((sa[:, ia] - sb[:, ib]).abs().pow(p) * lengths).sum(dim=1)


def sliced_wasserstein(
    a: Tensor,
    b: Tensor,
    n_directions: int = 256,
    generator: torch.Generator | int | None = None,
    p: float = 2,
) -> Tensor:
    r"""Monte Carlo sliced Wasserstein distance :math:`\mathrm{SW}_p(a, b)` (see the module doc).

    Directions are drawn uniformly on the sphere (normalised Gaussians) from ``generator``; an int
    seeds a new generator and ``None`` means seed 0, so the metric is deterministic unless a
    generator says otherwise. In one dimension the directions are :math:`\pm 1` and the result is
    the exact :math:`W_p` of the two empirical laws. Computed in float64, without gradients.

    :param a: samples ``(n, d)`` (or ``(n, d, 1, 1)``, or ``(n,)`` for ``d = 1``).
    :param b: samples ``(m, d)``, same ``d``; ``m`` may differ from ``n``.
    :param n_directions: number of random projections.
    :param generator: ``torch.Generator`` (CPU or the samples' device), seed, or ``None``.
    :param p: order :math:`p \ge 1`.
    :return: 0-d float64 tensor.
    """
    xa = _as_sample_set(a, "a")
    xb = _as_sample_set(b, "b").to(xa.device)
    if xa.shape[1] != xb.shape[1]:
        raise ShapeError(
            f"a and b must have the same dimension, found {xa.shape[1]} and {xb.shape[1]}"
        )
    if int(n_directions) < 1:
        raise InvalidDataError(f"n_directions: expected a positive integer, found {n_directions}")
    if not float(p) >= 1:
        raise InvalidDataError(f"p: expected p >= 1, found {p}")
    if generator is None or isinstance(generator, int):
        seed = 0 if generator is None else int(generator)
        generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(
        xa.shape[1],
        int(n_directions),
        generator=generator,
        dtype=torch.float64,
        device=generator.device,
    ).to(xa.device)
    theta = theta / theta.norm(dim=0, keepdim=True).clamp_min(1e-300)
    wpp = _wasserstein_1d_pp(theta.T @ xa.T, theta.T @ xb.T, float(p))
    return wpp.mean().pow(1.0 / float(p))


# ---------------------------------------------------------------------------- image quality
def data_range(reference: Tensor) -> float:
    """Dynamic range of the reference, :math:`\\max - \\min` (1.0 if it is constant).

    The extrema are taken over the whole tensor: for a batch, all images share one range.

    :param reference: reference image(s), any shape (typically ``(B, C, H, W)``), in the images'
        own units.
    :return: the range, a positive Python float in the same units.
    """
    span = float(reference.max() - reference.min())
    return span if span > 0 else 1.0


def psnr(x: Tensor, reference: Tensor, max_pixel: float | None = None) -> Tensor:
    r"""PSNR in dB per image, on the reference's data range (deepinv's :class:`PSNR`).

    :math:`10\log_{10}(R^2/\mathrm{MSE})`, with the MSE over the pixels of each image and
    :math:`R` = ``max_pixel`` or :func:`data_range` of ``reference``. Computed in float32.

    :param x: estimate, ``(B, C, H, W)``.
    :param reference: ground truth, ``(B, C, H, W)``, same units as ``x``.
    :param max_pixel: range :math:`R`, in the images' units; default: :func:`data_range` of the
        whole ``reference`` (one range for the batch).
    :return: PSNR per image, ``(B,)``, in dB.
    """
    from deepinv.loss.metric import PSNR

    scale = max_pixel if max_pixel is not None else data_range(reference)
    return PSNR(max_pixel=scale)(x.float(), reference.float())


def ssim(x: Tensor, reference: Tensor, max_pixel: float | None = None) -> Tensor:
    """SSIM per image on the reference's data range (deepinv's :class:`SSIM`, shifted to 0).

    Both images are shifted by the reference's minimum so that the reference starts at 0, then
    scored with deepinv's (torchmetrics') Gaussian-window SSIM with data range ``max_pixel``.
    Computed in float32.

    :param x: estimate, ``(B, C, H, W)``.
    :param reference: ground truth, ``(B, C, H, W)``, same units as ``x``.
    :param max_pixel: data range, in the images' units; default: :func:`data_range` of the whole
        ``reference`` (one range for the batch).
    :return: SSIM per image, ``(B,)`` (1 for identical images).
    """
    from deepinv.loss.metric import SSIM

    lo = float(reference.min())
    scale = max_pixel if max_pixel is not None else data_range(reference)
    return SSIM(max_pixel=scale)((x - lo).float(), (reference - lo).float())


def coverage(samples: Tensor, truth: Tensor, level: float = 0.9) -> float:
    r"""Fraction of pixels whose truth lies in the equal-tailed ``level`` credible interval.

    :param samples: ``(N, C, H, W)`` posterior samples of one image (``N >= 2``).
    :param truth: ``(1, C, H, W)`` or ``(C, H, W)``.
    """
    if samples.ndim != 4 or samples.shape[0] < 2:
        raise ShapeError(f"samples: expected (N >= 2, C, H, W), found {tuple(samples.shape)}")
    a = (1 - level) / 2
    lo = torch.quantile(samples.float(), a, dim=0)
    hi = torch.quantile(samples.float(), 1 - a, dim=0)
    t = truth.reshape(lo.shape).float()
    return float(((t >= lo) & (t <= hi)).float().mean())


@functools.lru_cache(maxsize=64)
def coverage_reference(n_samples: int, level: float = 0.9) -> float:
    r"""What :func:`coverage` returns, in expectation, for EXACT samples of a Gaussian posterior.

    The interval of :func:`coverage` runs between empirical quantiles of ``n_samples`` draws,
    so it is narrower than the posterior's own ``level`` interval: a perfectly calibrated
    sampler does not reach ``level``. With truth and samples i.i.d.
    :math:`\mathcal{N}(\mu, \sigma^2)` per pixel the result depends only on ``n_samples`` and
    ``level`` (the interpolated quantiles are affine-equivariant), e.g. about 0.56 for 4
    samples, 0.72 for 8 and 0.81 for 16 at ``level=0.9``. Compare a sampler's coverage with
    this value, not with ``level``. Estimated by Monte Carlo with a fixed seed (2e5 draws,
    standard error below 0.0012).

    :param n_samples: samples per image (``>= 2``).
    :param level: the interval's nominal probability, in (0, 1).
    """
    if n_samples < 2 or not 0.0 < level < 1.0:
        raise InvalidDataError(
            f"coverage_reference needs n_samples >= 2 and 0 < level < 1, found {n_samples}, {level}"
        )
    gen = torch.Generator().manual_seed(0)
    draws, chunk = 200_000, max(1, 2_000_000 // n_samples)
    inside = 0.0
    for start in range(0, draws, chunk):
        m = min(chunk, draws - start)
        s = torch.randn(n_samples, m, generator=gen, dtype=torch.float64)
        t = torch.randn(1, m, generator=gen, dtype=torch.float64)
        inside += coverage(s[:, None, None, :], t, level) * m
    return inside / draws


def seam_ratio(image: Tensor, grid: int = 64, offset: tuple[int, int] = (0, 0)) -> float:
    r"""How much a fixed tile grid shows in an image: the mean absolute gradient across the grid's
    lines over that across every other pixel boundary.

    With :math:`g` the absolute differences between neighbouring pixels, the ratio is the mean
    of :math:`g` over the boundaries that lie on the lines of a ``grid``-pixel grid (starting at
    ``offset``, ``(y, x)``) divided by its mean over all other boundaries. Stitched tiles whose
    borders do not match raise it above 1; an image with no seam gives about 1 (for content
    unrelated to the grid).

    :param image: ``(..., H, W)``; leading dimensions are pooled.
    :param int grid: tile side in pixels.
    :param offset: where the grid's first lines lie.
    """
    if image.ndim < 2 or min(image.shape[-2:]) <= grid:
        raise ShapeError(f"seam_ratio needs an image larger than the grid ({grid} px)")
    x = image.detach().double()
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs()  # boundary between rows i and i + 1
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs()
    on_y = torch.zeros(gy.shape[-2], dtype=torch.bool)
    on_y[(offset[0] - 1) % grid :: grid] = True
    on_x = torch.zeros(gx.shape[-1], dtype=torch.bool)
    on_x[(offset[1] - 1) % grid :: grid] = True
    on = torch.cat([gy[..., on_y, :].flatten(), gx[..., :, on_x].flatten()])
    off = torch.cat([gy[..., ~on_y, :].flatten(), gx[..., :, ~on_x].flatten()])
    return float(on.mean() / off.mean().clamp_min(1e-300))
