"""Input checks shared by every module: they run before any expensive work."""

from __future__ import annotations

import numpy as np
import torch

from .errors import InvalidDataError, ShapeError


def as_tensor(
    data: torch.Tensor | np.ndarray,
    name: str = "input",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert ``data`` to a tensor (native byte order), without modifying the caller's object.

    :param data: tensor or numpy array (any byte order).
    :param name: name used in error messages.
    :param dtype: target floating dtype; ``None`` keeps floating tensors and maps others to float32.
    :param device: target device.
    :raises InvalidDataError: for complex, boolean or object arrays, or non-numeric input.
    """
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "iuf":
            raise InvalidDataError(
                f"{name}: expected a real numeric array, found dtype {data.dtype}"
            )
        arr = data.astype(data.dtype.newbyteorder("="), copy=True)
        tensor = torch.from_numpy(arr if arr.dtype.kind == "f" else arr.astype(np.float32))
    elif isinstance(data, torch.Tensor):
        if data.is_complex() or data.dtype == torch.bool:
            raise InvalidDataError(f"{name}: expected a real tensor, found dtype {data.dtype}")
        tensor = data
    else:
        raise InvalidDataError(
            f"{name}: expected a torch.Tensor or numpy array, found {type(data).__name__}"
        )
    if dtype is None:
        dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    return tensor.to(device=device if device is not None else tensor.device, dtype=dtype)


def check_finite(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    """Raise :class:`InvalidDataError` if ``x`` holds NaN or Inf values; return ``x`` otherwise."""
    if not torch.is_tensor(x):
        return x
    if x.is_floating_point() or x.is_complex():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(bad.sum()) - n_nan
            raise InvalidDataError(
                f"{name} contains {n_nan} NaN and {n_inf} Inf values (of {x.numel()}); "
                "mask or replace them before reconstruction"
            )
    return x


def check_image(x: torch.Tensor, name: str = "image", channels: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite ``(B, C, H, W)`` tensor (of ``channels`` channels if given)."""
    if not torch.is_tensor(x):
        raise InvalidDataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if x.ndim != 4:
        raise ShapeError(
            f"{name}: expected a 4-D tensor (B, C, H, W), found shape {tuple(x.shape)}"
        )
    if channels is not None and x.shape[1] != channels:
        raise ShapeError(f"{name}: expected {channels} channel(s), found shape {tuple(x.shape)}")
    return check_finite(x, name)


def to_bchw(x: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Promote a 2-D ``(H, W)`` or 3-D ``(C, H, W)`` tensor to ``(1, C, H, W)``; 4-D is kept."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[None]
    if x.ndim == 4:
        return x
    raise ShapeError(f"{name}: expected a 2-D, 3-D or 4-D image, found shape {tuple(x.shape)}")
