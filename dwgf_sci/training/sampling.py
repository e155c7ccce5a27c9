r"""Unconditional generation from any :class:`~dwgf_sci.priors.base.LatentPrior` (DDIM).

DDIM (Song et al., 2021) on a descending grid :math:`t_1 > t_2 > \dots > t_K` (evenly spaced
from :math:`T - 1` to 0), with :math:`\bar\alpha` of the prior and
:math:`\epsilon = \epsilon_\theta(z_{t_k}, t_k)`:

.. math::

    \hat z_0 = \frac{z_{t_k} - \sqrt{1 - \bar\alpha_{t_k}}\,\epsilon}{\sqrt{\bar\alpha_{t_k}}},
    \quad
    z_{t_{k+1}} = \sqrt{\bar\alpha_{t_{k+1}}}\,\hat z_0
        + \sqrt{1 - \bar\alpha_{t_{k+1}} - \sigma_k^2}\,\epsilon + \sigma_k \xi,

    \sigma_k = \eta \sqrt{\frac{1 - \bar\alpha_{t_{k+1}}}{1 - \bar\alpha_{t_k}}}
        \sqrt{1 - \frac{\bar\alpha_{t_k}}{\bar\alpha_{t_{k+1}}}},

with :math:`\bar\alpha_{t_{K+1}} = 1` (the last step returns :math:`\hat z_0`). ``eta=0`` is the
deterministic DDIM sampler, ``eta=1`` the ancestral (DDPM-like) sampler. The samples are then
decoded and mapped to physical units. All noise is drawn on the CPU from a seeded generator, so
the same seed gives the same samples on any device (up to floating-point differences).

Few steps under-disperse: for latents of unit variance each deterministic step multiplies the
spread by :math:`\cos` of its angle step in :math:`(\sqrt{\bar\alpha}, \sqrt{1-\bar\alpha})`,
about 2.5 % in total for 50 steps and 0.6 % for 200 (measured on an exact Gaussian prior of
standard deviation 0.5: 0.483 with 50 steps, 0.504 with 200). Distribution metrics therefore use
100 steps or more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..priors.base import LatentPrior

__all__ = ["ddim_sample_latents", "ddim_timesteps", "sample_prior"]


def ddim_timesteps(num_train_timesteps: int, steps: int) -> Tensor:
    """Descending, distinct timesteps from ``T - 1`` to 0 (``steps`` of them, ``<= T``).

    The grid is ``steps`` evenly spaced points from :math:`T-1` down to 0, rounded to integers
    (a single step gives ``[T - 1]``).

    :param num_train_timesteps: number of training timesteps :math:`T` of the prior.
    :param steps: number of DDIM steps, ``1 <= steps <= T``.
    :return: the timesteps, ``(steps,)`` int64.
    :raises ConfigError: for ``steps`` outside ``[1, T]``.
    """
    if not 1 <= int(steps) <= int(num_train_timesteps):
        raise ConfigError(f"steps must be in [1, {num_train_timesteps}], found {steps}")
    grid = torch.linspace(num_train_timesteps - 1, 0, int(steps), dtype=torch.float64)
    return torch.round(grid).long()


@torch.no_grad()
def ddim_sample_latents(
    prior: LatentPrior,
    n: int,
    latent_shape: Sequence[int],
    steps: int = 50,
    eta: float = 0.0,
    seed: int | torch.Generator = 0,
    batch_size: int = 64,
) -> Tensor:
    """``n`` latents ``(n, c, h, w)`` sampled from the prior's diffusion model by DDIM.

    :param LatentPrior prior: any latent prior.
    :param int n: number of samples.
    :param latent_shape: ``(c, h, w)``.
    :param int steps: DDIM steps.
    :param float eta: 0 (deterministic DDIM) to 1 (ancestral).
    :param seed: an int or a CPU ``torch.Generator``.
    :param int batch_size: samples per network call.
    """
    if int(n) < 1:
        raise ConfigError(f"n must be >= 1, found {n}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ConfigError(f"eta must be in [0, 1], found {eta}")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    shape = tuple(int(s) for s in latent_shape)
    device, dtype = prior.device, torch.float32
    ab_all = prior.alphas_cumprod.double().cpu()
    ts = ddim_timesteps(prior.num_train_timesteps, steps)
    out = []
    for start in range(0, int(n), int(batch_size)):
        b = min(int(batch_size), int(n) - start)
        z = torch.randn((b, *shape), generator=gen, dtype=dtype).to(device)
        for k, t in enumerate(ts.tolist()):
            ab = float(ab_all[t])
            ab_next = float(ab_all[int(ts[k + 1])]) if k + 1 < len(ts) else 1.0
            eps = prior.predict_noise(z, t).to(dtype)
            z0 = (z - (1.0 - ab) ** 0.5 * eps) / ab**0.5
            if k + 1 == len(ts):
                z = z0
                break
            sigma = float(eta) * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)) ** 0.5
            z = ab_next**0.5 * z0 + max(0.0, 1.0 - ab_next - sigma**2) ** 0.5 * eps
            if sigma > 0:
                z = z + sigma * torch.randn(z.shape, generator=gen, dtype=dtype).to(device)
        out.append(z)
    return torch.cat(out)


@torch.no_grad()
def sample_prior(
    prior: LatentPrior,
    n: int,
    image_size: Sequence[int] | int | None = None,
    steps: int = 50,
    eta: float = 0.0,
    seed: int | torch.Generator = 0,
    batch_size: int = 64,
    physical: bool = True,
) -> Tensor:
    """Draw ``n`` images from a latent prior: DDIM in latent space, then decode.

    :param LatentPrior prior: any latent prior (trained, Stable Diffusion, mixture, ...).
    :param int n: number of images.
    :param image_size: ``(H, W)`` or ``H``; default the prior's native size.
    :param int steps: DDIM steps (see :func:`ddim_sample_latents`).
    :param float eta: DDIM stochasticity, 0 to 1.
    :param seed: an int or a CPU ``torch.Generator``.
    :param int batch_size: images per network call.
    :param bool physical: map to physical units (``prior.from_model``); else the model range.
    :return: ``(n, C, H, W)`` float32 images.
    :raises ConfigError: if the prior has no native size and ``image_size`` is not given.
    """
    if image_size is None:
        if prior.image_size is None:
            raise ConfigError("this prior has no native image size: pass image_size=(H, W)")
        size = tuple(prior.image_size)
    elif isinstance(image_size, int):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    shape = prior.latent_shape((prior.image_channels, *size))
    z = ddim_sample_latents(prior, n, shape, steps=steps, eta=eta, seed=seed, batch_size=batch_size)
    images = []
    for start in range(0, z.shape[0], int(batch_size)):
        x = prior.decode(z[start : start + int(batch_size)]).float()
        images.append(prior.from_model(x) if physical else x)
    return torch.cat(images).cpu()
