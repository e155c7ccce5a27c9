"""Test-wide settings: offline, temporary caches, small deterministic torch."""

from __future__ import annotations

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="dwgf-sci-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_CACHE, "xdg"))
os.environ.setdefault("TORCH_HOME", os.path.join(_CACHE, "torch"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_CACHE, "mpl"))
os.environ.setdefault("HF_HOME", os.path.join(_CACHE, "hf"))
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# small tensors: one thread avoids oversubscription on small, shared CI machines
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one intra-op thread, also after a run in this process changed the
    count (``--threads``): tiny tensors gain nothing from threads, and on a loaded two-core
    machine their synchronisation slows small FFTs down ~100x."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_latent_prior():
    """An untrained 32 px latent diffusion prior with tiny networks (a learned decoder)."""
    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    return build_tiny_latent_prior(image_size=32, seed=0)


@pytest.fixture(scope="session")
def prior_dir(tmp_path_factory):
    """The tiny 32 px prior saved with ``save_pretrained``: a folder to pass as ``--prior``.

    Shared by every test of the session, so read it only (copy it before changing anything)."""
    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    folder = tmp_path_factory.mktemp("prior") / "tiny"
    build_tiny_latent_prior(image_size=32, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_blur_problem(tiny_latent_prior):
    """A 32 px image decoded from a random latent of the tiny prior, blurred (Gaussian, sigma 1
    px) with 1% Gaussian noise: ``(physics, y)``."""
    import deepinv as dinv

    prior = tiny_latent_prior
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, *prior.latent_shape((1, 32, 32)), generator=g)
    with torch.no_grad():
        x = prior.from_model(prior.decode(z))
    physics = dinv.physics.BlurFFT(
        img_size=(1, 32, 32), filter=dinv.physics.blur.gaussian_blur(1.0)
    )
    physics.noise_model = dinv.physics.GaussianNoise(0.01 * float(x.abs().max()))
    return physics, physics(x)
