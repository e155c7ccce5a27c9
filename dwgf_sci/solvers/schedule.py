r"""Timestep grids for samplers that sweep the diffusion noise levels.

All grids are **descending** integer timesteps in ``[t_min, t_max]`` of a prior with :math:`T`
training steps. ``"linear"`` spaces them evenly in :math:`t` (the DDIM grid of the reference
DWGF code); ``"quadratic"`` spaces them evenly in :math:`\sqrt{t}`, spending more steps at low
noise where the fine structure forms; ``"snr"`` spaces them evenly in log signal-to-noise ratio.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

GRIDS = ("linear", "quadratic", "snr")

#: Largest grid :func:`timestep_grid` builds (a thousand times a usual 1000-step grid).
MAX_STEPS = 1_000_000


def timestep_grid(
    alphas_cumprod: Tensor,
    steps: int,
    kind: str = "linear",
    t_min: int = 0,
    t_max: int | None = None,
) -> Tensor:
    """Descending timesteps for ``steps`` solver iterations.

    :param Tensor alphas_cumprod: :math:`\\bar\\alpha_t` of the prior, shape ``(T,)``.
    :param int steps: number of grid points (1 to :data:`MAX_STEPS`). Repeated integers are
        allowed when ``steps > t_max - t_min + 1``.
    :param str kind: ``"linear"``, ``"quadratic"`` or ``"snr"``.
    :param int t_min: smallest timestep of the grid.
    :param int t_max: largest timestep (default ``T - 1``).
    :return: ``LongTensor`` of shape ``(steps,)``, non-increasing.
    """
    n_train = int(alphas_cumprod.numel())
    t_max = n_train - 1 if t_max is None else int(t_max)
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be between 1 and {MAX_STEPS:,}, found {steps}")
    if not 0 <= t_min <= t_max < n_train:
        raise ConfigError(
            f"need 0 <= t_min <= t_max < {n_train}, found t_min={t_min}, t_max={t_max}"
        )
    if steps == 1:
        return torch.tensor([t_max], dtype=torch.long)
    u = torch.linspace(1.0, 0.0, steps, dtype=torch.float64)
    if kind == "linear":
        t = t_min + (t_max - t_min) * u
    elif kind == "quadratic":
        t = t_min + (t_max - t_min) * u**2
    elif kind == "snr":
        ab = alphas_cumprod.double().cpu()
        log_snr = torch.log(ab / (1 - ab))
        lo, hi = log_snr[t_max], log_snr[t_min]
        target = lo + (hi - lo) * (1 - u)
        # log-SNR decreases with t: find the timestep whose log-SNR is closest to each target
        # (in chunks, so a long grid never builds a steps x T matrix at once)
        t = torch.cat(
            [torch.argmin((log_snr[None, :] - c[:, None]).abs(), dim=1) for c in target.split(4096)]
        ).double()
        t = t.clamp(t_min, t_max)
    else:
        raise ConfigError(f"unknown timestep grid {kind!r}; choose one of {GRIDS}")
    return torch.round(t).long()
