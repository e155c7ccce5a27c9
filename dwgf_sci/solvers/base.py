r"""The loop skeleton shared by every latent-diffusion solver (DWGF and the baselines).

A solver subclass only says how to start (:meth:`LatentSolver.init_state`), what one iteration at
timestep :math:`t` does (:meth:`LatentSolver.step`) and which latents it ends with
(:meth:`LatentSolver.final_latents`). Everything else lives here once: input checks (before any
network call), the image/latent shapes, the timestep grid, the data term, particle batching with
``max_batch`` chunks, seeding, the progress bar, the per-step history and callback, timing,
network-call counts, the data fit of the posterior mean and the
:class:`~dwgf_sci.solvers.posterior.Posterior` result.

A solver whose run has more than one pass over the grid, or stages after it (DWGF's final
decoder-error step and its retry of the last levels), overrides :meth:`LatentSolver.iterate`:
every step it yields goes through the same progress bar, history and callback. A yielded
``info`` with a ``"stage"`` key marks a step that is not a level of the first pass.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from deepinv.models import Reconstructor
from deepinv.physics import Physics
from torch import Tensor
from tqdm.auto import tqdm

from .._checks import check_finite
from ..errors import (
    ConfigError,
    InvalidDataError,
    OperatorMismatchError,
    OperatorTypeError,
    ShapeError,
)
from ..priors.base import LatentPrior
from .flux_scale import FluxScale, check_flux_scale, choose_flux_scale
from .likelihood import DataTerm, chi2_limit
from .posterior import Posterior
from .schedule import timestep_grid

#: What solvers use of a prior: the :class:`~dwgf_sci.priors.base.LatentPrior` interface. A
#: prior is checked for these, not for its class.
PRIOR_INTERFACE = (
    "encode",
    "decode",
    "predict_noise",
    "latent_shape",
    "to_model",
    "from_model",
    "alphas_cumprod",
    "affine_decoder",
    "calls",
    "reset_calls",
)

StepCallback = Callable[[int, int, dict[str, float], Any], None]
#: What :meth:`LatentSolver.iterate` yields after each step, ``(t, info, state)`` (the state
#: the step worked on, which the callback receives), and returns: the final latents, the
#: samples and their conditional means (or None).
Steps = Generator[tuple[int, dict[str, float], Any], None, tuple[Tensor, Tensor, "Tensor | None"]]


@dataclass
class Problem:
    """Everything a solver step needs about one call: measurements, operator and shapes.

    Particles of all measurements are stacked along the batch dimension: rows
    ``b * particles ... (b + 1) * particles - 1`` belong to measurement ``b``.
    """

    y: Tensor
    y_rep: Tensor
    physics: Physics
    data_term: DataTerm
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    batch: int
    particles: int
    grid: Tensor
    generator: torch.Generator
    device: torch.device
    dtype: torch.dtype
    #: The units the call solves in: ``y`` and ``data_term`` are the data's divided by
    #: ``flux.factor``, and the result is multiplied back (:mod:`~dwgf_sci.solvers.flux_scale`).
    flux: FluxScale = field(default_factory=FluxScale)

    @property
    def n(self) -> int:
        """Total number of particles, ``batch * particles``."""
        return self.batch * self.particles


class LatentSolver(Reconstructor):
    """Base class of samplers driven by a :class:`~dwgf_sci.priors.base.LatentPrior`.

    Calling a solver, ``solver(y, physics)``, returns a :class:`Posterior`, which is also the
    posterior-mean tensor: the solver is a deepinv :class:`~deepinv.models.Reconstructor`.

    :param LatentPrior prior: the prior (any implementation of the interface).
    :param int particles: samples per measurement (>= 1).
    :param int steps: solver iterations, one per timestep of the grid.
    :param str grid: timestep grid kind (see :func:`~dwgf_sci.solvers.schedule.timestep_grid`).
    :param int t_min: smallest timestep visited.
    :param int t_max: largest timestep visited (default: the prior's last).
    :param str data_term: ``"gaussian"`` (noise-level weighted), ``"poisson"`` or ``"mse"``.
    :param float noise_sigma: Gaussian noise std in measurement units; ``None`` reads the physics.
    :param flux_scale: ``"auto"`` (default) solves in the prior's intensity units when the
        physics is linear and the prior records its training range, and scales the result back
        (exact for Gaussian and Poisson noise); a number fixes the factor; ``None`` keeps the
        data's units. See :mod:`~dwgf_sci.solvers.flux_scale`.
    :param int max_batch: most particles sent through a network at once (``None``: all).
    :param int seed: seed of every random draw; the same seed on the same device gives the same
        samples.
    :param bool progress: show a tqdm progress bar.
    :param callback: called after each step as ``callback(step, t, info, state)``.
    :param tuple img_size: image shape ``(C, H, W)`` if neither the physics nor the prior fixes it.
    """

    name: ClassVar[str] = "latent-solver"

    def __init__(
        self,
        prior: LatentPrior,
        *,
        particles: int = 1,
        steps: int = 100,
        grid: str = "linear",
        t_min: int = 0,
        t_max: int | None = None,
        data_term: str = "gaussian",
        noise_sigma: float | None = None,
        flux_scale: str | float | None = "auto",
        max_batch: int | None = None,
        seed: int = 0,
        progress: bool = False,
        callback: StepCallback | None = None,
        img_size: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        missing = [name for name in PRIOR_INTERFACE if not hasattr(prior, name)]
        if missing:
            raise TypeError(
                f"prior must implement the LatentPrior interface; {type(prior).__name__} lacks "
                + ", ".join(missing)
            )
        if int(particles) != particles or particles < 1:
            raise ConfigError(f"particles must be an integer >= 1, found {particles}")
        if int(steps) != steps or steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, found {steps}")
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1 or None, found {max_batch}")
        self.prior = prior
        self.particles = int(particles)
        self.steps = int(steps)
        self.grid = grid
        self.t_min = int(t_min)
        self.t_max = t_max
        self.data_term = DataTerm(data_term, noise_sigma)
        self.flux_scale = check_flux_scale(flux_scale)
        self.max_batch = max_batch
        self.seed = int(seed)
        self.progress = progress
        self.callback = callback
        self.img_size = tuple(img_size) if img_size is not None else None
        timestep_grid(prior.alphas_cumprod, self.steps, grid, self.t_min, t_max)  # validates

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """Every setting of this solver, JSON-serialisable (stored in the result's provenance)."""
        return {
            "solver": self.name,
            "particles": self.particles,
            "steps": self.steps,
            "grid": self.grid,
            "t_min": self.t_min,
            "t_max": self.t_max,
            "data_term": self.data_term.kind,
            "noise_sigma": self.data_term.sigma,
            "flux_scale": self.flux_scale,
            "max_batch": self.max_batch,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ subclass hooks
    def init_state(self, problem: Problem) -> Any:
        """Create the solver state (e.g. particles and optimiser) before the first step."""
        raise NotImplementedError

    def step(self, state: Any, i: int, t: int, problem: Problem) -> dict[str, float]:
        """Run iteration ``i`` at timestep ``t``; return scalars for the history."""
        raise NotImplementedError

    def final_latents(self, state: Any, problem: Problem) -> Tensor:
        """Latents ``(batch * particles, c, h, w)`` to decode into the samples."""
        raise NotImplementedError

    def finish(self, state: Any, problem: Problem) -> tuple[Tensor, Tensor, Tensor | None]:
        """After the last step: the final latents, the samples decoded from them and each
        sample's conditional mean where the solver has one (here: None). A solver with a final
        step on the decoded images (DWGF's decoder-error step) overrides this."""
        z = self.final_latents(state, problem).detach()
        return z, self.render_no_grad(z), None

    def iterate(self, state: Any, problem: Problem) -> Steps:
        """The run's steps: :meth:`step` at each timestep of the grid, yielding ``(t, info,
        state)``
        after each, then :meth:`finish`, whose result it returns. A solver with stages after
        the grid overrides this (see the module documentation)."""
        for i, t in enumerate(problem.grid.tolist()):
            yield int(t), self.step(state, i, int(t), problem), state
        return self.finish(state, problem)

    # ------------------------------------------------------------------ shared helpers
    def alpha_bar(self, t: int, problem: Problem) -> float:
        r""":math:`\bar\alpha_t` as a Python float."""
        return float(self.prior.alphas_cumprod[int(t)])

    def chunks(self, n: int) -> Iterator[slice]:
        """Slices of at most ``max_batch`` rows covering ``range(n)``."""
        size = n if self.max_batch is None else self.max_batch
        for start in range(0, n, size):
            yield slice(start, min(start + size, n))

    def randn(self, shape: tuple[int, ...], problem: Problem) -> Tensor:
        """Standard normal draws from the call's generator."""
        return torch.randn(
            shape, generator=problem.generator, device=problem.device, dtype=problem.dtype
        )

    def predict_noise(self, z_t: Tensor, t: int) -> Tensor:
        """:math:`\\epsilon_\\theta(z_t, t)` without gradient, in ``max_batch`` chunks."""
        with torch.no_grad():
            parts = [self.prior.predict_noise(z_t[sl], t) for sl in self.chunks(len(z_t))]
        return torch.cat(parts)

    def render(self, z: Tensor) -> Tensor:
        """Decode latents to images in physical units (differentiable)."""
        return self.prior.from_model(self.prior.decode(z))

    def render_no_grad(self, z: Tensor) -> Tensor:
        """Decode latents to physical images without gradient, in ``max_batch`` chunks."""
        with torch.no_grad():
            return torch.cat([self.render(z[sl]) for sl in self.chunks(len(z))])

    def encode_physical(self, x: Tensor) -> Tensor:
        """Encode physical-unit images to latents without gradient, in ``max_batch`` chunks."""
        with torch.no_grad():
            parts = [self.prior.encode(self.prior.to_model(x[sl])) for sl in self.chunks(len(x))]
        return torch.cat(parts)

    def pseudo_inverse(self, problem: Problem) -> Tensor:
        """:math:`A^\\dagger y` per measurement, physical units ``(batch, C, H, W)``."""
        physics = problem.physics
        with torch.no_grad():
            if hasattr(physics, "A_dagger"):
                x = physics.A_dagger(problem.y)
            else:
                x = torch.zeros((problem.batch, *problem.image_shape), device=problem.device)
        return x.real if torch.is_complex(x) else x

    # ------------------------------------------------------------------ the loop
    def forward(self, y: Tensor, physics: Physics, **kwargs: Any) -> Posterior:
        """deepinv entry point: same as :meth:`sample` (the result is the posterior mean)."""
        return self.sample(y, physics, **kwargs)

    def sample(
        self,
        y: Tensor,
        physics: Physics,
        *,
        img_size: tuple[int, int, int] | None = None,
        seed: int | None = None,
        callback: StepCallback | None = None,
    ) -> Posterior:
        """Draw ``particles`` posterior samples for each measurement in ``y``.

        :param Tensor y: measurements ``(B, ...)`` in the physics' units.
        :param Physics physics: forward model (any deepinv physics; linear or not).
        :param tuple img_size: image shape ``(C, H, W)`` when it cannot be inferred.
        :param int seed: overrides the solver's seed for this call.
        :param callback: overrides the solver's callback for this call.
        :return: a :class:`Posterior` (samples in physical units).
        """
        problem = self.prepare(y, physics, img_size=img_size, seed=seed)
        # computed in the prior's precision, returned in the input's (real float dtypes)
        out_dtype = y.dtype if y.is_floating_point() else None
        callback = callback or self.callback
        self.prior.reset_calls()
        history: list[dict[str, float]] = []
        start = time.perf_counter()
        level_time, levels = 0.0, 0
        bar = tqdm(total=len(problem.grid), desc=self.name, disable=not self.progress)
        # gradients are needed even when called under no_grad (deepinv's test loop does that)
        with torch.enable_grad(), bar:
            state = self.init_state(problem)
            steps = self.iterate(state, problem)
            i, tick = 0, time.perf_counter()
            while True:
                try:
                    t, info, live = next(steps)
                except StopIteration as done:
                    z, x, conditional_means = done.value
                    break
                now = time.perf_counter()
                if "stage" not in info:
                    level_time, levels = level_time + now - tick, levels + 1
                info = {"step": i, "t": int(t), **info}
                history.append(info)
                if callback is not None:
                    callback(i, int(t), info, live)
                if i >= bar.total:
                    bar.total = i + 1
                bar.update()
                i, tick = i + 1, time.perf_counter()
        b, n = problem.batch, problem.particles
        mean = None
        if conditional_means is not None:
            mean = conditional_means.reshape(b, n, *x.shape[1:]).mean(1)
        samples = x.reshape(b, n, *x.shape[1:])
        fit = self.data_fit(samples.mean(1) if mean is None else mean, problem)
        if problem.flux.factor != 1.0:  # back to the data's units
            x = x * problem.flux.factor
            mean = None if mean is None else mean * problem.flux.factor
        if out_dtype is not None and out_dtype != x.dtype:
            x = x.to(out_dtype)
            mean = None if mean is None else mean.to(out_dtype)
        post = Posterior(
            x.reshape(b, n, *x.shape[1:]),
            settings=self.settings(),
            timing={"total_s": 0.0, "per_step_s": level_time / max(1, levels)},
            calls=dict(self.prior.calls),
            history=history,
            latents=z.reshape(b, n, *z.shape[1:]),
            mean=mean,
        )
        post.fit = fit
        post.flux = problem.flux.to_dict()
        post.timing["total_s"] = time.perf_counter() - start
        return post

    def data_fit(self, mean: Tensor, problem: Problem) -> dict[str, Any]:
        """Reduced chi-square of the posterior mean per measurement under the run's data term
        and the limit above which the mean misses its data (:func:`chi2_limit`); empty for the
        unweighted ``"mse"`` data term. Computed once per run and carried by the result."""
        if problem.data_term.kind == "mse":
            return {}
        with torch.no_grad():
            ax = problem.physics.A(mean.to(problem.y.device))
            chi2 = problem.data_term.reduced_chi2(ax, problem.y)
            counts = problem.data_term.informative(ax).tolist()
        limits = torch.tensor([chi2_limit(int(k)) for k in counts], dtype=torch.float64)
        return {"reduced_chi2": chi2.detach(), "limit": limits}

    # ------------------------------------------------------------------ checks
    def image_shape(self, y: Tensor, physics: Physics, img_size: Any) -> tuple[int, int, int]:
        """Image shape ``(C, H, W)``: argument, solver, physics, prior, then ``A^T y``."""
        for candidate in (img_size, self.img_size, getattr(physics, "img_size", None)):
            if candidate is not None and len(candidate) == 3:
                return tuple(int(s) for s in candidate)
        if self.prior.image_size is not None:
            return (self.prior.image_channels, *self.prior.image_size)
        if hasattr(physics, "A_adjoint"):
            with torch.no_grad():
                x = physics.A_adjoint(y[:1])
            return tuple(x.shape[1:])
        raise OperatorMismatchError(
            "cannot infer the image size from the physics or the prior; pass img_size=(C, H, W)"
        )

    def resolve_data_term(self, physics: Physics) -> DataTerm:
        """The data term bound to ``physics`` (its noise level or map)."""
        return self.data_term.resolve(physics)

    @staticmethod
    def unmasked(y: Tensor, data_term: DataTerm) -> Tensor:
        """``y`` checked for finite values where it carries information; masked pixels (infinite
        variance in the noise map: NaN in a survey file) are set to 0, a value nothing reads."""
        if data_term.variance_map is None:
            check_finite(y, "the measurement y")
            return y
        masked = ~torch.isfinite(data_term.variance_like(y))
        check_finite(torch.where(masked, 0.0, y), "the measurement y (its unmasked pixels)")
        return torch.where(masked, 0.0, y)

    def prepare(
        self,
        y: Tensor,
        physics: Physics,
        img_size: tuple[int, int, int] | None = None,
        seed: int | None = None,
    ) -> Problem:
        """Check the inputs against each other and build the :class:`Problem` (no network call)."""
        if not torch.is_tensor(y):
            raise InvalidDataError(f"y must be a torch.Tensor, found {type(y).__name__}")
        if y.ndim < 2:
            raise ShapeError(f"y must have a batch dimension (B, ...), found {tuple(y.shape)}")
        if not isinstance(physics, Physics):
            raise OperatorTypeError(
                f"physics must be a deepinv Physics (the forward operator), found "
                f"{type(physics).__name__}"
            )
        data_term = self.resolve_data_term(physics)
        device = self.prior.device
        dtype = (
            torch.float32
            if self.prior.dtype in (torch.float16, torch.bfloat16)
            else (self.prior.dtype)
        )
        shape = self.image_shape(y, physics, img_size)
        latent = self.prior.latent_shape(shape)
        try:
            with torch.no_grad():
                probe = physics.A(torch.zeros((1, *shape), device=y.device, dtype=dtype))
        except Exception as exc:  # the operator rejects the image size
            raise OperatorMismatchError(
                f"the physics cannot be applied to an image of shape {shape}: {exc}"
            ) from exc
        if tuple(probe.shape[1:]) != tuple(y.shape[1:]):
            hint = ""
            if tuple(y.shape) == tuple(probe.shape[1:]):
                hint = "; add the batch dimension (y[None])"
            raise OperatorMismatchError(
                f"the measurement y has shape {tuple(y.shape)}, not (B, *{tuple(probe.shape[1:])})"
                f" as the physics gives for a {shape} image{hint}"
            )
        if torch.is_complex(y) and not torch.is_complex(probe):
            raise InvalidDataError(
                "the measurement y is complex but the physics gives real measurements"
            )
        data_term.bind(y, self.particles)
        y = self.unmasked(y, data_term)
        flux = choose_flux_scale(self.flux_scale, y, physics, data_term, self.prior, shape, dtype)
        if flux.factor != 1.0:
            y, data_term = y / flux.factor, data_term.scaled(flux.factor)
        flat = y.reshape(y.shape[0], -1)
        if bool((flat == flat[:, :1]).all()):
            warnings.warn(
                f"the measurement y is constant ({float(flat[0, 0].real):g} everywhere): the "
                "data say nothing about the image; check the file or the HDU",
                stacklevel=3,
            )
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed if seed is None else int(seed))
        grid = timestep_grid(
            self.prior.alphas_cumprod, self.steps, self.grid, self.t_min, self.t_max
        )
        # the measurements in the solver's precision (numpy's float64 included): every tensor a
        # step mixes with them is in that dtype
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        y = y.to(device=device, dtype=complex_dtype if torch.is_complex(y) else dtype)
        return Problem(
            y=y,
            y_rep=y.repeat_interleave(self.particles, dim=0),
            physics=physics,
            data_term=data_term,
            image_shape=shape,
            latent_shape=latent,
            batch=int(y.shape[0]),
            particles=self.particles,
            grid=grid,
            generator=generator,
            device=device,
            dtype=dtype,
            flux=flux,
        )
