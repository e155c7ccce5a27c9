"""Machinery shared by every operator: shape checks, specs, composition and least squares.

Every operator of :mod:`dwgf_sci.operators` is a :class:`deepinv.physics.LinearPhysics` that also
inherits :class:`OperatorMixin`. The mixin adds

- strict shape checks: an image that does not have the operator's ``img_size`` ``(C, H, W)`` (or a
  measurement that does not have its :attr:`~OperatorMixin.measurement_shape`) raises
  :class:`~dwgf_sci.errors.OperatorMismatchError` before any computation;
- :meth:`~OperatorMixin.spec`, a JSON-serialisable description that
  :func:`dwgf_sci.operators.build_operator` turns back into the same operator;
- a default :meth:`~OperatorMixin.A_dagger` by damped CGLS (conjugate gradients on the normal
  equations), which operators with a closed-form pseudo-inverse override;
- composition ``A2 * A1`` (apply ``A1`` first) returning a :class:`ComposedOperator` that keeps
  these properties.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.forward import ComposedLinearPhysics
from deepinv.physics.noise import NoiseModel

from .._checks import as_tensor
from ..errors import ConfigError, InvalidDataError, OperatorMismatchError
from .noise import noise_spec

ImgSize = tuple[int, int, int]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


#: Most pixels per image an operator accepts (C x H x W = 2**28, e.g. 3 x 9459 x 9459): a size
#: above it is refused before any array is allocated (a typo in a spec must not fill the memory).
MAX_PIXELS = 2**28


def as_img_size(img_size: int | Sequence[int], name: str = "img_size") -> ImgSize:
    """Normalise an image size to ``(C, H, W)``.

    :param img_size: ``N`` (a ``1 x N x N`` image), ``(H, W)`` (one channel) or ``(C, H, W)``.
    :param name: name used in error messages.
    :raises ConfigError: for anything else, or for non-positive sizes.
    """
    if isinstance(img_size, bool):
        raise ConfigError(f"{name}: expected an int or (C, H, W), found {img_size!r}")
    if isinstance(img_size, int):
        dims: tuple[int, ...] = (1, img_size, img_size)
    elif isinstance(img_size, torch.Size | Sequence) and not isinstance(img_size, str):
        try:
            dims = tuple(int(d) for d in img_size)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: expected integers, found {img_size!r}") from exc
        if any(float(d) != float(v) for d, v in zip(dims, img_size, strict=True)):
            raise ConfigError(f"{name}: expected integers, found {img_size!r}")
        if len(dims) == 2:
            dims = (1, *dims)
    else:
        raise ConfigError(f"{name}: expected an int or (C, H, W), found {img_size!r}")
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"{name}: expected (C, H, W) with positive sizes, found {img_size!r}")
    if dims[0] * dims[1] * dims[2] > MAX_PIXELS:
        raise ConfigError(
            f"{name}: {dims[0]}x{dims[1]}x{dims[2]} is more than {MAX_PIXELS} pixels per image; "
            "reconstruct such images in tiles"
        )
    return (dims[0], dims[1], dims[2])


def check_dtype(dtype: torch.dtype, name: str = "dtype") -> torch.dtype:
    """Accept only real floating dtypes for operator buffers."""
    if dtype not in _FLOAT_DTYPES:
        raise ConfigError(f"{name}: expected a real floating dtype, found {dtype}")
    return dtype


def as_bool_map(data: torch.Tensor | np.ndarray, name: str = "mask") -> torch.Tensor:
    """Convert a boolean or numeric map to a CPU bool tensor (non-zero = ``True``).

    :raises InvalidDataError: for NaN/Inf values or non-numeric data.
    """
    if isinstance(data, np.ndarray) and data.dtype == np.bool_:
        return torch.from_numpy(data.copy())
    if torch.is_tensor(data) and data.dtype == torch.bool:
        return data.detach().cpu()
    t = as_tensor(data, name=name)
    if not bool(torch.isfinite(t).all()):
        raise InvalidDataError(f"{name}: the map contains NaN or Inf values")
    return (t != 0).detach().cpu()


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r"""Per-item real inner product :math:`\langle a_i, b_i\rangle`, shape ``(B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _per_item(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` tensor so that it broadcasts against ``like``."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def cgls(
    A: Callable[[torch.Tensor], torch.Tensor],
    AT: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    *,
    damp: float = 0.0,
    max_iter: int = 100,
    tol: float = 1e-6,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Damped least squares by CGLS, independently for every batch item.

    Solves

    .. math::

        \hat x = \arg\min_x \; \|A x - y\|_2^2 + \lambda \|x\|_2^2

    with the conjugate-gradient method applied to the normal equations
    :math:`(A^\top A + \lambda I) x = A^\top y`, written in the numerically stable CGLS form (only
    :math:`A` and :math:`A^\top` are applied, never :math:`A^\top A` explicitly). Started from
    :math:`x_0 = 0` with :math:`\lambda = 0`, the iterates stay in
    :math:`\mathrm{range}(A^\top)` and
    converge to the minimum-norm least-squares solution :math:`A^\dagger y`.

    :param A: forward operator.
    :param AT: its adjoint.
    :param y: measurements ``(B, ...)``.
    :param damp: Tikhonov weight :math:`\lambda \ge 0`.
    :param max_iter: maximum number of iterations.
    :param tol: stop once :math:`\|A^\top r - \lambda x\| \le \mathrm{tol}\,\|A^\top y\|` for
        every item.
    :param x0: optional starting point (``None``: zeros).
    :return: the (approximate) solution, shape of :math:`A^\top y`.
    """
    if damp < 0:
        raise ConfigError(f"damp must be >= 0, found {damp}")
    aty = AT(y)
    if x0 is None:
        x = torch.zeros_like(aty)
        r = y
        s = aty
    else:
        x = x0
        r = y - A(x)
        s = AT(r) - damp * x
    p = s
    gamma = batch_dot(s, s)
    stop = tol**2 * batch_dot(aty, aty)
    for _ in range(max_iter):
        if bool((gamma <= stop).all()):
            break
        q = A(p)
        delta = batch_dot(q, q) + damp * batch_dot(p, p)
        alpha = torch.where(delta > 0, gamma / torch.where(delta > 0, delta, 1), 0)
        x = x + _per_item(alpha, x) * p
        r = r - _per_item(alpha, r) * q
        s = AT(r) - damp * x
        gamma_new = batch_dot(s, s)
        beta = torch.where(gamma > 0, gamma_new / torch.where(gamma > 0, gamma, 1), 0)
        p = s + _per_item(beta, p) * p
        gamma = gamma_new
    return x


class OperatorMixin:
    """Behaviour shared by the dwgf-sci operators (mixed into ``LinearPhysics`` subclasses).

    Subclasses set :attr:`spec_type`, :attr:`img_size`, implement :attr:`measurement_shape` and
    :meth:`_spec_params`, and call :meth:`_check_image` / :meth:`_check_measurement` at the top of
    ``A`` / ``A_adjoint``.
    """

    spec_type: ClassVar[str] = ""
    img_size: ImgSize
    noise_model: NoiseModel

    # -- shapes -------------------------------------------------------------------------------
    @property
    def measurement_shape(self) -> tuple[int, ...]:
        """Shape of one measurement (without the batch dimension)."""
        raise NotImplementedError

    def _check_image(self, x: torch.Tensor) -> None:
        """Raise :class:`OperatorMismatchError` unless ``x`` is ``(B, *img_size)``."""
        if not torch.is_tensor(x):
            raise OperatorMismatchError(
                f"{type(self).__name__}: expected a torch.Tensor image, found {type(x).__name__}"
            )
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.img_size):
            raise OperatorMismatchError(
                f"{type(self).__name__}: expected an image of shape (B, C, H, W) = "
                f"(B, {', '.join(str(d) for d in self.img_size)}), found {tuple(x.shape)}"
            )
        if x.is_complex() or not x.is_floating_point():
            raise OperatorMismatchError(
                f"{type(self).__name__}: expected a real floating image, found dtype {x.dtype}"
            )

    def _check_measurement(self, y: torch.Tensor) -> None:
        """Raise :class:`OperatorMismatchError` unless ``y`` is ``(B, *measurement_shape)``."""
        if not torch.is_tensor(y):
            raise OperatorMismatchError(
                f"{type(self).__name__}: expected a torch.Tensor measurement, "
                f"found {type(y).__name__}"
            )
        shape = tuple(self.measurement_shape)
        if y.ndim != len(shape) + 1 or tuple(y.shape[1:]) != shape:
            raise OperatorMismatchError(
                f"{type(self).__name__}: expected a measurement of shape "
                f"(B, {', '.join(str(d) for d in shape)}), found {tuple(y.shape)}"
            )

    # -- description ----------------------------------------------------------------------------
    def _spec_params(self) -> dict[str, Any]:
        """Operator parameters of the spec (without ``type``, ``img_size`` and ``noise``)."""
        return {}

    def spec(self) -> dict[str, Any]:
        """JSON-serialisable description of the operator and its noise model.

        ``build_operator(op.spec(), **arrays)`` rebuilds the same operator; arrays (user-given PSFs
        or masks) are not stored inline: the spec says ``"profile": "array"`` /
        ``"pattern": "array"`` and records their shape, and the array is supplied separately.
        """
        out: dict[str, Any] = {"type": self.spec_type, "img_size": list(self.img_size)}
        out.update(self._spec_params())
        out["noise"] = noise_spec(self.noise_model)
        return out

    # -- copies -------------------------------------------------------------------------------
    def clone(self) -> Any:
        """Deep copy of the operator, including the states of the noise models' generators.

        deepinv's ``Physics.clone`` walks every attribute of every reachable object to find
        ``torch.Generator`` objects (which ``copy.deepcopy`` cannot copy), about a second per call;
        here the generators can only sit in the submodules (noise models), so only those are
        searched.
        """
        memo: dict[int, Any] = {}
        for module in self.modules():  # type: ignore[attr-defined]
            for value in vars(module).values():
                if isinstance(value, torch.Generator) and id(value) not in memo:
                    twin = torch.Generator(value.device)
                    twin.set_state(value.get_state())
                    memo[id(value)] = twin
        return copy.deepcopy(self, memo)

    # -- inversion ------------------------------------------------------------------------------
    def A_dagger(  # noqa: N802 - deepinv's name
        self,
        y: torch.Tensor,
        reg: float = 0.0,
        max_iter: int = 100,
        tol: float = 1e-6,
        **kwargs: Any,
    ) -> torch.Tensor:
        r"""Least-squares inverse :math:`\arg\min_x \|Ax - y\|^2 + \mathrm{reg}\,\|x\|^2` by CGLS.

        With ``reg = 0`` this approximates the pseudo-inverse :math:`A^\dagger y` (minimum-norm
        least-squares solution); operators with a closed form override this method.

        :param y: measurements.
        :param reg: Tikhonov weight (``0``: pseudo-inverse).
        :param max_iter: CGLS iterations at most.
        :param tol: relative tolerance on the normal-equation residual.
        """
        self._check_measurement(y)
        return cgls(self.A, self.A_adjoint, y, damp=float(reg), max_iter=max_iter, tol=tol)

    # -- composition ----------------------------------------------------------------------------
    def __mul__(self, other: LinearPhysics) -> ComposedOperator:
        r"""``self * other`` is the composition :math:`A_\mathrm{self} \circ A_\mathrm{other}`.

        ``other`` is applied first; the result keeps the noise model of ``self`` (the last
        operator), as in deepinv.
        """
        if not isinstance(other, LinearPhysics):
            return NotImplemented
        return ComposedOperator(other, self)


class ComposedOperator(OperatorMixin, ComposedLinearPhysics):
    r"""Composition :math:`A = A_k \circ \dots \circ A_1` of linear operators (deepinv composition).

    ``A`` applies the operators in the given order, ``A_adjoint`` applies their adjoints in reverse
    order, :math:`A^\top = A_1^\top \cdots A_k^\top`. The noise model is the last operator's, and
    noise is added by the last operator (a :class:`~dwgf_sci.operators.BadPixelMask` keeps masked
    pixels at zero). ``A_dagger`` is damped CGLS.

    :param physics: the operators, in the order they are applied.
    :param alias: spec type under which a known combination is described (``"inpaint-psf"`` for a
        PSF followed by a bad-pixel mask); ``None`` gives the generic ``"composed"`` spec.
    """

    spec_type: ClassVar[str] = "composed"

    def __init__(self, *physics: LinearPhysics, alias: str | None = None) -> None:
        if len(physics) < 2:
            raise ConfigError("a composition needs at least two operators")
        for p in physics:
            if not isinstance(p, LinearPhysics):
                raise ConfigError(
                    f"only LinearPhysics operators can be composed, found {type(p).__name__}"
                )
        ComposedLinearPhysics.__init__(self, *physics)
        first = self.physics_list[0]
        self.img_size = tuple(first.img_size) if first.img_size is not None else None
        self.alias = alias

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        """Shape of one measurement (without the batch dimension): that of the last operator.

        :raises ConfigError: if the last operator does not report a ``measurement_shape``.
        """
        last = self.physics_list[-1]
        if not hasattr(last, "measurement_shape"):
            raise ConfigError(f"{type(last).__name__} does not report its measurement shape")
        return tuple(last.measurement_shape)

    def _check_image(self, x: torch.Tensor) -> None:
        first = self.physics_list[0]
        if isinstance(first, OperatorMixin):
            first._check_image(x)

    def _check_measurement(self, y: torch.Tensor) -> None:
        last = self.physics_list[-1]
        if isinstance(last, OperatorMixin):
            last._check_measurement(y)

    def set_noise_model(self, noise_model: NoiseModel, **kwargs: Any) -> None:
        """Set the noise model of the composition (shared with its last operator)."""
        self.noise_model = noise_model
        self.physics_list[-1].set_noise_model(noise_model)

    def noise(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Add noise as the last operator does (a mask keeps its masked entries at zero)."""
        return self.physics_list[-1].noise(x, **kwargs)

    def spec(self) -> dict[str, Any]:
        """Spec of the composition: flat for a known ``alias``, else a list of operator specs."""
        parts = []
        for p in self.physics_list:
            if not hasattr(p, "spec"):
                raise ConfigError(
                    f"cannot describe a composition containing {type(p).__name__} "
                    "(it has no spec())"
                )
            part = p.spec()
            part.pop("noise", None)
            parts.append(part)
        if self.alias == "inpaint-psf":
            out: dict[str, Any] = {"type": "inpaint-psf", "img_size": parts[0]["img_size"]}
            for part in parts:
                out.update({k: v for k, v in part.items() if k not in ("type", "img_size")})
        else:
            out = {"type": "composed", "img_size": parts[0]["img_size"], "operators": parts}
        out["noise"] = noise_spec(self.noise_model)
        return out
