"""Tests of dwgf_sci.datasets: synthetic galaxies and phantoms, FITS folders and HDF5 stacks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dwgf_sci.datasets import (
    FitsFolderDataset,
    GalaxyDataset,
    HDF5Dataset,
    PhantomDataset,
    write_hdf5_dataset,
)
from dwgf_sci.errors import (
    ConfigError,
    FileFormatError,
    InvalidDataError,
    OutputExistsError,
    ShapeError,
)
from dwgf_sci.io import make_provenance, read_hdf5, read_provenance, write_fits

# --------------------------------------------------------------------------------------------------
# galaxies
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def galaxies() -> GalaxyDataset:
    return GalaxyDataset(12, size=64, seed=3)


@pytest.fixture(scope="module")
def galaxy_images(galaxies) -> list[torch.Tensor]:
    return [galaxies[i] for i in range(len(galaxies))]


def test_galaxies_shape_dtype_positivity(galaxy_images):
    for x in galaxy_images:
        assert x.shape == (1, 64, 64) and x.dtype == torch.float32
        assert torch.isfinite(x).all() and float(x.min()) >= 0.0
        assert float(x.max()) > 0.0


def test_galaxies_flux_matches_drawn_parameter(galaxies, galaxy_images):
    for i, x in enumerate(galaxy_images):
        flux = galaxies.params(i)["flux"]
        assert float(x.double().sum()) == pytest.approx(flux, rel=0.03)


def test_galaxies_are_deterministic_and_order_independent(galaxies, galaxy_images):
    other = GalaxyDataset(40, size=64, seed=3)  # a different length: items depend on (seed, i) only
    for i in (7, 2, 11, 0):
        assert torch.equal(other[i], galaxy_images[i])
        assert other.params(i) == galaxies.params(i)
    assert torch.equal(galaxies[-1], galaxy_images[-1])
    different = GalaxyDataset(12, size=64, seed=4)
    assert not torch.equal(different[0], galaxy_images[0])
    assert len({round(galaxies.params(i)["flux"], 6) for i in range(12)}) == 12


def test_galaxy_parameters_follow_their_ranges(galaxies):
    for i in range(len(galaxies)):
        p = galaxies.params(i)
        assert 1e3 <= p["flux"] <= 1e5 and 0.3 <= p["disk_hlr"] <= 1.2
        assert 0.2 * p["disk_hlr"] <= p["bulge_hlr"] <= 0.6 * p["disk_hlr"]
        assert 0 <= p["bulge_fraction"] <= 1 and 0.2 <= p["disk_q"] <= 1
        assert 0.6 <= p["bulge_q"] <= 1 and 0 <= p["position_angle"] < 180
        assert abs(p["offset_x"]) <= 1 and abs(p["offset_y"]) <= 1 and p["bulge_n"] == 4.0


def test_galaxy_options():
    small = GalaxyDataset(2, size=32, seed=0, pixel_scale=0.1, psf=0.25, hlr_range=(0.2, 0.5))
    assert small[1].shape == (1, 32, 32)
    assert float(small[1].sum()) == pytest.approx(small.params(1)["flux"], rel=0.05)
    sersic = GalaxyDataset(1, seed=0, bulge_n=2.5, bulge_truncation=None, shear_std=0.0)
    p = sersic.params(0)
    assert p["bulge_n"] == 2.5 and p["g1"] == 0.0
    assert float(sersic[0].sum()) == pytest.approx(p["flux"], rel=0.03)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 2.5},
        {"n": 2, "size": 4},
        {"n": 2, "seed": -1},
        {"n": 2, "pixel_scale": 0.0},
        {"n": 2, "hlr_range": (1.0, 0.5)},
        {"n": 2, "flux_range": (0.0, 10.0)},
        {"n": 2, "psf": "moffat"},
        {"n": 2, "bulge_n": 9.0},
        {"n": 2, "shear_std": 0.5},
    ],
)
def test_galaxy_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        GalaxyDataset(**kwargs)


def test_dataset_index_errors(galaxies):
    with pytest.raises(IndexError):
        galaxies[12]
    with pytest.raises(IndexError):
        galaxies.params(-13)
    with pytest.raises(TypeError):
        galaxies["a"]  # type: ignore[index]


# --------------------------------------------------------------------------------------------------
# phantoms
# --------------------------------------------------------------------------------------------------


def test_phantoms_shape_values_and_determinism():
    ds = PhantomDataset(6, size=48, seed=5)
    items = [ds[i] for i in range(6)]
    for i, x in enumerate(items):
        assert x.shape == (1, 48, 48) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 0.6
        assert float(x[0, 0, 0]) == 0.0 and float(x[0, 24, 24]) > 0.0  # air outside, body inside
        body = ds.params(i)["body"]
        assert 0.18 <= body["value"] <= 0.22
    again = PhantomDataset(100, size=48, seed=5)
    for i in (4, 1, 5):
        assert torch.equal(again[i], items[i]) and again.params(i) == ds.params(i)
    assert not torch.equal(PhantomDataset(6, size=48, seed=6)[0], items[0])
    assert len({x.sum().item() for x in items}) == 6


def test_phantom_ellipses_are_painted():
    ds = PhantomDataset(1, size=64, seed=0, n_ellipses=(5, 5), supersample=1)
    params = ds.params(0)
    assert len(params["ellipses"]) == 5
    assert {e["tissue"] for e in params["ellipses"]} <= {"soft", "air", "bone"}
    x = ds[0][0].numpy()
    last = params["ellipses"][-1]  # painted last: its centre pixel has its value
    col = int((last["cx"] + 1) / 2 * 64)
    row = int((last["cy"] + 1) / 2 * 64)
    assert x[row, col] == pytest.approx(last["value"], abs=1e-6)
    smooth = PhantomDataset(1, size=64, seed=0, n_ellipses=(5, 5), supersample=4)[0]
    assert len(np.unique(smooth.numpy())) > len(np.unique(x))  # partial-volume edges


def test_phantom_bad_arguments():
    with pytest.raises(ConfigError):
        PhantomDataset(2, n_ellipses=(4, 2))
    with pytest.raises(ConfigError):
        PhantomDataset(2, supersample=0)


# --------------------------------------------------------------------------------------------------
# HDF5 stacks
# --------------------------------------------------------------------------------------------------


def test_hdf5_dataset_reads_back_what_was_written(tmp_path, galaxies, galaxy_images):
    prov = make_provenance(dataset="galaxies", seed=3)
    path = write_hdf5_dataset(
        tmp_path / "gal.h5", galaxies, attrs={"pixel_scale": 0.2}, provenance=prov
    )
    with HDF5Dataset(path) as ds:
        assert len(ds) == 12 and ds.shape == (12, 1, 64, 64)
        assert ds.attrs == {"pixel_scale": 0.2}
        for i in (0, 5, 11, -1):
            assert torch.equal(ds[i], galaxy_images[i])
    assert read_provenance(path) == prov
    stack, attrs = read_hdf5(path)  # the whole stack through the generic reader
    assert stack.shape == (12, 1, 64, 64) and attrs["pixel_scale"] == 0.2


def test_hdf5_dataset_sources_and_layouts(tmp_path):
    stack = torch.rand(5, 8, 9)  # (N, H, W): items come back (1, H, W)
    write_hdf5_dataset(tmp_path / "a.h5", stack, key="imgs", compression="gzip")
    ds = HDF5Dataset(tmp_path / "a.h5", key="imgs")
    assert ds[3].shape == (1, 8, 9) and torch.equal(ds[3][0], stack[3])
    pairs = [(torch.rand(2, 4, 4), torch.rand(3)) for _ in range(3)]  # (x, y) items: x is stored
    write_hdf5_dataset(tmp_path / "b.h5", pairs)
    assert torch.equal(HDF5Dataset(tmp_path / "b.h5")[2], pairs[2][0])
    dicts = [{"x": np.full((4, 4), float(i))} for i in range(2)]
    write_hdf5_dataset(tmp_path / "c.h5", dicts)
    assert float(HDF5Dataset(tmp_path / "c.h5")[1].mean()) == 1.0


def test_hdf5_dataset_errors_leave_no_file(tmp_path):
    mixed = [torch.rand(1, 4, 4), torch.rand(1, 5, 4)]
    with pytest.raises(ShapeError, match="item 1"):
        write_hdf5_dataset(tmp_path / "x.h5", mixed)
    bad = [torch.rand(1, 4, 4), torch.full((1, 4, 4), float("inf"))]
    with pytest.raises(InvalidDataError, match="item 1"):
        write_hdf5_dataset(tmp_path / "x.h5", bad)
    with pytest.raises(ShapeError):
        write_hdf5_dataset(tmp_path / "x.h5", [])
    with pytest.raises(ShapeError):
        write_hdf5_dataset(tmp_path / "x.h5", torch.rand(4, 4))
    assert list(tmp_path.iterdir()) == []
    write_hdf5_dataset(tmp_path / "x.h5", torch.rand(2, 4, 4))
    with pytest.raises(OutputExistsError):
        write_hdf5_dataset(tmp_path / "x.h5", torch.rand(2, 4, 4))
    with pytest.raises(FileFormatError, match="no dataset 'y'"):
        HDF5Dataset(tmp_path / "x.h5", key="y")
    with pytest.raises(FileFormatError, match="not found"):
        HDF5Dataset(tmp_path / "none.h5")
    from dwgf_sci.io import write_hdf5

    write_hdf5(tmp_path / "flat.h5", {"x": torch.rand(4, 4)})
    with pytest.raises(ShapeError, match="N, H, W"):
        HDF5Dataset(tmp_path / "flat.h5")


def test_hdf5_dataset_with_dataloader_workers(tmp_path):
    stack = torch.arange(6 * 2 * 3 * 3, dtype=torch.float32).reshape(6, 2, 3, 3)
    path = write_hdf5_dataset(tmp_path / "s.h5", stack)
    ds = HDF5Dataset(path)
    ds[0]  # open a handle in this process: workers must not reuse it
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and torch.equal(clone[5], stack[5])
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    assert torch.equal(torch.cat(list(loader)), stack)
    ds.close()


# --------------------------------------------------------------------------------------------------
# FITS folders
# --------------------------------------------------------------------------------------------------


def test_fits_folder_dataset(tmp_path):
    images = [torch.rand(1, 1, 6, 7) + i for i in range(3)]
    for i, x in enumerate(images):
        write_fits(tmp_path / f"img{i}.fits", x, header={"IDX": i})
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".tmp-123-img9.fits").write_bytes(b"partial")  # an atomic write in progress
    ds = FitsFolderDataset(tmp_path)
    assert len(ds) == 3 and [p.name for p in ds.paths] == ["img0.fits", "img1.fits", "img2.fits"]
    for i in range(3):
        assert ds[i].shape == (1, 6, 7) and torch.equal(ds[i], images[i][0])
        assert ds.header(i)["IDX"] == i
    assert len(FitsFolderDataset(str(tmp_path / "img[12].fits"))) == 2
    listed = FitsFolderDataset([tmp_path / "img2.fits", tmp_path / "img0.fits"])
    assert torch.equal(listed[0], images[2][0])
    cube = torch.rand(1, 3, 6, 7)
    write_fits(tmp_path / "cube.fit", cube)
    assert FitsFolderDataset(tmp_path / "cube.fit")[0].shape == (3, 6, 7)
    with pytest.raises(ShapeError):
        FitsFolderDataset(tmp_path / "cube.fit", allow_cube=False)[0]
    with pytest.raises(FileFormatError, match="not found"):
        FitsFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="no FITS files"):
        FitsFolderDataset(tmp_path / "empty")
    with pytest.raises(FileFormatError, match="no files match"):
        FitsFolderDataset(str(tmp_path / "*.fts"))
