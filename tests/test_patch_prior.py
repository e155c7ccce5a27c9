"""Patch prior (issue 22, item 1): a 32 px prior applied to a 128x96 image by shifted patches,
with a tiled, blended autoencoder."""

from __future__ import annotations

import deepinv as dinv
import pytest
import torch

from dwgf_sci.errors import ConfigError, OperatorMismatchError
from dwgf_sci.priors.patches import PatchPrior
from dwgf_sci.solvers import DWGF, LatentDPS

SHAPE = (1, 128, 96)


@pytest.fixture(scope="module")
def patch_prior():
    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    return PatchPrior(build_tiny_latent_prior(image_size=32, seed=0), patch_batch=7, tile_batch=5)


def blur_problem(prior: PatchPrior):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, *prior.latent_shape(SHAPE), generator=g)
    with torch.no_grad():
        x = prior.from_model(prior.decode(z))
    physics = dinv.physics.BlurFFT(img_size=SHAPE, filter=dinv.physics.blur.gaussian_blur(1.0))
    sigma = 0.01 * float(x.abs().max())
    physics.noise_model = dinv.physics.GaussianNoise(sigma)
    with torch.no_grad():  # seeded noise: the same problem in every process
        y = physics.A(x) + sigma * torch.randn(x.shape, generator=g)
    return physics, y, x


def test_the_native_size_is_the_wrapped_prior(patch_prior):
    base = patch_prior.base
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(patch_prior.predict_noise(z, 10), base.predict_noise(z, 10))
        assert torch.equal(patch_prior.decode(z), base.decode(z))
        x = base.decode(z)
        assert torch.equal(patch_prior.encode(x), base.encode(x))


def test_patches_cover_the_image_and_respect_the_batch_bound(patch_prior, monkeypatch):
    """Every latent pixel's prediction comes from a patch that contains it: on a latent whose
    patches are copies of one native latent, placed on the level's own grid, the prediction is
    the native prediction copied. And no UNet call sees more than ``patch_batch`` patches."""
    base = patch_prior.base
    sizes: list[int] = []
    original = type(base)._predict_noise

    def spy(self, z_t, t):
        sizes.append(z_t.shape[0])
        return original(self, z_t, t)

    monkeypatch.setattr(type(base), "_predict_noise", spy)
    t = 400
    dy, dx = patch_prior.shift(t)
    assert (dy, dx) != patch_prior.shift(t + 1) or patch_prior.shift(t + 2) != (dy, dx)
    native = torch.randn(1, 4, 8, 8)
    tiled = native.repeat(1, 1, 6, 5)  # 48x40 latent of copies of the native latent
    # the level's grid starts at (-dy, -dx): cut the copies so that its patches are copies too
    z = tiled[..., dy : dy + 32, dx : dx + 24]
    with torch.no_grad():
        eps = patch_prior.predict_noise(z, t)
        ref = base.predict_noise(native, t)
    assert max(sizes) <= patch_prior.patch_batch and sum(sizes) >= 12
    inner = eps[..., 8 - dy : 16 - dy, 8 - dx : 16 - dx]  # the grid's second patch each way
    torch.testing.assert_close(inner, ref, rtol=1e-5, atol=1e-6)
    # ... while an unshifted grid would have cut other patches there
    other = torch.roll(z, shifts=(1, 1), dims=(-2, -1))
    with torch.no_grad():
        moved = patch_prior.predict_noise(other, t)[..., 9 - dy : 17 - dy, 9 - dx : 17 - dx]
    assert not torch.allclose(moved, ref, rtol=1e-3, atol=1e-3)


def test_the_tiled_decoder_has_no_seam_and_agrees_inside_a_tile(patch_prior):
    base = patch_prior.base
    z = torch.randn(3, 4, 8, 16)
    sizes = []
    decode = base.decode

    def counted(t):
        sizes.append(t.shape[0])
        return decode(t)

    base.decode = counted
    try:
        with torch.no_grad():
            full = patch_prior.decode(z)
    finally:
        base.decode = decode
    with torch.no_grad():
        left = base.decode(z[..., :8])
    # outside the overlap the left tile's pixels are that tile's own decoding (decoded in a
    # batch with the other tiles: equal up to the last bits)
    torch.testing.assert_close(full[..., :24], left[..., :24], rtol=1e-6, atol=1e-6)
    assert tuple(full.shape) == (3, 1, 32, 64)
    # the tiles of all images go through the decoder together, never more than tile_batch
    assert sum(sizes) == 3 * 3 and max(sizes) <= patch_prior.tile_batch and len(sizes) == 2


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p, **k: DWGF(p, "fast", steps=4, particles=2, **k), id="dwgf-fast"),
        pytest.param(lambda p, **k: LatentDPS(p, steps=4, particles=2, **k), id="latent-dps"),
    ],
)
def test_solvers_reconstruct_a_large_image_independently_of_max_batch(make, patch_prior):
    physics, y, _ = blur_problem(patch_prior)
    a = make(patch_prior)(y, physics)
    b = make(patch_prior, max_batch=1)(y, physics)
    assert tuple(a.samples.shape) == (2, *SHAPE)  # the samples of the one measurement
    assert torch.isfinite(a.samples).all()
    # the same patch grids whatever the chunking; the UNet's batches differ (last-bit rounding)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-4, atol=1e-5)


def test_bad_sizes_are_refused(patch_prior):
    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    with pytest.raises(OperatorMismatchError, match="smaller than the patches"):
        patch_prior.latent_shape((1, 16, 64))
    with pytest.raises(ConfigError, match="overlap"):
        PatchPrior(build_tiny_latent_prior(image_size=32), overlap=8)


def test_the_cli_applies_a_stamp_prior_by_patches_when_asked(tmp_path, prior_dir, capsys):
    """A 64x48 file and the 32 px tiny prior: refused with a message naming --patches, then
    reconstructed with it (mean, std and samples of the file's size)."""
    import numpy as np
    from astropy.io import fits

    from dwgf_sci.cli import main
    from dwgf_sci.priors.patches import as_patch_prior, trained_on_crops

    rng = np.random.default_rng(0)
    path = tmp_path / "wide.fits"
    fits.PrimaryHDU((rng.random((64, 48)) * 0.5 + 0.25).astype(np.float32)).writeto(path)
    argv = ["reconstruct", str(path), "--prior", str(prior_dir), "--operator", "psf"]
    argv += ["--set", "fwhm=2", "--steps", "2", "--particles", "2", "--quiet", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    assert "--patches" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "--patches", "--preset", "fast"]) == 0
    with fits.open(tmp_path / "b" / "wide_posterior.fits") as hdul:
        assert hdul[0].data.shape[-2:] == (64, 48) and hdul["SAMPLES"].data.shape[0] == 2
    from dwgf_sci.priors import load_prior

    stamp = load_prior(str(prior_dir))
    assert not trained_on_crops(stamp) and as_patch_prior(stamp) is stamp
    assert isinstance(as_patch_prior(stamp, patches=True), PatchPrior)


def test_the_seam_ratio_sees_stitched_tiles_and_not_a_smooth_image():
    from dwgf_sci.metrics import seam_ratio

    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 132, 132, generator=g), 5, 1)
    assert abs(seam_ratio(smooth, grid=32) - 1.0) < 0.1
    stitched = smooth.clone()
    stitched[..., 32:64, :] += 0.1  # a tile row offset by a constant: a seam on two lines
    assert seam_ratio(stitched, grid=32) > 1.4
    assert abs(seam_ratio(stitched, grid=32, offset=(7, 7)) - 1.0) < 0.1


def _shared_run(rank: int, world: int, init: str, out: str) -> None:
    """One process of the two-process run: the fast preset on the 128x96 image, sharing."""
    import torch.distributed as dist

    from dwgf_sci.priors.sharing import ChunkSharing
    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        base = build_tiny_latent_prior(image_size=32, seed=0)
        prior = PatchPrior(base, patch_batch=7, tile_batch=5).share(ChunkSharing())
        physics, y, _ = blur_problem(prior)
        rows = []
        unet = base.predict_noise
        base.predict_noise = lambda z, t: rows.append(len(z)) or unet(z, t)
        post = DWGF(prior, "fast", steps=4, particles=2, seed=1)(y, physics)
        torch.save({"samples": post.samples, "unet_rows": sum(rows)}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_share_one_image_and_match_one_process(tmp_path):
    """torchrun-style processes (gloo) split one image's patches and tiles between them: the
    result is bit for bit one process's at the same thread count, each computing about half."""
    import torch.multiprocessing as mp

    from dwgf_sci.priors.tiny import build_tiny_latent_prior

    out = str(tmp_path / "shared")
    init = f"file://{tmp_path / 'store'}"
    mp.start_processes(_shared_run, args=(2, init, out), nprocs=2, start_method="spawn")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = build_tiny_latent_prior(image_size=32, seed=0)
        prior = PatchPrior(base, patch_batch=7, tile_batch=5)
        physics, y, _ = blur_problem(prior)
        rows = []
        unet = base.predict_noise
        base.predict_noise = lambda z, t: rows.append(len(z)) or unet(z, t)
        alone = DWGF(prior, "fast", steps=4, particles=2, seed=1)(y, physics).samples
    finally:
        torch.set_num_threads(threads)
    runs = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    for run in runs:
        assert torch.equal(run["samples"], alone)
    shares = [run["unet_rows"] for run in runs]
    assert sum(shares) == sum(rows) and min(shares) >= 0.3 * sum(rows), (shares, sum(rows))


def test_a_patch_prior_declares_its_extent_and_the_image_step_scales_per_window(patch_prior):
    """The fast preset's image-space prior scale g is a map for a patch prior on a larger
    image: the pixel mean of the decoder's squared response over the window of the patch
    extent around each pixel (cumulative sums; here against the brute-force mean)."""
    from dwgf_sci.solvers.dwgf.image_rto import window_mean

    assert patch_prior.local_extent == (32, 32) and patch_prior.base.local_extent is None
    x = torch.rand(2, 1, 37, 29, dtype=torch.float64)
    got = window_mean(x, (8, 6))
    want = torch.empty_like(x)
    for i in range(37):
        for j in range(29):
            rows, cols = slice(max(i - 4, 0), i + 4), slice(max(j - 3, 0), j + 3)
            want[..., i, j] = x[..., rows, cols].mean((-2, -1))
    torch.testing.assert_close(got, want)
