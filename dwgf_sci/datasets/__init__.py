"""Datasets: simulated galaxies, survey fields and CT phantoms, and image files, as torch Datasets.

Every item is a float32 tensor ``(C, H, W)`` in physical units. The synthetic datasets are
deterministic per ``(seed, index)``, whatever the order of access or the DataLoader worker.
"""

from __future__ import annotations

from .fields import FieldDataset
from .files import FitsFolderDataset, HDF5Dataset, write_hdf5_dataset
from .galaxies import GalaxyDataset
from .phantoms import PhantomDataset

__all__ = [
    "FieldDataset",
    "FitsFolderDataset",
    "GalaxyDataset",
    "HDF5Dataset",
    "PhantomDataset",
    "write_hdf5_dataset",
]
