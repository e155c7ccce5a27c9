"""Batch reconstruction: names, seeds, input lists, the status manifest, resuming, bad inputs,
out-of-memory reports, and what user files may never do (escape the output folder, run code)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from dwgf_sci.cli import main
from dwgf_sci.errors import ConfigError, DwgfError, FileFormatError
from dwgf_sci.io import read_fits, read_provenance, write_fits
from dwgf_sci.operators import resolve_spec
from dwgf_sci.pipelines.batch import item_seed, plan_batch, sha256_file
from dwgf_sci.pipelines.manifest import (
    MANIFEST_NAME,
    confined_output,
    job_lock,
    read_input_list,
)
from dwgf_sci.pipelines.reconstruct import chi2_limit
from dwgf_sci.pipelines.simulate import simulate
from dwgf_sci.priors import load_prior
from dwgf_sci.solvers import DWGF


@pytest.fixture(scope="module")
def obs_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("obs")
    simulate("galaxies", resolve_spec("psf", ["fwhm=3"]), folder, n=3, size=32)
    return folder


def reconstruct(inputs, out, prior_dir, *extra):
    argv = ["reconstruct", *map(str, inputs), "--prior", str(prior_dir), "--out", str(out)]
    return main([*argv, "--steps", "1", "--particles", "2", "--quiet", *extra])


def manifest_items(out: Path) -> dict:
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert doc["format"] == "dwgf-sci batch manifest" and doc["version"] == 1
    return doc["items"]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------------------------------
# planning: names and seeds
# --------------------------------------------------------------------------------------------------


def test_names_are_deterministic_and_collisions_disambiguated(tmp_path):
    a = touch(tmp_path / "night1" / "obj.fits")
    b = touch(tmp_path / "night2" / "obj.fits")
    c = touch(tmp_path / "night2" / "OBJ.h5")  # same stem on a case-insensitive file system
    solo = touch(tmp_path / "night1" / "star.fits")
    out = tmp_path / "out"
    items = plan_batch([tmp_path / "night1", tmp_path / "night2"], out, base_seed=7)
    by_input = {it.input.resolve(): it for it in items}
    assert len(items) == 4
    assert by_input[solo.resolve()].name == "star_posterior.fits"
    assert by_input[solo.resolve()].key == "star"
    names = {by_input[p.resolve()].name for p in (a, b, c)}
    assert len(names) == 3
    for p in (a, b, c):
        it = by_input[p.resolve()]
        stem = p.name.split(".")[0]
        assert it.name.startswith(f"{stem}_") and it.name.endswith("_posterior" + p.suffix)
        assert it.output == out / it.name and it.seed == item_seed(7, it.key)
    # independent of the order of the inputs, and a folder plus a glob name each file once
    again = plan_batch([str(tmp_path / "night2" / "*"), tmp_path / "night1"], out, base_seed=7)
    assert {(it.input.resolve(), it.name, it.seed) for it in again} == {
        (it.input.resolve(), it.name, it.seed) for it in items
    }
    both = plan_batch([tmp_path / "night1", str(tmp_path / "night1" / "*.fits")], out)
    assert len(both) == 2
    # a new colliding input from elsewhere leaves the others' names (and seeds) as they were
    touch(tmp_path / "night3" / "obj.fits")
    more = plan_batch(
        [tmp_path / "night1", tmp_path / "night2", tmp_path / "night3"], out, base_seed=7
    )
    assert {(it.input.resolve(), it.name) for it in items} <= {
        (it.input.resolve(), it.name) for it in more
    }
    # --format changes the suffix, not the key or the seed
    h5 = plan_batch([solo], out, base_seed=7, file_type="hdf5")[0]
    assert h5.name == "star_posterior.h5" and h5.seed == by_input[solo.resolve()].seed


def test_the_output_folder_may_lie_among_the_inputs(tmp_path):
    data = tmp_path / "data"
    obs = touch(data / "obs.fits")
    touch(data / "obs_posterior.fits")  # an output of an earlier run with --out = the inputs
    touch(data / "sub" / "deep_posterior.h5")
    other = touch(tmp_path / "elsewhere" / "old_posterior.fits")  # not in --out: an input
    items = plan_batch([data, str(tmp_path / "elsewhere" / "*")], data)
    assert [it.input for it in items] == [obs, other]
    named = plan_batch([data / "obs_posterior.fits"], data)  # named explicitly: an input
    assert named[0].name == "obs_posterior_posterior.fits"
    with pytest.raises(FileFormatError, match="only outputs"):
        plan_batch([str(data / "*_posterior.fits")], data)


def test_item_seeds_depend_on_base_seed_and_key_only():
    assert item_seed(0, "obs_00000") == 6606770262261726147  # pinned: changing it breaks resumes
    assert item_seed(0, "obs_00000") != item_seed(1, "obs_00000")
    assert item_seed(0, "obs_00000") != item_seed(0, "obs_00001")
    seeds = [item_seed(s, k) for s in (-(2**70), -1, 0, 2**70) for k in ("a", "é", "\udcff")]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == len(seeds)


def test_input_list_relative_paths_comments_and_named_outputs(tmp_path):
    data = tmp_path / "data"
    one, two = touch(data / "one.fits"), touch(data / "sub" / "two.h5")
    touch(data / "g1.fits")
    touch(data / "g2.fits")
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text(
        f"# my job\n\n../data/one.fits\n{two}\tnight/two_post.h5\n../data/g*.fits\n  \n"
    )
    entries = read_input_list(listing)
    assert [e.line for e in entries] == [3, 4, 5]
    items = plan_batch([], tmp_path / "out", entries=entries)
    assert [it.name for it in items] == [
        "one_posterior.fits",
        "night/two_post.h5",
        "g1_posterior.fits",
        "g2_posterior.fits",
    ]
    assert items[0].input.resolve() == one.resolve()
    assert (
        items[1].key == "night/two_post" and items[1].output == tmp_path / "out/night/two_post.h5"
    )
    # the same file named twice is one item; two files with one output name is an error
    dup = tmp_path / "dup.txt"
    dup.write_text(f"{one}\n{one}\n")
    assert len(plan_batch([], tmp_path / "out", entries=read_input_list(dup))) == 1
    clash = tmp_path / "clash.txt"
    clash.write_text(f"{one}\tsame.fits\n{two}\tsame.fits\n")
    with pytest.raises(ConfigError, match="same output"):
        plan_batch([], tmp_path / "out", entries=read_input_list(clash))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "names no input"),
        (b"# only a comment\n", "names no input"),
        (b"a.fits\tb.fits\tc.fits\n", "TAB-separated"),
        (b"a.fits\t\n", "empty"),
        (b"\xff\xfe\x00a", "not a text file"),
        (b"caf\xe9.fits\n", "not UTF-8"),
    ],
)
def test_malformed_input_lists(tmp_path, content, message):
    listing = tmp_path / "list.txt"
    listing.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_input_list(listing)


@pytest.mark.parametrize(
    "name",
    [
        "../evil.fits",
        "a/../../evil.fits",
        "a/./b.fits",
        "/etc/evil.fits",
        "C:\\evil.fits",
        "C:evil.fits",
        "\\\\host\\share\\evil.fits",
        "~/evil.fits",
        ".hidden.fits",
        "sub/.tmp-0123456789ab-x.fits",
        "dwgf-manifest.json",
        "dwgf-manifest.part-0.json",
        "evil.sh",
        "evil\n.fits",
        "",
        "a//b.fits",
    ],
)
def test_output_names_are_confined_to_the_output_folder(tmp_path, name):
    with pytest.raises(ConfigError):
        confined_output(name, tmp_path / "out")


def test_output_names_cannot_leave_through_a_symbolic_link(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match="leads out"):
        confined_output("link/evil.fits", out)
    assert confined_output("sub/ok.fits", out) == out / "sub" / "ok.fits"


def test_input_list_with_escaping_output_is_refused_by_the_cli(
    tmp_path, obs_dir, prior_dir, capsys
):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{obs_dir / 'obs_00000.fits'}\t../escaped.fits\n")
    code = main(
        ["reconstruct", "--manifest", str(listing), "--prior", str(prior_dir)]
        + [
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "inside the output folder" in err and err.count("\n") == 1
    assert not (tmp_path / "escaped.fits").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# running: status, resuming, bad inputs
# --------------------------------------------------------------------------------------------------


def test_one_bad_file_is_reported_the_rest_go_on_and_a_rerun_resumes(
    tmp_path, obs_dir, prior_dir, capsys
):
    inputs = tmp_path / "in"
    shutil.copytree(obs_dir, inputs)
    bad = inputs / "bad.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)  # truncated header
    out = tmp_path / "out"
    capsys.readouterr()
    start = time.perf_counter()
    assert reconstruct([inputs], out, prior_dir) == 2
    wall = time.perf_counter() - start
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert len(errors) == 2 and str(bad) in errors[0] and errors[0].startswith("dwgf-sci: error:")
    assert errors[1].startswith("dwgf-sci: 4 input(s): 3 done, 1 failed")
    items = manifest_items(out)
    assert items["bad"]["status"] == "failed" and "FITS" in items["bad"]["error"]
    assert not (out / "bad_posterior.fits").exists()
    # each item's time is its own share of the run's wall time (the items run one after another)
    assert 0.0 < sum(items[f"obs_{i:05d}"]["seconds"] for i in range(3)) <= wall
    for i in range(3):
        entry = items[f"obs_{i:05d}"]
        output = out / entry["output"]
        assert entry["status"] == "done" and entry["seconds"] > 0.0
        assert entry["sha256"] == sha256_file(output) and entry["bytes"] == output.stat().st_size
        record = read_provenance(output)
        assert record["seed"] == entry["seed"] == item_seed(0, f"obs_{i:05d}")
        assert record["batch"] == {"key": f"obs_{i:05d}", "fingerprint": entry["fingerprint"]}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_posterior.fits")}
    # the bad file is repaired: the rerun does it alone and skips the rest
    shutil.copy(obs_dir / "obs_00001.fits", bad)
    assert reconstruct([inputs], out, prior_dir) == 0
    captured = capsys.readouterr()
    assert "dwgf-sci: 4 input(s): 4 done (3 already done), 0 failed" in captured.out
    assert captured.out.count("done already") == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("obs_*")} == stamps
    items = manifest_items(out)
    assert {e["status"] for e in items.values()} == {"done"}
    assert not list(out.glob(".tmp-*"))


def test_outputs_recorded_or_not_are_checked_before_being_skipped(
    tmp_path, obs_dir, prior_dir, capsys
):
    out = tmp_path / "out"
    files = [obs_dir / "obs_00000.fits", obs_dir / "obs_00001.fits"]
    assert reconstruct(files, out, prior_dir) == 0
    first = {i: read_fits(out / f"obs_0000{i}_posterior.fits", hdu="SAMPLES")[0] for i in (0, 1)}
    # no status file (a job killed right after writing outputs): the outputs are kept
    (out / MANIFEST_NAME).unlink()
    capsys.readouterr()
    assert reconstruct(files, out, prior_dir) == 0
    assert capsys.readouterr().out.count("kept: written by an earlier run") == 2
    assert set(manifest_items(out)) == {"obs_00000", "obs_00001"}
    # an output damaged after it was recorded is computed again, identically
    damaged = out / "obs_00001_posterior.fits"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    assert reconstruct(files, out, prior_dir) == 0
    assert "checksum mismatch" in capsys.readouterr().err
    assert torch.equal(read_fits(damaged, hdu="SAMPLES")[0], first[1])
    # other settings do not silently replace what exists ...
    assert reconstruct(files, out, prior_dir, "--seed", "5") == 2
    err = capsys.readouterr().err
    assert err.count("--overwrite") == 2 and "0 done, 2 failed" in err
    # ... unless asked to, and max_batch (how, not what) does not count as a setting
    assert reconstruct(files, out, prior_dir, "--seed", "5", "--overwrite") == 0
    assert reconstruct(files, out, prior_dir, "--seed", "5", "--max-batch", "1") == 0
    assert "2 done (2 already done)" in capsys.readouterr().out


def test_hdf5_outputs_and_named_outputs_in_subfolders(tmp_path, obs_dir, prior_dir):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{obs_dir / 'obs_00002.fits'}\tnight/b.h5\n{obs_dir / 'obs_00000.fits'}\n")
    out = tmp_path / "out"
    argv = ["--manifest", str(listing), "--format", "hdf5", "--no-samples"]
    assert reconstruct([], out, prior_dir, *argv) == 0
    assert (out / "night" / "b.h5").is_file() and (out / "obs_00000_posterior.h5").is_file()
    items = manifest_items(out)
    assert items["night/b"]["output"] == "night/b.h5"
    assert items["night/b"]["seed"] == item_seed(0, "night/b")


def test_samples_n_stores_the_first_n_and_keeps_mean_and_std(tmp_path, obs_dir, prior_dir, capsys):
    """``--samples N`` (large outputs): the first N samples; mean and std from all of them."""
    src = obs_dir / "obs_00000.fits"
    stored = {}
    for n in ("all", "1", "0"):
        extra = ("--particles", "3") if n == "all" else ("--particles", "3", "--samples", n)
        assert reconstruct([src], tmp_path / n, prior_dir, *extra) == 0
        with fits.open(tmp_path / n / "obs_00000_posterior.fits") as hdus:
            stored[n] = {h.name: None if h.data is None else h.data.copy() for h in hdus}
    # one sample is written as one image (write_fits' layout rule)
    assert stored["all"]["SAMPLES"].shape == (3, 1, 32, 32) and stored["1"]["SAMPLES"].ndim == 2
    assert "SAMPLES" not in stored["0"]
    assert (stored["1"]["SAMPLES"] == stored["all"]["SAMPLES"][0, 0]).all()
    for n in ("1", "0"):
        for name in ("PRIMARY", "STD"):
            assert (stored[n][name] == stored["all"][name]).all()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        reconstruct([src], tmp_path / "bad", prior_dir, "--samples", "-1")
    assert "must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_tampered_status_file_is_data_and_never_a_path_to_write(
    tmp_path, obs_dir, prior_dir, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    doc = {
        "format": "dwgf-sci batch manifest",
        "version": 1,
        "items": {
            "obs_00000": {
                "status": "done",
                "output": "../../evil.fits",
                "input": "/etc/passwd",
                "fingerprint": "x",
                "sha256": "y",
            },
            "junk": [1, 2, 3],
        },
    }
    (out / MANIFEST_NAME).write_text(json.dumps(doc))
    assert reconstruct([obs_dir / "obs_00000.fits"], out, prior_dir) == 0
    items = manifest_items(out)
    assert items["obs_00000"]["output"] == "obs_00000_posterior.fits"
    assert (out / "obs_00000_posterior.fits").is_file() and not (tmp_path / "evil.fits").exists()
    # a status file that is not one is a clear error, with what to do
    (out / MANIFEST_NAME).write_text("{not json")
    capsys.readouterr()
    assert reconstruct([obs_dir / "obs_00000.fits"], out, prior_dir) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "move" in err and err.count("\n") == 1


def test_a_second_job_on_the_same_folder_is_refused(tmp_path, obs_dir, prior_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with job_lock(out):
        assert reconstruct([obs_dir / "obs_00000.fits"], out, prior_dir) == 2
    err = capsys.readouterr().err
    assert "another dwgf-sci job" in err and err.count("\n") == 1
    assert not (out / "obs_00000_posterior.fits").exists()


def test_out_of_memory_is_reported_per_item_with_what_to_lower(
    tmp_path, obs_dir, prior_dir, capsys, monkeypatch
):
    real = DWGF.sample
    errors = iter(
        [
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 1 bytes. Error code 12 (Cannot "
                "allocate memory) out of memory"
            ),
        ]
    )

    def sample(self, *args, **kwargs):
        err = next(errors, None)
        if err is not None:
            raise err
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DWGF, "sample", sample)
    out = tmp_path / "out"
    capsys.readouterr()
    assert reconstruct([obs_dir], out, prior_dir, "--max-batch", "2") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "2 failed" in lines[-1]
    for line in lines[:2]:
        assert "out of memory" in line and "--max-batch" in line and "--particles" in line
    items = manifest_items(out)
    assert sorted(e["status"] for e in items.values()) == ["done", "failed", "failed"]
    assert [p.name for p in out.glob("*.fits")] == ["obs_00002_posterior.fits"]
    # once memory allows, the rerun finishes the job
    assert reconstruct([obs_dir], out, prior_dir) == 0


def test_unexpected_errors_are_recorded_and_debug_shows_them(
    tmp_path, obs_dir, prior_dir, capsys, monkeypatch
):
    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(DWGF, "sample", broken)
    out = tmp_path / "out"
    capsys.readouterr()
    assert reconstruct([obs_dir / "obs_00000.fits"], out, prior_dir) == 2
    err = capsys.readouterr().err
    assert "unexpected error (ZeroDivisionError: a bug)" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(
            [
                "--debug",
                "reconstruct",
                str(obs_dir / "obs_00000.fits"),
                "--prior",
                str(prior_dir),
                "--out",
                str(out),
                "--quiet",
            ]
        )


def test_python_api_uses_the_same_names_and_seeds(tmp_path, obs_dir, prior_dir):
    from dwgf_sci.pipelines import reconstruct_files

    solver = DWGF(load_prior(prior_dir), steps=1, particles=2, seed=0)
    results = reconstruct_files([obs_dir / "obs_00001.fits"], solver, tmp_path / "api")
    assert results[0].output == tmp_path / "api" / "obs_00001_posterior.fits"
    out = tmp_path / "cli"
    assert reconstruct([obs_dir / "obs_00001.fits"], out, prior_dir) == 0
    api = read_fits(results[0].output, hdu="SAMPLES")[0]
    assert torch.equal(api, read_fits(out / "obs_00001_posterior.fits", hdu="SAMPLES")[0])


# --------------------------------------------------------------------------------------------------
# security: configuration is data, no pickle is ever loaded
# --------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious pickle does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_toml_operator_files_are_parsed_as_data(tmp_path, obs_dir, prior_dir, capsys):
    marker = tmp_path / "PWNED"
    code_like = tmp_path / "code.toml"
    code_like.write_text(
        f"type = \"__import__('os').system('touch {marker}')\"\nfwhm = \"eval('1+1')\"\n"
    )
    python = tmp_path / "python.toml"
    python.write_text(f"import os\nos.system('touch {marker}')\n")
    valueish = tmp_path / "value.toml"
    valueish.write_text(f"preset = \"psf\"\nfwhm = \"__import__('os').system('touch {marker}')\"\n")
    for spec, message in ((code_like, "type"), (python, "invalid TOML"), (valueish, "fwhm")):
        with pytest.raises(ConfigError, match=message):
            resolve_spec(str(spec))
        capsys.readouterr()
        code = reconstruct(
            [obs_dir / "obs_00000.fits"], tmp_path / "out", prior_dir, "--operator", str(spec)
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert not marker.exists()


def test_pickled_weights_and_pickles_posing_as_data_are_never_loaded(tmp_path, prior_dir):
    marker = tmp_path / "PWNED"
    blob = pickle.dumps(_Payload(marker))
    # a prior folder whose weights are pickles only
    evil = tmp_path / "evil-prior"
    shutil.copytree(prior_dir, evil)
    for weights in evil.rglob("*.safetensors"):
        weights.with_suffix(".bin").write_bytes(blob)
        weights.unlink()
    with pytest.raises(FileFormatError, match="pickle"):
        load_prior(evil)
    # a pickle named like a measurement
    for name in ("evil.fits", "evil.h5"):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DwgfError):
            from dwgf_sci.io.measurement import read_measurement

            read_measurement(tmp_path / name)
    assert not marker.exists()


def test_nan_data_in_a_batch_is_reported_not_written(tmp_path, obs_dir, prior_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    data = np.ones((32, 32), np.float32)
    data[1, 2] = np.inf
    write_fits(folder / "inf.fits", data, check_finite=False)
    shutil.copy(obs_dir / "obs_00002.fits", folder)
    code = reconstruct([folder], tmp_path / "out", prior_dir, "--operator", "psf")
    assert code == 2
    err = capsys.readouterr().err
    assert "Inf" in err and "1 done, 1 failed" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.fits")) == ["obs_00002_posterior.fits"]


def test_the_poor_fit_limit_flags_misfits_and_not_the_noise():
    # a mean that explains the data to the noise level gives a reduced chi2 of chi2_n / n: the
    # limit stays above it (almost no false alarms) yet below a clear misfit, for few and many
    # measurements, and tightens as the measurements grow in number
    g = torch.Generator().manual_seed(0)
    limits = {}
    for n, misfit in ((50, 3.0), (4096, 1.5)):
        limits[n] = chi2_limit(n)
        exact = torch.randn(1000, n, generator=g, dtype=torch.float64).pow(2).mean(1)
        assert int((exact > limits[n]).sum()) <= 1, (n, limits[n])
        assert 1.0 < limits[n] < misfit
    assert limits[4096] < limits[50]


def test_a_poor_data_fit_is_flagged_on_the_item_line(tmp_path, obs_dir, prior_dir, capsys):
    # one level of an untrained prior cannot fit the data: the reduced chi2 and its limit are
    # printed and stored, and the line says the fit is poor
    first = sorted(obs_dir.glob("*.fits"))[0]
    assert reconstruct([first], tmp_path / "rec", prior_dir) == 0
    out = capsys.readouterr().out
    assert "reduced_chi2_limit=" in out and "poor data fit" in out, out
    metrics = read_provenance(next((tmp_path / "rec").glob("*.fits")))["metrics"]
    assert metrics["reduced_chi2_mean"] > metrics["reduced_chi2_limit"]
    assert "retried" not in metrics
    # the fast preset runs its last level (noise level <= 0.1) again with the latent step
    # when the mean misses the data, and says so
    argv = ("--preset", "fast", "--steps", "2")
    assert reconstruct([first], tmp_path / "fast", prior_dir, *argv) == 0
    assert "retried=1" in capsys.readouterr().out
    metrics = read_provenance(next((tmp_path / "fast").glob("*.fits")))["metrics"]
    assert metrics["retried"] == 1


def test_first_samples_refuses_a_negative_count():
    from dwgf_sci.solvers.posterior import first_samples

    x = torch.arange(5.0)
    assert torch.equal(first_samples(x, None), x) and first_samples(x, 0).numel() == 0
    assert torch.equal(first_samples(x, 2), x[:2])
    with pytest.raises(ConfigError, match="must be >= 0"):
        first_samples(x, -1)
