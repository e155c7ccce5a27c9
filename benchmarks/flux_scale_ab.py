"""``flux_scale="auto"`` against the data's own units on benchmark validation problems.

The benchmark tasks simulate data in the shipped priors' own units, so this measures what the
normalisation costs or gains where no rescaling is needed: each problem is solved twice with the
same seed, ``flux_scale="auto"`` and ``None``.

    python benchmarks/flux_scale_ab.py --tasks galaxy-deconv --method dwgf-fast --n 6
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dwgf_sci.benchmark.imaging import run_one
from dwgf_sci.benchmark.tasks import get_task
from dwgf_sci.priors import load_prior


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["galaxy-deconv"])
    ap.add_argument("--method", default="dwgf-fast")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON lines file to append to")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.tasks:
        task = get_task(name)
        prior = load_prior(task.prior)
        for item in task.items("validation", n=args.n):
            row = {"task": name, "method": args.method, "index": item.index}
            for mode in ("auto", None):
                rec = run_one(item, args.method, prior, {"flux_scale": mode})
                row[f"psnr_{mode or 'off'}"] = round(float(rec["psnr"]), 3)
            row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
