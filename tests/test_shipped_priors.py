"""The shipped priors are installed, load from safetensors, and reconstruct their tasks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dwgf_sci.benchmark.imaging import reduced_chi2, run_one
from dwgf_sci.benchmark.tasks import get_task
from dwgf_sci.metrics import psnr
from dwgf_sci.priors import SHIPPED_PRIORS, available_priors, load_prior
from dwgf_sci.priors.loading import WEIGHTS_DIR
from dwgf_sci.solvers import DWGF


def test_shipped_priors_are_installed_small_and_documented():
    assert set(SHIPPED_PRIORS) == {"galaxy-64", "ct-64", "field-64", "ct-patch-64"}
    assert not [n for n, text in available_priors().items() if "not installed" in text]
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"{total / 2**20:.1f} MB of shipped weights"
    for name in SHIPPED_PRIORS:
        folder = WEIGHTS_DIR / name
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
        assert len(list(folder.rglob("*.safetensors"))) == 2
        card = (folder / "README.md").read_text()
        assert "dwgf-sci train-prior" in card and "Held-out acceptance metrics" in card
        check_prior_metrics(json.loads((folder / "prior_metrics.json").read_text()), name)
        # the solver settings chosen on the prior's validation problems: DWGF takes each one
        # (its options are "auto" by default) and the model card says why they were chosen
        prior = load_prior(name)
        settings = DWGF(prior).settings()
        assert {k: settings.get(k) for k in prior.solver_hints} == prior.solver_hints
        assert not prior.solver_hints or "## Solver hints" in card


def check_prior_metrics(metrics: dict, name: str) -> None:
    """The acceptance metrics of benchmarks/prior_metrics.py: measured on this prior, values in
    their valid ranges, and pass flags that follow from the values and the targets."""
    assert metrics["prior_metadata"]["name"] == name
    n = metrics["n_samples"]
    psnr_db = metrics["vae_psnr_db"]
    assert psnr_db["n"] == n > 0
    # each image's PSNR is on its own range: unbounded below for a nearly constant crop
    assert math.isfinite(psnr_db["min"])
    assert psnr_db["min"] <= min(psnr_db["mean"], psnr_db["median"]) < 100.0
    assert metrics["ks"], "no distribution was compared"
    for entry in metrics["ks"].values():
        assert 0.0 <= entry["ks"] <= 1.0 and 0.0 <= entry["p_value"] <= 1.0
        assert entry["n_samples"] + entry["dropped"] == n
    targets, passed = metrics["targets"], metrics["pass"]
    expected = {"vae_psnr": psnr_db["mean"] >= targets["vae_psnr_db"]}
    expected |= {f"ks_{k}": e["ks"] <= targets["ks"] for k, e in metrics["ks"].items()}
    assert passed == expected and metrics["all_pass"] == all(expected.values())


@pytest.mark.parametrize(("task", "baseline"), [("galaxy-deconv", "wiener"), ("ct-20", "fbp")])
def test_shipped_prior_reconstructs_its_task(task, baseline):
    t = get_task(task)
    prior = load_prior(t.prior)
    assert prior.image_size == (64, 64) and prior.image_channels == 1
    item = next(t.items("validation", 1))
    post = DWGF(prior, preset="fast", particles=2, steps=10, seed=0)(item.y, item.physics)
    assert post.samples.shape == (2, 1, 64, 64) and torch.isfinite(post.samples).all()
    # the posterior mean fits the data at the noise level (reduced chi2 of the truth ~1; a sampler
    # that under-fits, as the split-Gibbs SMC with MALA did on these priors, gives 15-400) and
    # beats the classical baseline
    assert reduced_chi2(post.mean, item) < 2.0
    classical = run_one(item, baseline, None)
    assert float(psnr(post.mean, item.x)) > classical["psnr"] + 1.0
