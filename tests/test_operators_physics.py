"""CT, compressed sensing, bad-pixel masks and detector noise: model-specific behaviour."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from deepinv.optim import L2
from deepinv.physics import (
    GaussianNoise,
    Inpainting,
    PoissonGaussianNoise,
    PoissonNoise,
    Tomography,
)

import dwgf_sci.operators as ops
from dwgf_sci.errors import ConfigError, InvalidDataError, OperatorMismatchError


def _phantom(n: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(n) - n / 2 + 0.5, torch.arange(n) - n / 2 + 0.5, indexing="ij"
    )
    disk = (xx**2 + yy**2 < (n / 3) ** 2).double()
    ellipse = (((xx - 5) / 10) ** 2 + ((yy + 3) / 6) ** 2 < 1).double()
    return (disk + 0.5 * ellipse)[None, None]


# ------------------------------------------------------------------------------------------ CT
def test_ct_fbp_reconstructs_and_pixel_size_is_physical() -> None:
    x = _phantom(48)
    dense = ops.SparseViewCT((1, 48, 48), 120, dtype=torch.float64)
    rec = dense.A_dagger(dense.A(x))  # default: FBP
    assert float((rec - x).norm() / x.norm()) < 0.15
    torch.testing.assert_close(rec, dense.fbp(dense.A(x)))
    # line integrals scale with the pixel size; FBP returns the same attenuation
    half = ops.SparseViewCT((1, 48, 48), 120, pixel_size=0.5, dtype=torch.float64)
    torch.testing.assert_close(half.A(x), 0.5 * dense.A(x))
    torch.testing.assert_close(half.fbp(half.A(x)), rec)
    # sparse views: worse but still an image of the phantom
    sparse = ops.SparseViewCT((1, 48, 48), 20, dtype=torch.float64)
    assert float((sparse.fbp(sparse.A(x)) - x).norm() / x.norm()) < 0.3


def test_ct_geometry_and_limited_angle() -> None:
    op = ops.SparseViewCT((1, 32, 32), 30, angular_range=90.0, start_angle=45.0)
    angles = op.angles.double()
    assert len(angles) == 30
    assert float(angles.min()) == 45.0 and float(angles.max()) < 135.0
    assert op.measurement_shape == (1, math.ceil(math.sqrt(2) * 32), 30)
    fan = ops.SparseViewCT((1, 32, 32), 10, geometry="fanbeam")
    assert fan.angular_range == 360.0 and fan.spec()["geometry"] == "fanbeam"
    assert fan.measurement_shape[1] == fan.spec()["n_detectors"]
    assert isinstance(op, Tomography)


def test_ct_adjoint_is_exact_unlike_inverse_radon() -> None:
    op = ops.SparseViewCT((1, 32, 32), 20, dtype=torch.float64)
    err = op.adjointness_test(img_size=(1, 32, 32), num_samples=3, dtype=torch.float64)
    assert float(err) < 1e-12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        approximate = Tomography(
            20, 32, normalize=False, adjoint_via_backprop=False, dtype=torch.float64
        )
    err = approximate.adjointness_test(img_size=(1, 32, 32), num_samples=3, dtype=torch.float64)
    assert float(err) > 1e-2  # why we do not use deepinv's inverse-Radon adjoint


def test_ct_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match="square"):
        ops.SparseViewCT((1, 32, 30), 10)
    with pytest.raises(ConfigError, match="geometry"):
        ops.SparseViewCT(32, 10, geometry="cone")
    with pytest.raises(ConfigError, match="fanbeam"):
        ops.SparseViewCT(32, 10, source_radius=100.0)
    with pytest.raises(ConfigError, match="n_views"):
        ops.SparseViewCT(32, 0)
    with pytest.raises(ConfigError, match="angular_range"):
        ops.SparseViewCT(32, 10, angular_range=400.0)
    with pytest.raises(ConfigError, match="method"):
        ops.SparseViewCT(16, 4).A_dagger(torch.zeros(1, 1, 23, 4), method="art")
    with pytest.raises(ConfigError, match="lsq"):
        ops.SparseViewCT(16, 4).A_dagger(torch.zeros(1, 1, 23, 4), method="fbp", reg=0.1)


def test_ct_regularised_least_squares() -> None:
    op = ops.SparseViewCT((1, 24, 24), 8, dtype=torch.float64)
    y = op.A(_phantom(24))
    damped = op.A_dagger(y, reg=10.0, max_iter=400, tol=1e-12)  # reg > 0: CGLS, not FBP
    ref = torch.linalg.solve(
        _normal_matrix(op) + 10.0 * torch.eye(24 * 24, dtype=torch.float64),
        op.A_adjoint(y).flatten(),
    )
    torch.testing.assert_close(damped.flatten(), ref, rtol=1e-5, atol=1e-6)


def _normal_matrix(op) -> torch.Tensor:
    n = op.img_size[1] * op.img_size[2]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *op.img_size)
    return op.A_adjoint(op.A(basis)).reshape(n, n)


# ------------------------------------------------------------------------------- sensing
def test_fourier_measurements_match_numpy() -> None:
    op = ops.FourierSampling((1, 16, 12), ratio=0.3, seed=1, dtype=torch.float64)
    assert op.m == round(0.3 * 16 * 12) and op.measurement_shape == (1, op.m, 2)
    x = torch.rand(2, 1, 16, 12, dtype=torch.float64)
    y = op.A(x)
    centred = np.fft.fftshift(np.fft.fft2(x.numpy(), norm="ortho"), axes=(-2, -1))
    expected = centred[..., op.mask.numpy()]  # row-major order of the centred mask
    np.testing.assert_allclose(y[..., 0].numpy(), expected.real, atol=1e-12)
    np.testing.assert_allclose(y[..., 1].numpy(), expected.imag, atol=1e-12)
    grid = op.to_grid(y)
    np.testing.assert_allclose(grid[..., op.mask].numpy(), expected, atol=1e-12)
    assert bool(op.mask[8, 6])  # DC is in the centre block


def test_fourier_user_mask_and_deepinv_l2() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[::2] = True
    op = ops.FourierSampling((1, 16, 16), mask=mask, dtype=torch.float64)
    assert op.spec()["pattern"] == "array" and op.ratio == 0.5
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    y = op.A(x)
    fidelity = L2(sigma=0.1)
    assert float(fidelity(x, y, op)) == pytest.approx(0.0, abs=1e-20)
    z = torch.rand_like(x)
    grad = fidelity.grad(z, y, op)
    torch.testing.assert_close(grad, op.A_adjoint(op.A(z) - y) / 0.01)
    with pytest.raises(OperatorMismatchError, match="mask"):
        ops.FourierSampling((1, 16, 16), mask=np.ones((8, 8)))
    with pytest.raises(ConfigError, match="centre_fraction"):
        ops.FourierSampling((1, 16, 16), ratio=0.01, centre_fraction=0.5)


def test_random_sensing_statistics_and_seed() -> None:
    op = ops.RandomSensing((1, 24, 24), 144, seed=7)
    entries = op.matrix * math.sqrt(144)
    assert abs(float(entries.mean())) < 0.01 and float(entries.std()) == pytest.approx(1, rel=0.01)
    same = ops.RandomSensing((1, 24, 24), 144, seed=7, dtype=torch.float64)
    torch.testing.assert_close(same.matrix.float(), op.matrix)
    other = ops.RandomSensing((1, 24, 24), 144, seed=8)
    assert not torch.equal(other.matrix, op.matrix)
    y = torch.randn(2, 1, 144, dtype=torch.float64)
    x = same.A_dagger(y)
    ref = torch.linalg.lstsq(same.matrix, y[:, 0].T, driver="gelsd").solution.T
    torch.testing.assert_close(x.flatten(1), ref)
    with pytest.raises(ConfigError, match="m:"):
        ops.RandomSensing((1, 8, 8), 100)


def test_hadamard_rows_are_orthonormal() -> None:
    op = ops.HadamardSensing((1, 16, 16), 64, dtype=torch.float64)
    eye = torch.eye(64, dtype=torch.float64).reshape(64, 1, 64)
    torch.testing.assert_close(op.A(op.A_adjoint(eye)), eye)  # A A^T = I
    x = torch.ones(1, 1, 16, 16, dtype=torch.float64)
    assert float(op.A(x).abs().max()) == pytest.approx(16.0)  # DC pattern measured: sum / 16
    rnd = ops.HadamardSensing((1, 16, 16), 64, "random", seed=2)
    assert torch.equal(rnd.index, ops.HadamardSensing((1, 16, 16), 64, "random", seed=2).index)
    with pytest.raises(ConfigError, match="power-of-two"):
        ops.HadamardSensing((1, 24, 16), 10)
    with pytest.raises(ConfigError, match="ordering"):
        ops.HadamardSensing((1, 16, 16), 10, ordering="gray")


# --------------------------------------------------------------------------------- masks
def test_random_bad_pixel_mask() -> None:
    bad = ops.random_bad_pixel_mask((64, 64), 0.25, seed=3)
    assert bad.dtype == torch.bool and int(bad.sum()) == round(0.25 * 64 * 64)
    assert torch.equal(bad, ops.random_bad_pixel_mask((1, 64, 64), 0.25, seed=3))
    with_rays = ops.random_bad_pixel_mask((64, 64), 0.25, seed=3, cosmic_rays=10, track_length=12)
    assert int(with_rays.sum()) > int(bad.sum())
    rays_only = ops.random_bad_pixel_mask((64, 64), 0.0, seed=4, cosmic_rays=5, track_length=12)
    assert 5 <= int(rays_only.sum()) <= 60
    with pytest.raises(ConfigError, match="fraction"):
        ops.random_bad_pixel_mask((8, 8), 1.5)


def test_bad_pixel_mask_convention_and_noise() -> None:
    bad = np.zeros((8, 8), dtype=bool)
    bad[2, 3] = True  # True = bad
    op = ops.BadPixelMask(bad, (1, 8, 8), noise_model=GaussianNoise(0.5))
    assert isinstance(op, Inpainting)
    x = torch.ones(3, 1, 8, 8)
    assert float(op.A(x)[:, 0, 2, 3].abs().max()) == 0.0 and float(op.A(x).sum()) == 3 * 63
    noisy = op(x)
    assert float(noisy[:, 0, 2, 3].abs().max()) == 0.0  # bad pixels stay zero in the data
    torch.testing.assert_close(op.bad[0, 0], torch.from_numpy(bad))
    assert op.bad_fraction == pytest.approx(1 / 64)
    with pytest.raises(InvalidDataError):
        ops.BadPixelMask(np.full((8, 8), np.nan), (1, 8, 8))
    with pytest.raises(OperatorMismatchError, match="bad-pixel map"):
        ops.BadPixelMask(np.zeros((4, 8)), (1, 8, 8))


def test_mask_composed_with_psf() -> None:
    blur = ops.PSFConvolution.from_profile((1, 16, 16), "gaussian", fwhm=2.0, dtype=torch.float64)
    mask = ops.BadPixelMask(0.3, (1, 16, 16), seed=1, dtype=torch.float64)
    both = mask * blur
    assert isinstance(both, ops.ComposedOperator)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(both.A(x), mask.A(blur.A(x)))
    y = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(both.A_adjoint(y), blur.A_adjoint(mask.A_adjoint(y)))
    both.set_noise_model(GaussianNoise(0.1))
    assert float(both(x)[mask.bad.expand(2, -1, -1, -1)].abs().max()) == 0.0
    assert ops.noise_sigma(both) == pytest.approx(0.1)


# --------------------------------------------------------------------------------- noise
@pytest.mark.parametrize(
    "spec",
    [
        {"type": "none"},
        {"type": "gaussian", "sigma": 0.05, "seed": 1},
        {"type": "poisson", "gain": 0.5, "sky": 0.0, "clip_positive": True, "seed": 2},
        {"type": "poisson", "gain": 0.5, "sky": 3.0, "clip_positive": True, "seed": None},
        {
            "type": "poisson-gaussian",
            "gain": 0.2,
            "sigma": 0.1,
            "sky": 2.0,
            "clip_positive": False,
            "seed": 3,
        },
    ],
)
def test_noise_spec_round_trip(spec: dict) -> None:
    model = ops.make_noise(spec)
    assert ops.noise_spec(model) == spec
    assert ops.noise_spec(ops.make_noise(ops.noise_spec(model))) == spec


def test_seeded_noise_is_reproducible() -> None:
    z = torch.full((2, 1, 8, 8), 4.0)
    spec = {"type": "poisson-gaussian", "gain": 0.5, "sigma": 0.1, "sky": 1.0, "seed": 5}
    a, b = ops.make_noise(spec)(z), ops.make_noise(spec)(z)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, z)


def test_sky_background_statistics_and_noise_sigma() -> None:
    gain, sigma, sky, z = 0.5, 0.3, 20.0, 3.0
    model = ops.make_noise(
        {"type": "poisson-gaussian", "gain": gain, "sigma": sigma, "sky": sky, "seed": 0}
    )
    y = model(torch.full((1, 1, 256, 256), z, dtype=torch.float64))
    assert float(y.mean()) == pytest.approx(z, abs=0.03)  # sky subtracted: unbiased
    assert float(y.var()) == pytest.approx(gain * (z + sky) + sigma**2, rel=0.03)
    assert isinstance(model, ops.SkyBackgroundNoise)
    assert ops.noise_sigma(model) == pytest.approx(math.sqrt(sigma**2 + gain * sky))
    assert ops.noise_sigma(GaussianNoise(0.2)) == pytest.approx(0.2)
    assert ops.noise_sigma(PoissonGaussianNoise(gain=1.0, sigma=0.4)) == pytest.approx(0.4)
    assert ops.noise_sigma(PoissonNoise(gain=1.0)) is None
    op = ops.PSFConvolution(np.ones((3, 3)), (1, 8, 8))
    assert ops.noise_sigma(op) == 0.0
    batched = GaussianNoise(torch.tensor([0.1, 0.2]))
    assert torch.is_tensor(ops.noise_sigma(batched))


def test_noise_spec_errors() -> None:
    with pytest.raises(ConfigError, match="noise.sigma"):
        ops.make_noise({"type": "gaussian"})
    with pytest.raises(ConfigError, match="noise.gain"):
        ops.make_noise({"type": "poisson", "gain": -1.0})
    with pytest.raises(ConfigError, match="noise.sky"):
        ops.make_noise({"type": "gaussian", "sigma": 0.1, "sky": 1.0})
    with pytest.raises(ConfigError, match="noise.type"):
        ops.make_noise({"type": "speckle"})
    with pytest.raises(ConfigError):
        ops.noise_spec(PoissonNoise(gain=1.0, normalize=False))
