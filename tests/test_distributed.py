"""``torchrun`` with 2 CPU processes (gloo): sharded batch, merged status, same outputs as one
process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from astropy.io import fits

from dwgf_sci.cli import main
from dwgf_sci.operators import resolve_spec
from dwgf_sci.pipelines.distributed import Comm, batch_comm
from dwgf_sci.pipelines.manifest import MANIFEST_NAME
from dwgf_sci.pipelines.simulate import simulate


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("obs")
    simulate("galaxies", resolve_spec("psf", ["fwhm=3"]), folder, n=3, size=32)
    (folder / "broken.fits").write_bytes(b"not a FITS file at all")
    return folder


def job(inputs, prior_dir, out):
    return [
        "reconstruct",
        str(inputs),
        "--prior",
        str(prior_dir),
        "--out",
        str(out),
        "--steps",
        "2",
        "--particles",
        "2",
        "--threads",
        "1",
        "--quiet",
    ]


def torchrun(args, nproc=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "dwgf_sci.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_single_process_context_is_plain(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with batch_comm("cpu") as comm:
        assert (comm.rank, comm.world_size, comm.distributed) == (0, 1, False)
        assert comm.local_indices(3) == [0, 1, 2] and comm.sum([2, 3]) == [2, 3]
        comm.barrier()
    assert Comm().local_indices(2) == [0, 1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one_process(tmp_path, inputs, prior_dir, capsys):
    before = torch.get_num_threads()
    try:
        single = tmp_path / "single"
        assert main(job(inputs, prior_dir, single)) == 2  # broken.fits fails, the rest is done
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    out = tmp_path / "two"
    run = torchrun(job(inputs, prior_dir, out))
    text = run.stdout + run.stderr
    assert run.returncode != 0, text  # a worker exited with status 2: torchrun fails too
    assert "[rank 0]" in text and "[rank 1]" in text
    assert "dwgf-sci: 4 input(s): 3 done, 1 failed" in text
    assert "broken.fits" in text and "corrupt or not FITS" in text
    items = json.loads((out / MANIFEST_NAME).read_text())["items"]
    assert {k: v["status"] for k, v in items.items()} == {
        "broken": "failed",
        "obs_00000": "done",
        "obs_00001": "done",
        "obs_00002": "done",
    }
    assert {e["rank"] for e in items.values()} == {0, 1}
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        MANIFEST_NAME,
        "obs_00000_posterior.fits",
        "obs_00001_posterior.fits",
        "obs_00002_posterior.fits",
    ]  # parts merged and removed, no partial output
    reference = json.loads((single / MANIFEST_NAME).read_text())["items"]
    for key, entry in items.items():
        assert entry["seed"] == reference[key]["seed"]
        if entry["status"] != "done":
            continue
        with fits.open(out / entry["output"]) as a, fits.open(single / entry["output"]) as b:
            for name in ("PRIMARY", "STD", "SAMPLES"):
                np.testing.assert_array_equal(a[name].data, b[name].data, err_msg=name)
    # repaired input, rerun under torchrun: only it is computed
    shutil.copy(inputs / "obs_00000.fits", tmp_path / "fixed.fits")
    (inputs / "broken.fits").write_bytes((tmp_path / "fixed.fits").read_bytes())
    try:
        rerun = torchrun(job(inputs, prior_dir, out))
    finally:
        (inputs / "broken.fits").write_bytes(b"not a FITS file at all")
    text = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, text
    assert "4 input(s): 4 done (3 already done), 0 failed" in text
    items = json.loads((out / MANIFEST_NAME).read_text())["items"]
    assert {e["status"] for e in items.values()} == {"done"}


@pytest.mark.slow
def test_torchrun_processes_share_one_image_bit_for_bit(tmp_path, prior_dir):
    """``--share-patches``: two processes take the one 64x48 image together (the 32 px prior by
    patches), split its patches and write one output, identical to one process's."""
    folder = tmp_path / "obs"
    simulate("galaxies", resolve_spec("psf", ["fwhm=3"]), folder, n=1, size=64)
    args = ["reconstruct", str(folder), "--prior", str(prior_dir), "--patches", "--preset"]
    args += ["fast", "--steps", "3", "--particles", "2", "--threads", "1", "--quiet"]
    single = tmp_path / "single"
    before = torch.get_num_threads()
    try:
        assert main([*args, "--out", str(single)]) == 0
    finally:
        torch.set_num_threads(before)
    out = tmp_path / "two"
    run = torchrun([*args, "--share-patches", "--out", str(out)])
    text = run.stdout + run.stderr
    assert run.returncode == 0, text
    assert "1 input(s): 1 done" in text
    items = json.loads((out / MANIFEST_NAME).read_text())["items"]
    assert [e["rank"] for e in items.values()] == [0]
    with fits.open(out / "obs_00000_posterior.fits") as a:
        with fits.open(single / "obs_00000_posterior.fits") as b:
            for name in ("PRIMARY", "STD", "SAMPLES"):
                np.testing.assert_array_equal(a[name].data, b[name].data, err_msg=name)
    # without a patch prior the option says what it needs
    no_patches = [a for a in args if a != "--patches"]
    bad = torchrun([*no_patches, "--share-patches", "--out", str(tmp_path / "bad")])
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "--share-patches needs a patch prior" in text, text
