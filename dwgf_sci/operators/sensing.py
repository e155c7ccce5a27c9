r"""Compressed-sensing operators: dense Gaussian, Fourier (uv / k-space) and Hadamard sampling.

All three act channel by channel (the same sampling for every channel) and return **compact**
measurements: only the :math:`m` measured values, never a zero-filled grid.

- :class:`RandomSensing`: :math:`y = \Phi\, \mathrm{vec}(x)` with
  :math:`\Phi \in \mathbb R^{m\times n}`, :math:`\Phi_{ij} \sim \mathcal N(0, 1/m)` i.i.d.,
  :math:`n = HW`. Measurements ``(B, C, m)``.
- :class:`FourierSampling`: :math:`y = S F x` with :math:`F` the orthonormal 2-D DFT and :math:`S`
  the selection of :math:`m` frequencies (a uv-plane / k-space mask). Measurements are complex and
  stored as a trailing (real, imaginary) pair, ``(B, C, m, 2)`` (see the class for why).
- :class:`HadamardSensing`: single-pixel camera, :math:`y = S H x` with :math:`H` the orthonormal
  2-D Walsh-Hadamard transform (deepinv's ``hadamard_2d``) and :math:`S` the selection of :math:`m`
  patterns. Measurements ``(B, C, m)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from deepinv.physics import LinearPhysics
from deepinv.physics.noise import NoiseModel, ZeroNoise
from deepinv.physics.singlepixel import (
    cake_cutting_mask,
    hadamard_2d,
    sequency_mask,
    xy_mask,
    zig_zag_mask,
)

from ..errors import ConfigError, OperatorMismatchError
from ._base import ImgSize, OperatorMixin, as_bool_map, as_img_size, check_dtype

__all__ = ["HADAMARD_ORDERINGS", "FourierSampling", "HadamardSensing", "RandomSensing"]

HADAMARD_ORDERINGS = ("sequency", "cake_cutting", "zig_zag", "xy", "random")


def _count(m: int, n: int, name: str = "m") -> int:
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= int(m) <= n:
        raise ConfigError(f"{name}: expected an integer in [1, {n}], found {m!r}")
    return int(m)


def _seed(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ConfigError(f"seed: expected an integer, found {seed!r}")
    return torch.Generator("cpu").manual_seed(int(seed))


# ---------------------------------------------------------------------------------------------
class RandomSensing(OperatorMixin, LinearPhysics):
    r"""Dense Gaussian compressed sensing, :math:`y_c = \Phi\,\mathrm{vec}(x_c)` per channel.

    :math:`\Phi \in \mathbb R^{m \times HW}` has i.i.d. :math:`\mathcal N(0, 1/m)` entries (as
    deepinv's ``CompressedSensing``), drawn from ``seed`` in float32 on the CPU, so the same seed
    gives the same matrix on every device and in every dtype. Its norm tends to
    :math:`1 + \sqrt{n/m}`. Memory is :math:`4 m n` bytes (float32): 16 MiB at 64 x 64 with
    :math:`m = n/4`, 4 GiB at 256 x 256.

    ``A_dagger(y, reg)`` is the closed form
    :math:`\Phi^\top(\Phi\Phi^\top + \mathrm{reg}\, I)^{-1} y`
    (:math:`m \le n`; the Gram matrix is factorised once and cached).

    :param img_size: image size ``(C, H, W)``.
    :param m: number of measurements per channel.
    :param seed: seed of the matrix.
    :param device: device of the matrix.
    :param dtype: floating dtype of the matrix.
    :param noise_model: deepinv noise model (default: none).
    """

    spec_type: ClassVar[str] = "random-cs"

    def __init__(
        self,
        img_size: int | Sequence[int],
        m: int,
        seed: int = 0,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
    ) -> None:
        size = as_img_size(img_size)
        check_dtype(dtype)
        n = size[1] * size[2]
        m = _count(m, n)
        gen = _seed(seed)
        LinearPhysics.__init__(
            self, img_size=size, noise_model=noise_model or ZeroNoise(), device=device
        )
        self.img_size: ImgSize = size
        self.m = m
        self.seed = int(seed)
        matrix = torch.randn((m, n), generator=gen, dtype=torch.float32)
        matrix.div_(math.sqrt(m))  # in place: the matrix can be GiBs
        self.register_buffer("matrix", matrix.to(device=device, dtype=dtype))
        self._gram_cache: tuple[Any, ...] | None = None

    @property
    def measurement_shape(self) -> tuple[int, int]:
        """Shape of one measurement, ``(C, m)``: ``m`` projections per channel."""
        return (self.img_size[0], self.m)

    def _spec_params(self) -> dict[str, Any]:
        return {"m": self.m, "seed": self.seed}

    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`y = \Phi\, \mathrm{vec}(x)`, shape ``(B, C, m)``."""
        self._check_image(x)
        phi = self.matrix.to(dtype=x.dtype)
        return x.flatten(2) @ phi.T

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`x = \Phi^\top y`, reshaped to ``(B, C, H, W)``."""
        self._check_measurement(y)
        phi = self.matrix.to(dtype=y.dtype)
        return (y @ phi).reshape(y.shape[0], *self.img_size)

    def _factor(self, dtype: torch.dtype, reg: float) -> torch.Tensor:
        mat = self.matrix
        cache = self._gram_cache
        if (
            cache is not None
            and cache[0] is mat
            and cache[1] == mat._version
            and cache[2] == dtype
            and cache[3] == reg
        ):
            return cache[4]
        phi = mat.detach().to(dtype=dtype)
        m, n = phi.shape
        gram = phi @ phi.T if m <= n else phi.T @ phi
        if reg > 0:
            gram = gram + reg * torch.eye(gram.shape[0], dtype=dtype, device=gram.device)
        factor = torch.linalg.cholesky(gram)
        self._gram_cache = (mat, mat._version, dtype, reg, factor)
        return factor

    def A_dagger(  # noqa: N802
        self, y: torch.Tensor, reg: float = 0.0, **kwargs: Any
    ) -> torch.Tensor:
        r"""Minimum-norm least squares, :math:`\Phi^\top(\Phi\Phi^\top+\lambda I)^{-1}y`."""
        self._check_measurement(y)
        if reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        factor = self._factor(y.dtype, float(reg))
        phi = self.matrix.to(dtype=y.dtype)
        B, C = y.shape[:2]
        if self.m <= phi.shape[1]:
            z = torch.cholesky_solve(y.reshape(B * C, -1).T, factor)  # (m, B*C)
            x = (phi.T @ z).T
        else:
            rhs = (y.reshape(B * C, -1) @ phi).T
            x = torch.cholesky_solve(rhs, factor).T
        return x.reshape(B, *self.img_size)


# ---------------------------------------------------------------------------------------------
class FourierSampling(OperatorMixin, LinearPhysics):
    r"""Sampling of the 2-D Fourier transform on a uv-plane / k-space mask.

    .. math::

        y = S F x, \qquad A^\top y = \mathrm{Re}\left(F^{H} S^\top y\right),

    with :math:`F` the orthonormal DFT (``norm="ortho"``, so :math:`\|A\| \le 1` and Parseval holds:
    measurement units equal image units) and :math:`S` the selection of the :math:`m` frequencies
    of the mask. The image is real; the adjoint is taken for the real inner product
    :math:`\langle u, v\rangle = \mathrm{Re}\sum \bar u v` on the measurements, hence the real part.

    **Measurement layout** (forced by deepinv): ``(B, C, m, 2)`` real tensors holding
    (real, imaginary) parts. deepinv's adjointness test and its ``L2`` fidelity use the complex
    inner product :math:`\sum \bar u v`; for a real-to-complex operator that is only :math:`\mathbb
    R`-linear, ``<Ax, y>`` then has an imaginary part that ``<x, A^T y>`` lacks, and the test fails.
    With the real pair layout both are plain real inner products. Measurement :math:`j` is the
    :math:`j`-th ``True`` pixel of the **centred** mask (:attr:`mask`, DC at ``(H//2, W//2)``, as
    :func:`numpy.fft.fftshift` shows it) in row-major order; :meth:`to_grid` scatters measurements
    back onto the centred grid.

    The random mask holds :math:`m = \mathrm{round}(\mathrm{ratio} \cdot HW)` frequencies: a fully
    sampled centre block of :math:`\mathrm{round}(f H) \times \mathrm{round}(f W)` frequencies
    around DC (:math:`f` = ``centre_fraction``), the rest drawn uniformly without replacement
    (``seed``).

    ``A_dagger(y, reg)`` is closed form: with :math:`M` the mask and :math:`\tilde M(k) = M(-k)`,
    :math:`A^\top A = F^H D F` for the real diagonal :math:`D = (M + \tilde M)/2`, so
    :math:`A^\dagger y = F^H (D + \mathrm{reg})^{+} F A^\top y`.

    :param img_size: image size ``(C, H, W)``.
    :param ratio: fraction of the :math:`HW` frequencies measured (ignored when ``mask`` is given).
    :param seed: seed of the random mask.
    :param mask: optional user mask ``(H, W)`` (bool or 0/1, centred layout).
    :param centre_fraction: side fraction :math:`f` of the fully sampled centre block (0: none).
    :param device: device of the buffers.
    :param dtype: floating dtype (kept for a uniform signature; the buffers are integer/bool).
    :param noise_model: deepinv noise model; Gaussian :math:`\sigma` applies to the real and the
        imaginary part separately.
    """

    spec_type: ClassVar[str] = "fourier"

    def __init__(
        self,
        img_size: int | Sequence[int],
        ratio: float = 0.25,
        seed: int = 0,
        mask: torch.Tensor | np.ndarray | None = None,
        centre_fraction: float = 0.08,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
    ) -> None:
        size = as_img_size(img_size)
        check_dtype(dtype)
        _, H, W = size
        if mask is None:
            centred = self._random_mask(H, W, ratio, seed, centre_fraction)
            self._pattern = "random"
        else:
            centred = as_bool_map(mask, name="mask")
            if tuple(centred.shape) != (H, W):
                raise OperatorMismatchError(
                    f"FourierSampling: expected a mask of shape (H, W) = ({H}, {W}), "
                    f"found {tuple(centred.shape)}"
                )
            if not bool(centred.any()):
                raise ConfigError("FourierSampling: the mask selects no frequency")
            self._pattern = "array"
        LinearPhysics.__init__(
            self, img_size=size, noise_model=noise_model or ZeroNoise(), device=device
        )
        self.img_size: ImgSize = size
        self.seed = int(seed)
        self.centre_fraction = float(centre_fraction)
        # flat index into the unshifted FFT grid, in row-major order of the centred mask
        rows, cols = torch.nonzero(centred, as_tuple=True)
        index = ((rows - H // 2) % H) * W + (cols - W // 2) % W
        self.register_buffer("mask", centred.to(device))
        self.register_buffer("index", index.to(device))

    @staticmethod
    def _random_mask(
        H: int, W: int, ratio: float, seed: int, centre_fraction: float
    ) -> torch.Tensor:
        ratio = float(ratio)
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f"ratio: expected a fraction in (0, 1], found {ratio}")
        cf = float(centre_fraction)
        if not 0.0 <= cf < 1.0:
            raise ConfigError(f"centre_fraction: expected a fraction in [0, 1), found {cf}")
        m = max(1, round(ratio * H * W))
        centred = torch.zeros(H, W, dtype=torch.bool)
        if cf > 0:
            ch, cw = max(1, round(cf * H)), max(1, round(cf * W))
            if ch * cw > m:
                raise ConfigError(
                    f"centre_fraction={cf} gives a {ch}x{cw} centre block, more than the "
                    f"{m} frequencies of ratio={ratio}"
                )
            r0, c0 = H // 2 - ch // 2, W // 2 - cw // 2
            centred[r0 : r0 + ch, c0 : c0 + cw] = True
        free = torch.nonzero(~centred.flatten()).flatten()
        pick = torch.randperm(free.numel(), generator=_seed(seed))[: m - int(centred.sum())]
        centred.view(-1)[free[pick]] = True
        return centred

    @property
    def m(self) -> int:
        """Number of measured frequencies."""
        return int(self.index.numel())

    @property
    def ratio(self) -> float:
        """Measured fraction of the frequencies."""
        return self.m / (self.img_size[1] * self.img_size[2])

    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """Shape of one measurement, ``(C, m, 2)``: (real, imaginary) parts of ``m`` frequencies."""
        return (self.img_size[0], self.m, 2)

    def _spec_params(self) -> dict[str, Any]:
        if self._pattern == "array":
            return {"pattern": "array", "mask_shape": list(self.mask.shape)}
        return {
            "pattern": "random",
            "ratio": self.ratio,
            "seed": self.seed,
            "centre_fraction": self.centre_fraction,
        }

    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`y = S F x` as (real, imaginary) pairs, shape ``(B, C, m, 2)``."""
        self._check_image(x)
        spectrum = torch.fft.fft2(x, norm="ortho").flatten(-2)
        picked = spectrum[..., self.index]
        return torch.stack((picked.real, picked.imag), dim=-1)

    def _scatter(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled unshifted complex spectrum ``(B, C, H, W)`` from measurements."""
        B, C = y.shape[:2]
        _, H, W = self.img_size
        values = torch.complex(y[..., 0], y[..., 1])
        grid = values.new_zeros((B, C, H * W))
        grid = grid.index_add(-1, self.index, values)
        return grid.reshape(B, C, H, W)

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`A^\top y = \mathrm{Re}(F^H S^\top y)`, a real image."""
        self._check_measurement(y)
        return torch.fft.ifft2(self._scatter(y), norm="ortho").real

    def _normal_diagonal(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        r"""Diagonal :math:`D = (M + \tilde M)/2` of :math:`A^\top A` in the unshifted layout."""
        _, H, W = self.img_size
        m = torch.zeros(H * W, device=device, dtype=dtype)
        m[self.index] = 1.0
        m = m.reshape(H, W)
        flipped = torch.roll(torch.flip(m, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
        return (m + flipped) / 2

    def A_dagger(  # noqa: N802
        self, y: torch.Tensor, reg: float = 0.0, **kwargs: Any
    ) -> torch.Tensor:
        r"""Closed form :math:`F^H (D + \mathrm{reg})^{+} F A^\top y` (pseudo-inverse for reg=0)."""
        self._check_measurement(y)
        if reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        d = self._normal_diagonal(y.device, y.dtype) + reg
        inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, 1.0), 0.0)
        back = self.A_adjoint(y)
        return torch.fft.ifft2(torch.fft.fft2(back, norm="ortho") * inv, norm="ortho").real

    def to_grid(self, y: torch.Tensor) -> torch.Tensor:
        """Measurements on the centred complex grid ``(B, C, H, W)`` (zeros where unmeasured)."""
        self._check_measurement(y)
        return torch.fft.fftshift(self._scatter(y), dim=(-2, -1))


# ---------------------------------------------------------------------------------------------
class HadamardSensing(OperatorMixin, LinearPhysics):
    r"""Single-pixel camera: subsampled orthonormal 2-D Walsh-Hadamard transform.

    .. math::

        y = S H x, \qquad A^\top y = H^\top S^\top y = H S^\top y,

    with :math:`H` deepinv's ``hadamard_2d`` (orthonormal and symmetric, :math:`H^2 = I`), applied
    per channel, and :math:`S` the selection of :math:`m` patterns. :math:`H` and :math:`W` must be
    powers of two. The patterns are the first :math:`m` of deepinv's ``SinglePixelCamera`` ordering
    (``sequency``, ``cake_cutting``, ``zig_zag``, ``xy``: low "frequencies" first), or ``random``
    (uniform, from ``seed``). Measurements ``(B, C, m)`` ordered by flat Hadamard index. Since the
    rows are orthonormal, :math:`A A^\top = I` and ``A_dagger`` is :math:`A^\top y / (1 + reg)`.

    :param img_size: image size ``(C, H, W)``.
    :param m: number of patterns per channel.
    :param ordering: pattern ordering (see above).
    :param seed: seed for ``ordering="random"``.
    :param device: device of the buffers.
    :param dtype: floating dtype (kept for a uniform signature; buffers are integer).
    :param noise_model: deepinv noise model (default: none).
    """

    spec_type: ClassVar[str] = "hadamard"

    def __init__(
        self,
        img_size: int | Sequence[int],
        m: int,
        ordering: str = "sequency",
        seed: int = 0,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
    ) -> None:
        size = as_img_size(img_size)
        check_dtype(dtype)
        _, H, W = size
        for name, d in (("H", H), ("W", W)):
            if d & (d - 1):
                raise ConfigError(f"HadamardSensing needs power-of-two sizes, found {name}={d}")
        n = H * W
        m = _count(m, n)
        if ordering not in HADAMARD_ORDERINGS:
            raise ConfigError(
                f"ordering: expected one of {list(HADAMARD_ORDERINGS)}, found {ordering!r}"
            )
        if ordering == "random":
            index = torch.sort(torch.randperm(n, generator=_seed(seed))[:m]).values
        else:
            makers = {
                "sequency": sequency_mask,
                "cake_cutting": cake_cutting_mask,
                "zig_zag": zig_zag_mask,
                "xy": xy_mask,
            }
            chosen = makers[ordering]((1, H, W), m)[0, 0] != 0
            index = torch.nonzero(chosen.flatten()).flatten()
            if index.numel() != m:
                raise ConfigError(
                    f"ordering={ordering!r} selected {index.numel()} patterns instead of {m}"
                )
        LinearPhysics.__init__(
            self, img_size=size, noise_model=noise_model or ZeroNoise(), device=device
        )
        self.img_size: ImgSize = size
        self.ordering = ordering
        self.seed = int(seed)
        self.register_buffer("index", index.to(device))

    @property
    def m(self) -> int:
        """Number of patterns."""
        return int(self.index.numel())

    @property
    def measurement_shape(self) -> tuple[int, int]:
        """Shape of one measurement, ``(C, m)``: ``m`` Hadamard coefficients per channel."""
        return (self.img_size[0], self.m)

    def _spec_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"m": self.m, "ordering": self.ordering}
        if self.ordering == "random":
            out["seed"] = self.seed
        return out

    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`y = S H x`, shape ``(B, C, m)``."""
        self._check_image(x)
        return hadamard_2d(x).flatten(-2)[..., self.index]

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r""":math:`A^\top y = H S^\top y`."""
        self._check_measurement(y)
        B, C = y.shape[:2]
        _, H, W = self.img_size
        grid = y.new_zeros((B, C, H * W)).index_add(-1, self.index, y)
        return hadamard_2d(grid.reshape(B, C, H, W))

    def A_dagger(  # noqa: N802
        self, y: torch.Tensor, reg: float = 0.0, **kwargs: Any
    ) -> torch.Tensor:
        r"""Closed form :math:`A^\top y / (1 + \mathrm{reg})` (:math:`A A^\top = I`)."""
        if reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        return self.A_adjoint(y) / (1.0 + reg)
