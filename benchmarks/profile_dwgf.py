"""DWGF's overhead: its wall time per step against the same network passes run alone.

A DWGF run reports its network calls (``Posterior.calls``). This script times the run, then
replays exactly those passes with nothing around them: the UNet forwards (no gradient) on
batches of all particles, the decoder forward + backward passes through the operator and the data
term, and the remaining decoder/encoder forwards. The ratio of the two times is the solver's
overhead (bookkeeping, random draws, weights, resampling, MALA tests); issue 5 asks for at most
1.15. The image-space steps also apply the operator outside any network pass (CG iterations):
a second ratio replays those operator applications too (counted per image row during the run,
less the forwards that the replayed decoder backward passes already include), which separates
the operator's work from the solver's bookkeeping. The default and the fast preset are
profiled, and the reference preset's gradient flow (the
paper's algorithm: one UNet forward, one decoder and encoder forward + backward per step) at
the same step count; latent DPS and PSLD run the same step count, to compare costs.

Usage::

    python benchmarks/profile_dwgf.py                          # galaxy-64, galaxy-deconv
    python benchmarks/profile_dwgf.py --task ct-20 --steps 50 --repeats 3
    python benchmarks/profile_dwgf.py --prior tiny              # untrained tiny prior (CI size)

Writes ``benchmarks/results/profile_dwgf.{md,json}`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dwgf_sci.benchmark.tasks import get_task
from dwgf_sci.priors import load_prior
from dwgf_sci.priors.tiny import build_tiny_latent_prior
from dwgf_sci.solvers import DWGF, PSLD, LatentDPS

RESULTS = Path(__file__).parent / "results"
DWGF_ROWS = ("dwgf", "dwgf-fast", "dwgf-reference")


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class OperatorCount:
    """Count the image rows through ``physics.A`` and ``physics.A_adjoint`` while active."""

    def __init__(self, physics) -> None:
        self.physics, self.rows = physics, {"A": 0, "A_adjoint": 0}

    def __enter__(self) -> OperatorCount:
        for name in self.rows:
            original = getattr(self.physics, name)

            def counted(x, *args, _f=original, _name=name, **kwargs):
                self.rows[_name] += x.shape[0]
                return _f(x, *args, **kwargs)

            setattr(self.physics, name, counted)  # an instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        for name in self.rows:
            delattr(self.physics, name)


def bare_passes(
    prior, item, calls: dict[str, int], n: int, data_term, operator_rows: dict[str, int] | None
) -> callable:
    """A function running the run's network passes alone, batched over the ``n`` particles;
    with ``operator_rows``, also the run's operator applications outside those passes."""
    shape = (n, *prior.latent_shape(tuple(item.x.shape[1:])))
    z = torch.randn(shape, dtype=prior.dtype)
    y = item.y.repeat(n, *([1] * (item.y.ndim - 1)))
    unet = calls.get("unet", 0) // n
    dec_bwd = calls.get("decoder_backward", 0) // n
    dec_fwd = calls.get("decoder", 0) // n - dec_bwd
    enc_bwd = calls.get("encoder_backward", 0) // n
    enc = calls.get("encoder", 0) // n - enc_bwd
    rows = operator_rows or {}
    extra_a = max(rows.get("A", 0) // n - dec_bwd, 0) if operator_rows else 0
    extra_at = rows.get("A_adjoint", 0) // n
    x = prior.from_model(prior.decode(z)).detach() if operator_rows else None

    def run() -> None:
        with torch.no_grad():
            for _ in range(extra_a):
                item.physics.A(x)
            for _ in range(extra_at):
                item.physics.A_adjoint(y)
        with torch.no_grad():
            for i in range(unet):
                prior.predict_noise(z, 500 + (i % 10))
            for _ in range(max(dec_fwd, 0)):
                prior.decode(z)
            img = prior.decode(z)
            for _ in range(enc):
                prior.encode(img)
        for i in range(dec_bwd):  # the first enc_bwd of them also through the encoder
            zz = z.detach().requires_grad_(True)
            with torch.enable_grad():
                img = prior.decode(zz)
                phi = data_term(item.physics.A(prior.from_model(img)), y).sum()
                if i < enc_bwd:
                    phi = phi + (prior.encode(img) - zz).pow(2).sum()
                torch.autograd.grad(phi, zz)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prior", default=None, help="prior name/folder, or 'tiny' (default: task's)")
    ap.add_argument("--task", default="galaxy-deconv")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    item = next(task.items("validation", 1))
    name = args.prior or task.prior
    prior = build_tiny_latent_prior(task.size) if name == "tiny" else load_prior(name)
    rows = []
    for label, make in (
        ("dwgf", lambda: DWGF(prior, particles=args.particles, steps=args.steps, seed=0)),
        (
            "dwgf-fast",
            lambda: DWGF(prior, preset="fast", particles=args.particles, steps=args.steps, seed=0),
        ),
        (
            "dwgf-reference",
            lambda: DWGF(
                prior, preset="reference", particles=args.particles, steps=args.steps, seed=0
            ),
        ),
        ("dps", lambda: LatentDPS(prior, particles=args.particles, steps=args.steps, seed=0)),
        ("psld", lambda: PSLD(prior, particles=args.particles, steps=args.steps, seed=0)),
    ):
        solver = make()
        prior.reset_calls()
        with OperatorCount(item.physics) as ops:
            post = solver(item.y, item.physics)
        calls = dict(post.calls)
        wall = timed(lambda s=solver: s(item.y, item.physics), args.repeats)
        row = {"method": label, "wall_s": wall, "per_step_ms": 1e3 * wall / args.steps}
        row["calls_per_particle_step"] = {
            k: v / (args.particles * args.steps) for k, v in calls.items()
        }
        if label.startswith("dwgf"):
            problem = solver.prepare(item.y, item.physics)
            bare = bare_passes(prior, item, calls, args.particles, problem.data_term, None)
            row["bare_s"] = timed(bare, args.repeats)
            row["overhead_ratio"] = wall / row["bare_s"]
            row["operator_rows_per_step"] = {k: v / args.steps for k, v in ops.rows.items()}
            bare = bare_passes(prior, item, calls, args.particles, problem.data_term, ops.rows)
            row["bare_with_operator_s"] = timed(bare, args.repeats)
            row["overhead_ratio_with_operator"] = wall / row["bare_with_operator_s"]
        rows.append(row)
        print(json.dumps(row))
    by = {r["method"]: r for r in rows}
    summary = {
        f"{m}_{k}": v
        for m in DWGF_ROWS
        for k, v in (
            ("overhead_ratio", by[m]["overhead_ratio"]),
            ("overhead_ratio_with_operator", by[m]["overhead_ratio_with_operator"]),
            ("over_dps", by[m]["wall_s"] / by["dps"]["wall_s"]),
            ("over_psld", by[m]["wall_s"] / by["psld"]["wall_s"]),
        )
    }
    print(json.dumps(summary))
    if args.no_write:
        return
    info = {
        "command": "python benchmarks/profile_dwgf.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)
        ),
        "machine": f"{platform.platform()}, torch {torch.__version__}, {args.threads} thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile_dwgf.json").write_text(
        json.dumps({"info": info, "rows": rows, "summary": summary}, indent=1)
    )
    lines = [
        "# DWGF overhead and cost against latent DPS and PSLD",
        "",
        f"`{info['command']}` ({info['date']}; {info['machine']}). Task {args.task}, prior "
        f"{name}, {args.particles} particles, {args.steps} steps, median of {args.repeats} runs.",
        "",
        "| method | wall (s) | ms / step | network passes per particle and step |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        calls = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["calls_per_particle_step"].items()))
        lines.append(f"| {r['method']} | {r['wall_s']:.2f} | {r['per_step_ms']:.1f} | {calls} |")
    lines.append("")
    for m in DWGF_ROWS:
        r = by[m]
        lines += [
            f"- {m}: {r['wall_s']:.2f} s against {r['bare_s']:.2f} s for the same network passes "
            f"alone, overhead ratio **{summary[m + '_overhead_ratio']:.3f}** (target <= 1.15; "
            f"{r['bare_with_operator_s']:.2f} s and "
            f"{summary[m + '_overhead_ratio_with_operator']:.3f} with the operator "
            "applications outside the network passes replayed too); "
            f"wall time / latent DPS **{summary[m + '_over_dps']:.2f}** (target <= 1.0), "
            f"/ PSLD **{summary[m + '_over_psld']:.2f}** (target <= 0.5).",
        ]
    lines.append("")
    (RESULTS / "profile_dwgf.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
