"""Measure ``decoder_sigma`` and the per-pixel decoder error model of the shipped priors on their
200 held-out validation images.

``decoder_sigma`` is the RMS of ``decode(encode(x)) - x`` in model units; the
:class:`~dwgf_sci.priors.DecoderErrorModel` is that RMS per (decoded value, gradient) cell. DWGF
models the decoder's error with them (``DWGF(decoder_error="auto")``). ``dwgf-sci train-prior``
measures both itself on the validation split of a new prior; the shipped priors were trained
before that, so this script regenerates their validation split (the last 200 of 4200 images of
data seed 0, as in ``benchmarks/train_shipped_priors.sh``) and writes both into each prior's
``dwgf_prior.json``::

    python benchmarks/decoder_sigma.py          # print
    python benchmarks/decoder_sigma.py --write  # and store them in the shipped priors
"""

from __future__ import annotations

import argparse
import json

import torch

from dwgf_sci.priors import load_prior
from dwgf_sci.priors.loading import WEIGHTS_DIR
from dwgf_sci.training.data import _generate
from dwgf_sci.training.evaluate import decoder_error

DATASETS = {"galaxy-64": "galaxies", "ct-64": "phantoms"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="store it in dwgf_prior.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, dataset in DATASETS.items():
        prior = load_prior(name, device="cpu")
        val = _generate(dataset, 4200, 64, 0)[-200:]
        value, model = decoder_error(prior, val)
        flat = [v for row in model.sigma for v in row]
        print(
            f"{name}: decoder_sigma {value:.5f} (model units, 200 validation images); "
            f"per-pixel model {len(model.sigma)}x{len(model.sigma[0])} cells, "
            f"sigma {min(flat):.2e} .. {max(flat):.2e}"
        )
        if args.write:
            path = WEIGHTS_DIR / name / "dwgf_prior.json"
            config = json.loads(path.read_text())
            config["decoder_sigma"] = value
            config["decoder_error_model"] = model.to_dict()
            config["metadata"].setdefault("metrics", {})["val_decoder_sigma"] = value
            path.write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
