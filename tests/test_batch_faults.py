"""Faults in batch jobs: SIGKILL mid-run then restart, leftovers of a killed job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from dwgf_sci.cli import main
from dwgf_sci.operators import resolve_spec
from dwgf_sci.pipelines.manifest import MANIFEST_NAME, part_path
from dwgf_sci.pipelines.simulate import simulate

N_ITEMS = 4


@pytest.fixture(scope="module")
def obs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("obs")
    simulate("galaxies", resolve_spec("psf", ["fwhm=3"]), folder, n=N_ITEMS, size=32)
    return folder


def job_args(obs_dir: Path, prior_dir: Path, out: Path) -> list[str]:
    return [
        "reconstruct",
        str(obs_dir),
        "--prior",
        str(prior_dir),
        "--out",
        str(out),
        "--steps",
        "6",
        "--particles",
        "2",
        "--threads",
        "1",
        "--quiet",
    ]


def outputs(out: Path) -> list[Path]:
    return sorted(out.glob("obs_*_posterior.fits"))


def hdu_arrays(path: Path) -> dict[str, np.ndarray]:
    with fits.open(path, checksum=True) as hdul:
        return {h.name: np.array(h.data) for h in hdul if h.is_image and h.data is not None}


@pytest.mark.slow
def test_killed_job_restarts_and_matches_an_uninterrupted_run(tmp_path, obs_dir, prior_dir):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "dwgf_sci.cli", *job_args(obs_dir, prior_dir, out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    try:
        while not outputs(out):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    left = outputs(out)
    assert 1 <= len(left) < N_ITEMS, "the job was not killed mid-run"
    for path in left:  # whatever is there is complete: outputs are moved in whole
        hdu_arrays(path)
    restart = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert restart.returncode == 0, restart.stderr
    assert f"{N_ITEMS} input(s): {N_ITEMS} done" in restart.stdout
    assert restart.stdout.count("done already") + restart.stdout.count("kept:") == len(left)
    assert len(outputs(out)) == N_ITEMS and not list(out.glob(".tmp-*"))
    items = json.loads((out / MANIFEST_NAME).read_text())["items"]
    assert len(items) == N_ITEMS and {e["status"] for e in items.values()} == {"done"}
    # an uninterrupted run, here, gives the same data in every HDU
    reference = tmp_path / "reference"
    assert main(job_args(obs_dir, prior_dir, reference)) == 0
    for path in outputs(reference):
        got, want = hdu_arrays(out / path.name), hdu_arrays(path)
        assert got.keys() == want.keys() == {"PRIMARY", "STD", "SAMPLES"}
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{path.name} {name}")


def test_leftovers_of_a_killed_job_are_cleaned_and_merged(tmp_path, obs_dir, prior_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".tmp-0123456789ab-obs_00000_posterior.fits"
    stale.write_bytes(b"partial")
    stale_status = out / f".tmp-abcdef012345-{MANIFEST_NAME}"
    stale_status.write_bytes(b"{")
    foreign = out / ".tmp-0123456789ab-notes.txt"  # not ours: left alone
    foreign.write_bytes(b"keep")
    part = part_path(out, 3)  # a part left by a killed distributed job
    part.write_text(
        json.dumps(
            {
                "format": "dwgf-sci batch manifest",
                "version": 1,
                "items": {"other": {"status": "failed", "error": "x", "finished": "1"}},
            }
        )
    )
    code = main(
        [
            "reconstruct",
            str(obs_dir / "obs_00000.fits"),
            "--prior",
            str(prior_dir),
            "--out",
            str(out),
            "--steps",
            "1",
            "--particles",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    assert not stale.exists() and not stale_status.exists() and foreign.exists()
    assert not part.exists()
    items = json.loads((out / MANIFEST_NAME).read_text())["items"]
    assert set(items) == {"obs_00000", "other"}
