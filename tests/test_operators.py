"""Generic operator contract: every operator, float32 and float64.

Adjointness, autograd agreement, pseudo-inverse round trip, clone / state_dict / .to, gradients,
spec round trip and a few least-squares iterations (PyLops-style "does it invert").
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from deepinv.optim.linear import least_squares

import dwgf_sci.operators as ops
from dwgf_sci.errors import OperatorMismatchError

N = 32
DTYPES = [torch.float32, torch.float64]
ADJ_TOL = {torch.float32: 1e-3, torch.float64: 1e-8}
VJP_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch_psf() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.random((2, 1, 5, 4)).astype(np.float32) + 0.1


def _bad_map() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.random((N, N)) < 0.2


def _matrix(m: int, n: int, seed: int) -> torch.Tensor:
    """A dense Gaussian ``(m, n)`` matrix scaled to a unit-order spectrum, in float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5


# name -> (builder(dtype), arrays for build_operator, kwargs for the least-squares A_dagger)
Builder = Callable[[torch.dtype], object]
OPERATORS: dict[str, tuple[Builder, dict, dict]] = {
    "psf-same": (
        lambda dt: ops.PSFConvolution.from_profile((1, N, N), "moffat", fwhm=3.0, dtype=dt),
        {},
        {},
    ),
    "psf-same-even": (
        lambda dt: ops.PSFConvolution(
            np.arange(24, dtype=np.float64).reshape(4, 6) + 1.0, (1, N, N - 2), dtype=dt
        ),
        {"psf": np.arange(24, dtype=np.float64).reshape(4, 6) + 1.0},
        {},
    ),
    "psf-circular": (
        lambda dt: ops.PSFConvolution.from_profile(
            (1, N, N), "gaussian", "circular", fwhm=2.5, dtype=dt
        ),
        {},
        {},
    ),
    "psf-valid": (
        lambda dt: ops.PSFConvolution.from_profile(
            (2, N, N), "airy", "valid", lam_over_d=1.0, dtype=dt
        ),
        {},
        {},
    ),
    "psf-batch": (
        lambda dt: ops.PSFConvolution(_batch_psf(), (1, N, N), dtype=dt),
        {"psf": _batch_psf()},
        {},
    ),
    "ct-parallel": (lambda dt: ops.SparseViewCT((1, N, N), 20, dtype=dt), {}, {"method": "lsq"}),
    "ct-fanbeam": (
        lambda dt: ops.SparseViewCT((1, N, N), 16, geometry="fanbeam", dtype=dt),
        {},
        {"method": "lsq"},
    ),
    "ct-limited": (
        lambda dt: ops.SparseViewCT((1, N, N), 12, 90.0, 10.0, pixel_size=0.5, dtype=dt),
        {},
        {"method": "lsq"},
    ),
    "fourier": (lambda dt: ops.FourierSampling((1, N, N), 0.25, seed=3, dtype=dt), {}, {}),
    "random-cs": (lambda dt: ops.RandomSensing((2, N, N), 200, seed=4, dtype=dt), {}, {}),
    "hadamard": (lambda dt: ops.HadamardSensing((1, N, N), 300, "random", 5, dtype=dt), {}, {}),
    "mask-random": (
        lambda dt: ops.BadPixelMask(0.2, (1, N, N), seed=6, cosmic_rays=3, dtype=dt),
        {},
        {},
    ),
    "mask-array": (
        lambda dt: ops.BadPixelMask(_bad_map(), (1, N, N), dtype=dt),
        {"mask": _bad_map()},
        {},
    ),
    "inpaint-psf": (
        lambda dt: ops.build_operator(
            ops.resolve_spec("inpaint-psf", ["fwhm=2.5"]), (1, N, N), dtype=dt
        ),
        {},
        {},
    ),
    "mask*psf": (
        lambda dt: (
            ops.BadPixelMask(0.1, (1, N, N), dtype=dt)
            * ops.PSFConvolution.from_profile((1, N, N), "gaussian", fwhm=2.0, dtype=dt)
        ),
        {},
        {},
    ),
    # a user's dense matrix: wide (fewer measurements than pixels, several channels) and tall
    "matrix-wide": (
        lambda dt: ops.MatrixOperator(_matrix(60, 2 * 8 * 8, 7), (2, 8, 8), dtype=dt),
        {"matrix": _matrix(60, 2 * 8 * 8, 7)},
        {},
    ),
    "matrix-tall": (
        lambda dt: ops.MatrixOperator(_matrix(50, 36, 8), (1, 6, 6), dtype=dt),
        {"matrix": _matrix(50, 36, 8)},
        {},
    ),
}
NAMES = list(OPERATORS)


def _make(name: str, dtype: torch.dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OPERATORS[name][0](dtype)


def _x(op, dtype: torch.dtype, batch: int = 2) -> torch.Tensor:
    return torch.randn((batch, *op.img_size), dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _from_spec(name: str, spec: dict, blank: bool = False):
    """The operator a spec describes, given the registry's arrays.

    A :class:`~dwgf_sci.operators.MatrixOperator`'s spec records the matrix's shape, not its
    entries, so it is rebuilt from the registry's matrix (``blank``: from zeros of that shape,
    which only a state dict can fill in). Every other spec goes through ``build_operator``.
    """
    arrays = OPERATORS[name][1]
    if spec["type"] != "matrix":
        return ops.build_operator(spec, **arrays)
    matrix = arrays["matrix"]
    assert list(matrix.shape) == spec["shape"]
    if blank:
        matrix = torch.zeros_like(matrix)
    return ops.MatrixOperator(matrix, spec["img_size"], dtype=getattr(torch, spec["dtype"]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_adjointness(name: str, dtype: torch.dtype) -> None:
    op = _make(name, dtype)
    x = _x(op, dtype)
    y = op.A(x)
    assert y.dtype == dtype and tuple(y.shape[1:]) == tuple(op.measurement_shape)
    v = torch.randn_like(y)
    lhs = float((y * v).sum())
    rhs = float((x * op.A_adjoint(v)).sum())
    assert abs(lhs - rhs) / abs(lhs) < ADJ_TOL[dtype]
    # deepinv's own Monte-Carlo test, on the same operator
    err = op.adjointness_test(img_size=op.img_size, num_samples=2, dtype=dtype)
    assert float(err) < ADJ_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_autograd_adjoint_matches(name: str, dtype: torch.dtype) -> None:
    op = _make(name, dtype)
    x = _x(op, dtype)
    y, vjp = torch.func.vjp(op.A, x)
    v = torch.randn_like(y)
    assert _rel(vjp(v)[0], op.A_adjoint(v)) < VJP_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_dagger_round_trip(name: str, dtype: torch.dtype) -> None:
    op = _make(name, dtype)
    kwargs = OPERATORS[name][2]
    y0 = torch.randn((2, *op.measurement_shape), dtype=dtype)
    x = op.A_adjoint(y0)  # x in range(A^T): A^+ A x = x
    ax = op.A(x)
    xd = op.A_dagger(ax, **kwargs)
    assert xd.shape == x.shape and xd.dtype == dtype
    assert _rel(xd, x) < 0.05
    assert _rel(op.A(xd), ax) < 0.02


@pytest.mark.parametrize("name", NAMES)
def test_clone_state_dict_to(name: str) -> None:
    op = _make(name, torch.float32)
    x = _x(op, torch.float32)
    y = op.A(x)
    twin = op.clone()
    torch.testing.assert_close(twin.A(x), y)
    # a fresh operator of the same spec accepts the state dict and computes the same A
    fresh = _from_spec(name, ops.physics_spec(op), blank=True)
    fresh.load_state_dict(op.state_dict())
    torch.testing.assert_close(fresh.A(x), y)
    # .to(dtype) keeps it an operator: exact adjoint in float64
    wide = op.clone().to(torch.float64)
    x64 = x.double()
    y64 = wide.A(x64)
    assert y64.dtype == torch.float64
    v = torch.randn_like(y64)
    lhs, rhs = float((y64 * v).sum()), float((x64 * wide.A_adjoint(v)).sum())
    assert abs(lhs - rhs) / abs(lhs) < 1e-8
    torch.testing.assert_close(y64.float(), y, rtol=1e-4, atol=1e-4)
    for device in DEVICES:
        moved = op.clone().to(device)
        torch.testing.assert_close(moved.A(x.to(device)).cpu(), y, rtol=1e-4, atol=1e-4)
        assert moved.A_adjoint(y.to(device)).device.type == torch.device(device).type


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow(name: str) -> None:
    op = _make(name, torch.float64)
    x = _x(op, torch.float64).requires_grad_(True)
    loss = 0.5 * op.A(x).pow(2).sum()
    loss.backward()
    expected = op.A_adjoint(op.A(x.detach()))
    torch.testing.assert_close(x.grad, expected)
    # through the adjoint as well
    y = torch.randn((2, *op.measurement_shape), dtype=torch.float64, requires_grad=True)
    op.A_adjoint(y).sum().backward()
    ones = torch.ones((2, *op.img_size), dtype=torch.float64)
    torch.testing.assert_close(y.grad, op.A(ones))


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trip(name: str) -> None:
    op = _make(name, torch.float32)
    spec = ops.physics_spec(op)
    text = json.dumps(spec)  # JSON-serialisable, arrays not inline
    assert len(text) < 2000
    rebuilt = _from_spec(name, json.loads(text))
    assert ops.physics_spec(rebuilt) == spec
    x = _x(op, torch.float32)
    torch.testing.assert_close(rebuilt.A(x), op.A(x))


@pytest.mark.parametrize("name", NAMES)
def test_few_least_squares_iterations_reduce_residual(name: str) -> None:
    op = _make(name, torch.float64)
    x_true = torch.rand((2, *op.img_size), dtype=torch.float64)
    y = op.A(x_true)
    r0 = float(y.norm())
    # deepinv's CG (on the normal equations) works with the operator
    x10 = least_squares(op.A, op.A_adjoint, y, solver="CG", max_iter=10, tol=1e-12)
    assert float((op.A(x10) - y).norm()) < 0.8 * r0
    # our CGLS: the residual falls monotonically
    residuals = [
        float((op.A(ops.cgls(op.A, op.A_adjoint, y, max_iter=k, tol=0.0)) - y).norm())
        for k in (1, 3, 10)
    ]
    slack = 1e-10 * r0
    assert residuals[0] < r0
    assert residuals[2] <= residuals[1] + slack <= residuals[0] + 2 * slack
    assert residuals[2] < 0.5 * r0


@pytest.mark.parametrize("name", NAMES)
def test_wrong_sizes_are_rejected(name: str) -> None:
    op = _make(name, torch.float32)
    C, H, W = op.img_size
    with pytest.raises(OperatorMismatchError, match="expected"):
        op.A(torch.zeros(2, C, H + 2, W))
    bad = torch.zeros((2, *op.measurement_shape))[..., :-1]
    with pytest.raises(OperatorMismatchError, match="expected"):
        op.A_adjoint(bad)


def test_sizes_that_would_fill_the_memory_are_refused_before_allocating():
    from dwgf_sci.errors import ConfigError

    with pytest.raises(ConfigError, match="4097 px limit"):
        ops.moffat_psf(fwhm=65536.0)  # a 2e5-px stamp: 300+ GB if it were allocated
    with pytest.raises(ConfigError, match="4097 px limit"):
        ops.gaussian_psf(fwhm=2.0, size=99999999)
    with pytest.raises(ConfigError, match="pixels per image"):
        ops.HadamardSensing((1, 2**20, 2**20), m=16)
    assert ops.moffat_psf(fwhm=4.0).shape[-1] <= 4097  # ordinary widths are unaffected
    with pytest.raises(ConfigError, match="ray grid"):
        ops.SparseViewCT(64, n_views=65536)  # 5e8 grid points, minutes to build
    assert ops.SparseViewCT(64, n_views=720).n_views == 720


# ------------------------------------------------------------------ MatrixOperator's own promises
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["matrix-wide", "matrix-tall"])
def test_matrix_pseudo_inverse_and_norm_come_from_the_svd(name: str, dtype: torch.dtype) -> None:
    op = _make(name, dtype)
    mat = OPERATORS[name][1]["matrix"]
    m, n = mat.shape
    y = torch.randn((3, m), dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    expected = y.double() @ torch.linalg.pinv(mat).T  # A^+ y: least squares, minimum norm
    got = op.A_dagger(y).reshape(3, -1).double()
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    s = torch.linalg.svdvals(mat)
    assert float(op.compute_norm()) == pytest.approx(float(s[0]) ** 2, rel=tol)
    # Tikhonov: (A^T A + reg I) x = A^T y
    reg = 0.3
    x_reg = op.A_dagger(y, reg=reg).reshape(3, -1).double()
    normal = mat.T @ mat + reg * torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(
        x_reg, torch.linalg.solve(normal, mat.T @ y.double().T).T, rtol=tol, atol=tol
    )


def test_matrix_spec_and_a_matrix_that_does_not_fit_the_image() -> None:
    op = ops.MatrixOperator(torch.randn(3, 4), (1, 2, 2))
    assert op.spec() == {
        "type": "matrix",
        "shape": [3, 4],
        "img_size": [1, 2, 2],
        "dtype": "float32",
    }
    with pytest.raises(OperatorMismatchError, match="4 columns"):
        ops.MatrixOperator(torch.randn(3, 4), (1, 3, 3))
