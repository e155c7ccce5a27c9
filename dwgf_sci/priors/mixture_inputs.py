"""Checking and parsing the inputs of the Gaussian-mixture classes.

Numbers given as tensors, arrays or (nested) lists, points in the package's image layout
``(n, d, 1, 1)``, noise levels :math:`\bar\alpha`, covariances in any of their accepted forms and
operators as dense matrices; shared by :class:`~dwgf_sci.priors.mixture.GaussianMixture` and
:class:`~dwgf_sci.priors.gaussian_mixture.GaussianMixturePrior`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_finite
from ..errors import InvalidDataError, ShapeError

__all__ = [
    "as_numbers",
    "broadcast_abar",
    "covariance_factors",
    "flatten_points",
    "matrix_of",
]


def as_numbers(
    data: Any, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """:func:`as_tensor` that also accepts Python scalars and (nested) lists."""
    if not isinstance(data, (torch.Tensor, np.ndarray)):
        try:
            data = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InvalidDataError(
                f"{name}: expected numbers, found {type(data).__name__}"
            ) from err
    return as_tensor(data, name, dtype=dtype, device=device)


def flatten_points(x: Tensor, dim: int, name: str) -> Tensor:
    """Reshape ``(n, d)`` or ``(n, d, 1, 1)`` points to ``(n, d)``, checking the dimension."""
    if not torch.is_tensor(x):
        raise InvalidDataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if x.ndim not in (2, 4) or (x.ndim == 4 and tuple(x.shape[2:]) != (1, 1)):
        raise ShapeError(
            f"{name}: expected shape (n, {dim}) or (n, {dim}, 1, 1), found {tuple(x.shape)}"
        )
    if x.shape[1] != dim:
        raise ShapeError(f"{name}: expected dimension {dim}, found shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], dim)


def broadcast_abar(
    abar: Tensor | float | None, n: int, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    r"""Broadcast :math:`\bar\alpha` (scalar or ``(n,)``) to ``(n,)``; ``None`` passes through."""
    if abar is None:
        return None
    a = torch.as_tensor(abar, dtype=dtype, device=device)
    if a.ndim == 0:
        a = a.expand(n)
    a = a.reshape(-1)
    if a.numel() != n:
        raise ShapeError(f"abar: expected a scalar or {n} values, found {a.numel()}")
    if not bool(((a > 0) & (a <= 1)).all()):
        raise InvalidDataError("abar: values must lie in (0, 1]")
    return a


def covariance_factors(
    covs: Any, num_components: int, dim: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Parse covariances into ``(eigvals (K, d), eigvecs (K, d, d) or None, full covs or None)``.

    Scalar, ``(K,)`` and ``(K, d)`` inputs are diagonal (no eigenvectors are stored); ``(K, d, d)``
    inputs are checked (symmetric, positive semi-definite) and kept with their eigendecomposition.
    """
    c = as_numbers(covs, "covariances", dtype=dtype, device=device)
    check_finite(c, "covariances")
    k, d = num_components, dim
    if c.ndim == 0:
        return c.expand(k, d).clone(), None, None
    if c.ndim == 1 and c.shape[0] == k:
        return c[:, None].expand(k, d).clone(), None, None
    if c.ndim == 2 and tuple(c.shape) == (k, d):
        return c.clone(), None, None
    if c.ndim == 3 and tuple(c.shape) == (k, d, d):
        scale = float(c.abs().max()) if c.numel() else 1.0
        if not torch.allclose(c, c.mT, rtol=1e-6, atol=1e-8 * scale):
            raise InvalidDataError("covariances: full covariance matrices must be symmetric")
        full = 0.5 * (c + c.mT)
        lam, q = torch.linalg.eigh(full)
        if bool((lam < -1e-8 * max(scale, 1e-300)).any()):
            raise InvalidDataError(
                "covariances: full covariance matrices must be positive semi-definite, "
                f"found an eigenvalue {float(lam.min()):.3g}"
            )
        return lam.clamp_min(0), q, full
    raise ShapeError(
        f"covariances: expected a scalar, ({k},), ({k}, {d}) or ({k}, {d}, {d}), "
        f"found shape {tuple(c.shape)}"
    )


def matrix_of(operator: Any) -> Tensor:
    """A dense matrix from a tensor, an array, or an object with a ``matrix`` attribute."""
    mat = getattr(operator, "matrix", operator)
    if not isinstance(mat, (torch.Tensor, np.ndarray)):
        raise InvalidDataError(
            "A: expected a matrix (tensor or array) or an operator with a `matrix` attribute, "
            f"found {type(operator).__name__}"
        )
    return as_numbers(mat, "A")
