"""Saved prior folders, and where and how their networks are loaded.

A saved prior is a folder with a ``dwgf_prior.json`` (:data:`PRIOR_CONFIG_NAME`: class name,
units, settings, metadata) next to the diffusers component folders (``vae/``, ``unet/``,
``scheduler/``, ...). Only safetensors weights are read; folders with pickled (``.bin``, ``.pt``,
``.ckpt``) weights are refused. These helpers are shared by
:class:`~dwgf_sci.priors.latent.LatentDiffusionPrior`,
:class:`~dwgf_sci.priors.stable_diffusion.StableDiffusionPrior` and
:func:`~dwgf_sci.priors.loading.load_prior`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._version import __version__ as package_version
from ..errors import ConfigError, FileFormatError, OutputExistsError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = [
    "FORMAT_VERSION",
    "PRIOR_CONFIG_NAME",
    "load_scheduler",
    "network_load_options",
    "prepare_save_folder",
    "read_json_file",
    "read_prior_config",
    "refuse_pickle_weights",
    "require_subfolders",
    "resolve_device",
    "resolve_dtype",
    "write_prior_config",
]

#: Name of the file that describes a saved prior (class, units, settings).
PRIOR_CONFIG_NAME = "dwgf_prior.json"
#: Version of the ``dwgf_prior.json`` format written by this module.
FORMAT_VERSION = 1

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device to load a prior on: ``device``, else CUDA when available, else the CPU.

    :param device: a device, its name, or ``None``.
    :raises ConfigError: for a device name torch does not know.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from err


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, half_on_cuda: bool
) -> torch.dtype:
    """The floating dtype the networks compute in.

    ``None`` means float16 on CUDA when ``half_on_cuda`` and float32 otherwise. Half precision
    (float16, bfloat16) is only used on CUDA: on any other device it is replaced by float32 with a
    warning, since CPU half-precision convolutions are slow and inaccurate.

    :param dtype: a floating torch dtype, one of its names (``"fp16"``, ``"bfloat16"``, ...) or
        ``None``.
    :param torch.device device: the device the networks run on.
    :param bool half_on_cuda: default to float16 on CUDA.
    :raises ConfigError: for an unknown or non-floating dtype.
    """
    if dtype is None:
        return torch.float16 if (half_on_cuda and device.type == "cuda") else torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPE_NAMES:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPE_NAMES)}")
        dtype = _DTYPE_NAMES[key]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch dtype, found {dtype!r}")
    if dtype in (torch.float16, torch.bfloat16) and device.type != "cuda":
        warnings.warn(
            f"{dtype} is only used on CUDA; the prior runs in float32 on {device}",
            stacklevel=3,
        )
        return torch.float32
    return dtype


def read_json_file(path: Path) -> Any | None:
    """The parsed JSON file ``path``, or ``None`` when there is no such file.

    :raises FileFormatError: if the file exists but cannot be read as JSON.
    """
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(f"{path} is not valid JSON: {err}") from err


def read_prior_config(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The parsed ``dwgf_prior.json`` of ``folder``, or ``None`` when the folder has none.

    :raises FileFormatError: if the file exists but is not a JSON object.
    """
    path = Path(folder) / PRIOR_CONFIG_NAME
    data = read_json_file(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise FileFormatError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def write_prior_config(folder: Path, settings: Mapping[str, Any]) -> None:
    """Write ``settings`` (with the format version) to ``folder/dwgf_prior.json``."""
    data = {"format_version": FORMAT_VERSION, "dwgf_sci_version": package_version, **settings}
    text = json.dumps(data, indent=2, sort_keys=False)
    (folder / PRIOR_CONFIG_NAME).write_text(text + "\n", encoding="utf-8")


def prepare_save_folder(save_directory: str | os.PathLike[str], overwrite: bool) -> Path:
    """Create ``save_directory``; refuse a folder that already holds a saved prior.

    :raises OutputExistsError: if ``dwgf_prior.json`` or ``model_index.json`` exists there and
        ``overwrite`` is false.
    :raises FileFormatError: if the path exists and is not a folder.
    """
    folder = Path(save_directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileFormatError(f"cannot save a prior to {folder}: it exists and is not a folder")
    if not overwrite:
        for name in (PRIOR_CONFIG_NAME, "model_index.json"):
            if (folder / name).exists():
                raise OutputExistsError(
                    f"{folder} already holds a saved model ({name}); pass overwrite=True to "
                    "replace it"
                )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def refuse_pickle_weights(folder: Path, subfolders: Sequence[str]) -> None:
    """Raise if component folders hold pickled weights and no safetensors weights.

    Every such component is named in one message, with its pickled files.

    :raises FileFormatError: naming the pickled files.
    """
    found = []
    for sub in subfolders:
        path = folder / sub
        if not path.is_dir():
            continue
        files = [p for p in path.iterdir() if p.is_file()]
        has_safe = any(p.name.endswith(".safetensors") for p in files)
        pickled = sorted(p.name for p in files if p.name.endswith(_PICKLE_SUFFIXES))
        if pickled and not has_safe:
            found.append(", ".join(f"{sub}/{name}" for name in pickled))
    if found:
        raise FileFormatError(
            f"{folder} holds pickled weights ({'; '.join(found)}) and no .safetensors file "
            "beside them; only safetensors weights are loaded (pickle files can run arbitrary "
            "code and are never unpickled). Convert them with "
            "save_pretrained(..., safe_serialization=True) in a trusted environment"
        )


def require_subfolders(folder: Path, names: Sequence[str], what: str) -> None:
    """Raise :class:`FileFormatError` listing the component folders ``folder`` lacks."""
    missing = [n for n in names if not (folder / n).is_dir()]
    if missing:
        raise FileFormatError(
            f"{folder} is not a saved {what}: missing component folder(s) "
            f"{', '.join(m + '/' for m in missing)} (expected {', '.join(n + '/' for n in names)})"
        )


def network_load_options() -> dict[str, Any]:
    """Keyword options of diffusers' ``from_pretrained`` for our networks: without the optional
    ``accelerate`` package, the plain loading path, named explicitly (diffusers would choose it
    too, after a warning that asks the user to install a package they do not need)."""
    if importlib.util.find_spec("accelerate") is None:
        return {"low_cpu_mem_usage": False}
    return {}


def load_scheduler(source: str | os.PathLike[str], **kwargs: Any) -> SchedulerMixin:
    """Load the scheduler of a diffusers folder (or hub id), keeping its class when known.

    Schedulers without ``alphas_cumprod`` are replaced by a ``DDPMScheduler`` built from the same
    config (same betas, same ``prediction_type``).
    """
    import diffusers

    config = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler", **kwargs)
    cls = getattr(diffusers, str(config.get("_class_name", "DDPMScheduler")), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDPMScheduler
    scheduler = cls.from_config(config)
    if getattr(scheduler, "alphas_cumprod", None) is None:
        scheduler = diffusers.DDPMScheduler.from_config(config)
    return scheduler
