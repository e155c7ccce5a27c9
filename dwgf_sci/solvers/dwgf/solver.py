r"""DWGF: Diffusion-regularized Wasserstein Gradient Flow (Wang & Akyildiz, arXiv 2509.19276),
assembled from its pieces.

:class:`DWGF` is a thin class that wires

* a configuration (:class:`~.config.DWGFConfig`: one frozen section per thing configured; the
  presets are named configurations),
* a scheme kernel run one level at a time by the shared loop skeleton
  (:class:`~dwgf_sci.solvers.base.LatentSolver`): :class:`~.flow.FlowKernel`,
  :class:`~.smc.SMCKernel` or :class:`~.gibbs.GibbsKernel`,
* the likelihood step those kernels draw with (:mod:`.steps`: exact, latent RTO, image RTO,
  MALA),
* and the stages after the levels: the final decoder-error step (:mod:`.refine`) and the image
  step's retry (:mod:`.retry`), yielded through the same loop, so the progress bar, the
  callback and the history see them.

The maths of every piece is in ``docs/method.md``; why the presets hold their values, with the
validation figures, in ``docs/presets.md``.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import ConfigError
from ...priors.base import LatentPrior
from ..base import LatentSolver, Problem, Steps
from .config import PRESETS, DWGFConfig, keywords
from .flow import FlowKernel
from .gibbs import GibbsKernel
from .refine import DecoderErrorStep
from .retry import ImageRetry
from .smc import SMCKernel
from .state import FlowState, ParticleState

__all__ = ["DWGF"]

#: Options of the shared loop skeleton (:class:`~dwgf_sci.solvers.base.LatentSolver`).
_BASE_OPTIONS = tuple(
    name for name in inspect.signature(LatentSolver.__init__).parameters if name not in
    ("self", "prior")
)  # fmt: skip


class DWGF(LatentSolver):
    """Diffusion-regularized Wasserstein Gradient Flow posterior sampler.

    ``DWGF(prior)`` runs the default preset, ``DWGF(prior, "fast")`` the fast one and
    ``DWGF.reference(prior)`` the reference implementation's settings. Any option of
    :class:`~.config.DWGFConfig` can be given by its keyword (``DWGF(prior, cg_steps=8)``;
    the keywords are listed by :func:`~.config.keywords`), or a whole configuration as
    ``config=``; the loop skeleton's options (``particles``, ``steps``, ``grid``, ``data_term``,
    ``noise_sigma``, ``max_batch``, ``seed``, ``progress``, ``callback``...) are those of
    :class:`~dwgf_sci.solvers.base.LatentSolver`, and a preset chooses the first four.

    :param LatentPrior prior: the prior; solvers rely only on what it declares
        (:attr:`~dwgf_sci.priors.base.LatentPrior.affine_decoder`, ``solver_hints``, decoder
        error), never on its class.
    :param str preset: ``"default"``, ``"fast"`` or ``"reference"``.
    :param DWGFConfig config: start from this configuration instead of the preset's.
    """

    name: ClassVar[str] = "dwgf"

    def __init__(
        self,
        prior: LatentPrior,
        preset: str = "default",
        *,
        config: DWGFConfig | None = None,
        **options: Any,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown DWGF preset {preset!r}; choose one of {sorted(PRESETS)}")
        chosen = PRESETS[preset]
        table = keywords()
        # an option given as None keeps the preset's value (as the keywords always did)
        options = {k: v for k, v in options.items() if v is not None or k not in table}
        base = {k: v for k, v in options.items() if k in _BASE_OPTIONS}
        unknown = [k for k in options if k not in _BASE_OPTIONS and k not in table]
        if unknown:
            near = difflib.get_close_matches(unknown[0], [*table, *_BASE_OPTIONS], n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown DWGF option {unknown[0]!r}{hint}")
        for key, value in chosen.solver.items():
            base.setdefault(key, value)
        super().__init__(prior, **base)
        self.preset = preset
        self._assemble(
            (config or chosen.config).with_options(
                **{k: v for k, v in options.items() if k in table}
            )
        )

    def _assemble(self, cfg: DWGFConfig) -> None:
        """Adopt ``cfg`` (``image_error="auto"`` resolved) and build the pieces from it."""
        if cfg.image.error == "auto":  # the prior's choice, made on its validation problems
            hints = getattr(self.prior, "solver_hints", None) or {}
            cfg = cfg.with_options(image_error=bool(hints.get("image_error", False)))
        self.__dict__["config"] = cfg
        scheme = self.resolved_scheme()
        self.errors = DecoderErrorStep(self, cfg, scheme)
        self.retry = ImageRetry(self, cfg.image.retry)
        if scheme == "flow":
            self.kernel: FlowKernel | SMCKernel | GibbsKernel = FlowKernel(self, cfg)
        elif scheme == "smc":
            self.kernel = SMCKernel(self, cfg, self.errors)
        else:
            self.kernel = GibbsKernel(self, cfg, self.errors)

    @classmethod
    def reference(cls, prior: LatentPrior, **overrides: Any) -> DWGF:
        """DWGF with the reference implementation's settings (the ``"reference"`` preset)."""
        return cls(prior, preset="reference", **overrides)

    def __getattr__(self, name: str) -> Any:
        """Options read by keyword (``solver.cg_steps``), from :attr:`config`."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            config = self.__dict__.get("config")
            if config is None or name not in keywords():
                raise
            section, field = keywords()[name]
            return getattr(config if section is None else getattr(config, section), field)

    def __setattr__(self, name: str, value: Any) -> None:
        """Options set by keyword (``solver.cg_steps = 8``) replace :attr:`config`
        (validated) and rebuild the pieces; ``solver.config = cfg`` adopts a whole one."""
        if name == "config" or ("config" in self.__dict__ and name in keywords()):
            cfg = value if name == "config" else self.config.with_options(**{name: value})
            self._assemble(cfg)
        else:
            super().__setattr__(name, value)

    def resolved_scheme(self) -> str:
        """The scheme a run uses: ``"auto"`` is ``"smc"`` for a prior that declares an affine
        decoder (the likelihood of a noisy latent is then meaningful), ``"gibbs"`` otherwise."""
        if self.config.scheme != "auto":
            return self.config.scheme
        return "smc" if self.prior.affine_decoder else "gibbs"

    def settings(self) -> dict[str, Any]:
        """Every setting: the loop skeleton's, the preset and every option by its keyword, and
        the decoder error the run models."""
        return {
            **super().settings(),
            "preset": self.preset,
            **self.config.settings(),
            "decoder_sigma": self.errors.sigma(),
            "decoder_error_model": self.errors.error_model() is not None,
        }

    def decoder_error_map(self, decoded: Tensor) -> Tensor | None:
        """Per-pixel std of the decoder's error (model units), or None when the final step is
        off (see :class:`~.refine.DecoderErrorStep`)."""
        return self.errors.error_map(decoded)

    # ------------------------------------------------------------------ loop hooks
    def prepare(self, y: Tensor, physics: Any, **kwargs: Any) -> Problem:
        """As the base class, with ``refine_steps`` repeats of the last timestep appended."""
        problem = super().prepare(y, physics, **kwargs)
        extra = self.config.flow.refine_steps
        if extra:
            problem.grid = torch.cat([problem.grid, problem.grid[-1:].repeat(extra)])
        return problem

    def init_state(self, problem: Problem) -> FlowState | ParticleState:
        """The scheme's particles (and optimiser, for the flow)."""
        return self.kernel.init_state(problem)

    def step(
        self, state: FlowState | ParticleState, i: int, t: int, problem: Problem
    ) -> dict[str, float]:
        """One level of the scheme at timestep ``t``."""
        return self.kernel.step(state, t, problem)

    def final_latents(self, state: FlowState | ParticleState, problem: Problem) -> Tensor:
        """The scheme's particles after the last level."""
        return self.kernel.final_latents(state, problem)

    def finish(
        self, state: FlowState | ParticleState, problem: Problem
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Final latents, their decoded images after the decoder-error step, and each
        sample's conditional mean (None when that step is off)."""
        z = self.final_latents(state, problem).detach()
        x, means = self.errors(self.render_no_grad(z), state, problem)
        return z, x, means

    def iterate(self, state: FlowState | ParticleState, problem: Problem) -> Steps:
        """The levels, the final decoder-error step and, where armed, the retry (its levels,
        its final step and a summary ``{"retry": measurements redone, "chi2_before": their
        worst reduced chi-square}``), each yielded to the loop skeleton."""
        grid = [int(t) for t in problem.grid.tolist()]
        snapshot: tuple[int, ParticleState] | None = None
        for i, t in enumerate(grid):
            if (
                snapshot is None
                and isinstance(self.kernel, GibbsKernel)
                and self.retry.arms(state, t, problem)
            ):
                snapshot = (i, state.clone())
            yield t, self.step(state, i, t, problem), state
        result = yield from self._finish_stage(state, problem, grid[-1])
        if snapshot is None:
            return result
        chi2, bad = self.retry.misses(result, problem)
        if not bool(bad.any()):
            return result
        start, again = snapshot
        again.latent_only = True
        for i, t in enumerate(grid[start:], start):
            yield t, {"stage": "retry", **self.step(again, i, t, problem)}, again
        redone = yield from self._finish_stage(again, problem, grid[-1])
        result = self.retry.merge(result, redone, bad, problem.particles)
        yield (
            grid[-1],
            {
                "stage": "retry",
                "retry": float(bad.sum()),
                "chi2_before": float(chi2[bad].max()),
            },
            again,
        )
        return result

    def _finish_stage(self, state: FlowState | ParticleState, problem: Problem, t: int) -> Steps:
        """:meth:`finish`, yielding a ``{"stage": "refine"}`` step when the decoder-error step
        ran."""
        result = self.finish(state, problem)
        if result[2] is not None:
            yield t, {"stage": "refine"}, state
        return result
