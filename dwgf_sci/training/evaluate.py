r"""Acceptance metrics of trained priors (issue 4): autoencoder fidelity and sample statistics.

* **VAE reconstruction PSNR** (:func:`reconstruction_psnr`): each held-out image ``x`` (physical
  units) goes through ``from_model(decode(encode(to_model(x))))``; the PSNR is computed per image
  on **that image's** data range :math:`R = \max x - \min x`,
  :math:`10 \log_{10}(R^2 / \mathrm{MSE})`, then averaged (mean, in dB) over the images.
* **Distribution of prior samples** (:func:`ks_statistics`): the two-sample Kolmogorov-Smirnov
  statistic (``scipy.stats.ks_2samp``) between a scalar statistic of prior samples (DDIM, see
  :func:`~dwgf_sci.training.sampling.sample_prior`) and of held-out images:

  - galaxies (:func:`galaxy_statistics`): **total flux** (sum of the pixels) and **half-light
    radius**, the radius of the circle around the flux centroid that holds half of the flux
    (pixels clipped at 0 for this one; see :func:`half_light_radius`). It is a simple
    flux-weighted radius rather than GalSim's adaptive moments, which can fail to converge on
    poor samples and would then have to drop them, biasing the comparison;
  - CT phantoms (:func:`phantom_statistics`): **support area**, the number of pixels of the
    object: pixels above ``threshold`` (default 0.05 1/cm, a quarter of water's attenuation at
    ~70 keV), holes filled (air pockets inside the body belong to the body); and **mean
    attenuation**, the mean value over that support.

  Images whose statistic is undefined (no positive flux) are dropped and counted.
* The held-out images are generated with :data:`HELD_OUT_SEED`, never used for training (the
  training command generates with ``--data-seed``, 0 by default).

:func:`evaluate_prior` computes everything for a prior folder and :func:`write_metrics` writes
``prior_metrics.json`` and ``prior_metrics.md`` next to it (``benchmarks/prior_metrics.py`` is
the command-line front end).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..priors.base import LatentPrior
from ..priors.decoder_error import DecoderErrorModel

__all__ = [
    "ACCEPTANCE",
    "HELD_OUT_SEED",
    "evaluate_prior",
    "galaxy_statistics",
    "half_light_radius",
    "image_statistics",
    "ks_statistics",
    "per_image_psnr",
    "phantom_statistics",
    "reconstruction_psnr",
    "write_metrics",
]

#: Seed of the held-out evaluation images (the training data use other seeds).
HELD_OUT_SEED = 1_000_003
#: Acceptance targets of issue 4: minimum mean VAE PSNR (dB), maximum KS statistic.
ACCEPTANCE: dict[str, dict[str, float]] = {
    "galaxies": {"vae_psnr_db": 35.0, "ks": 0.15},
    "phantoms": {"vae_psnr_db": 30.0, "ks": 0.15},
    "fields": {"vae_psnr_db": 35.0, "ks": 0.15},
}
#: Default support threshold of the CT statistics (1/cm).
SUPPORT_THRESHOLD = 0.05


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise ShapeError(f"expected single-channel images (N, 1, H, W), found {arr.shape}")
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ShapeError(f"expected images (N, H, W) or (N, 1, H, W), found shape {arr.shape}")
    return arr


# ---------------------------------------------------------------------- fidelity
def per_image_psnr(x: Tensor, reference: Tensor) -> np.ndarray:
    """PSNR (dB) of each image of ``x`` against ``reference`` on the reference's own range.

    :param Tensor x: ``(N, C, H, W)``.
    :param Tensor reference: same shape.
    :return: ``(N,)`` array (``inf`` for exact reconstructions). A constant reference image has
        no range; as in :func:`dwgf_sci.metrics.data_range`, 1 is used for it.
    """
    if x.shape != reference.shape:
        raise ShapeError(f"shapes differ: {tuple(x.shape)} vs {tuple(reference.shape)}")
    ref = reference.detach().double().flatten(1)
    err = (x.detach().double().flatten(1) - ref).pow(2).mean(dim=1)
    rng = ref.max(dim=1).values - ref.min(dim=1).values
    rng = torch.where(rng > 0, rng, torch.ones_like(rng))
    with np.errstate(divide="ignore"):
        return (10.0 * torch.log10(rng.pow(2) / err)).cpu().numpy()


@torch.no_grad()
def _round_trips(prior: LatentPrior, x: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(to_model(x), decode(encode(to_model(x))))`` per batch of ``batch_size`` images, on the
    prior's device, without gradients."""
    for start in range(0, x.shape[0], int(batch_size)):
        chunk = x[start : start + int(batch_size)].to(prior.device, torch.float32)
        model = prior.to_model(chunk)
        yield model, prior.decode(prior.encode(model))


@torch.no_grad()
def reconstruction_psnr(prior: LatentPrior, x: Tensor, batch_size: int = 64) -> np.ndarray:
    """Per-image PSNR (dB) of the prior's autoencoder on images ``x`` in physical units.

    :param LatentPrior prior: the prior (its ``to_model``/``from_model`` map is applied).
    :param Tensor x: ``(N, C, H, W)`` physical images.
    :param int batch_size: images per network call.
    """
    out = [prior.from_model(rec).float().cpu() for _, rec in _round_trips(prior, x, batch_size)]
    return per_image_psnr(torch.cat(out), x.float().cpu())


def decoder_sigma(prior: LatentPrior, x: Tensor, batch_size: int = 64) -> float:
    """RMS of ``decode(encode(x)) - x`` in model units (the prior's ``decoder_sigma``).

    :param LatentPrior prior: the prior.
    :param Tensor x: ``(N, C, H, W)`` held-out images in physical units.
    :param int batch_size: images per network call.
    """
    total, count = 0.0, 0
    for model, rec in _round_trips(prior, x, batch_size):
        total += float((rec - model).double().pow(2).sum())
        count += model.numel()
    return math.sqrt(total / max(count, 1))


def decoder_error(
    prior: LatentPrior, x: Tensor, batch_size: int = 64, **fit_options: int
) -> tuple[float, DecoderErrorModel]:
    """The autoencoder's error on held-out images ``x`` (physical units), from one pass: its
    RMS in model units (:func:`decoder_sigma`) and its per-pixel
    :class:`~dwgf_sci.priors.DecoderErrorModel` (``fit_options`` go to
    :meth:`DecoderErrorModel.fit`)."""
    pairs = [
        (rec.float().cpu(), (rec - m).float().cpu())
        for m, rec in _round_trips(prior, x, batch_size)
    ]
    decoded = torch.cat([d for d, _ in pairs])
    err = torch.cat([e for _, e in pairs])
    sigma = math.sqrt(float(err.double().pow(2).mean()))
    return sigma, DecoderErrorModel.fit(decoded, err, **fit_options)


def decoder_error_model(
    prior: LatentPrior, x: Tensor, batch_size: int = 64, **fit_options: int
) -> DecoderErrorModel:
    """The per-pixel model of :func:`decoder_error` alone."""
    return decoder_error(prior, x, batch_size, **fit_options)[1]


# ---------------------------------------------------------------------- statistics
def half_light_radius(x: Tensor | np.ndarray, supersample: int = 4) -> np.ndarray:
    """Radius (pixels) around the flux centroid enclosing half the (clipped) flux, per image.

    Each pixel is split into ``supersample`` x ``supersample`` sub-pixels sharing its flux, the
    sub-pixels are sorted by distance to the centroid, and the radius where their cumulative flux
    reaches half the total is interpolated. With 4 x 4 sub-pixels the radius of a pixelated
    Gaussian is within about 2 % of the exact value down to 1 pixel.

    :param x: ``(N, H, W)`` or ``(N, 1, H, W)`` images.
    :param int supersample: sub-pixels per pixel and axis.
    :return: ``(N,)``; NaN where an image has no positive flux.
    """
    img = np.clip(_as_numpy(x), 0.0, None)
    n, h, w = img.shape
    s = int(supersample)
    sub = (np.arange(s) + 0.5) / s - 0.5
    shape = (h, w, s, s)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    ys = np.broadcast_to(yy[:, :, None, None] + sub[None, None, :, None], shape).ravel()
    xs = np.broadcast_to(xx[:, :, None, None] + sub[None, None, None, :], shape).ravel()
    out = np.full(n, np.nan)
    for i in range(n):
        flux = img[i].sum()
        if not flux > 0:
            continue
        cy, cx = (img[i] * yy).sum() / flux, (img[i] * xx).sum() / flux
        values = np.broadcast_to(img[i][:, :, None, None] / (s * s), shape).ravel()
        radius = np.hypot(ys - cy, xs - cx)
        order = np.argsort(radius, kind="stable")
        cum = np.cumsum(values[order])
        out[i] = float(np.interp(0.5 * flux, cum, radius[order]))
    return out


def galaxy_statistics(x: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Total flux (sum of pixels) and half-light radius (pixels) of each galaxy image.

    :param x: ``(N, H, W)`` or ``(N, 1, H, W)`` images in physical units (e.g. counts).
    :return: ``{"total_flux", "half_light_radius"}``, each an ``(N,)`` float64 array; the flux is
        in the images' units, the radius (:func:`half_light_radius`) in pixels, NaN for an image
        without positive flux.
    :raises ShapeError: for images of another shape (several channels).
    """
    arr = _as_numpy(x)
    return {"total_flux": arr.sum(axis=(1, 2)), "half_light_radius": half_light_radius(arr)}


def phantom_statistics(
    x: Tensor | np.ndarray, threshold: float = SUPPORT_THRESHOLD
) -> dict[str, np.ndarray]:
    """Support area (pixels above ``threshold``, holes filled) and mean attenuation over it.

    :param x: ``(N, H, W)`` or ``(N, 1, H, W)`` attenuation images (1/cm).
    :param threshold: attenuation above which a pixel belongs to the object (1/cm).
    :return: ``{"mean_attenuation", "support_area"}``, each an ``(N,)`` float64 array: the mean
        attenuation over the support (1/cm; NaN for an empty support) and its area in pixels.
    :raises ShapeError: for images of another shape (several channels).
    """
    from scipy.ndimage import binary_fill_holes

    arr = _as_numpy(x)
    support = np.stack([binary_fill_holes(a > float(threshold)) for a in arr])
    area = support.sum(axis=(1, 2)).astype(np.float64)
    total = np.where(support, arr, 0.0).sum(axis=(1, 2))
    mean = np.where(area > 0, total / np.where(area > 0, area, 1.0), np.nan)
    return {"mean_attenuation": mean, "support_area": area}


def image_statistics(x: Tensor | np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """The statistics compared for ``kind``: ``"galaxies"``, ``"phantoms"`` or ``"generic"``
    (mean and standard deviation of the pixels of each image).

    :param x: ``(N, H, W)`` or ``(N, 1, H, W)`` images in physical units.
    :param kind: ``"galaxies"`` (:func:`galaxy_statistics`), ``"phantoms"``
        (:func:`phantom_statistics`, default threshold), ``"generic"`` or ``"fields"``
        (``pixel_mean``, ``pixel_std``: crops of a field hold any number of objects).
    :return: the statistics by name, each an ``(N,)`` float64 array.
    :raises ConfigError: for an unknown ``kind``.
    """
    if kind == "galaxies":
        return galaxy_statistics(x)
    if kind == "phantoms":
        return phantom_statistics(x)
    if kind in ("generic", "fields"):
        arr = _as_numpy(x)
        return {"pixel_mean": arr.mean(axis=(1, 2)), "pixel_std": arr.std(axis=(1, 2))}
    raise ConfigError(f"unknown kind {kind!r}; expected galaxies, phantoms or generic")


def ks_statistics(samples: Tensor, reference: Tensor, kind: str) -> dict[str, dict[str, float]]:
    """Two-sample KS statistic and p-value per statistic of ``kind`` (see the module docstring).

    Non-finite values (undefined statistics) are dropped from both sets before the test
    (``scipy.stats.ks_2samp``, two-sided).

    :param samples: prior samples, ``(N, H, W)`` or ``(N, 1, H, W)``, in physical units.
    :param reference: held-out images, same layout and units (the count may differ).
    :param kind: ``"galaxies"``, ``"phantoms"`` or ``"generic"`` (see :func:`image_statistics`).
    :return: ``{name: {"ks", "p_value", "n_samples", "n_reference", "dropped",
        "sample_median", "reference_median"}}``; when either set has no finite value, ``ks`` is 1,
        ``p_value`` 0 and the empty set's median ``nan``.
    :raises ConfigError: for an unknown ``kind``.
    """
    from scipy.stats import ks_2samp

    a, b = image_statistics(samples, kind), image_statistics(reference, kind)
    out: dict[str, dict[str, float]] = {}
    for name in a:
        va, vb = a[name][np.isfinite(a[name])], b[name][np.isfinite(b[name])]
        empty = va.size == 0 or vb.size == 0
        res = None if empty else ks_2samp(va, vb)
        out[name] = {
            "ks": 1.0 if res is None else float(res.statistic),
            "p_value": 0.0 if res is None else float(res.pvalue),
            "n_samples": int(va.size),
            "n_reference": int(vb.size),
            "dropped": int(a[name].size - va.size),
            "sample_median": float(np.median(va)) if va.size else float("nan"),
            "reference_median": float(np.median(vb)) if vb.size else float("nan"),
        }
    return out


# ---------------------------------------------------------------------- the whole evaluation
def held_out_images(
    kind: str, n: int, size: int, seed: int = HELD_OUT_SEED, crop: int | None = None
) -> Tensor:
    """``n`` held-out galaxies, phantoms or fields (``(n, 1, size, size)``, physical units);
    with ``crop``, one random ``crop``-px crop of each (a patch prior's held-out data)."""
    from ..datasets import FieldDataset, GalaxyDataset, PhantomDataset
    from .data import random_crops

    makers = {"galaxies": GalaxyDataset, "phantoms": PhantomDataset, "fields": FieldDataset}
    if kind not in makers:
        raise ConfigError(f"unknown dataset {kind!r}; expected one of {tuple(makers)}")
    ds: Any = makers[kind](n, size=size, seed=seed)
    images = torch.stack([ds[i] for i in range(n)])
    return images if crop is None else random_crops(images, int(crop), 1, seed=int(seed))


def evaluate_prior(
    prior: LatentPrior,
    kind: str,
    n: int = 200,
    n_samples: int | None = None,
    reference: Tensor | None = None,
    sample_steps: int = 100,
    seed: int = 0,
    eta: float = 0.0,
    data_seed: int = HELD_OUT_SEED,
) -> dict[str, Any]:
    """Acceptance metrics of a prior on held-out data.

    :param LatentPrior prior: the prior (with a native image size).
    :param str kind: ``"galaxies"``, ``"phantoms"`` or ``"fields"`` (or ``"generic"`` with
        ``reference``); a patch prior is compared with crops of held-out images of its
        training images' size.
    :param int n: held-out images (generated with ``data_seed``) when ``reference`` is None.
    :param n_samples: prior samples (default ``n``).
    :param reference: held-out images to use instead of generated ones.
    :param int sample_steps: DDIM steps.
    :param int seed: seed of the samples.
    :param float eta: DDIM stochasticity.
    :param int data_seed: seed of the generated held-out images.
    :return: JSON-serialisable dict: ``vae_psnr_db`` (mean, median, min, n), ``ks``
        (per statistic), ``pass`` (against :data:`ACCEPTANCE` when known), timings.
    """
    from .sampling import sample_prior

    if prior.image_size is None:
        raise ConfigError("the prior has no native image size")
    t0 = time.perf_counter()
    if reference is None:
        data = (getattr(prior, "metadata", None) or {}).get("data") or {}
        size, crop = int(prior.image_size[0]), None
        if data.get("patch_size"):  # a patch prior: crops of held-out images of its data's size
            size, crop = int(data["image_shape"][-1]), size
        reference = held_out_images(kind, int(n), size, seed=int(data_seed), crop=crop)
    t_data = time.perf_counter() - t0
    psnr = reconstruction_psnr(prior, reference)
    t1 = time.perf_counter()
    count = int(n_samples or reference.shape[0])
    samples = sample_prior(prior, count, steps=int(sample_steps), eta=float(eta), seed=int(seed))
    t_samples = time.perf_counter() - t1
    ks = ks_statistics(samples, reference, kind)
    finite = psnr[np.isfinite(psnr)]
    result: dict[str, Any] = {
        "kind": kind,
        "vae_psnr_db": {
            "mean": float(np.mean(finite)) if finite.size else float("inf"),
            "median": float(np.median(psnr)),
            "min": float(np.min(psnr)),
            "n": int(psnr.size),
        },
        "ks": ks,
        "n_reference": int(reference.shape[0]),
        "n_samples": count,
        "sample_steps": int(sample_steps),
        "eta": float(eta),
        "seed": int(seed),
        "data_seed": int(data_seed),
        "timings_s": {
            "held_out_data": t_data,
            "sampling": t_samples,
            "total": time.perf_counter() - t0,
        },
    }
    target = ACCEPTANCE.get(kind)
    if target is not None:
        checks = {"vae_psnr": result["vae_psnr_db"]["mean"] >= target["vae_psnr_db"]}
        for name, entry in ks.items():
            checks[f"ks_{name}"] = entry["ks"] <= target["ks"]
        result["targets"] = target
        result["pass"] = checks
        result["all_pass"] = all(checks.values())
    return result


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else str(value)


def metrics_markdown(result: Mapping[str, Any], title: str = "Prior metrics") -> str:
    """A markdown table of :func:`evaluate_prior` results."""
    psnr = result["vae_psnr_db"]
    target = result.get("targets", {})
    checks = result.get("pass", {})
    lines = [
        f"# {title}",
        "",
        f"Held-out {result['kind']}: {result['n_reference']} images (seed {result['data_seed']}); "
        f"{result['n_samples']} prior samples (DDIM, {result['sample_steps']} steps, eta "
        f"{result['eta']:g}, seed {result['seed']}).",
        "",
        "| metric | value | target | pass |",
        "|---|---|---|---|",
        f"| VAE reconstruction PSNR, mean (dB) | {_fmt(psnr['mean'])} "
        f"(median {_fmt(psnr['median'])}, min {_fmt(psnr['min'])}) | "
        f">= {target.get('vae_psnr_db', '-')} | {checks.get('vae_psnr', '-')} |",
    ]
    for name, entry in result["ks"].items():
        lines.append(
            f"| KS statistic, {name.replace('_', ' ')} | {_fmt(entry['ks'])} (p = "
            f"{entry['p_value']:.2g}; median {entry.get('sample_median', float('nan')):.4g} vs "
            f"{entry.get('reference_median', float('nan')):.4g}) | <= {target.get('ks', '-')} | "
            f"{checks.get('ks_' + name, '-')} |"
        )
    lines += ["", f"Evaluation time: {result['timings_s']['total']:.1f} s."]
    return "\n".join(lines) + "\n"


def write_metrics(
    result: Mapping[str, Any], folder: str | os.PathLike[str], stem: str = "prior_metrics"
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``folder`` (atomically).

    The JSON file holds ``result`` plus a ``machine`` record (platform, Python, torch, threads);
    the Markdown file is :func:`metrics_markdown` of ``result``. Existing files are replaced.

    :param result: the output of :func:`evaluate_prior`.
    :param folder: an existing folder (usually the prior's).
    :param stem: base name of the two files.
    :return: ``(json_path, markdown_path)``.
    """
    from ..io.atomic import atomic_output

    root = Path(folder)
    record = {
        **dict(result),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    json_path, md_path = root / f"{stem}.json", root / f"{stem}.md"
    with atomic_output(json_path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")
    with atomic_output(md_path, overwrite=True) as tmp:
        tmp.write_text(metrics_markdown(result), encoding="utf-8")
    return json_path, md_path
