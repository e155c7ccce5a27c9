"""A measurement file is opened once per read and once per reconstruction.

The openers are counted where every reader of the package goes through them:
``astropy.io.fits.open`` (called by :func:`dwgf_sci.io.fits_open.with_fits`) and ``h5py.File``
(called by :func:`dwgf_sci.io.hdf5.open_hdf5`). Only calls on the measurement itself count.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import pytest
import torch
from astropy.io import fits

from dwgf_sci.io.measurement import read_measurement
from dwgf_sci.operators import resolve_spec
from dwgf_sci.pipelines.reconstruct import reconstruct_file
from dwgf_sci.pipelines.simulate import simulate
from dwgf_sci.solvers import DWGF


@pytest.fixture
def count_opens(monkeypatch):
    """Count the openings of each file by astropy and h5py: ``{resolved path: n}``."""
    counts: dict[Path, int] = {}
    real_fits_open = fits.open
    real_h5_file = h5py.File

    def note(name) -> None:
        if isinstance(name, str | os.PathLike):
            key = Path(name).resolve()
            counts[key] = counts.get(key, 0) + 1

    def fits_open(name, *args, **kwargs):
        note(name)
        return real_fits_open(name, *args, **kwargs)

    class CountedFile(real_h5_file):
        def __init__(self, name, *args, **kwargs):
            note(name)
            super().__init__(name, *args, **kwargs)

    monkeypatch.setattr(fits, "open", fits_open)
    monkeypatch.setattr(h5py, "File", CountedFile)
    return counts


@pytest.mark.parametrize("file_type", ["fits", "hdf5"])
def test_read_measurement_opens_the_file_once(tmp_path, count_opens, file_type) -> None:
    """Measurement, truth, the PSF array and the provenance come from one opening."""
    spec = resolve_spec("psf", ["profile=array"])
    psf = torch.ones(5, 5) / 25.0
    (path,) = simulate(
        "galaxies", spec, tmp_path, n=1, size=16, file_type=file_type, arrays={"psf": psf}
    )
    count_opens.clear()
    m = read_measurement(path)
    assert m.truth is not None and "psf" in m.arrays and m.provenance is not None
    assert m.operator is not None and m.path == path
    assert count_opens == {path.resolve(): 1}


def test_reconstruction_opens_its_measurement_once(tmp_path, prior_dir, count_opens) -> None:
    """``reconstruct_file`` reads its input once and passes the data down."""
    from dwgf_sci.priors import load_prior

    (path,) = simulate("galaxies", resolve_spec("psf", ["fwhm=3"]), tmp_path / "obs", size=32)
    solver = DWGF(load_prior(prior_dir), steps=1, particles=2, seed=0)
    count_opens.clear()
    result = reconstruct_file(path, solver, tmp_path / "out")
    assert result.output.exists()
    assert count_opens.get(path.resolve()) == 1
