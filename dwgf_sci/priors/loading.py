"""Load any prior by name (shipped with the package) or from a local folder.

:func:`load_prior` accepts

* the name of a shipped prior (:data:`SHIPPED_PRIORS`, e.g. ``"galaxy-64"``), whose weights live in
  ``dwgf_sci/priors/weights/<name>/``; a folder there holding a ``dwgf_prior.json`` counts as a
  shipped prior too, so newly trained priors only need to be copied in;
* a local folder written by a prior's ``save_pretrained``: its ``dwgf_prior.json`` names the class
  (:class:`~dwgf_sci.priors.stable_diffusion.StableDiffusionPrior` or
  :class:`~dwgf_sci.priors.latent.LatentDiffusionPrior`);
* a diffusers ``StableDiffusionPipeline`` folder (``model_index.json``), loaded as
  :class:`~dwgf_sci.priors.stable_diffusion.StableDiffusionPrior`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, FileFormatError
from .base import LatentPrior
from .folders import PRIOR_CONFIG_NAME, read_json_file, read_prior_config
from .latent import LatentDiffusionPrior
from .stable_diffusion import StableDiffusionPrior

__all__ = ["SHIPPED_PRIORS", "WEIGHTS_DIR", "available_priors", "load_prior", "prior_folder"]

#: Folder holding the weights of shipped priors, one subfolder per name.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: Names of the priors that ship with the package, with a one-line description.
SHIPPED_PRIORS: dict[str, str] = {
    "galaxy-64": "latent diffusion prior of 64x64 single-channel galaxy images (galsim)",
    "ct-64": "latent diffusion prior of 64x64 CT phantom slices",
    "field-64": "patch prior: 64x64 crops of simulated survey fields (galaxies, stars, blends)",
    "ct-patch-64": "patch prior: 64x64 crops of 256x256 CT phantom slices",
}

_PRIOR_CLASSES: dict[str, type[LatentPrior]] = {
    "StableDiffusionPrior": StableDiffusionPrior,
    "LatentDiffusionPrior": LatentDiffusionPrior,
}
_SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")


def available_priors() -> dict[str, str]:
    """Names of shipped priors with their description (``"(weights not installed)"`` appended
    where the weights folder is missing), plus any other folder of ``weights/`` that holds a
    saved prior."""
    names: dict[str, str] = {}
    for name, text in SHIPPED_PRIORS.items():
        ok = (WEIGHTS_DIR / name / PRIOR_CONFIG_NAME).is_file()
        names[name] = text if ok else f"{text} (weights not installed)"
    if WEIGHTS_DIR.is_dir():
        for sub in sorted(WEIGHTS_DIR.iterdir()):
            if sub.name not in names and (sub / PRIOR_CONFIG_NAME).is_file():
                names[sub.name] = "saved prior in the package's weights folder"
    return names


def prior_folder(name: str) -> Path:
    """The weights folder of the shipped prior ``name``.

    :param name: a name listed by :func:`available_priors` (e.g. ``"galaxy-64"``).
    :return: ``WEIGHTS_DIR / name``, which holds the prior's ``dwgf_prior.json``.
    :raises ConfigError: if ``name`` is not a shipped prior.
    :raises FileFormatError: if its weights are not installed (naming the folder).
    """
    folder = WEIGHTS_DIR / name
    known = available_priors()
    if name not in known:
        raise ConfigError(
            f"unknown prior {name!r}: it is neither a folder nor a shipped prior; available "
            f"names: {', '.join(sorted(known))}"
        )
    if not (folder / PRIOR_CONFIG_NAME).is_file():
        raise FileFormatError(
            f"the weights of the shipped prior {name!r} are not installed: expected a saved prior "
            f"in {folder} (with {PRIOR_CONFIG_NAME}). Train it with `dwgf-sci train-prior` and "
            f"save it there, or pass the folder of a saved prior. Available names: "
            f"{', '.join(sorted(known))}"
        )
    return folder


def _pipeline_class(folder: Path) -> str | None:
    """The ``_class_name`` of a diffusers ``model_index.json``, or ``None`` without one."""
    data = read_json_file(folder / "model_index.json")
    return str(data.get("_class_name")) if isinstance(data, dict) else None


def load_prior(
    name_or_path: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> LatentPrior:
    """Load a prior by shipped name or from a local folder.

    :param name_or_path: a shipped prior name (see :func:`available_priors`) or a folder.
    :param device: default: CUDA when available, else the CPU.
    :param dtype: network dtype (defaults of the prior class: float16 on CUDA for Stable
        Diffusion, float32 otherwise).
    :param kwargs: extra options of the class's ``from_pretrained`` (e.g. ``prompt`` or
        ``data_range`` for Stable Diffusion).
    :raises ConfigError: for an unknown name (the message lists the available names).
    :raises FileFormatError: for a shipped prior whose weights are missing, or a folder that
        holds no loadable prior.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(
            f"name_or_path must be a prior name or a folder, found {type(name_or_path).__name__}"
        )
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise FileFormatError(f"{path} is a file; a prior is a folder (or a shipped prior name)")
    elif isinstance(name_or_path, os.PathLike) or os.sep in str(name_or_path):
        raise FileFormatError(
            f"no prior folder at {path}; shipped prior names: "
            f"{', '.join(sorted(available_priors()))}"
        )
    else:
        folder = prior_folder(str(name_or_path))
    settings = read_prior_config(folder)
    if settings is not None:
        cls_name = str(settings.get("class"))
        if cls_name not in _PRIOR_CLASSES:
            raise FileFormatError(
                f"{folder / PRIOR_CONFIG_NAME} names the prior class {cls_name!r}; known classes: "
                f"{', '.join(sorted(_PRIOR_CLASSES))}"
            )
        cls = _PRIOR_CLASSES[cls_name]
        return cls.from_pretrained(folder, device=device, dtype=dtype, **kwargs)
    pipeline = _pipeline_class(folder)
    if pipeline in _SD_PIPELINES:
        return StableDiffusionPrior.from_pretrained(folder, device=device, dtype=dtype, **kwargs)
    if pipeline is not None:
        raise FileFormatError(
            f"{folder} holds a diffusers {pipeline}; only Stable Diffusion 1.x/2.x pipelines "
            f"({', '.join(_SD_PIPELINES)}) load as priors"
        )
    raise FileFormatError(
        f"{folder} holds no prior: expected {PRIOR_CONFIG_NAME} (written by a prior's "
        "save_pretrained) or a diffusers Stable Diffusion model_index.json"
    )
