"""Classical baselines: a small inversion each, closed forms, batches and bad input."""

from __future__ import annotations

import time

import deepinv as dinv
import pytest
import torch

import dwgf_sci.operators as ops
from dwgf_sci.errors import ConfigError, InvalidDataError
from dwgf_sci.metrics import psnr
from dwgf_sci.solvers import FBP, PseudoInverse, RichardsonLucy, TVReconstruction, Wiener


def _blob(n: int = 32, batch: int = 1) -> torch.Tensor:
    """Smooth non-negative test images: one Gaussian blob per item, of different widths."""
    grid = torch.arange(n, dtype=torch.float64) - n / 2
    r2 = grid[:, None] ** 2 + grid[None, :] ** 2
    widths = torch.linspace(2.0, 4.0, batch, dtype=torch.float64)
    return torch.stack([torch.exp(-r2 / (2 * w**2)) for w in widths])[:, None]


def _circular_psf(n: int = 32, **kwargs) -> ops.PSFConvolution:
    return ops.PSFConvolution.from_profile(
        (1, n, n), "gaussian", "circular", fwhm=2.5, dtype=torch.float64, **kwargs
    )


def test_wiener_is_the_fourier_wiener_filter() -> None:
    op = _circular_psf()
    x = _blob()
    y = op.A(x) + 1e-3 * torch.randn_like(x, generator=torch.Generator().manual_seed(0))
    lam = 1e-2
    est = Wiener(reg=lam).sample(y, op).mean
    # the Wiener filter written out: X = conj(P) Y / (|P|^2 + lam), P the transfer function
    transfer = torch.fft.fft2(op.A(_delta_at_origin(32)))
    expected = torch.fft.ifft2(transfer.conj() * torch.fft.fft2(y) / (transfer.abs() ** 2 + lam))
    torch.testing.assert_close(est, expected.real, rtol=1e-8, atol=1e-10)


def _delta_at_origin(n: int) -> torch.Tensor:
    d = torch.zeros(1, 1, n, n, dtype=torch.float64)
    d[..., 0, 0] = 1.0
    return d


def test_wiener_regularisation_follows_the_noise_level() -> None:
    x = _blob()
    low = _circular_psf(noise_model=dinv.physics.GaussianNoise(sigma=1e-3))
    high = _circular_psf(noise_model=dinv.physics.GaussianNoise(sigma=1e-1))
    y = low.A(x)
    lam_low, lam_high = Wiener().regularisation(y, low), Wiener().regularisation(y, high)
    assert lam_low.shape == (1,) and float(lam_high) > 1e3 * float(lam_low)


def test_wiener_with_per_item_noise_levels_matches_item_by_item() -> None:
    """A batch with one noise level per item is solved as each item would be alone."""
    x = _blob(batch=2)
    sigmas = torch.tensor([1e-3, 5e-2], dtype=torch.float64)
    batched = _circular_psf(noise_model=dinv.physics.GaussianNoise(sigma=sigmas))
    gen = torch.Generator().manual_seed(1)
    y = batched.A(x) + sigmas.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    together = Wiener().sample(y, batched).mean
    for b in range(2):
        alone = _circular_psf(noise_model=dinv.physics.GaussianNoise(sigma=float(sigmas[b])))
        torch.testing.assert_close(together[b : b + 1], Wiener().sample(y[b : b + 1], alone).mean)
    lam = Wiener().regularisation(y, batched)
    assert float(lam[1]) > 100 * float(lam[0])


def test_wiener_with_poisson_noise_and_without_noise_level() -> None:
    x = 100 * _blob()
    poisson = _circular_psf(noise_model=dinv.physics.PoissonNoise(gain=1.0))
    lam = Wiener().regularisation(poisson.A(x), poisson)
    assert torch.isfinite(lam).all() and float(lam) > 0
    with pytest.raises(ConfigError, match="noise level"):
        Wiener().sample(_circular_psf().A(x), _circular_psf())
    with pytest.raises(ConfigError):
        Wiener(reg=-1.0)


def test_wiener_on_fourier_measurements() -> None:
    """Complex measurements in deepinv's (real, imaginary) pair layout."""
    op = ops.FourierSampling((1, 32, 32), ratio=0.5, seed=0, dtype=torch.float64)
    x = _blob()
    y = op.A(x)
    assert y.shape[-1] == 2
    est = Wiener(noise_sigma=1e-3).sample(y, op).mean
    assert not torch.is_complex(est) and est.shape == x.shape
    assert float(psnr(est, x)) > float(psnr(torch.zeros_like(x) + x.mean(), x))


def test_richardson_lucy_keeps_flux_and_positivity_and_fits_the_data() -> None:
    op = _circular_psf()
    x = 50 * _blob(batch=2)
    y = op.A(x)
    misfits = []
    for iterations in (1, 10, 100):
        est = RichardsonLucy(iterations).sample(y, op).mean
        assert bool((est >= 0).all())
        torch.testing.assert_close(est.sum(dim=(1, 2, 3)), y.sum(dim=(1, 2, 3)), rtol=1e-6, atol=0)
        misfits.append(float((op.A(est) - y).norm()))
    assert misfits[0] > misfits[1] > misfits[2]
    assert float(psnr(est, x).mean()) > float(psnr(y, x).mean())  # deblurs
    with pytest.raises(ConfigError):
        RichardsonLucy(0)


def test_tv_beats_the_pseudo_inverse_on_a_noisy_piecewise_constant_image() -> None:
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[..., 8:24, 10:20] = 1.0
    x[..., 12:16, 4:28] = 0.5
    op = ops.FourierSampling((1, 32, 32), ratio=0.6, seed=3, dtype=torch.float64)
    y = op.A(x)
    y = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    start = time.perf_counter()
    tv = TVReconstruction(lam=0.05, iterations=100).sample(y, op)
    wall = time.perf_counter() - start
    pinv = PseudoInverse().sample(y, op)
    assert tv.all_samples.shape == pinv.all_samples.shape == (1, 1, 1, 32, 32)
    assert float(psnr(tv.mean, x)) > float(psnr(pinv.mean, x)) + 2.0
    assert tv.settings["lam"] == 0.05
    # the timing is the call's own, in seconds: within the wall time measured around it
    assert 0.0 < tv.timing["total_s"] <= wall
    with pytest.raises(ConfigError):
        TVReconstruction(lam=-1.0)


def test_fbp_is_the_ct_pseudo_inverse_and_recovers_a_phantom() -> None:
    op = ops.SparseViewCT(32, n_views=60, dtype=torch.float64)
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[..., 10:22, 8:24] = 1.0
    y = op.A(x)
    fbp = FBP().sample(y, op)
    torch.testing.assert_close(fbp.mean, PseudoInverse().sample(y, op).mean)
    assert fbp.settings["solver"] == "fbp"
    assert float(psnr(fbp.mean, x)) > 15.0


@pytest.mark.parametrize(
    "solver", [PseudoInverse(), Wiener(reg=1e-2), RichardsonLucy(5), TVReconstruction(0.01, 5)]
)
def test_bad_measurements_are_refused(solver) -> None:
    op = _circular_psf()
    y = op.A(_blob())
    y[..., 3, 3] = float("nan")
    with pytest.raises(InvalidDataError, match="NaN"):
        solver.sample(y, op)
