"""dwgf-sci: posterior sampling for scientific imaging with latent-diffusion priors and DWGF."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dwgf-sci")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from . import errors  # noqa: E402

__all__ = ["__version__", "errors"]
