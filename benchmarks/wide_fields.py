"""Wide fields and large CT slices from 64-px patch priors (issue 22's acceptance run).

Tasks (seeds apart from the priors' training data, data seed 0):

- ``field-512`` (``--field-size``): simulated survey fields (:class:`~dwgf_sci.datasets.
  FieldDataset`, 512 x 512 px) observed with a Moffat PSF (FWHM 3 px, beta 3.5) and sky plus
  source photon noise, :math:`v = b + \\max(Ax, 0)` counts (gain 1, sky ``--sky`` counts per
  pixel), drawn as Gaussian noise of that variance and given to every method as its per-pixel
  noise map.
- ``ct-256``: Shepp-Logan-like phantoms at 256 px, parallel-beam CT with 20 views, Gaussian
  noise 1% of the sinogram's peak.

Methods:

- ``dwgf``: DWGF (``--preset``, fast by default) with the patch prior
  (:class:`~dwgf_sci.priors.patches.PatchPrior`: shifted patch grids, global likelihood);
- ``dwgf-tiles`` (fields): the same DWGF on fixed, non-shifted 64-px tiles of the observation,
  each reconstructed alone with the native-size prior (its own PSF operator and noise map) and
  stitched, as one would cut stamps by hand;
- ``richardson-lucy`` (fields): weighted Richardson-Lucy (the same map), its iteration count the
  best mean PSNR on the validation fields;
- ``tv`` and ``fbp`` (CT): TV with its weight tuned on the validation slices; filtered
  back-projection.

Scores: PSNR of the mean (truth's peak as range), reduced chi-square of the mean under the
noise model with its limit, 90% coverage of the samples, and the seam ratio of the mean on the
64-px grid (:func:`~dwgf_sci.metrics.seam_ratio`; the truth's figure beside it). ``--region``:
a 128 x 128 region of the first test field, taken from the whole-field run and reconstructed
alone with a margin of one PSF width, once per seed of ``--region-seeds`` (both runs
with that seed). ``--cost SIZE ...``: time per megapixel and peak memory of
one DWGF run per field size, each in its own process.

Every record goes to ``runs.jsonl`` as it is made; a rerun skips what is there (resumes).

    python benchmarks/wide_fields.py --out benchmarks/results/wide_fields --threads 2
    python benchmarks/wide_fields.py --out benchmarks/results/wide_fields --threads 2 \\
        --cost 256 512 1024 2048
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dwgf_sci.datasets import FieldDataset, PhantomDataset
from dwgf_sci.metrics import coverage, coverage_reference, seam_ratio
from dwgf_sci.operators import build_operator, resolve_spec
from dwgf_sci.operators.pixel_noise import PixelNoise
from dwgf_sci.pipelines.field_demo import FIELD_PSF, observe_field
from dwgf_sci.priors import load_prior
from dwgf_sci.priors.patches import PatchPrior
from dwgf_sci.solvers import DWGF, FBP, RichardsonLucy, TVReconstruction
from dwgf_sci.solvers.likelihood import chi2_limit

SEEDS = {"validation": 9_100_000, "test": 9_200_000}
RL_GRID = (10, 20, 35, 60, 100, 170, 300)
TV_GRID = (0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
TILE = 64
#: table columns: the records' keys
COLUMNS = (
    "psnr", "chi2", "limit", "coverage90", "seam_ratio", "truth_seam_ratio", "seam_ratio_max",
    "seconds",
)  # fmt: skip


# ---------------------------------------------------------------------------- problems
def field_problem(split: str, i: int, size: int, sky: float) -> dict[str, Any]:
    """Truth, measurement and physics (with its noise map) of field ``i`` of ``split``."""
    x = FieldDataset(i + 1, size=size, seed=SEEDS[split])[i][None].float()
    physics = build_operator(resolve_spec(FIELD_PSF), (1, size, size))
    y, var = observe_field(x, physics, sky, SEEDS[split] + i)
    physics.noise_model = PixelNoise(var[0])
    return {"x": x, "y": y, "physics": physics, "var": var[0]}


def ct_problem(split: str, i: int, size: int = 256) -> dict[str, Any]:
    """Truth, sinogram and physics of CT slice ``i`` of ``split`` (20 views, 1% noise)."""
    x = PhantomDataset(i + 1, size=size, seed=SEEDS[split])[i][None].float()
    base = build_operator(resolve_spec("ct-sparse"), (1, size, size))
    with torch.no_grad():
        clean = base.A(x)
    sigma = 0.01 * float(clean.abs().max())
    spec = resolve_spec("ct-sparse", [f"noise.sigma={sigma}", f"noise.seed={SEEDS[split] + i}"])
    physics = build_operator(spec, (1, size, size))
    with torch.no_grad():
        y = physics(x)
    return {"x": x, "y": y, "physics": physics, "sigma": sigma}


def psnr(x: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR (dB) with the truth's peak as the data range."""
    mse = float((x.double() - truth.double()).pow(2).mean())
    return 10 * math.log10(float(truth.abs().max()) ** 2 / mse)


def chi2(x: torch.Tensor, p: dict[str, Any]) -> float:
    """Reduced chi-square of an image under the problem's noise (map or sigma)."""
    with torch.no_grad():
        r2 = (p["physics"].A(x.float()) - p["y"]).double().pow(2)
    var = p["var"].double() if "var" in p else p["sigma"] ** 2
    return float((r2 / var).mean())


def worst_seam_ratio(image: torch.Tensor, grid: int = TILE) -> float:
    """The largest :func:`~dwgf_sci.metrics.seam_ratio` over all ``grid`` x ``grid`` offsets
    ("any fixed 64-px grid"), from sums of the absolute gradients per residue class."""
    x = image.double()
    gy, gx = (x[1:] - x[:-1]).abs(), (x[:, 1:] - x[:, :-1]).abs()
    ry, rx = torch.arange(gy.shape[0]) % grid, torch.arange(gx.shape[1]) % grid
    zeros = torch.zeros(grid, dtype=x.dtype)
    sy, sx = zeros.index_add(0, ry, gy.sum(1)), zeros.index_add(0, rx, gx.sum(0))
    ny = zeros.index_add(0, ry, torch.full((gy.shape[0],), float(gy.shape[1]), dtype=x.dtype))
    nx = zeros.index_add(0, rx, torch.full((gx.shape[1],), float(gx.shape[0]), dtype=x.dtype))
    on, n_on = sy[:, None] + sx[None, :], ny[:, None] + nx[None, :]
    total, n_total = gy.sum() + gx.sum(), gy.numel() + gx.numel()
    return float(((on / n_on) / ((total - on) / (n_total - n_on))).max())


# ---------------------------------------------------------------------------- methods
def dwgf_whole(prior: Any, p: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """DWGF with the patch prior on the whole image."""
    solver = DWGF(PatchPrior(prior, seed=args.seed), args.preset, seed=args.seed)
    start = time.time()
    post = solver(p["y"], p["physics"])
    return {"mean": post.mean, "samples": post.all_samples[0], "seconds": time.time() - start}


def dwgf_tiles(prior: Any, p: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """DWGF on fixed 64-px tiles, each alone (its own PSF operator and noise map), stitched."""
    y, var = p["y"], p["var"]
    size = y.shape[-1]
    mean, samples = torch.zeros_like(y), None
    start = time.time()
    for r in range(0, size, TILE):
        for c in range(0, size, TILE):
            physics = build_operator(resolve_spec(FIELD_PSF), (1, TILE, TILE))
            physics.noise_model = PixelNoise(var[:, r : r + TILE, c : c + TILE])
            tile = y[..., r : r + TILE, c : c + TILE]
            post = DWGF(prior, args.preset, seed=args.seed)(tile, physics)
            if samples is None:
                samples = torch.zeros(post.all_samples.shape[1], *y.shape[1:])
            mean[..., r : r + TILE, c : c + TILE] = post.mean
            samples[..., r : r + TILE, c : c + TILE] = post.all_samples[0]
    return {"mean": mean, "samples": samples, "seconds": time.time() - start}


def tuned(make: Any, grid: tuple[float, ...], problems: list[dict[str, Any]]) -> tuple[Any, dict]:
    """The grid value with the best mean PSNR on ``problems``, and every value's PSNR."""
    scores = {
        v: sum(psnr(make(v)(p["y"], p["physics"]).mean, p["x"]) for p in problems) / len(problems)
        for v in grid
    }
    return max(scores, key=scores.get), scores


# ---------------------------------------------------------------------------- runs
class Log:
    """``runs.jsonl``: one record per (task, method, index); what is there is not redone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = (
            [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []
        )

    def find(self, **key: Any) -> dict[str, Any] | None:
        for r in self.records:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def score(out: dict[str, Any], p: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """PSNR, chi-square (with its limit), coverage and seam ratio of a method's output."""
    mean = out["mean"] if torch.is_tensor(out["mean"]) else out["mean"].as_tensor()
    rec = {"psnr": psnr(mean, p["x"]), "chi2": chi2(mean, p), "limit": chi2_limit(p["y"].numel())}
    if out.get("samples") is not None:
        rec["coverage90"] = coverage(out["samples"], p["x"])
        rec["n_samples"] = int(out["samples"].shape[0])
    if mean.shape[-1] > TILE:
        rec["seam_ratio"] = seam_ratio(mean[0, 0], TILE)
        rec["seam_ratio_max"] = worst_seam_ratio(mean[0, 0])
        rec["truth_seam_ratio"] = seam_ratio(p["x"][0, 0], TILE)
        rec["truth_seam_ratio_max"] = worst_seam_ratio(p["x"][0, 0])
    if "seconds" in out:
        rec["seconds"] = out["seconds"]
    return {**rec, **extra}


def run_fields(args: argparse.Namespace, log: Log) -> None:
    prior = load_prior(args.field_prior)
    task = f"field-{args.field_size}"
    val = [field_problem("validation", i, args.field_size, args.sky) for i in range(args.n_val)]
    rl_iter, rl_scores = tuned(lambda k: RichardsonLucy(iterations=int(k)), RL_GRID, val)
    for i in range(args.n_test):
        p = field_problem("test", i, args.field_size, args.sky)
        key = {"task": task, "index": i}
        if log.find(method="richardson-lucy", **key) is None:
            out = {"mean": RichardsonLucy(iterations=int(rl_iter))(p["y"], p["physics"]).mean}
            extra = {"iterations": rl_iter, "validation": rl_scores}
            log.add(score(out, p, method="richardson-lucy", **extra, **key))
        for method, run in (("dwgf", dwgf_whole), ("dwgf-tiles", dwgf_tiles)):
            if method in args.methods and log.find(method=method, **key) is None:
                log.add(score(run(prior, p, args), p, method=method, preset=args.preset, **key))
        print(f"{task} {i} done", flush=True)
    if args.region:
        for seed in range(args.seed, args.seed + args.region_seeds):
            if log.find(task=task, method="region", seed=seed) is None:
                region(prior, argparse.Namespace(**{**vars(args), "seed": seed}), log, task)


def region(prior: Any, args: argparse.Namespace, log: Log, task: str) -> None:
    """A 128-px region (at most half the field) from the whole-field run against the region
    reconstructed alone with a margin of one PSF width (rounded up to the autoencoder's
    factor)."""
    p = field_problem("test", 0, args.field_size, args.sky)
    whole = dwgf_whole(prior, p, args)["mean"]
    size = args.field_size
    side = min(128, size // 2)  # 128 px on the benchmark's fields
    r0 = (size - side) // 2
    margin = int(math.ceil(FIELD_PSF["fwhm"] / prior.downsample)) * prior.downsample
    lo, hi = r0 - margin, r0 + side + margin
    physics = build_operator(resolve_spec(FIELD_PSF), (1, hi - lo, hi - lo))
    physics.noise_model = PixelNoise(p["var"][:, lo:hi, lo:hi])
    sub = {"x": p["x"][..., lo:hi, lo:hi], "y": p["y"][..., lo:hi, lo:hi], "physics": physics}
    alone = dwgf_whole(prior, sub, args)["mean"][..., margin:-margin, margin:-margin]
    truth = p["x"][..., r0 : r0 + side, r0 : r0 + side]
    inside = whole[..., r0 : r0 + side, r0 : r0 + side]
    rec = {"task": task, "method": "region", "index": 0, "margin": margin, "side": side}
    rec["seed"] = args.seed
    log.add({**rec, "psnr_inside": psnr(inside, truth), "psnr_alone": psnr(alone, truth)})


def run_ct(args: argparse.Namespace, log: Log) -> None:
    prior = load_prior(args.ct_prior)
    task = "ct-256"
    val = [ct_problem("validation", i) for i in range(args.n_val)]
    lam, tv_scores = tuned(lambda v: TVReconstruction(lam=v), TV_GRID, val)
    for i in range(args.n_test):
        p = ct_problem("test", i)
        key = {"task": task, "index": i}
        if log.find(method="fbp", **key) is None:
            log.add(score({"mean": FBP()(p["y"], p["physics"]).mean}, p, method="fbp", **key))
        if log.find(method="tv", **key) is None:
            out = {"mean": TVReconstruction(lam=lam)(p["y"], p["physics"]).mean}
            log.add(score(out, p, method="tv", lam=lam, validation=tv_scores, **key))
        if "dwgf" in args.methods and log.find(method="dwgf", **key) is None:
            out = dwgf_whole(prior, p, args)
            log.add(score(out, p, method="dwgf", preset=args.preset, **key))
        print(f"{task} {i} done", flush=True)


def one_cost(args: argparse.Namespace) -> None:
    """One DWGF run on a field of ``--one-cost`` px (own process): seconds and peak memory."""
    size = args.one_cost
    p = field_problem("test", 0, size, args.sky)
    prior = load_prior(args.field_prior)
    out = dwgf_whole(prior, p, args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB
    print(json.dumps({"size": size, "seconds": out["seconds"], "peak_gb": peak}))


def run_cost(args: argparse.Namespace, log: Log) -> None:
    for size in args.cost:
        if log.find(method="cost", size=size, preset=args.preset) is not None:
            continue
        cmd = [sys.executable, __file__, "--one-cost", str(size), "--threads", str(args.threads)]
        cmd += ["--preset", args.preset, "--field-prior", args.field_prior, "--sky", str(args.sky)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rec = json.loads(done.stdout.strip().splitlines()[-1])
        rec["seconds_per_mpix"] = rec["seconds"] / (size * size / 1e6)
        log.add({"method": "cost", "preset": args.preset, **rec})
        print(rec, flush=True)


# ---------------------------------------------------------------------------- report
def mean_of(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else math.nan


def markdown(log: Log, args: argparse.Namespace) -> str:
    lines = [
        "# Wide fields and large CT slices from 64-px patch priors",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`python {' '.join(sys.argv)}` ({platform.platform()}, torch {torch.__version__}, "
        f"{args.threads} thread(s)); records in `runs.jsonl`. See the script's docstring.",
        "",
        "| task | method | n | PSNR (dB) | reduced chi2 | limit | 90% coverage | seam ratio, "
        "tile grid | truth's, tile grid | seam ratio, worst 64-px grid | s per image | truth's "
        "worst |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tasks = sorted({r["task"] for r in log.records if "task" in r and r["method"] != "region"})
    for task in tasks:
        for method in ("dwgf", "dwgf-tiles", "richardson-lucy", "tv", "fbp"):
            rows = [r for r in log.records if r.get("task") == task and r["method"] == method]
            if not rows:
                continue
            cells = [mean_of(rows, k) for k in COLUMNS]
            fmt = ["{:.2f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.3f}", "{:.0f}"]
            seams = [r["truth_seam_ratio_max"] for r in rows if "truth_seam_ratio_max" in r]
            text = ["-" if math.isnan(v) else f.format(v) for v, f in zip(cells, fmt, strict=True)]
            truth = f"{max(seams):.3f}" if seams else "-"
            lines.append(
                f"| {task} | {method} | {len(rows)} | " + " | ".join(text) + f" | {truth} |"
            )
    regions = [r for r in log.records if r["method"] == "region"]
    for r in regions:
        lines.append(
            f"\nRegion ({r.get('side', 128)} px, {r['task']}, test field 0, seed "
            f"{r.get('seed', 0)}): inside the whole field {r['psnr_inside']:.2f} dB, alone with "
            f"a {r['margin']} px margin {r['psnr_alone']:.2f} dB: difference "
            f"{r['psnr_inside'] - r['psnr_alone']:+.2f} dB."
        )
    if len(regions) > 1:
        gaps = [r["psnr_inside"] - r["psnr_alone"] for r in regions]
        sd = (sum((g - sum(gaps) / len(gaps)) ** 2 for g in gaps) / (len(gaps) - 1)) ** 0.5
        lines.append(
            f"\nRegion difference over {len(gaps)} seeds: mean {sum(gaps) / len(gaps):+.2f} dB, "
            f"seed-to-seed standard deviation {sd:.2f} dB."
        )
    cost = [r for r in log.records if r["method"] == "cost"]
    if cost:
        lines += ["", "| field side (px) | preset | s | s per Mpx | peak memory (GB) |"]
        lines += ["|---:|---|---:|---:|---:|"]
        for r in sorted(cost, key=lambda r: r["size"]):
            cells = f"{r['seconds']:.0f} | {r['seconds_per_mpix']:.0f} | {r['peak_gb']:.2f}"
            lines.append(f"| {r['size']} | {r['preset']} | {cells} |")
        if len(cost) > 1:
            xs = [math.log(r["size"] ** 2) for r in cost]
            ys = [math.log(r["seconds"]) for r in cost]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sum(
                (a - mx) ** 2 for a in xs
            )
            lines.append(f"\nGrowth exponent of the time in the pixel count (fit): {slope:.2f}.")
    lines.append(
        f"\n90% coverage of exact posterior samples with 4 samples: {coverage_reference(4):.2f}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/wide_fields")
    ap.add_argument("--tasks", nargs="+", default=["fields", "ct"])
    ap.add_argument("--methods", nargs="+", default=["dwgf", "dwgf-tiles"])
    ap.add_argument("--field-prior", default="field-64")
    ap.add_argument("--ct-prior", default="ct-patch-64")
    ap.add_argument("--field-size", type=int, default=512)
    ap.add_argument("--sky", type=float, default=20.0, help="sky counts per pixel")
    ap.add_argument("--n-val", type=int, default=2)
    ap.add_argument("--n-test", type=int, default=5)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--region", action="store_true", help="the region-consistency check")
    ap.add_argument("--region-seeds", type=int, default=1, help="seeds of the region check")
    ap.add_argument("--cost", type=int, nargs="*", default=[], help="field sides to time")
    ap.add_argument("--one-cost", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one_cost is not None:
        one_cost(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "runs.jsonl")
    if "fields" in args.tasks:
        run_fields(args, log)
    if "ct" in args.tasks:
        run_ct(args, log)
    if args.cost:
        run_cost(args, log)
    (out / "results.md").write_text(markdown(log, args))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
