"""Figures: image panels, posterior summaries and convergence curves (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colors  # noqa: E402

from .io.atomic import atomic_output  # noqa: E402


def _image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x, np.float32)
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # several channels: show the first
        arr = arr[0]
    if arr.ndim == 1:
        arr = arr[None]
    return arr


def image_panel(
    images: Mapping[str, torch.Tensor | np.ndarray],
    path: str | Path,
    shared: Sequence[str] = (),
    cmaps: Mapping[str, str] | None = None,
    title: str | None = None,
    overwrite: bool = True,
    stretch: str = "linear",
) -> Path:
    """Save a one-row panel of images with colour bars as PNG (atomically).

    :param images: title -> image (``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``).
    :param shared: titles that share the colour scale of the first of them (e.g. truth and the
        reconstructions).
    :param cmaps: title -> matplotlib colour map (default ``"magma"``).
    :param stretch: ``"linear"`` or ``"asinh"`` (astronomy: faint outskirts and bright cores
        visible together).
    """
    cmaps = dict(cmaps or {})
    arrays = {k: _image(v) for k, v in images.items()}
    limits = None
    if shared:
        stack = np.concatenate([arrays[k].ravel() for k in shared if k in arrays])
        limits = (float(stack.min()), float(stack.max()))
    fig, axes = plt.subplots(1, len(arrays), figsize=(2.8 * len(arrays), 3.0), squeeze=False)
    for ax, (name, arr) in zip(axes[0], arrays.items(), strict=True):
        lo, hi = limits if limits and name in shared else (float(arr.min()), float(arr.max()))
        if stretch == "asinh":
            width = max(0.02 * (hi - lo), 1e-12)
            kw: dict = {"norm": colors.AsinhNorm(linear_width=width, vmin=lo, vmax=hi)}
        else:
            kw = {"vmin": lo, "vmax": hi}
        im = ax.imshow(arr, origin="lower", cmap=cmaps.get(name, "magma"), **kw)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def history_plot(
    history: Sequence[Mapping[str, float]], path: str | Path, keys: Sequence[str] = ("chi2",)
) -> Path:
    """Plot per-step history values (e.g. the reduced chi-square) against the step, as PNG."""
    fig, ax = plt.subplots(figsize=(5, 3))
    steps = [h["step"] for h in history]
    for key in keys:
        ax.semilogy(steps, [max(h[key], 1e-12) for h in history], label=key)
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
