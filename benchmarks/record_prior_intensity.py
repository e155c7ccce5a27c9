"""Record the training intensity range in a prior folder made before ``train-prior`` did so.

The prior's metadata names its training data (``metadata.data``: dataset, n, size, seed, split);
this regenerates those images, keeps the training split and writes their statistics
(:func:`dwgf_sci.priors.intensity.record_intensity`) into the folder's ``dwgf_prior.json``.
Used once on the shipped priors:

    python benchmarks/record_prior_intensity.py dwgf_sci/priors/weights/galaxy-64 \
        dwgf_sci/priors/weights/ct-64
"""

from __future__ import annotations

import argparse

from dwgf_sci.priors.folders import read_prior_config
from dwgf_sci.priors.intensity import intensity_units, record_intensity
from dwgf_sci.training.data import regenerate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args()
    for folder in args.folders:
        data = read_prior_config(folder)["metadata"]["data"]
        images = regenerate(data)
        found = record_intensity(folder, images.train, intensity_units(data["dataset"]))
        print(f"{folder}: {found.describe()}, {found.units} units")


if __name__ == "__main__":
    main()
