"""PSF blur: agreement with scipy / astropy / galsim, validation, FITS input, per-item PSFs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, signal

import dwgf_sci.operators as ops
from dwgf_sci.errors import ConfigError, InvalidDataError, OperatorMismatchError, ShapeError


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _blur(psf: np.ndarray, img: np.ndarray, padding: str, dtype=torch.float64) -> np.ndarray:
    op = ops.PSFConvolution(psf, img.shape, padding, dtype=dtype)
    x = torch.from_numpy(img)[None, None].to(dtype)
    return op.A(x)[0, 0].double().numpy()


PSF_CASES = {
    "moffat-odd": ops.moffat_psf(4.0, 3.0, size=15, dtype=torch.float64).numpy(),
    "even-4x6": np.random.default_rng(0).random((4, 6)),
    "odd-even-5x4": np.random.default_rng(1).random((5, 4)),
    "offset-delta": np.pad(np.ones((1, 1)), ((1, 5), (4, 2))),  # a point source off the centre
    "larger-than-image": ops.gaussian_psf(9.0, size=41, dtype=torch.float64).numpy(),
}


@pytest.mark.parametrize("shape", [(32, 32), (31, 26), (24, 33)], ids=["32x32", "31x26", "24x33"])
@pytest.mark.parametrize("case", list(PSF_CASES))
def test_same_matches_scipy_fftconvolve(case: str, shape: tuple[int, int]) -> None:
    psf = PSF_CASES[case]
    img = np.random.default_rng(3).random(shape)
    expected = signal.fftconvolve(img, psf / psf.sum(), mode="same")
    assert _rel(_blur(psf, img, "same"), expected) < 1e-10
    assert _rel(_blur(psf, img, "same", torch.float32), expected) < 1e-5


@pytest.mark.parametrize("case", ["moffat-odd", "even-4x6", "odd-even-5x4", "offset-delta"])
def test_valid_matches_scipy(case: str) -> None:
    psf = PSF_CASES[case]
    img = np.random.default_rng(4).random((30, 27))
    expected = signal.fftconvolve(img, psf / psf.sum(), mode="valid")
    out = _blur(psf, img, "valid")
    assert out.shape == expected.shape
    assert _rel(out, expected) < 1e-10


def test_circular_matches_wrapped_convolution() -> None:
    psf = ops.moffat_psf(3.0, 2.5, size=9, dtype=torch.float64).numpy()
    img = np.random.default_rng(5).random((24, 20))
    expected = ndimage.convolve(img, psf, mode="wrap")  # odd kernel: same origin convention
    assert _rel(_blur(psf, img, "circular"), expected) < 1e-10
    # even kernel: circular equals 'same' away from the borders
    even = PSF_CASES["even-4x6"]
    same, circ = _blur(even, img, "same"), _blur(even, img, "circular")
    np.testing.assert_allclose(circ[4:-4, 6:-6], same[4:-4, 6:-6], rtol=1e-10)


def test_flux_conservation_and_identity() -> None:
    x = torch.rand(3, 1, 20, 20, dtype=torch.float64)
    circ = ops.PSFConvolution.from_profile(
        (1, 20, 20), "moffat", "circular", fwhm=3.0, size=11, dtype=torch.float64
    )
    torch.testing.assert_close(circ.A(x).sum(dim=(-2, -1)), x.sum(dim=(-2, -1)))
    delta = np.zeros((4, 4))
    delta[1, 1] = 5.0  # the origin of an even stamp is ((h-1)//2, (w-1)//2)
    for padding in ("same", "circular"):
        op = ops.PSFConvolution(delta, (1, 20, 20), padding, dtype=torch.float64)
        torch.testing.assert_close(op.A(x), x)


def test_moffat_matches_astropy() -> None:
    from astropy.convolution import Moffat2DKernel

    for fwhm, beta, size in [(4.0, 3.0, 31), (2.5, 4.765, 15), (6.0, 1.5, 41)]:
        gamma = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
        ref = Moffat2DKernel(gamma, beta, x_size=size, y_size=size).array
        ref = ref / ref.sum()
        ours = ops.moffat_psf(fwhm, beta, size, dtype=torch.float64).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("maker", [ops.gaussian_psf, lambda f, size: ops.moffat_psf(f, 3.0, size)])
def test_profiles_have_the_requested_fwhm(maker) -> None:
    psf = maker(4.0, size=21).numpy()
    c = 10
    assert psf.argmax() == c * 21 + c
    assert psf[c, c + 2] / psf[c, c] == pytest.approx(0.5, rel=1e-5)  # r = FWHM / 2
    assert psf.sum() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("obscuration", [0.0, 0.3])
def test_airy_matches_galsim(obscuration: float) -> None:
    import galsim

    ref = (
        galsim.Airy(lam_over_diam=2.0, obscuration=obscuration)
        .drawImage(nx=33, ny=33, scale=1.0, method="no_pixel")
        .array
    )
    ours = ops.airy_psf(2.0, 33, obscuration, dtype=torch.float64).numpy()
    np.testing.assert_allclose(ours, ref / ref.sum(), rtol=1e-5, atol=1e-9)


def test_kolmogorov_psf() -> None:
    psf = ops.kolmogorov_psf(0.8, pixel_scale=0.2).numpy()  # 4 px FWHM
    size = psf.shape[0]
    assert size % 2 == 1 and size == 2 * math.ceil(3 * 4.0) + 1
    assert psf.sum() == pytest.approx(1.0, rel=1e-6)
    c = size // 2
    assert psf.argmax() == c * size + c
    half = psf[c, c:] / psf[c, c]
    r_half = np.interp(0.5, half[::-1], np.arange(half.size)[::-1])
    assert 2 * r_half == pytest.approx(4.0, rel=0.15)  # pixel response widens it a little


def test_default_sizes_are_odd_and_size_is_checked() -> None:
    for psf in (ops.gaussian_psf(3.0), ops.moffat_psf(3.0), ops.airy_psf(1.5)):
        assert psf.shape[0] == psf.shape[1] and psf.shape[0] % 2 == 1
    with pytest.raises(ConfigError, match="odd"):
        ops.gaussian_psf(3.0, size=10)
    with pytest.raises(ConfigError, match="fwhm"):
        ops.moffat_psf(-1.0)
    with pytest.raises(ConfigError, match="beta"):
        ops.moffat_psf(3.0, beta=1.0)
    with pytest.raises(ConfigError, match="obscuration"):
        ops.airy_psf(2.0, obscuration=1.0)


@pytest.mark.parametrize(
    ("psf", "pattern"),
    [
        (np.array([[1.0, np.nan], [1.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf], [1.0, 1.0]]), "Inf"),
        (np.zeros((3, 3)), "positive sum"),
        (np.array([[1.0, -2.0], [0.5, 0.0]]), "positive sum"),
    ],
)
def test_invalid_psfs_are_rejected(psf: np.ndarray, pattern: str) -> None:
    with pytest.raises(InvalidDataError, match=pattern):
        ops.PSFConvolution(psf, (1, 16, 16))


def test_bad_shapes_and_options() -> None:
    with pytest.raises(ShapeError):
        ops.PSFConvolution(np.ones(5), (1, 16, 16))
    with pytest.raises(ConfigError, match="padding"):
        ops.PSFConvolution(np.ones((3, 3)), (1, 16, 16), padding="reflect")
    with pytest.raises(ConfigError, match="no larger"):
        ops.PSFConvolution(np.ones((21, 3)), (1, 16, 16), padding="valid")
    op = ops.PSFConvolution.from_profile((1, 16, 16), "gaussian", fwhm=2.0)
    with pytest.raises(OperatorMismatchError, match=r"\(B, 1, 16, 16\).*\(1, 1, 16, 15\)"):
        op.A(torch.zeros(1, 1, 16, 15))
    with pytest.raises(OperatorMismatchError, match="expected"):
        op.A(torch.zeros(16, 16))
    with pytest.raises(OperatorMismatchError, match=r"found \(1, 2, 16, 16\)"):
        op.A(torch.zeros(1, 2, 16, 16))


def test_per_item_psfs() -> None:
    psfs = np.stack([ops.gaussian_psf(f, size=9).numpy() for f in (1.5, 3.0, 4.5)])[:, None]
    op = ops.PSFConvolution(psfs, (1, 24, 24), dtype=torch.float64)
    x = torch.rand(3, 1, 24, 24, dtype=torch.float64)
    y = op.A(x)
    for i in range(3):
        single = ops.PSFConvolution(psfs[i, 0], (1, 24, 24), dtype=torch.float64)
        torch.testing.assert_close(y[i : i + 1], single.A(x[i : i + 1]))
    with pytest.raises(OperatorMismatchError, match="batch size 3"):
        op.A(x[:2])


def test_fits_psf_big_endian(tmp_path) -> None:
    from astropy.io import fits

    psf = ops.moffat_psf(3.0, 3.0, size=11).numpy()
    path = tmp_path / "psf.fits"
    fits.writeto(path, psf.astype(">f4"))
    op = ops.PSFConvolution(str(path), (1, 16, 16))
    ref = ops.PSFConvolution(psf, (1, 16, 16))
    torch.testing.assert_close(op.psf, ref.psf)
    spec = op.spec()
    assert spec["profile"] == "array" and spec["source"] == str(path)
    rebuilt = ops.build_operator(spec)  # reads the PSF back from its source
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(rebuilt.A(x), op.A(x))
    assert ops.load_psf(path).dtype == np.float32


def test_pseudo_inverse_and_wiener() -> None:
    op = ops.PSFConvolution.from_profile(
        (1, 32, 32), "gaussian", "circular", fwhm=2.0, dtype=torch.float64
    )
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    y = op.A(x)
    torch.testing.assert_close(op.A_dagger(y), x, rtol=1e-6, atol=1e-6)  # invertible OTF
    wiener = op.A_dagger(y, reg=1e-2)
    assert float(wiener.norm()) < float(op.A_dagger(y).norm())
    with pytest.raises(ConfigError):
        op.A_dagger(y, reg=-1.0)
    same = ops.PSFConvolution.from_profile((1, 32, 32), "gaussian", fwhm=2.0, dtype=torch.float64)
    ys = same.A(x)
    xr = same.A_dagger(ys, max_iter=300, tol=1e-10)
    assert float((same.A(xr) - ys).norm() / ys.norm()) < 1e-3
