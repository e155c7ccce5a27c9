"""Training data for the prior trainer: files or generated datasets, checked before training.

:func:`load_training_data` reads every image into memory as one float32 tensor ``(N, C, H, W)``
in physical units (a 64 x 64 set of 10 000 images is 160 MB), checks it (shape, finite values,
not constant, sizes that fit the networks) and splits off a validation set: the **last**
``val`` images (default: 10 % of them, at most 200, at least 1). Nothing is trained on the
validation images; they give the metrics of the model card.

Sources:

* ``data="file.h5"``: dataset ``key`` (default ``"x"``) of an HDF5 file, ``(N, H, W)`` or
  ``(N, C, H, W)`` (e.g. written by :func:`~dwgf_sci.datasets.write_hdf5_dataset`);
* ``data="folder/"`` or ``data="images/*.fits"``: FITS files, one image (or cube) each;
* ``dataset="galaxies"`` / ``"phantoms"``: items ``0 .. n-1`` of
  :class:`~dwgf_sci.datasets.GalaxyDataset` / :class:`~dwgf_sci.datasets.PhantomDataset` of side
  ``size`` and seed ``data_seed``, generated on the fly (deterministic: a function of the seed
  only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, FileFormatError, InvalidDataError, ShapeError

__all__ = [
    "DATASETS",
    "TrainingData",
    "default_val_count",
    "load_training_data",
    "regenerate",
]

#: Names accepted by ``dataset=``.
DATASETS = ("galaxies", "phantoms", "fields")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".he5", ".hdf")


@dataclass
class TrainingData:
    """Training and validation images in physical units.

    :param Tensor train: ``(N_train, C, H, W)`` float32.
    :param Tensor val: ``(N_val, C, H, W)`` float32 (the last images of the source).
    :param dict source: how the data were obtained (for the model card and resume checks).
    """

    train: Tensor
    val: Tensor
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(int(s) for s in self.train.shape[1:])  # type: ignore[return-value]

    @property
    def kind(self) -> str | None:
        """``"galaxies"``/``"phantoms"`` for generated data, else ``None``."""
        return self.source.get("dataset")


def default_val_count(n: int) -> int:
    """Default size of the validation split: 10 % of ``n``, at most 200, at least 1.

    :param n: number of images in the data set.
    :return: ``max(1, min(200, n // 10))``.
    """
    return max(1, min(200, n // 10))


def _generate(dataset: str, n: int, size: int, seed: int) -> Tensor:
    from ..datasets import FieldDataset, GalaxyDataset, PhantomDataset

    if dataset == "galaxies":
        ds: Any = GalaxyDataset(n, size=size, seed=seed)
    elif dataset == "fields":
        ds = FieldDataset(n, size=size, seed=seed)
    else:
        ds = PhantomDataset(n, size=size, seed=seed)
    return torch.stack([ds[i] for i in range(len(ds))])


def _read_hdf5(path: Path, key: str) -> Tensor:
    from ..io import read_hdf5

    x, _ = read_hdf5(path, key=key, as_image=False, check_finite=False)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ShapeError(
            f"dataset {key!r} of {path} must be (N, H, W) or (N, C, H, W), found shape "
            f"{tuple(x.shape)}"
        )
    return x.float()


def _read_fits(source: str) -> Tensor:
    from ..datasets import FitsFolderDataset

    ds = FitsFolderDataset(source, check_finite=False)
    first = ds[0]
    images = [first]
    for i in range(1, len(ds)):
        item = ds[i]
        if item.shape != first.shape:
            raise ShapeError(
                f"{ds.paths[i]} holds an image of shape {tuple(item.shape)}, {ds.paths[0]} one "
                f"of shape {tuple(first.shape)}; all training images must have the same shape"
            )
        images.append(item)
    return torch.stack(images).float()


def _check_images(x: Tensor, what: str, multiple: int) -> None:
    """Shape, finiteness and variability checks (raise before any training)."""
    if x.ndim != 4:
        raise ShapeError(f"{what}: expected images (N, C, H, W), found shape {tuple(x.shape)}")
    n, c, h, w = (int(s) for s in x.shape)
    if n < 2:
        raise ShapeError(f"{what}: need at least 2 images (training + validation), found {n}")
    if c < 1 or c > 4:
        raise ShapeError(f"{what}: expected 1 to 4 channels, found {c} (shape {tuple(x.shape)})")
    if h % multiple or w % multiple:
        raise ShapeError(
            f"{what}: image size {h}x{w} must be a multiple of {multiple} (the total "
            "downsampling of the VAE and UNet); crop or pad the images, or use fewer levels"
        )
    finite = torch.isfinite(x).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise InvalidDataError(
            f"{what}: {len(bad)} image(s) hold NaN or Inf values (first indices: "
            f"{bad[:10]}); clean or drop them before training"
        )
    if float(x.max() - x.min()) == 0.0:
        raise InvalidDataError(f"{what}: every pixel has the same value; nothing to learn")


def load_training_data(
    data: str | os.PathLike[str] | None = None,
    dataset: str | None = None,
    *,
    key: str = "x",
    n: int = 2000,
    size: int = 64,
    data_seed: int = 0,
    val: int | None = None,
    multiple: int = 1,
    patch_size: int | None = None,
    crops_per_image: int = 8,
) -> TrainingData:
    """Load (or generate), check and split the training images.

    :param data: an HDF5 file, a folder of FITS files or a glob of FITS files.
    :param str dataset: ``"galaxies"`` or ``"phantoms"`` (exclusive with ``data``).
    :param str key: dataset name inside an HDF5 file.
    :param int n: number of images to generate (with ``dataset``).
    :param int size: image side to generate (with ``dataset``).
    :param int data_seed: seed of the generated dataset.
    :param int val: validation images (the last ones); default :func:`default_val_count`.
    :param int multiple: image sides must be multiples of it.
    :param int patch_size: train a patch prior: the images (any size at least this) are split
        into training and validation images first, then each gives ``crops_per_image`` random
        square crops of this side (a multiple of ``multiple``; seeded by ``data_seed``).
    :param int crops_per_image: crops per image with ``patch_size``.
    :raises ConfigError: neither or both sources, unknown dataset, bad counts.
    :raises FileFormatError: a missing or unreadable file.
    :raises ShapeError: wrong dimensions, mixed shapes, sizes that do not fit.
    :raises InvalidDataError: NaN/Inf values or constant data.
    """
    if (data is None) == (dataset is None):
        raise ConfigError("give exactly one data source: --data FILE|FOLDER|GLOB or --dataset")
    if dataset is not None:
        if dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        if int(n) < 2:
            raise ConfigError(f"--n must be >= 2 (training + validation), found {n}")
        if int(size) < 8:
            raise ConfigError(f"--size must be >= 8, found {size}")
        if int(size) % multiple:
            raise ConfigError(
                f"--size {size} must be a multiple of {multiple} (the total downsampling of the "
                "VAE and UNet)"
            )
        x = _generate(dataset, int(n), int(size), int(data_seed))
        source: dict[str, Any] = {
            "dataset": dataset,
            "n": int(n),
            "size": int(size),
            "data_seed": int(data_seed),
        }
        what = f"dataset {dataset}"
    else:
        text = os.path.expanduser(os.fspath(data))  # type: ignore[arg-type]
        path = Path(text)
        if path.is_file() and path.name.lower().endswith(_HDF5_SUFFIXES):
            x = _read_hdf5(path, key)
            source = {"data": str(path), "key": key, "format": "hdf5"}
        elif path.is_dir() or path.is_file() or any(ch in text for ch in "*?["):
            x = _read_fits(text)
            source = {"data": text, "format": "fits"}
        else:
            raise FileFormatError(
                f"training data not found: {text} (expected an HDF5 file, a folder of FITS files "
                "or a glob pattern)"
            )
        what = f"training data {text}"
    if patch_size is not None:
        _check_patches(x, int(patch_size), int(crops_per_image), multiple)
    _check_images(x, what, 1 if patch_size is not None else multiple)
    count = int(x.shape[0])
    n_val = default_val_count(count) if val is None else int(val)
    if not 1 <= n_val < count:
        raise ConfigError(
            f"the validation split must hold between 1 and {count - 1} of the {count} images, "
            f"found {n_val}"
        )
    source.update(
        {"n_images": count, "n_train": count - n_val, "n_val": n_val, "shape": list(x.shape[1:])}
    )
    train, held = x[: count - n_val].contiguous(), x[count - n_val :].contiguous()
    if patch_size is not None:
        size, k = int(patch_size), int(crops_per_image)
        train = random_crops(train, size, k, seed=int(data_seed))
        held = random_crops(held, size, k, seed=int(data_seed) + 1)
        source.update(
            {
                "patch_size": size,
                "crops_per_image": k,
                "image_shape": list(x.shape[1:]),
                "shape": list(train.shape[1:]),
                "n_train_crops": int(train.shape[0]),
                "n_val_crops": int(held.shape[0]),
            }
        )
    return TrainingData(train=train, val=held, source=source)


def _check_patches(x: Tensor, size: int, k: int, multiple: int) -> None:
    if size < 8 or size % multiple:
        raise ConfigError(
            f"--patch-size {size} must be >= 8 and a multiple of {multiple} (the total "
            "downsampling of the VAE and UNet)"
        )
    if k < 1:
        raise ConfigError(f"--crops-per-image must be >= 1, found {k}")
    if x.ndim == 4 and min(x.shape[-2:]) < size:
        raise ConfigError(
            f"the images ({x.shape[-2]}x{x.shape[-1]}) are smaller than --patch-size {size}"
        )


def random_crops(x: Tensor, size: int, per_image: int, seed: int = 0) -> Tensor:
    """``per_image`` random ``size`` x ``size`` crops of each image of ``x`` ``(N, C, H, W)``,
    image by image (uniform positions; a function of ``seed`` and the images only)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    ys = torch.randint(0, h - size + 1, (x.shape[0], per_image), generator=gen)
    xs = torch.randint(0, w - size + 1, (x.shape[0], per_image), generator=gen)
    crops = [
        x[i, :, int(ys[i, j]) : int(ys[i, j]) + size, int(xs[i, j]) : int(xs[i, j]) + size]
        for i in range(x.shape[0])
        for j in range(per_image)
    ]
    return torch.stack(crops).contiguous()


def regenerate(source: dict[str, Any]) -> TrainingData:
    """The training data of a generated dataset again, from its recorded
    :attr:`TrainingData.source` (a prior's ``metadata["data"]``): same images, same split, same
    crops."""
    if "dataset" not in source:
        raise ConfigError("only generated datasets can be regenerated; this one came from files")
    return load_training_data(
        dataset=source["dataset"],
        n=source["n"],
        size=source["size"],
        data_seed=source["data_seed"],
        val=source["n_val"],
        patch_size=source.get("patch_size"),
        crops_per_image=source.get("crops_per_image", 8),
    )


def describe_source(source: dict[str, Any]) -> str:
    """One line describing a :attr:`TrainingData.source` (for logs and the model card)."""
    shape = "x".join(str(s) for s in source.get("shape", []))
    split = f"{source.get('n_train')} training + {source.get('n_val')} validation images ({shape})"
    if "dataset" in source:
        return (
            f"{source['dataset']} generated on the fly (data seed {source['data_seed']}): {split}"
        )
    return f"{source.get('format', '').upper()} {source.get('data')}: {split}"


def data_fingerprint(x: Tensor) -> str:
    """A short content hash of the images (checks that a resumed run sees the same data)."""
    import hashlib

    arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]
