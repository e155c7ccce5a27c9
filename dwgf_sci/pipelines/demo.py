"""``dwgf-sci demo``: the whole method on one simulated galaxy, in a couple of minutes on a CPU.

A galsim galaxy is blurred by a Moffat PSF with Gaussian noise (1% of the blurred peak by
default), deconvolved by Richardson-Lucy and Wiener and sampled by DWGF with a shipped latent
prior. The output folder receives the observation (a self-describing measurement FITS file), the
posterior (mean, std, samples, provenance) and a PNG panel; PSNR/SSIM and times are printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..datasets import GalaxyDataset
from ..io.measurement import Measurement, write_measurement
from ..metrics import psnr, ssim
from ..operators import build_operator, physics_spec, resolve_spec
from ..plotting import image_panel
from ..priors import SHIPPED_PRIORS, available_priors, load_prior
from ..solvers import DWGF
from ..solvers.classical import RichardsonLucy, Wiener
from .simulate import item_spec


def run_demo(
    out: str | Path = "dwgf-demo",
    prior: str = "galaxy-64",
    operator: str = "psf",
    sets: Sequence[str] = (),
    noise: float = 0.01,
    particles: int = 4,
    steps: int | None = None,
    preset: str = "default",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    overwrite: bool = True,
    echo: Callable[[str], Any] = print,
) -> dict[str, dict[str, float]]:
    """Run the demo; return ``{method: {"psnr", "ssim", "seconds"}}``.

    :param noise: Gaussian noise std as a fraction of the blurred image's peak.
    :param steps: DWGF steps (default: the preset's).
    """
    start = time.perf_counter()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    latent_prior = None
    if prior in SHIPPED_PRIORS and not prior_folder_installed(prior):
        echo(
            f"note: the shipped prior {prior!r} is not installed in this version; the demo runs "
            "the classical methods only (pass --prior FOLDER to use a saved prior)"
        )
    else:
        latent_prior = load_prior(prior, device=device)
    native = latent_prior.image_size if latent_prior is not None else None
    size = native[0] if native else 64
    truth = GalaxyDataset(1, size=size, seed=seed)[0][None]
    img_size = tuple(truth.shape[1:])
    spec = resolve_spec(operator, [*sets, f"noise.sigma={noise}"])
    base = build_operator(spec, img_size)
    with torch.no_grad():
        clean = base.A(truth)
    used = item_spec(physics_spec(base), clean, "peak", seed)
    used["img_size"] = list(img_size)
    physics = build_operator(used, img_size)
    with torch.no_grad():
        y = physics(truth)
    write_measurement(
        folder / "observation.fits",
        Measurement(y=y, operator=used, truth=truth),
        provenance={"dataset": "galaxies", "index": 0, "seed": seed, "job": "demo"},
        overwrite=overwrite,
    )
    results: dict[str, dict[str, float]] = {}
    images: dict[str, torch.Tensor] = {"truth": truth, "observation": y}

    def score(name: str, x: torch.Tensor, seconds: float) -> None:
        results[name] = {
            "psnr": float(psnr(x, truth)),
            "ssim": float(ssim(x, truth)),
            "seconds": seconds,
        }

    # 300 iterations: the count tuned on validation galaxies (benchmarks/tune_classical.py)
    for method in (RichardsonLucy(300), Wiener()):
        rec = method(y, physics)
        score(method.name, rec.as_tensor(), rec.timing["total_s"])
        if method.name == "richardson-lucy":
            images[method.name] = rec.as_tensor()
    if latent_prior is None:
        _report(results, images, folder, noise, prior, echo, overwrite)
        echo(f"total wall time {time.perf_counter() - start:.1f} s")
        return results
    kwargs: dict[str, Any] = {"particles": particles, "seed": seed, "progress": progress}
    if steps is not None:
        kwargs["steps"] = steps
    solver = DWGF(latent_prior, preset=preset, **kwargs)
    post = solver(y.to(device), physics.to(device))
    mean = post.as_tensor().cpu()
    score("dwgf", mean, post.timing["total_s"])
    post.to_fits(
        folder / "posterior.fits",
        overwrite=overwrite,
        provenance={
            "kind": "reconstruction",
            "input": "observation.fits",
            "prior": prior,
            "operator": used,
            "metrics": results["dwgf"],
        },
    )
    images.update(
        {"DWGF mean": mean, "DWGF std": post.std.cpu(), "|mean - truth|": (mean - truth).abs()}
    )
    _report(results, images, folder, noise, prior, echo, overwrite)
    echo(f"total wall time {time.perf_counter() - start:.1f} s")
    return results


def prior_folder_installed(name: str) -> bool:
    """Whether the weights of shipped prior ``name`` are installed."""
    return "not installed" not in available_priors().get(name, "not installed")


def _report(
    results: dict[str, dict[str, float]],
    images: dict[str, torch.Tensor],
    folder: Path,
    noise: float,
    prior: str,
    echo: Callable[[str], Any],
    overwrite: bool,
) -> None:
    """Write the PNG panel and print the score table."""
    shared = tuple(k for k in ("truth", "richardson-lucy", "DWGF mean") if k in images)
    image_panel(
        images,
        folder / "demo.png",
        shared=shared,
        cmaps={"DWGF std": "viridis", "|mean - truth|": "viridis"},
        title=f"galaxy deconvolution, Moffat PSF, noise {noise:.0%} of peak"
        + (f"; prior {prior}" if "DWGF mean" in images else "; classical methods only"),
        overwrite=overwrite,
        stretch="asinh",
    )
    echo(f"{'method':<18}{'PSNR (dB)':>10}{'SSIM':>8}{'time (s)':>10}")
    for name, r in results.items():
        echo(f"{name:<18}{r['psnr']:>10.2f}{r['ssim']:>8.3f}{r['seconds']:>10.1f}")
    files = ", ".join(p.name for p in sorted(folder.iterdir()) if p.suffix in (".fits", ".png"))
    echo(f"outputs in {folder}/: {files}")
