"""Bad input and foreseeable failures of ``dwgf-sci`` (issue 21, item 6): each one is a single
``dwgf-sci: error: ...`` line with exit status 2, never a traceback nor "please report it"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dwgf_sci.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the CLI; return its exit status and the standard error it wrote."""
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_stable_diffusion_folder_with_only_pickled_weights_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from dwgf_sci.priors.tiny import build_tiny_stable_diffusion

    folder = build_tiny_stable_diffusion(tmp_path / "sd", seed=0)
    for weights in sorted(folder.rglob("*.safetensors")):
        stem = (
            "pytorch_model" if weights.parent.name == "text_encoder" else "diffusion_pytorch_model"
        )
        torch.save(load_file(weights), weights.parent / f"{stem}.bin")
        weights.unlink()
    obs = tmp_path / "obs"
    assert main(["simulate", "--n", "1", "--size", "32", "--out", str(obs)]) == 0
    code, err = _run(
        capsys,
        "reconstruct",
        str(obs),
        "--prior",
        str(folder),
        "--steps",
        "1",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert err.startswith("dwgf-sci: error: ") and err.count("\n") == 1
    for name in ("vae/diffusion_pytorch_model.bin", "unet/", "text_encoder/pytorch_model.bin"):
        assert name in err
    assert "only safetensors" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.fits"))
