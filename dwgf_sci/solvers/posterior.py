r"""The result of a posterior sampler.

A :class:`Posterior` *is* the posterior-mean tensor (shape ``(B, C, H, W)``, physical units), so a
solver can be used wherever deepinv expects a reconstruction ``x_hat = model(y, physics)``. It also
carries the samples, the per-pixel standard deviation, the settings, timing and network-call counts.
Torch operations on it return plain tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError


class _CallableView(Tensor):
    """A plain tensor that can also be called like the :class:`~torch.Tensor` method it shadows.

    ``Posterior.mean`` and ``Posterior.std`` are tensors (posterior mean and standard deviation),
    while generic code may still call ``x.mean(...)`` / ``x.std(...)`` on a reconstruction: such a
    call behaves exactly as on the plain posterior-mean tensor.
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: D105
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return getattr(Tensor, self._method)(self._owner, *args, **kwargs)


def _view(data: Tensor, method: str, owner: Tensor) -> Tensor:
    view = Tensor._make_subclass(_CallableView, data, False)
    view._method = method
    view._owner = owner
    return view


def check_sample_count(n: int | None) -> None:
    """Refuse a negative count of samples to store (``None``: all, 0: none).

    :raises ConfigError: ``n`` < 0.
    """
    if n is not None and int(n) < 0:
        raise ConfigError(f"samples must be >= 0 (or None: all), found {n}")


def first_samples(samples: Tensor, n: int | None) -> Tensor:
    """The first ``n`` of ``samples`` ``(N, ...)`` (``None``: all), the samples an output stores.

    :raises ConfigError: ``n`` < 0.
    """
    check_sample_count(n)
    return samples if n is None else samples[: int(n)]


class Posterior(Tensor):
    """Posterior samples of one or more measurements.

    :param Tensor samples: ``(B, N, C, H, W)``: ``N`` samples for each of ``B`` measurements,
        physical units.
    :param dict settings: solver name and every setting used (JSON-serialisable).
    :param dict timing: wall time in seconds (``total``, ``per_step``).
    :param dict calls: network calls (``unet``, ``decoder``, ``decoder_backward``, ``encoder``),
        counted per particle.
    :param list history: one dict per step (losses, data misfit), if recorded.
    :param Tensor latents: final latents ``(B, N, c, h, w)``, if any.
    :param Tensor mean: the posterior mean ``(B, C, H, W)`` when the solver has a better
        estimate than the samples' average (e.g. a Rao-Blackwellised one); default: the
        samples' average.

    ``fit`` holds the data fit of the mean as the solver measured it once per run:
    ``reduced_chi2`` and its ``limit`` (:func:`~dwgf_sci.solvers.likelihood.chi2_limit` of the
    measurement's unmasked values), one value per measurement; empty when the solver has no
    noise model (``data_term="mse"``) or the posterior was built by hand.
    """

    @staticmethod
    def __new__(
        cls,
        samples: Tensor,
        settings: dict[str, Any] | None = None,
        timing: dict[str, float] | None = None,
        calls: dict[str, int] | None = None,
        history: list[dict[str, float]] | None = None,
        latents: Tensor | None = None,
        mean: Tensor | None = None,
    ) -> Posterior:
        if samples.ndim != 5:
            raise ValueError(f"samples must be (B, N, C, H, W), found {tuple(samples.shape)}")
        samples = samples.detach()
        if mean is None:
            mean = samples.mean(dim=1)
        elif tuple(mean.shape) != (samples.shape[0], *samples.shape[2:]):
            raise ValueError(
                f"mean must be (B, C, H, W) = {(samples.shape[0], *samples.shape[2:])}, "
                f"found {tuple(mean.shape)}"
            )
        obj = Tensor._make_subclass(cls, mean.detach(), False)
        obj._samples = samples
        obj.settings = dict(settings or {})
        obj.timing = dict(timing or {})
        obj.calls = dict(calls or {})
        obj.history = list(history or [])
        obj.latents = None if latents is None else latents.detach()
        obj.fit = {}
        #: The units the solver worked in (:mod:`~dwgf_sci.solvers.flux_scale`), if it says.
        obj.flux: dict[str, Any] = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # attributes are set in __new__
        pass

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: D105
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))

    def __reduce_ex__(self, protocol):  # pickles as its plain mean tensor
        return self.as_tensor().__reduce_ex__(protocol)

    def __repr__(self, **kwargs: Any) -> str:  # noqa: D105
        b, n, c, h, w = self._samples.shape
        name = self.settings.get("solver", "?")
        return f"Posterior(solver={name}, measurements={b}, samples={n}, image=({c}, {h}, {w}))"

    # ------------------------------------------------------------------ contents
    def as_tensor(self) -> Tensor:
        """The posterior mean as a plain tensor ``(B, C, H, W)``."""
        with torch._C.DisableTorchFunctionSubclass():
            return self.detach().clone()

    @property
    def mean(self) -> Tensor:  # type: ignore[override]
        """Posterior mean, ``(B, C, H, W)`` (calling it works like ``Tensor.mean``)."""
        plain = self.as_tensor()
        return _view(plain, "mean", plain)

    @property
    def samples(self) -> Tensor:
        """Samples: ``(N, C, H, W)`` for one measurement, ``(B, N, C, H, W)`` for several."""
        return self._samples[0] if self._samples.shape[0] == 1 else self._samples

    @property
    def all_samples(self) -> Tensor:
        """Samples as ``(B, N, C, H, W)`` whatever ``B`` is."""
        return self._samples

    @property
    def n_samples(self) -> int:
        """Number of samples per measurement."""
        return int(self._samples.shape[1])

    @property
    def std(self) -> Tensor:  # type: ignore[override]
        """Per-pixel standard deviation over samples, ``(B, C, H, W)`` (zero for one sample).

        Calling it (``post.std()``) works like ``Tensor.std`` on the posterior-mean tensor.
        """
        plain = self.as_tensor()
        if self.n_samples < 2:
            std = torch.zeros_like(plain)
        else:
            std = self._samples.std(dim=1, unbiased=True)
        return _view(std, "std", plain)

    def quantile(self, q: float) -> Tensor:
        """Per-pixel empirical quantile ``q`` over samples, ``(B, C, H, W)``."""
        return torch.quantile(self._samples, float(q), dim=1)

    def credible_interval(self, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Equal-tailed per-pixel credible interval ``(lower, upper)`` at ``level``."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), found {level}")
        a = (1 - level) / 2
        return self.quantile(a), self.quantile(1 - a)

    # ------------------------------------------------------------------ output
    def provenance(self) -> dict[str, Any]:
        """Settings, timing, call counts and the flux scale used, as one JSON-serialisable
        dict."""
        out = {"settings": self.settings, "timing": self.timing, "calls": self.calls}
        if self.flux:
            out["flux_scale"] = self.flux
        return out

    def to_fits(
        self,
        path: str | Path,
        header: Any = None,
        index: int = 0,
        overwrite: bool = False,
        samples: int | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Path:
        """Write measurement ``index``: mean (primary HDU), ``STD`` and ``SAMPLES`` extensions.

        :param header: astropy Header of the input (WCS, BUNIT, ...), written back unchanged.
        :param samples: how many samples to store (the first ones; ``None``: all, 0: none).
        :param provenance: more provenance fields, merged with :meth:`provenance`.
        :return: the path written.
        """
        from ..io import make_provenance, write_fits

        extra = {"STD": self.std[index]}
        if samples != 0:
            extra["SAMPLES"] = first_samples(self._samples[index], samples)
        return write_fits(
            path,
            self.as_tensor()[index : index + 1],
            header=header,
            extra=extra,
            provenance=make_provenance(**self.provenance(), **(provenance or {})),
            overwrite=overwrite,
        )

    def to_hdf5(
        self,
        path: str | Path,
        index: int = 0,
        overwrite: bool = False,
        samples: int | None = None,
        attrs: dict[str, Any] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Path:
        """Write measurement ``index``: datasets ``mean``, ``std``, ``samples`` (the first
        ``samples``; ``None``: all, 0: none), with provenance."""
        from ..io import make_provenance, write_hdf5

        data = {"mean": self.as_tensor()[index : index + 1], "std": self.std[index : index + 1]}
        if samples != 0:
            data["samples"] = first_samples(self._samples[index], samples)
        return write_hdf5(
            path,
            data,
            attrs=attrs,
            provenance=make_provenance(**self.provenance(), **(provenance or {})),
            overwrite=overwrite,
        )
