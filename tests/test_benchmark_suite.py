"""The imaging benchmark suite: tasks, the runner (resumable) and ``dwgf-sci benchmark``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dwgf_sci.benchmark import imaging
from dwgf_sci.benchmark.imaging import applies, run_benchmark, summary_markdown
from dwgf_sci.benchmark.tasks import TASKS, WIDE_TASKS, get_task
from dwgf_sci.cli import main
from dwgf_sci.errors import ConfigError
from dwgf_sci.priors.tiny import build_tiny_latent_prior


@pytest.fixture(scope="module")
def tiny64():
    return build_tiny_latent_prior(image_size=64, seed=0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_are_reproducible_and_splits_differ(name):
    task = TASKS[name]
    a = next(task.items("validation", 1))
    b = next(task.items("validation", 1))
    c = next(task.items("test", 1))
    assert a.x.shape == (1, 1, task.size, task.size) and torch.isfinite(a.y).all()
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # same truth, same noise
    assert not torch.equal(a.x, c.x)  # the test split is another set of objects
    with torch.no_grad():
        assert a.physics.A(a.x).shape == a.y.shape
    assert a.spec["noise"]["type"] != "none" and "seed" in a.spec["noise"]


def test_task_definitions_match_the_issue():
    assert TASKS["galaxy-deconv"].spec()["fwhm"] == 4.0
    assert TASKS["galaxy-deconv"].spec()["profile"] == "moffat"
    assert TASKS["galaxy-deconv-poisson"].spec()["noise"]["type"] == "poisson"
    assert TASKS["galaxy-cs-fourier"].spec()["ratio"] == 0.25
    assert TASKS["galaxy-cs-random"].spec()["ratio"] == 0.25
    assert TASKS["ct-20"].spec()["n_views"] == 20 and TASKS["ct-60"].spec()["n_views"] == 60
    assert TASKS["ct-limited-90"].spec()["angular_range"] == 90.0
    assert TASKS["galaxy-inpaint"].spec()["fraction"] == 0.3
    assert TASKS["field-256"].spec()["noise"]["sky"] == 20.0 and TASKS["field-256"].size == 256
    assert TASKS["ct-256-20"].spec()["n_views"] == 20 and TASKS["ct-256-20"].prior == "ct-patch-64"
    # 1% Gaussian noise relative to the noise-free peak
    item = next(TASKS["galaxy-deconv"].items("test", 1))
    with torch.no_grad():
        peak = float(item.physics.A(item.x).abs().max())
    assert item.spec["noise"]["sigma"] == pytest.approx(0.01 * peak, rel=1e-5)
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("deblur")
    with pytest.raises(ConfigError, match="split"):
        next(TASKS["ct-20"].items("train", 1))


def test_methods_apply_to_their_operators():
    assert applies("wiener", TASKS["galaxy-deconv"]) and not applies("wiener", TASKS["ct-20"])
    assert applies("fbp", TASKS["ct-20"]) and not applies("fbp", TASKS["galaxy-deconv"])
    assert all(applies(m, TASKS["ct-20"]) for m in ("dwgf", "dps", "psld", "resample", "tv"))


def test_runner_records_every_metric_and_resumes(tmp_path, tiny64, monkeypatch):
    tasks = [TASKS["galaxy-deconv"]]
    params = {"dwgf": {"steps": 3, "particles": 3}, "dps": {"steps": 3, "particles": 2}}
    records = run_benchmark(
        tasks, ["dwgf", "dps", "wiener"], lambda name: tiny64, tmp_path, n=2, params=params,
        progress=None,
    )  # fmt: skip
    assert len(records) == 2 * 3
    rec = next(r for r in records if r["method"] == "dwgf")
    for key in ("psnr", "ssim", "chi2", "wall_s", "peak_mib"):
        assert isinstance(rec[key], float)
    assert 0.0 <= rec["coverage90"] <= 1.0 and rec["n_samples"] == 3
    assert rec["calls"]["unet"] == 3 * 3
    wiener = next(r for r in records if r["method"] == "wiener")
    assert wiener["coverage90"] is None and wiener["calls"] == {}
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["records"]) == 6 and "torch" in saved["machine"]
    images = torch.load(tmp_path / "images.pt", weights_only=True)
    assert {"galaxy-deconv/0/truth", "galaxy-deconv/0/dwgf"} <= set(images)
    # a rerun skips what is done and adds only the new method
    calls = []
    real = imaging.run_one
    monkeypatch.setattr(imaging, "run_one", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    records = run_benchmark(
        tasks, ["dwgf", "dps", "wiener", "pinv"], lambda name: tiny64, tmp_path, n=2,
        params=params, progress=None,
    )  # fmt: skip
    assert calls == ["pinv", "pinv"] and len(records) == 8
    table = summary_markdown(records, ["galaxy-deconv"])
    assert table.count("\n| ") == 5 and "| dwgf | 2 |" in table


def test_cli_quick_run_and_bad_options(tmp_path, capsys):
    prior = tmp_path / "tiny64"
    build_tiny_latent_prior(image_size=64, seed=0).save_pretrained(prior)
    out = tmp_path / "bench"
    argv = ["benchmark", "--quick", "--out", str(out), "--methods", "dwgf", "dps", "fbp", "pinv"]
    argv += ["--prior", f"galaxy-64={prior}", "--prior", f"ct-64={prior}", "--steps", "2"]
    assert main(argv) == 0
    text = (out / "results.md").read_text()
    assert "### galaxy-deconv" in text and "### ct-20" in text and "| fbp |" in text
    with Image.open(out / "quality_vs_time.png") as png:  # a plot, not a blank canvas
        assert png.format == "PNG" and float(np.asarray(png.convert("L")).std()) > 1.0
    assert (out / "examples_ct-20.png").exists()
    assert main(["benchmark", "--out", str(out), "--methods", "magic"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["benchmark", "--out", str(out), "--prior", "galaxy-64"]) == 2
    assert "NAME=FOLDER" in capsys.readouterr().err


def test_log_search_finds_the_peak_and_walks_past_the_first_guess():
    import math

    from dwgf_sci.benchmark.tuning import grid_search, log_search

    seen: list[float] = []

    def score(v: float) -> float:
        seen.append(v)
        return -((math.log10(v) + 3.3) ** 2)  # peak at 5e-4, three decades below the guess

    found = log_search(score, 0.1)
    assert abs(math.log10(found.best) + 3.3) < 0.3
    assert len(seen) == len(set(seen)) == len(found.scores)  # no value scored twice
    diverging = log_search(lambda v: float("nan") if v > 0.05 else -v, 0.1)
    assert diverging.best < 0.05  # non-finite scores are never chosen
    counts = log_search(lambda v: -abs(v - 300), 100, factor=3, integer=True, minimum=1)
    assert counts.best == 300 and isinstance(counts.best, int)
    grid = grid_search(lambda v: float("nan") if v == 3 else -abs(v - 2.5), [1, 2, 3])
    assert grid.best == 2 and grid.scores[3] == -math.inf


def test_tune_method_refuses_the_test_split_and_picks_from_validation():
    from dwgf_sci.benchmark.tuning import tune_method

    task = get_task("galaxy-deconv")
    with pytest.raises(ValueError, match="test split"):
        tune_method("richardson-lucy", "iterations", 10, list(task.items("test", 1)), None)
    val = list(task.items("validation", 1))
    found = tune_method("richardson-lucy", "iterations", 3, val, None, integer=True, factor=3.0)
    scores = dict(found.scores)
    assert scores[found.best] == max(scores.values()) and found.best > 3  # 3 iterations under-fit


def test_overview_marks_the_best_method_per_task():
    from dwgf_sci.benchmark.imaging import overview_markdown

    def rec(task, method, value):
        return {"task": task, "method": method, "psnr": value, "ssim": 0.9, "chi2": 1.0,
                "coverage90": None, "wall_s": 1.0, "peak_mib": 0.0, "calls": {}}  # fmt: skip

    records = [rec("a", "tv", 30.0), rec("a", "dwgf", 31.0), rec("a", "dwgf", 33.0),
               rec("b", "tv", 40.0), rec("b", "dwgf", 35.0)]  # fmt: skip
    lines = overview_markdown(records, ["a", "b", "missing"]).splitlines()
    assert lines[0] == "| method | a | b |"
    assert lines[2] == "| dwgf | **32.00** | 35.00 |"  # latent methods first, mean over problems
    assert lines[3] == "| tv | 30.00 | **40.00** |"


def test_gpu_profile_script_runs_on_the_cpu_with_the_tiny_architecture():
    """benchmarks/gpu_sd_profile.py, the script a GPU session runs, smoke-tested on the CPU."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "gpu_sd_profile.py"
    cmd = [sys.executable, str(script), "--arch", "tiny", "--size", "64", "--device", "cpu"]
    cmd += ["--dtype", "float32", "--steps", "2", "--particles", "2", "--no-write"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    methods = [r["method"] for r in rows if "method" in r]
    assert methods == ["dwgf", "dwgf-fast", "psld", "dps"]
    timed = {r["method"]: r for r in rows[:4]}
    for r in timed.values():
        assert r["per_step_ms"] == pytest.approx(1e3 * r["wall_s"] / 2)  # the run's 2 steps
    calls = {m: r["calls_per_particle_step"] for m, r in timed.items()}
    # one UNet forward per particle and step; DPS and PSLD differentiate through the UNet, DWGF
    # never does, and the fast preset (its retry off here) not through the decoder either
    assert all(c["unet"] == 1 for c in calls.values())
    assert calls["dps"]["unet_backward"] == calls["psld"]["unet_backward"] == 1
    assert "unet_backward" not in calls["dwgf"] and "unet_backward" not in calls["dwgf-fast"]
    assert "decoder_backward" not in calls["dwgf-fast"]
    # the last line: each DWGF variant's wall time over each baseline's
    wall = {m: r["wall_s"] for m, r in timed.items()}
    expected = {
        f"{m}_over_{b}": wall[m] / wall[b] for m in ("dwgf", "dwgf-fast") for b in ("psld", "dps")
    }
    assert rows[-1] == pytest.approx(expected)


def test_wide_tasks_run_when_named_and_by_patches():
    """The 256 px tasks are left out of the default run; their priors are patch priors."""
    from dwgf_sci.benchmark.cli import _all_tasks
    from dwgf_sci.priors import load_prior
    from dwgf_sci.priors.patches import PatchPrior, as_patch_prior

    assert set(WIDE_TASKS) == {"field-256", "ct-256-20"}
    assert not set(_all_tasks()) & set(WIDE_TASKS) and len(_all_tasks()) == len(TASKS) - 2
    for name in WIDE_TASKS:
        assert isinstance(as_patch_prior(load_prior(TASKS[name].prior)), PatchPrior)
