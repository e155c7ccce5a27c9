r"""A dense matrix acting on flattened images.

.. math::

    y = A\, \mathrm{vec}(x), \qquad A \in \mathbb{R}^{m \times n}, \quad n = C H W,

with the closed-form adjoint :math:`A^\top y` reshaped to ``(C, H, W)`` and the pseudo-inverse from
the thin SVD :math:`A = U S V^\top`: :math:`A^{+} y = V S^{+} U^\top y`, where singular values
below ``rcond * s_max`` are treated as zero. Used for small exact problems (the Gaussian-mixture
benchmark) and for user-supplied dense operators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from torch import Tensor

from .._checks import as_tensor, check_finite
from ..errors import OperatorMismatchError, ShapeError

__all__ = ["MatrixOperator"]


class MatrixOperator(LinearPhysics):
    r"""Dense linear operator :math:`y = A\,\mathrm{vec}(x)` on ``(B, C, H, W)`` images.

    Images must be ``(B, *img_size)`` and measurements ``(B, m)``; anything else raises
    :class:`~dwgf_sci.errors.OperatorMismatchError`. The matrix and its thin SVD are buffers, so
    ``.to(device)``, ``clone()`` and ``state_dict()`` carry them.

    :param matrix: ``(m, n)`` tensor or array with ``n = C * H * W``.
    :param img_size: image shape ``(C, H, W)``.
    :param rcond: relative cut-off of the pseudo-inverse (default ``max(m, n) * eps(dtype)``).
    :param dtype: float32 or float64; default: the matrix's floating dtype (float32 otherwise).
    :param device: device of the buffers; default: that of the matrix.
    :param kwargs: passed to :class:`deepinv.physics.LinearPhysics` (e.g. ``noise_model``).
    """

    def __init__(
        self,
        matrix: Tensor | np.ndarray,
        img_size: Sequence[int],
        rcond: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> None:
        mat = as_tensor(matrix, "matrix", dtype=dtype)
        if mat.dtype not in (torch.float32, torch.float64):
            raise ShapeError(f"matrix: expected float32 or float64, found {mat.dtype}")
        if mat.ndim != 2:
            raise ShapeError(
                f"matrix: expected a 2-D (m, n) matrix, found shape {tuple(mat.shape)}"
            )
        check_finite(mat, "matrix")
        size = tuple(int(s) for s in img_size)
        if len(size) != 3 or min(size) < 1:
            raise ShapeError(f"img_size: expected (C, H, W) with positive sizes, found {size}")
        n = math.prod(size)
        if mat.shape[1] != n:
            raise OperatorMismatchError(
                f"matrix has {mat.shape[1]} columns but images of shape {size} have {n} pixels"
            )
        device = mat.device if device is None else torch.device(device)
        super().__init__(img_size=size, device=device, **kwargs)
        mat = mat.to(device)
        u, s, vh = torch.linalg.svd(mat.to(torch.float64), full_matrices=False)
        self.register_buffer("matrix", mat)
        self.register_buffer("_svd_u", u.to(mat.dtype))
        self.register_buffer("_svd_s", s.to(mat.dtype))
        self.register_buffer("_svd_vh", vh.to(mat.dtype))
        self.rcond = (
            float(rcond) if rcond is not None else max(mat.shape) * torch.finfo(mat.dtype).eps
        )
        self.name = f"matrix_{mat.shape[0]}x{mat.shape[1]}"

    # ------------------------------------------------------------------ shapes
    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``: number of measurements and of pixels."""
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def singular_values(self) -> Tensor:
        """Singular values of :math:`A`, in descending order."""
        return self._svd_s

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        """Shape of one measurement, ``(m,)``."""
        return (self.shape[0],)

    def _flat_image(self, x: Tensor) -> Tensor:
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.img_size):
            found = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise OperatorMismatchError(
                "MatrixOperator: expected an image of shape (B, C, H, W) = "
                f"(B, {', '.join(map(str, self.img_size))}), found {found}"
            )
        return x.reshape(x.shape[0], -1)

    def _flat_measurement(self, y: Tensor) -> Tensor:
        if not torch.is_tensor(y) or y.ndim != 2 or y.shape[1] != self.shape[0]:
            found = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise OperatorMismatchError(
                "MatrixOperator: expected a measurement of shape "
                f"(B, {self.shape[0]}), found {found}"
            )
        return y

    def _as(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return t if t.dtype == dtype else t.to(dtype)

    # ------------------------------------------------------------------ operator
    def A(self, x: Tensor, **kwargs: Any) -> Tensor:
        r"""Forward map :math:`y = A\,\mathrm{vec}(x)`, shape ``(B, m)``.

        Computed in the promoted dtype of ``x`` and the matrix.
        """
        flat = self._flat_image(x)
        dtype = torch.promote_types(flat.dtype, self.matrix.dtype)
        return self._as(flat, dtype) @ self._as(self.matrix, dtype).mT

    def A_adjoint(self, y: Tensor, **kwargs: Any) -> Tensor:
        r"""Adjoint :math:`x = A^\top y`, reshaped to ``(B, C, H, W)``."""
        flat = self._flat_measurement(y)
        dtype = torch.promote_types(flat.dtype, self.matrix.dtype)
        out = self._as(flat, dtype) @ self._as(self.matrix, dtype)
        return out.reshape(flat.shape[0], *self.img_size)

    def A_adjoint_A(self, x: Tensor, **kwargs: Any) -> Tensor:
        r""":math:`A^\top A x`."""
        return self.A_adjoint(self.A(x))

    def A_dagger(self, y: Tensor, reg: float = 0.0, **kwargs: Any) -> Tensor:
        r"""Pseudo-inverse :math:`A^{+} y = V S^{+} U^\top y` from the thin SVD.

        With ``reg = 0`` singular values :math:`s_i \le` ``rcond`` :math:`\cdot s_{\max}` are
        dropped; with ``reg > 0`` this is the Tikhonov solution
        :math:`\arg\min_x \|Ax - y\|^2 + \mathrm{reg}\,\|x\|^2`, i.e. :math:`S^{+}` is replaced by
        :math:`s_i / (s_i^2 + \mathrm{reg})`. Keyword arguments of deepinv's iterative solvers are
        accepted and ignored.
        """
        flat = self._flat_measurement(y)
        dtype = torch.promote_types(flat.dtype, self.matrix.dtype)
        s = self._as(self._svd_s, dtype)
        if reg > 0:
            inv = s / (s * s + float(reg))
        else:
            keep = s > self.rcond * (s[0] if s.numel() else 0)
            safe = torch.where(keep, s, torch.ones_like(s))
            inv = torch.where(keep, 1.0 / safe, torch.zeros_like(s))
        coef = (self._as(flat, dtype) @ self._as(self._svd_u, dtype)) * inv
        out = coef @ self._as(self._svd_vh, dtype)
        return out.reshape(flat.shape[0], *self.img_size)

    def compute_norm(
        self,
        x0: Tensor | None = None,
        max_iter: int = 100,
        tol: float = 1e-3,
        verbose: bool = False,
        squared: bool = True,
        **kwargs: Any,
    ) -> Tensor:
        r"""Exact spectral norm from the SVD: :math:`s_{\max}^2` (``squared``) or :math:`s_{\max}`.

        The power-method arguments of deepinv are accepted and ignored.
        """
        top = self._svd_s[0] if self._svd_s.numel() else self._svd_s.new_zeros(())
        return top * top if squared else top

    def compute_sqnorm(self, x0: Tensor | None = None, **kwargs: Any) -> Tensor:
        r"""Exact :math:`\|A^\top A\|_2 = s_{\max}^2`."""
        return self.compute_norm(x0, squared=True)

    # ------------------------------------------------------------------ description
    def spec(self) -> dict[str, Any]:
        """A JSON-friendly description; the matrix itself is not inlined."""
        return {
            "type": "matrix",
            "shape": list(self.shape),
            "img_size": list(self.img_size),
            "dtype": str(self.matrix.dtype).replace("torch.", ""),
        }
