"""dwgf-sci: posterior sampling for scientific imaging with latent-diffusion priors and DWGF.

Data flow from left to right: :mod:`~dwgf_sci.io` and :mod:`~dwgf_sci.datasets` (data) ->
:mod:`~dwgf_sci.operators` (forward models) -> :mod:`~dwgf_sci.priors` -> :mod:`~dwgf_sci.solvers`
-> :class:`~dwgf_sci.solvers.Posterior` (results), with :mod:`~dwgf_sci.metrics`,
:mod:`~dwgf_sci.plotting` and the end-to-end :mod:`~dwgf_sci.pipelines` behind the CLI.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dwgf-sci")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from . import datasets, errors, io, metrics, operators, priors, solvers  # noqa: E402
from .solvers import DWGF, Posterior  # noqa: E402

__all__ = [
    "DWGF",
    "Posterior",
    "__version__",
    "datasets",
    "errors",
    "io",
    "metrics",
    "operators",
    "priors",
    "solvers",
]
