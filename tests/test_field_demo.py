"""``dwgf-sci demo --field`` (issue 22 item 4): a 256x256 field, its noise map, RL and DWGF by
patches, with the tiny 32 px prior and few steps."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from dwgf_sci.cli import main


def test_the_field_demo_writes_its_files_and_scores(tmp_path, prior_dir, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--field", "--prior", str(prior_dir), "--steps", "2", "--particles", "2"]
    assert main([*args, "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "richardson-lucy" in text and "dwgf" in text and "reduced chi2" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "demo.png",
        "observation.fits",
        "posterior.fits",
    ]
    with fits.open(out / "observation.fits") as hdul:
        names = [h.name for h in hdul]
        y = hdul[0].data
    assert y.shape[-2:] == (256, 256)
    assert any(n in names for n in ("ERR", "VARIANCE")), names  # the photon-noise map
    with fits.open(out / "posterior.fits") as hdul:
        mean = hdul[0].data
    assert mean.shape[-2:] == (256, 256) and np.isfinite(mean).all()
