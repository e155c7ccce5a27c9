"""train-prior on 2 processes (torchrun, gloo on the CPU) agrees with a 1-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dwgf_sci.cli import main
from dwgf_sci.priors import load_prior

ARGS = [
    "train-prior", "--dataset", "phantoms", "--n-images", "24", "--size", "16",
    "--vae-channels", "8,16", "--unet-channels", "8,16", "--latent-channels", "2",
    "--vae-steps", "8", "--unet-steps", "6", "--batch-size", "4", "--eval-samples", "0",
    "--sample-steps", "2", "--device", "cpu", "--threads", "1", "--quiet",
]  # fmt: skip


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc_per_node", "2", "-m", "dwgf_sci.cli", *ARGS, "--out", str(two)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained prior saved") == 1  # rank 0 only
    assert main([*ARGS, "--out", str(one)]) == 0
    record_two = json.loads((two / "training.json").read_text())
    record_one = json.loads((one / "training.json").read_text())
    assert record_two["metrics"]["world_size"] == 2
    for stage in ("vae", "unet"):
        # the same global batches, split over the processes: same losses up to float sums
        assert np.allclose(record_two["history"][stage], record_one["history"][stage], rtol=1e-3)
        a = load_file(two / stage / "diffusion_pytorch_model.safetensors")
        b = load_file(one / stage / "diffusion_pytorch_model.safetensors")
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-2
    assert load_prior(str(two), device="cpu").image_size == (16, 16)
    assert not torch.distributed.is_initialized()
