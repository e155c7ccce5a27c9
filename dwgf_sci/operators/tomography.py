r"""Sparse-view and limited-angle CT: :class:`SparseViewCT` (built on deepinv's ``Tomography``).

The forward model is the discrete Radon (X-ray) transform of deepinv: for each view angle
:math:`\theta_v` the (zero-padded) image is resampled by bilinear interpolation on a grid rotated by
:math:`\theta_v` (parallel beam) or on the rays of a fan (fan beam), and summed along the rays:

.. math::

    (A x)[d, v] = \Delta \sum_{t} \mathrm{bilinear}(x;\, \mathbf r_{v,d,t}),

where :math:`\mathbf r_{v,d,t}` is the :math:`t`-th sample point of ray :math:`d` in view :math:`v`
(one sample per pixel along the ray) and :math:`\Delta` is ``pixel_size``: the measurement is a line
integral of the attenuation :math:`x` (e.g. in 1/cm) times length (``pixel_size`` in cm), so
:math:`y` is dimensionless. With ``pixel_size=1`` lengths are in pixels. Nothing is normalised:
deepinv's ``normalize`` option is off.

Adjoint: deepinv's ``Tomography`` offers either its inverse-Radon "adjoint" (measured relative
adjointness error ~0.2 for a 32 x 32 image and 20 views) or an autograd adjoint. Here ``A_adjoint``
is the exact transpose written in closed form: the sinogram is spread back along the rays and the
transposed bilinear interpolation (``aten.grid_sampler_2d_backward``, the scatter that is the exact
transpose of ``grid_sample``) deposits it on the padded image, which is then cropped. It is exact to
rounding in float32 and float64, and itself differentiable (its backward is :math:`A`).

``A_dagger`` is filtered back-projection (ramp filter of deepinv) by default; ``method="lsq"``
gives the least-squares pseudo-inverse by CGLS, and ``reg > 0`` Tikhonov-damped least squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from deepinv.physics import Tomography
from deepinv.physics.functional import RampFilter
from deepinv.physics.noise import NoiseModel, ZeroNoise

from ..errors import ConfigError
from ._base import MAX_PIXELS, ImgSize, OperatorMixin, as_img_size, cgls, check_dtype

__all__ = ["GEOMETRIES", "SparseViewCT", "view_angles"]

GEOMETRIES = ("parallel", "fanbeam")


def view_angles(n_views: int, angular_range: float, start_angle: float = 0.0) -> torch.Tensor:
    r"""Equispaced view angles (degrees), :math:`\theta_v = \theta_0 + v\,\alpha / V`, :math:`v<V`.

    The end point :math:`\theta_0 + \alpha` is excluded (it duplicates :math:`\theta_0` for
    :math:`\alpha = 180^\circ` in parallel beam).

    :param n_views: number of views :math:`V`.
    :param angular_range: angular range :math:`\alpha`, in degrees.
    :param start_angle: first angle :math:`\theta_0`, in degrees.
    :return: the ``(V,)`` float64 angles, in degrees.
    """
    return start_angle + torch.arange(n_views, dtype=torch.float64) * (angular_range / n_views)


class _Backprojection(torch.autograd.Function):
    """Exact transpose of the projection; its own backward is the projection."""

    @staticmethod
    def forward(y: torch.Tensor, op: SparseViewCT) -> torch.Tensor:  # type: ignore[override]
        return op._backproject(y)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.op = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.op._project(grad), None


class SparseViewCT(OperatorMixin, Tomography):
    r"""Sparse-view / limited-angle CT operator (parallel or fan beam), exact adjoint.

    :param img_size: image size ``(C, N, N)`` (square images; ``N`` or ``(N, N)`` for one channel).
    :param n_views: number of view angles :math:`V`. The ray-sampling grid holds
        :math:`V \lceil\sqrt2 N\rceil^2` points and is refused above ``MAX_PIXELS`` (:math:`2^{28}`,
        e.g. 32,000 views at 64 px or 510 at 512 px).
    :param angular_range: angular range :math:`\alpha` in degrees covered by the views (``None``:
        180 for parallel, 360 for fan beam). Limited angle: :math:`\alpha < 180`.
    :param start_angle: first view angle :math:`\theta_0` in degrees.
    :param geometry: ``"parallel"`` or ``"fanbeam"``.
    :param pixel_size: physical size :math:`\Delta` of a pixel (length unit of the attenuation).
    :param source_radius: fan beam: source-to-rotation-axis distance, in pixels (default
        :math:`2N`).
    :param detector_radius: fan beam: detector-to-axis distance, in pixels (default :math:`N`).
    :param detector_spacing: fan beam: detector cell size, in pixels (default: the magnification,
        i.e. one pixel at the rotation axis).
    :param n_detectors: fan beam: number of detector cells (default: enough to see the image's
        circumscribed circle).
    :param device: device of the buffers.
    :param dtype: floating dtype of the buffers (computations use the input's dtype).
    :param noise_model: deepinv noise model (default: none).

    Measurements are sinograms ``(B, C, n_det, V)`` (deepinv layout: detector, then view); for
    parallel beam ``n_det`` is :math:`\lceil\sqrt2 N\rceil`, the padded image width.
    """

    spec_type: ClassVar[str] = "ct"

    def __init__(
        self,
        img_size: int | Sequence[int],
        n_views: int,
        angular_range: float | None = None,
        start_angle: float = 0.0,
        geometry: str = "parallel",
        *,
        pixel_size: float = 1.0,
        source_radius: float | None = None,
        detector_radius: float | None = None,
        detector_spacing: float | None = None,
        n_detectors: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise_model: NoiseModel | None = None,
    ) -> None:
        size = as_img_size(img_size)
        check_dtype(dtype)
        C, H, W = size
        if H != W:
            raise ConfigError(f"SparseViewCT needs square images, found img_size {size}")
        if geometry not in GEOMETRIES:
            raise ConfigError(f"geometry: expected one of {list(GEOMETRIES)}, found {geometry!r}")
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
            raise ConfigError(f"n_views: expected a positive integer, found {n_views!r}")
        padded_width = math.ceil(math.sqrt(2.0) * H)
        if n_views * padded_width**2 > MAX_PIXELS:
            raise ConfigError(
                f"n_views: {n_views} views of a {H}x{H} image need a ray grid of "
                f"{n_views}x{padded_width}x{padded_width} points, more than {MAX_PIXELS}; "
                f"use at most {MAX_PIXELS // padded_width**2} views at this size"
            )
        if angular_range is None:
            angular_range = 180.0 if geometry == "parallel" else 360.0
        angular_range = float(angular_range)
        if not 0.0 < angular_range <= 360.0:
            raise ConfigError(f"angular_range: expected degrees in (0, 360], found {angular_range}")
        pixel_size = float(pixel_size)
        if not math.isfinite(pixel_size) or pixel_size <= 0:
            raise ConfigError(f"pixel_size: expected a positive number, found {pixel_size}")
        fan: dict[str, float | int] | None = None
        if geometry == "fanbeam":
            fan = self._fan_geometry(
                H, source_radius, detector_radius, detector_spacing, n_detectors
            )
        elif any(
            v is not None for v in (source_radius, detector_radius, detector_spacing, n_detectors)
        ):
            raise ConfigError(
                "source_radius, detector_radius, detector_spacing and n_detectors "
                "apply to geometry='fanbeam' only"
            )
        angles = view_angles(n_views, angular_range, float(start_angle)).to(dtype)
        fan_parameters = None
        if fan is not None:
            fan_parameters = {
                "pixel_spacing": 1.0,
                "source_radius": fan["source_radius"],
                "detector_radius": fan["detector_radius"],
                "n_detector_pixels": fan["n_detectors"],
                "detector_spacing": fan["detector_spacing"],
            }
        Tomography.__init__(
            self,
            angles=angles,
            img_width=H,
            circle=False,
            parallel_computation=True,
            adjoint_via_backprop=True,
            normalize=False,
            fan_beam=geometry == "fanbeam",
            fan_parameters=fan_parameters,
            device=device,
            dtype=dtype,
            img_size=size,
            noise_model=noise_model or ZeroNoise(),
        )
        self.img_size: ImgSize = size
        self.n_views = n_views
        self.angular_range = angular_range
        self.start_angle = float(start_angle)
        self.geometry = geometry
        self.pixel_size = pixel_size
        self._fan = fan
        diagonal = math.ceil(math.sqrt(2.0) * H)
        pad = diagonal - H
        self._pad_before = (H + pad) // 2 - H // 2
        self._pad_after = pad - self._pad_before
        self._padded = H + pad
        self._n_det = int(fan["n_detectors"]) if fan is not None else self._padded
        self.ramp = RampFilter(dtype=torch.float64)

    @staticmethod
    def _fan_geometry(
        n: int,
        source_radius: float | None,
        detector_radius: float | None,
        detector_spacing: float | None,
        n_detectors: int | None,
    ) -> dict[str, float | int]:
        sr = float(source_radius) if source_radius is not None else 2.0 * n
        dr = float(detector_radius) if detector_radius is not None else float(n)
        for key, val in (("source_radius", sr), ("detector_radius", dr)):
            if not math.isfinite(val) or val <= 0:
                raise ConfigError(f"{key}: expected a positive distance in pixels, found {val}")
        support = n / math.sqrt(2.0)  # radius of the circle around the image
        if sr <= support:
            raise ConfigError(
                f"source_radius: the source must lie outside the image (> {support:.1f} px), "
                f"found {sr}"
            )
        magnification = (sr + dr) / sr
        ds = float(detector_spacing) if detector_spacing is not None else magnification
        if not math.isfinite(ds) or ds <= 0:
            raise ConfigError(f"detector_spacing: expected a positive size, found {ds}")
        if n_detectors is None:
            half_width = (sr + dr) * math.tan(math.asin(support / sr))
            n_detectors = 2 * math.ceil(1.05 * half_width / ds) + 1
        if isinstance(n_detectors, bool) or int(n_detectors) != n_detectors or n_detectors < 1:
            raise ConfigError(f"n_detectors: expected a positive integer, found {n_detectors!r}")
        return {
            "source_radius": sr,
            "detector_radius": dr,
            "detector_spacing": ds,
            "n_detectors": int(n_detectors),
        }

    # -- geometry -----------------------------------------------------------------------------
    @property
    def measurement_shape(self) -> tuple[int, int, int]:
        """Shape of one sinogram, ``(C, n_det, V)``: detector cells, then views."""
        return (self.img_size[0], self._n_det, self.n_views)

    def _spec_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_views": self.n_views,
            "angular_range": self.angular_range,
            "start_angle": self.start_angle,
            "geometry": self.geometry,
            "pixel_size": self.pixel_size,
        }
        if self._fan is not None:
            out.update(self._fan)
        return out

    def _grid(self, like: torch.Tensor) -> torch.Tensor:
        """Sampling grid of deepinv's Radon transform, ``(1, P, V * n_det, 2)``."""
        return self.radon.all_grids.to(device=like.device, dtype=like.dtype)

    # -- operator -----------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Radon transform in pixel units (no ``pixel_size``), ``(B, C, n_det, V)``."""
        B, C = x.shape[:2]
        xp = F.pad(x, (self._pad_before, self._pad_after, self._pad_before, self._pad_after))
        grid = self._grid(x).expand(B, -1, -1, -1)
        samples = F.grid_sample(xp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return samples.sum(dim=2).reshape(B, C, self.n_views, self._n_det).transpose(-1, -2)

    def _backproject(self, y: torch.Tensor) -> torch.Tensor:
        """Exact transpose of :meth:`_project`."""
        B, C = y.shape[:2]
        rays = y.transpose(-1, -2).reshape(B, C, 1, self.n_views * self._n_det)
        grad_out = rays.expand(B, C, self._padded, self.n_views * self._n_det)
        grid = self._grid(y).expand(B, -1, -1, -1)
        shape_ref = y.new_zeros((B, C, self._padded, self._padded))
        image, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad_out, shape_ref, grid, 0, 0, True, [True, False]
        )
        b, n = self._pad_before, self.img_size[1]
        return image[..., b : b + n, b : b + n]

    def A(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r"""Projection :math:`y = \Delta\, R x`, sinogram ``(B, C, n_det, V)``."""
        self._check_image(x)
        y = self._project(x)
        return y * self.pixel_size if self.pixel_size != 1.0 else y

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # noqa: N802
        r"""Exact back-projection :math:`A^\top y = \Delta\, R^\top y`."""
        self._check_measurement(y)
        x = _Backprojection.apply(y, self)
        return x * self.pixel_size if self.pixel_size != 1.0 else x

    def fbp(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        r"""Filtered back-projection :math:`\hat x = w\, A^\top(\mathrm{ramp}(y)) / \Delta^2`.

        deepinv's ramp filter along the detector axis; the view weight is
        :math:`w = \tfrac{\Delta\theta}{2}\min(1, \pi/\alpha)` with :math:`\Delta\theta = \alpha/V`
        (radians), which is deepinv's :math:`\pi/(2V)` for :math:`\alpha = 180^\circ` and counts
        every line once for :math:`\alpha \ge 180^\circ`. For limited angle this is the zero-filled
        FBP. For fan beam no fan-beam weighting is applied (deepinv's approximation): use it as a
        rough initialisation only.
        """
        self._check_measurement(y)
        filtered = self.ramp(y, dim=-2).to(y.dtype)
        alpha = math.radians(self.angular_range)
        weight = (alpha / self.n_views) / 2.0 * min(1.0, math.pi / alpha)
        return self.A_adjoint(filtered) * (weight / self.pixel_size**2)

    def A_dagger(  # noqa: N802
        self,
        y: torch.Tensor,
        method: str | None = None,
        reg: float = 0.0,
        max_iter: int = 100,
        tol: float = 1e-6,
        **kwargs: Any,
    ) -> torch.Tensor:
        r"""Filtered back-projection, or (Tikhonov-damped) least squares by CGLS.

        :param y: sinograms.
        :param method: ``"fbp"`` or ``"lsq"``; default ``"fbp"`` when ``reg == 0``, ``"lsq"``
            otherwise (FBP has no regularisation parameter, so ``reg > 0`` never goes unused).
        :param reg: Tikhonov weight :math:`\lambda` of
            :math:`\arg\min_x \|Ax - y\|^2 + \lambda\|x\|^2` (``"lsq"`` only).
        :param max_iter: CGLS iterations for ``"lsq"``.
        :param tol: CGLS relative tolerance for ``"lsq"``.
        """
        if reg < 0:
            raise ConfigError(f"reg must be >= 0, found {reg}")
        if method is None:
            method = "fbp" if reg == 0 else "lsq"
        if method == "fbp":
            if reg > 0:
                raise ConfigError("reg > 0 needs method='lsq' (FBP has no regularisation)")
            return self.fbp(y)
        if method in ("lsq", "cg", "cgls"):
            self._check_measurement(y)
            return cgls(self.A, self.A_adjoint, y, damp=float(reg), max_iter=max_iter, tol=tol)
        raise ConfigError(f"method: expected 'fbp' or 'lsq', found {method!r}")
