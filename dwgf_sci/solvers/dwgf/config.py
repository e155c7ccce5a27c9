r"""DWGF's options: frozen dataclasses grouped by what they configure, and the named presets.

Every option is a field of exactly one section below, validated in that section's
``__post_init__`` and documented in its docstring. A field's keyword (the name users pass to
:class:`~dwgf_sci.solvers.dwgf.DWGF`, written in ``settings()`` and in the provenance of every
output) is the field name, prefixed where the section says so: ``RTOConfig.cg_steps`` is
``cg_steps``, ``MALAConfig.steps`` is ``mala_steps``. :func:`keywords` lists them all, so an
option reaches ``settings()`` by construction.

Presets (:data:`PRESETS`) are named :class:`DWGFConfig` values plus the base solver's options
(particles, steps, grid, data term) they choose. Why each preset holds the values it does, and
the validation figures behind them, is in ``docs/presets.md``.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from ...errors import ConfigError

__all__ = [
    "DWGFConfig",
    "FlowConfig",
    "ImageStepConfig",
    "MALAConfig",
    "PRESETS",
    "Preset",
    "RTOConfig",
    "RefineConfig",
    "SMCConfig",
    "keywords",
]

SCHEMES = ("flow", "smc", "gibbs", "auto")
LIKELIHOOD_STEPS = ("auto", "exact", "image", "rto", "mala")
OPTIMIZERS = ("adam", "sgd", "psgld")
WEIGHT_SCHEDULES = ("constant", "score")
INITS = ("random", "pinv")
CG_STARTS = ("current", "centre", "switch")
MALA_STARTS = ("reference", "previous")
DECODER_ERRORS = ("auto", "white")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {choices}")


def _coerce(section: Any) -> None:
    """Cast each option to the type of its default: numbers (numpy's included) to ``float`` or
    ``int`` (an int option given a non-integer value is refused), flags to ``bool``, pairs to a
    tuple of floats."""
    for f in fields(section):
        value, default = getattr(section, f.name), f.default
        if isinstance(default, bool):
            if isinstance(value, numbers.Number):
                object.__setattr__(section, f.name, bool(value))
        elif isinstance(default, int) and isinstance(value, numbers.Real):
            if float(value) != int(value):
                raise ConfigError(f"{f.name} must be an integer, found {value}")
            object.__setattr__(section, f.name, int(value))
        elif isinstance(default, float) and isinstance(value, numbers.Real):
            object.__setattr__(section, f.name, float(value))
        elif isinstance(default, tuple):
            try:
                if isinstance(value, str):
                    raise TypeError
                object.__setattr__(section, f.name, tuple(float(v) for v in value))
            except (TypeError, ValueError):
                raise ConfigError(f"{f.name} must be numbers, found {value!r}") from None


def _at_least(name: str, value: float, low: float, strict: bool = False) -> None:
    ok = value > low if strict else value >= low
    if not (ok and math.isfinite(value)):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {low}, found {value}")


@dataclass(frozen=True)
class FlowConfig:
    r"""The optimiser-driven flow (``scheme="flow"``, the reference implementation's scheme).

    Particles :math:`z` move by a first-order optimiser on the sum of the prior drift
    :math:`w_t \big[\tfrac{s}{a}(\hat\epsilon - \epsilon) - (z - \bar z)\big]`, the data term
    and the optional encoder term (``docs/method.md``). Unused by the other schemes, but for
    ``refine_steps``, which extends the grid of any scheme.

    :param optimizer: ``"adam"``, ``"sgd"`` or ``"psgld"`` (RMSprop-preconditioned SGD, the
        preconditioned-Langevin integrator when ``temperature > 0``).
    :param lr: learning rate (step size), > 0.
    :param betas: Adam's betas; ``betas[1]`` is also pSGLD's squared-gradient decay.
    :param prior_weight: :math:`w`.
    :param prior_weight_schedule: ``"constant"`` (:math:`w_t = w`) or ``"score"``
        (:math:`w_t = w\,\bar\alpha_t/(1-\bar\alpha_t)`, an unbiased prior score).
    :param encoder_weight: :math:`\gamma` of the encoder term (0 switches it off).
    :param decoder_noise: :math:`\sigma_d`, std of the noise added to decoded images (model units).
    :param interaction: include the particle-mixture score (the particles' interaction).
    :param score_noise: evaluate the network at a noisy copy :math:`a z + s\epsilon`
        (reference); ``False`` evaluates it at :math:`a z`, the exact score of the smoothed prior.
    :param temperature: scale of the Langevin noise (0: a deterministic flow).
    :param refine_steps: extra steps at the grid's last timestep.
    :param precond_power: pSGLD's preconditioner is :math:`(\overline{g^2})^{-p/2}`; 1 is
        RMSprop's, 0 turns the preconditioning off. In [0, 1].
    """

    optimizer: str = "psgld"
    lr: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    prior_weight: float = 1.0
    prior_weight_schedule: str = "score"
    encoder_weight: float = 0.0
    decoder_noise: float = 0.0
    interaction: bool = False
    score_noise: bool = False
    temperature: float = 1.0
    refine_steps: int = 0
    precond_power: float = 1.0

    def __post_init__(self) -> None:
        _coerce(self)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("prior_weight_schedule", self.prior_weight_schedule, WEIGHT_SCHEDULES)
        _at_least("lr", self.lr, 0.0, strict=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), found {self.betas}")
        for name in ("prior_weight", "encoder_weight", "decoder_noise", "temperature"):
            _at_least(name, getattr(self, name), 0.0)
        if self.temperature > 0 and self.optimizer == "adam":
            raise ConfigError("temperature > 0 needs optimizer 'sgd' or 'psgld', not 'adam'")
        _at_least("refine_steps", self.refine_steps, 0)
        if not 0 <= self.precond_power <= 1:
            raise ConfigError(f"precond_power must lie in [0, 1], found {self.precond_power}")


@dataclass(frozen=True)
class SMCConfig:
    r"""The annealed split-Gibbs SMC (``scheme="smc"``; ``"auto"`` for an affine decoder).

    :param split: :math:`\kappa \in (0, 1]`, the share :math:`\delta^2 = \kappa\rho^2` of the
        noise level handled by the prior half-step.
    :param resample_ess: resample a measurement's particles when their effective sample size
        falls below this fraction of them (0: no reweighting). In [0, 1].
    :param laplacian_probes: Hutchinson probes of the weights' Laplacian correction (0: off;
        one more UNet forward each per level).
    """

    split: float = 0.5
    resample_ess: float = 0.5
    laplacian_probes: int = 0

    def __post_init__(self) -> None:
        _coerce(self)
        if not 0 < self.split <= 1:
            raise ConfigError(f"split must lie in (0, 1], found {self.split}")
        if not 0 <= self.resample_ess <= 1:
            raise ConfigError(f"resample_ess must lie in [0, 1], found {self.resample_ess}")
        _at_least("laplacian_probes", self.laplacian_probes, 0)


@dataclass(frozen=True)
class RTOConfig:
    r"""The latent randomise-then-optimise likelihood step (``likelihood_step="rto"``).

    One damped Gauss-Newton step on the perturbed conditional, solved by conjugate gradients
    through the decoder (``docs/method.md``).

    :param cg_steps: CG iterations (one decoder forward and backward per particle each), >= 1.
    :param cg_start: where CG starts: ``"current"`` (the particle), ``"centre"`` (the perturbed
        prior centre: directions CG does not reach keep the prior's draw) or ``"switch"``
        (``"centre"`` above noise level ``cg_switch``, ``"current"`` below).
    :param cg_switch: the noise level :math:`\rho` where ``"switch"`` changes start, >= 0.
    :param line_search: most objective evaluations of the backtracking, >= 1.
    """

    cg_steps: int = 5
    cg_start: str = "switch"
    cg_switch: float = 3.0
    line_search: int = 3

    def __post_init__(self) -> None:
        _coerce(self)
        if self.cg_steps < 1 or self.line_search < 1:
            raise ConfigError(
                f"cg_steps and line_search must be >= 1, found {self.cg_steps}, {self.line_search}"
            )
        _choice("cg_start", self.cg_start, CG_STARTS)
        _at_least("cg_switch", self.cg_switch, 0.0)

    def starts_at_centre(self, var: float) -> bool:
        r"""Whether a step with prior variance ``var`` starts from the prior's draw
        (``"switch"``: when ``var`` exceeds :math:`c^2/(1+c^2)`, :math:`c` = ``cg_switch``,
        the Gibbs scheme's :math:`v` at noise level :math:`c`)."""
        if self.cg_start == "switch":
            return var > self.cg_switch**2 / (1.0 + self.cg_switch**2)
        return self.cg_start == "centre"


@dataclass(frozen=True)
class MALAConfig:
    r"""The Metropolis-adjusted Langevin likelihood step (``likelihood_step="mala"``; any data
    term, physics and decoder). Keywords are prefixed ``mala_``.

    :param steps: MALA steps per level and sweep (one decoder forward and backward each), >= 1.
    :param accept: acceptance rate the step size adapts to, in (0, 1).
    :param start: ``"reference"`` (each level starts from a draw of the prior factor) or
        ``"previous"`` (from the particle: an exactly invariant Metropolis-within-Gibbs step).
    """

    steps: int = 2
    accept: float = 0.6
    start: str = "reference"

    def __post_init__(self) -> None:
        _coerce(self)
        if not 0 < self.accept < 1:
            raise ConfigError(f"mala_accept must lie in (0, 1), found {self.accept}")
        _choice("mala_start", self.start, MALA_STARTS)
        if self.steps < 1:
            raise ConfigError(f"mala_steps must be >= 1, found {self.steps}")


@dataclass(frozen=True)
class ImageStepConfig:
    r"""The image-space likelihood step (``likelihood_step="image"``, the fast preset's).
    Keywords are prefixed ``image_``.

    :param until: noise level :math:`\rho` below which the levels use the latent RTO step
        instead (0: the image step at every level), >= 0.
    :param retry: noise level from which the levels run again with the latent RTO step for a
        measurement whose posterior mean misses its data (0: never), >= 0.
    :param error: whether the image-space prior adds the decoder's per-pixel error variance:
        True, False or ``"auto"`` (the prior's ``solver_hints["image_error"]``, resolved when
        the solver is built).
    """

    until: float = 0.0
    retry: float = 0.0
    error: bool | str = "auto"

    def __post_init__(self) -> None:
        _coerce(self)
        _at_least("image_until", self.until, 0.0)
        _at_least("image_retry", self.retry, 0.0)
        if self.error != "auto" and not isinstance(self.error, bool):
            raise ConfigError(f"image_error must be True, False or 'auto', found {self.error!r}")


@dataclass(frozen=True)
class RefineConfig:
    r"""The final decoder-error step and the image-space CG it shares with the image step.
    Keywords: ``decoder_error``, ``refine_cg_steps``, ``refine_cg_tol``.

    :param decoder_error: how the final step models the decoder's error :math:`e = x - D(z)`:
        ``"auto"`` (the prior's per-pixel model, else its ``decoder_sigma``), ``"white"`` (its
        ``decoder_sigma`` at every pixel), a number :math:`\sigma_D` >= 0 (0: the step is off).
    :param cg_steps: CG iterations of the image-space steps (no network call), >= 1.
    :param cg_tol: stop those iterations once every row's preconditioned residual is below this
        fraction of its first value (0: never), in [0, 1).
    """

    decoder_error: str | float = "auto"
    cg_steps: int = 20
    cg_tol: float = 0.0

    def __post_init__(self) -> None:
        _coerce(self)
        if self.decoder_error not in DECODER_ERRORS:
            try:
                value = float(self.decoder_error)
                ok = value >= 0 and math.isfinite(value)
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ConfigError(
                    f"decoder_error must be one of {DECODER_ERRORS} or a number >= 0, found "
                    f"{self.decoder_error!r}"
                )
        if self.cg_steps < 1:
            raise ConfigError(f"refine_cg_steps must be >= 1, found {self.cg_steps}")
        if not 0 <= self.cg_tol < 1:
            raise ConfigError(f"refine_cg_tol must be in [0, 1), found {self.cg_tol}")


@dataclass(frozen=True)
class DWGFConfig:
    r"""Every DWGF option, grouped by section.

    :param scheme: ``"flow"``, ``"smc"``, ``"gibbs"`` or ``"auto"`` (``"smc"`` for a prior that
        declares an affine decoder, ``"gibbs"`` otherwise).
    :param likelihood_step: ``"exact"`` (Gaussian data, linear physics, affine decoder),
        ``"rto"``, ``"image"``, ``"mala"`` or ``"auto"`` (``"exact"`` where it applies, else
        ``"rto"`` for a Gaussian or Poisson data term, else ``"mala"``).
    :param init: ``"random"`` (:math:`\mathcal{N}(0, I)`) or ``"pinv"`` (the encoded
        :math:`A^\dagger y`, perturbed by ``init_noise``).
    :param init_noise: std of the per-particle perturbation of a ``"pinv"`` start, >= 0.
    :param sweeps: Gibbs sweeps per level of the ``"smc"`` and ``"gibbs"`` schemes, >= 1.
    """

    scheme: str = "auto"
    likelihood_step: str = "auto"
    init: str = "random"
    init_noise: float = 1.0
    sweeps: int = 1
    flow: FlowConfig = field(default_factory=FlowConfig)
    smc: SMCConfig = field(default_factory=SMCConfig)
    rto: RTOConfig = field(default_factory=RTOConfig)
    mala: MALAConfig = field(default_factory=MALAConfig)
    image: ImageStepConfig = field(default_factory=ImageStepConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        _coerce(self)
        _choice("scheme", self.scheme, SCHEMES)
        _choice("likelihood_step", self.likelihood_step, LIKELIHOOD_STEPS)
        _choice("init", self.init, INITS)
        _at_least("init_noise", self.init_noise, 0.0)
        if self.sweeps < 1:
            raise ConfigError(f"sweeps must be >= 1, found {self.sweeps}")

    def settings(self) -> dict[str, Any]:
        """Every option by its keyword (JSON-serialisable)."""
        out = {}
        for key, (section, name) in keywords().items():
            value = getattr(self if section is None else getattr(self, section), name)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def with_options(self, **options: Any) -> DWGFConfig:
        """A copy with options replaced by keyword (validated; an unknown keyword is an error
        that names the closest ones)."""
        table = keywords()
        unknown = [key for key in options if key not in table]
        if unknown:
            near = difflib.get_close_matches(unknown[0], list(table), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown DWGF option {unknown[0]!r}{hint}")
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in options.items():
            section, name = table[key]
            if section is None:
                top[name] = value
            else:
                sections.setdefault(section, {})[name] = value
        for section, values in sections.items():
            top[section] = replace(getattr(self, section), **values)
        return replace(self, **top)


#: Keyword prefix of each section's fields (``None``: the field name itself).
_PREFIX = {
    "flow": "",
    "smc": "",
    "rto": "",
    "mala": "mala_",
    "image": "image_",
    "refine": "refine_",
}


@functools.cache
def keywords() -> Mapping[str, tuple[str | None, str]]:
    """Keyword of every option -> ``(section, field)`` (section None: a top-level field)."""
    table: dict[str, tuple[str | None, str]] = {}
    for top in fields(DWGFConfig):
        if top.name not in _PREFIX:
            table[top.name] = (None, top.name)
            continue
        for f in fields(top.default_factory()):  # type: ignore[misc]
            key = f.name if f.name == "decoder_error" else _PREFIX[top.name] + f.name
            table[key] = (top.name, f.name)
    return MappingProxyType(table)


@dataclass(frozen=True)
class Preset:
    """A named configuration and the base solver's options it chooses."""

    name: str
    config: DWGFConfig
    solver: Mapping[str, Any]


#: The reference implementation's settings: Adam lr 1.0, 4 particles, a 1000-step DDIM grid,
#: w = 0.15, encoder weight 0.1, decoder noise 0.01, unweighted mean-squared data term.
REFERENCE = Preset(
    "reference",
    DWGFConfig(
        scheme="flow",
        flow=FlowConfig(
            optimizer="adam",
            lr=1.0,
            prior_weight=0.15,
            prior_weight_schedule="constant",
            encoder_weight=0.1,
            decoder_noise=0.01,
            interaction=True,
            score_noise=True,
            temperature=0.0,
        ),
    ),
    MappingProxyType({"particles": 4, "steps": 1000, "grid": "linear", "data_term": "mse"}),
)

#: The toolkit's default: the Gibbs scheme with the latent RTO step for a learned decoder,
#: the split-Gibbs SMC with the exact step for an affine one; 50 levels, 4 particles.
DEFAULT = Preset(
    "default",
    DWGFConfig(),
    MappingProxyType({"particles": 4, "steps": 50, "grid": "linear", "data_term": "gaussian"}),
)

#: The default with the image-space likelihood step at every level and the latent step rerun
#: on the last two levels where the posterior mean misses its data.
FAST = Preset(
    "fast",
    DWGFConfig(likelihood_step="image", image=ImageStepConfig(retry=0.1)),
    DEFAULT.solver,
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (REFERENCE, DEFAULT, FAST)})
