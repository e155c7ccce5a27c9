"""Timestep grids: order, bounds, each kind, and bad requests."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from dwgf_sci.errors import ConfigError
from dwgf_sci.solvers.schedule import GRIDS, MAX_STEPS, timestep_grid

ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 50, 1000, 5000])
def test_grids_are_descending_and_within_bounds(kind, steps):
    t = timestep_grid(ALPHAS, steps, kind, t_min=3, t_max=900)
    assert t.dtype == torch.long and t.shape == (steps,)
    assert int(t[0]) == 900 and int(t.max()) <= 900 and int(t.min()) >= 3
    assert bool((t[1:] <= t[:-1]).all())
    if steps > 1:
        assert int(t[-1]) == 3


def test_the_grid_kinds_place_steps_differently():
    linear, quadratic = timestep_grid(ALPHAS, 50, "linear"), timestep_grid(ALPHAS, 50, "quadratic")
    torch.testing.assert_close(linear, torch.linspace(999, 0, 50).round().long(), atol=1, rtol=0)
    assert int(quadratic[25]) < int(linear[25])  # more steps at low noise
    snr = timestep_grid(ALPHAS, 5000, "snr")  # longer than one 4096-target chunk
    log_snr = torch.log(ALPHAS.double() / (1 - ALPHAS.double()))
    target = torch.linspace(float(log_snr[999]), float(log_snr[0]), 5000, dtype=torch.float64)
    nearest = torch.argmin((log_snr[None, :] - target[:, None]).abs(), dim=1)  # unchunked
    torch.testing.assert_close(snr, nearest)


@pytest.mark.parametrize(
    ("steps", "kwargs", "match"),
    [
        (0, {}, "steps"),
        (MAX_STEPS + 1, {}, "steps"),
        (2**63, {}, "steps"),
        (10, {"kind": "cosine"}, "grid"),
        (10, {"t_min": 5, "t_max": 4}, "t_min"),
        (10, {"t_max": 1000}, "t_max"),
    ],
)
def test_bad_grids_are_refused(steps, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        timestep_grid(ALPHAS, steps, **kwargs)
