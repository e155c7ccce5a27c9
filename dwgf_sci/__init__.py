"""dwgf-sci: posterior sampling for scientific imaging with latent-diffusion priors and DWGF.

Data flow from left to right: :mod:`~dwgf_sci.io` and :mod:`~dwgf_sci.datasets` (data) ->
:mod:`~dwgf_sci.operators` (forward models) -> :mod:`~dwgf_sci.priors` -> :mod:`~dwgf_sci.solvers`
-> :class:`~dwgf_sci.solvers.Posterior` (results), with :mod:`~dwgf_sci.metrics`,
:mod:`~dwgf_sci.plotting` and the end-to-end :mod:`~dwgf_sci.pipelines` behind the CLI.
"""

from __future__ import annotations

from . import datasets, errors, io, metrics, operators, priors, solvers
from ._version import __version__
from .solvers import DWGF, Posterior

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
