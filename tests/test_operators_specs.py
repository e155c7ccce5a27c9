"""Presets, TOML operator files, ``--set`` overrides, build_operator and physics_spec."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import dwgf_sci.operators as ops
from dwgf_sci.errors import ConfigError, OperatorMismatchError

REQUIRED_PRESETS = ["psf", "ct-sparse", "ct-limited", "fourier", "random-cs", "inpaint-psf"]


@pytest.mark.parametrize("name", list(ops.PRESETS))
def test_presets_build_and_simulate(name: str) -> None:
    spec = ops.resolve_spec(name)
    physics = ops.build_operator(spec, (1, 32, 32))
    x = torch.rand(2, 1, 32, 32)
    y = physics(x)
    assert y.shape[1:] == tuple(physics.measurement_shape) and torch.isfinite(y).all()
    described = ops.physics_spec(physics)
    json.dumps(described)
    assert described["noise"] == spec["noise"]
    assert described["img_size"] == [1, 32, 32]


def test_required_presets_and_their_parameters() -> None:
    assert set(REQUIRED_PRESETS) <= set(ops.PRESETS)
    psf = ops.resolve_spec("psf")
    assert (psf["profile"], psf["fwhm"], psf["beta"]) == ("moffat", 4.0, 3.0)
    assert psf["noise"] == {"type": "gaussian", "sigma": 0.01, "seed": None}
    assert ops.resolve_spec("ct-sparse")["n_views"] == 20
    assert ops.resolve_spec("ct-limited")["angular_range"] == 90.0
    assert ops.resolve_spec("fourier")["ratio"] == 0.25
    assert ops.build_operator(ops.resolve_spec("random-cs"), (1, 32, 32)).m == 256
    inpaint = ops.build_operator(ops.resolve_spec("inpaint-psf"), (1, 32, 32))
    assert inpaint.physics_list[1].bad_fraction == pytest.approx(0.3, abs=0.002)
    assert ops.physics_spec(inpaint)["type"] == "inpaint-psf"


def test_overrides() -> None:
    spec = ops.resolve_spec("psf", ["fwhm=3", "noise.sigma=0.05", "padding=circular"])
    assert spec["fwhm"] == 3.0 and spec["noise"]["sigma"] == 0.05
    assert spec["padding"] == "circular"
    # switching the profile drops the keys the new one does not use
    gauss = ops.resolve_spec("psf", ["profile=gaussian"])
    assert "beta" not in gauss and gauss["fwhm"] == 4.0
    airy = ops.resolve_spec("psf", ["profile=airy", "lam_over_d=2.0", "obscuration=0.2"])
    assert airy["lam_over_d"] == 2.0 and "fwhm" not in airy
    ct = ops.resolve_spec("ct-sparse", ["geometry=fanbeam", "n_views=30", "source_radius=100"])
    assert ct["geometry"] == "fanbeam" and ct["source_radius"] == 100.0
    assert ct["angular_range"] == 180.0  # the preset's value is kept
    noiseless = ops.resolve_spec("fourier", ["noise=none"])
    assert noiseless["noise"] == {"type": "none"}
    poisson = ops.resolve_spec("psf", ["noise.type=poisson", "noise.gain=0.1", "noise.sky=5"])
    assert poisson["noise"]["type"] == "poisson" and "sigma" not in poisson["noise"]
    m = ops.resolve_spec("random-cs", ["m=100"])
    assert m["m"] == 100 and m["ratio"] is None
    typed = ops.resolve_spec("psf", ["type=ct", "n_views=8"])
    assert typed["type"] == "ct" and "fwhm" not in typed


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["fwhmm=3"], "fwhmm"),
        (["fwhm=-1"], "fwhm"),
        (["fwhm=abc"], "fwhm"),
        (["padding=reflect"], "padding"),
        (["noise.sigma=-0.1"], "noise.sigma"),
        (["noise.colour=pink"], "noise.colour"),
        (["beta=2", "profile=gaussian"], "beta"),
        (["size=10"], "size"),
        (["profile=airy"], "lam_over_d"),
        (["fwhm"], "fwhm"),
        (["img_size=[1, 0, 4]"], "img_size"),
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ops.resolve_spec("psf", overrides)


def test_bad_names_and_exclusive_keys() -> None:
    with pytest.raises(ConfigError, match="unknown operator"):
        ops.resolve_spec("psff")
    with pytest.raises(ConfigError, match="m / ratio"):
        ops.canonical_spec({"type": "random-cs", "m": 10, "ratio": 0.5})
    with pytest.raises(ConfigError, match="m and ratio|give only one"):
        ops.resolve_spec("random-cs", ["ratio=0.3", "m=10"])
    with pytest.raises(ConfigError, match="type"):
        ops.canonical_spec({"type": "deblur"})


def test_toml_files(tmp_path) -> None:
    full = tmp_path / "psf.toml"
    full.write_text(
        'type = "psf"\nprofile = "gaussian"\nfwhm = 2.5\npadding = "valid"\n'
        '[noise]\ntype = "poisson-gaussian"\ngain = 0.2\nsigma = 0.01\nsky = 3.0\n'
    )
    spec = ops.resolve_spec(full)
    assert spec["profile"] == "gaussian" and spec["padding"] == "valid"
    assert spec["noise"]["sky"] == 3.0
    op = ops.build_operator(spec, (1, 24, 24))
    assert op.measurement_shape[1:] == (24 - op.psf.shape[-1] + 1,) * 2
    based = tmp_path / "ct.toml"
    based.write_text('preset = "ct-sparse"\nn_views = 12\n[noise]\nsigma = 0.5\n')
    ct = ops.resolve_spec(str(based), ["start_angle=5"])
    assert (ct["n_views"], ct["noise"]["sigma"], ct["start_angle"]) == (12, 0.5, 5.0)
    switched = tmp_path / "airy.toml"
    switched.write_text('preset = "psf"\nlam_over_d = 1.5\nprofile = "airy"\n')
    assert ops.resolve_spec(switched)["lam_over_d"] == 1.5
    bad = tmp_path / "bad.toml"
    bad.write_text('type = "psf"\nfwhm = 3\nwidth = 4\n')
    with pytest.raises(ConfigError, match="width"):
        ops.resolve_spec(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("type = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        ops.resolve_spec(broken)
    with pytest.raises(ConfigError, match="not found"):
        ops.resolve_spec(tmp_path / "missing.toml")


def test_arrays_are_supplied_separately() -> None:
    psf = np.outer(np.hanning(7), np.hanning(7))[None, None]
    op = ops.PSFConvolution(psf, (1, 20, 20))
    spec = ops.physics_spec(op)
    assert spec["profile"] == "array" and spec["psf_shape"] == [1, 1, 7, 7]
    with pytest.raises(ConfigError, match="psf="):
        ops.build_operator(spec)
    with pytest.raises(OperatorMismatchError, match="shape"):
        ops.build_operator(spec, psf=np.ones((5, 5)))
    rebuilt = ops.build_operator(spec, psf=psf)
    x = torch.rand(1, 1, 20, 20)
    torch.testing.assert_close(rebuilt.A(x), op.A(x))
    with pytest.raises(ConfigError, match="not used"):
        ops.build_operator(ops.resolve_spec("psf"), (1, 20, 20), psf=psf)
    with pytest.raises(OperatorMismatchError, match="img_size"):
        ops.build_operator(spec, (1, 32, 32), psf=psf)
    with pytest.raises(ConfigError, match="img_size"):
        ops.build_operator(ops.resolve_spec("psf"))
    fourier = ops.FourierSampling((1, 16, 16), mask=np.eye(16, dtype=bool))
    assert "mask=" in str(pytest.raises(ConfigError, ops.build_operator, fourier.spec()).value)
    again = ops.build_operator(fourier.spec(), mask=np.eye(16, dtype=bool))
    assert torch.equal(again.index, fourier.index)


def test_generic_composition_spec() -> None:
    spec = {
        "type": "composed",
        "operators": [
            {"type": "psf", "profile": "gaussian", "fwhm": 2.0, "padding": "valid"},
            {"type": "mask", "fraction": 0.2},
        ],
        "noise": {"type": "gaussian", "sigma": 0.02},
    }
    op = ops.build_operator(spec, (1, 20, 20))
    assert op.measurement_shape == op.physics_list[0].measurement_shape
    described = ops.physics_spec(op)
    assert described["type"] == "composed" and described["noise"]["sigma"] == 0.02
    again = ops.build_operator(ops.resolve_spec(described, ["operators.0.fwhm=3"]))
    assert again.physics_list[0].spec()["fwhm"] == 3.0
    with pytest.raises(ConfigError, match=r"operators\.1\.noise"):
        ops.canonical_spec(
            {
                "type": "composed",
                "operators": [spec["operators"][0], {**spec["operators"][1], "noise": "gaussian"}],
            }
        )
    import deepinv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deepinv: "composing a DecomposablePhysics"
        plain = deepinv.physics.compose(
            ops.PSFConvolution(np.ones((3, 3)), (1, 8, 8)), ops.BadPixelMask(0.1, (1, 8, 8))
        )
    assert ops.physics_spec(plain)["type"] == "composed"
