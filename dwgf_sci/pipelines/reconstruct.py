"""Reconstruction of measurement files: rebuild the operator, sample the posterior, write it out.

A survey file's noise map and bad-pixel mask (:mod:`dwgf_sci.io.survey`) become the physics' noise
model (:class:`~dwgf_sci.operators.pixel_noise.PixelNoise`), and the output carries the ``MASK``
and ``VARIANCE`` used (:mod:`~dwgf_sci.pipelines.observed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from astropy.io import fits

from ..errors import ConfigError, OutputExistsError
from ..io.formats import file_format
from ..io.measurement import Measurement, read_measurement
from ..io.survey import ReadOptions
from ..metrics import coverage, psnr, ssim
from ..operators import build_operator
from ..operators.specs import canonical_spec
from ..solvers.base import LatentSolver
from ..solvers.likelihood import DataTerm, chi2_limit
from ..solvers.posterior import Posterior, check_sample_count
from .observed import (
    announce,
    check_noise_level,
    map_weighted,
    pixel_noise_for,
    write_posterior,
)
from .plan import expand_inputs, output_path, plan_batch, split_name

__all__ = [
    "IMAGE_SHAPED",
    "ReconstructionResult",
    "chi2_limit",
    "expand_inputs",
    "output_path",
    "physics_for",
    "quality",
    "reconstruct_file",
    "reconstruct_files",
    "split_name",
]

IMAGE_SHAPED = ("psf", "mask", "inpaint-psf")


@dataclass
class ReconstructionResult:
    """What :func:`reconstruct_file` produced for one input."""

    input: Path
    output: Path
    posterior: Posterior
    truth: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def physics_for(measurement: Measurement, spec: dict[str, Any] | None = None, device: Any = "cpu"):
    """The operator of a measurement: ``spec`` if given, else the one stored in the file.

    :return: ``(physics, spec_used, img_size)``.
    """
    spec = spec if spec is not None else measurement.operator
    if spec is None:
        source = measurement.path or "the measurement"
        raise ConfigError(
            f"{source} does not say which operator made it; pass --operator PRESET|FILE.toml"
        )
    spec = canonical_spec(spec)
    img_size = spec.get("img_size")
    if img_size is None:
        if spec["type"] not in IMAGE_SHAPED:
            raise ConfigError(
                f"a {spec['type']!r} operator needs the image size: set img_size=[C, H, W]"
            )
        img_size = list(measurement.y.shape[1:])
        spec["img_size"] = img_size
    arrays = {k: v.squeeze() if k == "psf" else v for k, v in measurement.arrays.items()}
    physics = build_operator(spec, tuple(img_size), device=device, **arrays)
    return physics, spec, tuple(int(s) for s in img_size)


def quality(
    post: Posterior,
    truth: torch.Tensor | None,
    physics: Any,
    y: torch.Tensor,
    data_term: DataTerm | None = None,
) -> dict:
    """PSNR/SSIM of the mean, 90% coverage (when the truth is known) and the data misfit, with
    the limit above which the fit is poor (:func:`chi2_limit`); ``retried``: the measurements
    whose last levels the solver ran again because their first mean missed the data.

    The data fit is the one the solver measured (``post.fit``, computed once per run); only a
    posterior without one (a classical method's) has it computed here.

    :param data_term: the solver's data term bound to ``physics`` (its noise model: Gaussian or
        Poisson); without it, the Gaussian ``noise_sigma`` of the posterior's settings, if any.
    """
    scores: dict[str, float] = {}
    mean = post.as_tensor()
    fit = getattr(post, "fit", None) or {}
    sigma = post.settings.get("noise_sigma")
    if data_term is None and sigma:
        data_term = DataTerm("gaussian", sigma)
    if fit:
        scores["reduced_chi2_mean"] = float(fit["reduced_chi2"].mean())
        scores["reduced_chi2_limit"] = float(fit["limit"].max())
    elif data_term is not None and data_term.kind != "mse":
        with torch.no_grad():
            ax = physics.A(mean)
        scores["reduced_chi2_mean"] = float(data_term.reduced_chi2(ax, y).mean())
        scores["reduced_chi2_limit"] = chi2_limit(ax[0].numel())
    retried = [h["retry"] for h in post.history if "retry" in h]
    if retried:  # DWGF's image_retry redid the last levels of that many measurements
        scores["retried"] = float(sum(retried))
    if truth is not None and truth.shape == mean.shape:
        scores["psnr"] = float(psnr(mean, truth))
        scores["ssim"] = float(ssim(mean, truth))
        if post.n_samples > 1:
            scores["coverage90"] = coverage(post.samples, truth, 0.9)
    return scores


def reconstruct_file(
    path: str | Path,
    solver: LatentSolver,
    out_dir: str | Path,
    spec: dict[str, Any] | None = None,
    file_type: str | None = None,
    overwrite: bool = False,
    samples: int | None = None,
    prior_name: str | None = None,
    *,
    target: str | Path | None = None,
    seed: int | None = None,
    record: dict[str, Any] | None = None,
    read: ReadOptions | None = None,
    echo: Callable[[str], None] | None = print,
    write: bool = True,
) -> ReconstructionResult:
    """Reconstruct one measurement file and write its posterior next to the others in ``out_dir``.

    The output holds the posterior mean (primary HDU / ``mean``), ``STD``/``std`` and
    ``SAMPLES``/``samples``, the input's header when the image has the measurement's shape, and a
    provenance record: input file, its provenance, operator spec, prior, solver settings, timing,
    network calls and, for simulations, PSNR/SSIM/coverage against the stored truth.

    :param target: the output file (default: :func:`output_path` in ``out_dir``); its format
        follows its suffix.
    :param seed: the sampler's seed for this input (default: the solver's own seed).
    :param samples: how many posterior samples to store (the first ones; ``None``: all, 0: none;
        large images: the mean and std are the posterior's whatever is stored).
    :param record: extra provenance fields (a batch job stores its item key and fingerprint).
    :param read: how to read the input (science HDU or key, noise map, DQ plane, NaN policy);
        default: recognise its layout. A noise map or a mask weighs the data per pixel, and the
        output then holds ``MASK``/``mask`` and ``VARIANCE``/``variance`` too; how the file was
        read is in the provenance (``observation``).
    :param echo: where the one-line notes go (layout chosen, NaN pixels masked); None: nowhere.
    :param write: write the output (``False``: a process that helps another one compute the
        same reconstruction, ``reconstruct --share-patches``; the checks are made all the same).
    """
    check_sample_count(samples)  # before any work
    path = Path(path)
    out_dir = Path(out_dir)
    measurement = read_measurement(path, options=read)
    physics, used, img_size = physics_for(measurement, spec, device=solver.prior.device)
    weights = pixel_noise_for(measurement, physics, solver)
    if weights is None:
        check_noise_level(measurement, physics, solver)
    target = output_path(path, out_dir, file_type) if target is None else Path(target)
    if target.resolve() == path.resolve():
        raise ConfigError(f"the output {target} would replace the input; choose another --out")
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists already; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    announce(measurement, echo)
    y = measurement.y.to(solver.prior.device)
    with map_weighted(solver, weights is not None):
        post = solver(y, physics, img_size=img_size, seed=seed)
        scores = quality(post, measurement.truth, physics, y, solver.data_term.resolve(physics))
    record = {
        "kind": "reconstruction",
        "input": str(path),
        "input_provenance": measurement.provenance,
        "operator": used,
        "prior": prior_name,
        "seed": solver.seed if seed is None else int(seed),
        "metrics": scores,
        **(record or {}),
    }
    if measurement.observation is not None:
        record["observation"] = measurement.observation
    header = None
    if isinstance(measurement.header, fits.Header) and tuple(measurement.y.shape[1:]) == img_size:
        header = measurement.header
    if write and weights is not None:
        write_posterior(post, target, weights, header, overwrite, samples, record)
    elif write and file_format(target) == "fits":
        post.to_fits(target, header=header, overwrite=overwrite, samples=samples, provenance=record)
    elif write:
        post.to_hdf5(target, overwrite=overwrite, samples=samples, provenance=record)
    return ReconstructionResult(path, target, post, measurement.truth, scores)


def reconstruct_files(
    inputs: Sequence[str | Path], solver: LatentSolver, out_dir: str | Path, **kwargs: Any
) -> list[ReconstructionResult]:
    """:func:`reconstruct_file` for every file named by ``inputs`` (paths, folders, globs).

    Outputs are named and seeded as by ``dwgf-sci reconstruct`` (see
    :func:`~dwgf_sci.pipelines.plan.plan_batch`), so a file gives the same result here, alone or
    in any batch; this function keeps no status manifest and stops at the first error.

    :param inputs: files, folders (their FITS/HDF5 files) and glob patterns.
    :param solver: the latent solver; its ``seed`` is the base seed the items' seeds derive from
        (:func:`~dwgf_sci.pipelines.plan.item_seed`).
    :param out_dir: the output folder.
    :param kwargs: further arguments of :func:`reconstruct_file` (``spec``, ``file_type``,
        ``overwrite``, ``samples``, ``prior_name``, ``record``, ``read``, ``echo``);
        ``target`` and ``seed`` are set per item and must not be passed.
    :return: one :class:`ReconstructionResult` per input file, in input order.
    :raises FileFormatError: an input that matches nothing.
    :raises ConfigError: no input, or two inputs with the same output or key
        (:func:`~dwgf_sci.pipelines.plan.plan_batch`). The errors of :func:`reconstruct_file`
        (unreadable files, existing outputs without ``overwrite=True``) propagate.
    """
    out = Path(out_dir)
    items = plan_batch(inputs, out, base_seed=solver.seed, file_type=kwargs.get("file_type"))
    return [
        reconstruct_file(it.input, solver, out, target=it.output, seed=it.seed, **kwargs)
        for it in items
    ]
