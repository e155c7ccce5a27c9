"""Imaging benchmark tasks, defined once and used by the benchmark suite, tests and tutorials.

A :class:`Task` names an object class (galsim galaxies or CT phantoms), the shipped prior for it,
an operator (a preset of :mod:`dwgf_sci.operators.specs` plus overrides) and how its noise level
is set. :meth:`Task.items` draws reproducible problems: the truth, the noisy measurement, and the
physics with the exact noise level used. Splits use their own data seeds, disjoint from the data
seed 0 the shipped priors were trained on:

========================  ========================================================================
task                      problem
========================  ========================================================================
``galaxy-deconv``         Moffat PSF, FWHM 4 px, Gaussian noise 1% of the blurred peak
``galaxy-deconv-poisson`` same PSF, Poisson photon noise at the galaxies' own counts (gain 1
                          count per unit) on a sky of 10 counts per pixel, sky-subtracted
``galaxy-cs-fourier``     25% of the Fourier (uv) plane, 1% noise
``galaxy-cs-random``      dense Gaussian sensing, 25% as many measurements as pixels, 1% noise
``ct-20``                 parallel-beam CT, 20 views over 180 degrees, 1% noise
``ct-60``                 parallel-beam CT, 60 views over 180 degrees, 1% noise
``ct-limited-90``         limited-angle CT, 45 views over 90 degrees, 1% noise
``galaxy-inpaint``        30% bad pixels after the Moffat PSF, 1% noise
``field-256``             256 px survey fields (:class:`~dwgf_sci.datasets.FieldDataset`), Moffat
                          PSF FWHM 3 px, beta 3.5, Poisson photon noise (gain 1) on a sky of 20
                          counts per pixel, sky-subtracted; the ``field-64`` patch prior
``ct-256-20``             256 px phantoms, parallel-beam CT, 20 views, 1% noise; the
                          ``ct-patch-64`` patch prior
========================  ========================================================================

The two 256 px tasks (:data:`WIDE_TASKS`) use priors trained on 64 px crops, applied by patches
(:class:`~dwgf_sci.priors.patches.PatchPrior`); they run when named, not by default (each of
their problems costs minutes on a CPU).

"1% noise" is a Gaussian standard deviation of 1% of each noise-free measurement's peak
(``noise_scale="peak"``, as ``dwgf-sci simulate``); the absolute level used is in the physics and
in ``TaskItem.spec``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from deepinv.physics import Physics
from torch import Tensor

from ..errors import ConfigError
from ..operators import build_operator, physics_spec, resolve_spec
from ..pipelines.simulate import item_spec, make_dataset

__all__ = ["SPLIT_SEEDS", "TASKS", "WIDE_TASKS", "Task", "TaskItem", "get_task"]

#: Data seeds of the splits (the shipped priors were trained on data seed 0).
SPLIT_SEEDS = {"validation": 1001, "test": 2002}


@dataclass
class TaskItem:
    """One benchmark problem: truth ``x`` and measurement ``y`` (batch of one), its physics."""

    task: str
    split: str
    index: int
    x: Tensor
    y: Tensor
    physics: Physics
    spec: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """A benchmark task (see the module doc).

    :param name: task name.
    :param description: one line for tables.
    :param dataset: ``"galaxies"`` or ``"phantoms"`` (see
        :func:`~dwgf_sci.pipelines.simulate.make_dataset`).
    :param prior: name of the shipped prior for this object class.
    :param operator: operator preset name.
    :param overrides: ``key=value`` overrides of the preset.
    :param noise_scale: ``"peak"`` (Gaussian sigma relative to the noise-free peak) or
        ``"absolute"``.
    :param size: image side in pixels.
    """

    name: str
    description: str
    dataset: str
    prior: str
    operator: str
    overrides: tuple[str, ...] = field(default_factory=tuple)
    noise_scale: str = "peak"
    size: int = 64

    def spec(self) -> dict[str, Any]:
        """The operator spec (preset plus overrides)."""
        return resolve_spec(self.operator, list(self.overrides))

    def items(self, split: str = "test", n: int = 4, start: int = 0) -> Iterator[TaskItem]:
        """Problems ``start .. start + n - 1`` of a split, reproducibly (same truth and noise).

        :param split: ``"validation"`` (for tuning) or ``"test"`` (for reporting).
        """
        if split not in SPLIT_SEEDS:
            raise ConfigError(f"unknown split {split!r}; choose one of {tuple(SPLIT_SEEDS)}")
        seed = SPLIT_SEEDS[split]
        data = make_dataset(self.dataset, start + n, self.size, seed)
        spec = self.spec()
        for i in range(start, start + n):
            x = data[i][None].float()
            img_size = tuple(x.shape[1:])
            base = build_operator(spec, img_size)
            with torch.no_grad():
                clean = base.A(x)
            used = item_spec(physics_spec(base), clean, self.noise_scale, seed * 100003 + i)
            physics = build_operator(used, img_size)
            with torch.no_grad():
                y = physics(x)
            yield TaskItem(self.name, split, i, x, y, physics, used)


_GAL, _CT = "galaxy-64", "ct-64"
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("galaxy-deconv", "galaxy deconvolution, Moffat 4 px, 1% Gaussian", "galaxies",
             _GAL, "psf"),
        Task("galaxy-deconv-poisson", "galaxy deconvolution, Moffat 4 px, Poisson + sky",
             "galaxies", _GAL, "psf",
             ("noise.type=poisson", "noise.gain=1.0", "noise.sky=10.0"), "absolute"),
        Task("galaxy-cs-fourier", "galaxy compressed sensing, 25% Fourier", "galaxies", _GAL,
             "fourier"),
        Task("galaxy-cs-random", "galaxy compressed sensing, 25% random Gaussian", "galaxies",
             _GAL, "random-cs"),
        Task("ct-20", "sparse-view CT, 20 views", "phantoms", _CT, "ct-sparse"),
        Task("ct-60", "sparse-view CT, 60 views", "phantoms", _CT, "ct-sparse",
             ("n_views=60",)),
        Task("ct-limited-90", "limited-angle CT, 90 degrees", "phantoms", _CT, "ct-limited"),
        Task("galaxy-inpaint", "galaxy inpainting, 30% bad pixels + PSF", "galaxies", _GAL,
             "inpaint-psf"),
        Task("field-256", "256 px survey fields, Moffat 3 px, Poisson + sky 20", "fields",
             "field-64", "psf", ("fwhm=3", "beta=3.5", "noise.type=poisson", "noise.gain=1.0",
             "noise.sky=20.0"), "absolute", 256),
        Task("ct-256-20", "256 px sparse-view CT, 20 views, patch prior", "phantoms",
             "ct-patch-64", "ct-sparse", size=256),
    )
}  # fmt: skip

#: The tasks on images larger than their priors' (by patches): run when named.
WIDE_TASKS = tuple(name for name, task in TASKS.items() if task.size > 64)


def get_task(name: str) -> Task:
    """Look up a benchmark task by name.

    :param name: task name, a key of :data:`TASKS` (e.g. ``"galaxy-deconv"``, ``"ct-20"``).
    :return: the :class:`Task`.
    :raises ConfigError: for an unknown name (the message lists the known ones).
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; choose from {', '.join(TASKS)}") from None
