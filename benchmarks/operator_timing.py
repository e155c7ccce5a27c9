r"""Time the forward operator :math:`A` and its adjoint :math:`A^\top` of every operator preset.

For each operator and image size (64 x 64 and 256 x 256 by default) the script builds the operator
once, runs two warm-up calls, then reports the median (and the spread) of ``--repeats`` timed calls
of ``A`` and ``A_adjoint`` on a batch of ``--batch`` single-channel images. Results go to
``benchmarks/results/operator_timing.md`` and ``.json`` together with the machine information
(CPU, threads, load average, library versions), which matter a great deal for such numbers.

Usage::

    python benchmarks/operator_timing.py                      # CPU, torch's default threads
    python benchmarks/operator_timing.py --threads 1 2 --sizes 64 256
    python benchmarks/operator_timing.py --device cuda --out /tmp/gpu   # on a GPU machine

Dense Gaussian sensing needs a :math:`4 m n`-byte matrix (4 GiB at 256 x 256 with
:math:`m = n/4`); operators whose buffers exceed ``--max-gib`` are skipped and listed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import dwgf_sci.operators as ops

RESULTS = Path(__file__).resolve().parent / "results"

#: benchmark name -> (preset, overrides)
OPERATORS: dict[str, tuple[str, list[str]]] = {
    "psf (Moffat, same)": ("psf", []),
    "psf (Moffat, circular)": ("psf", ["padding=circular"]),
    "psf (Moffat, valid)": ("psf", ["padding=valid"]),
    "ct-sparse (20 views, parallel)": ("ct-sparse", []),
    "ct-limited (45 views, 90 deg)": ("ct-limited", []),
    "ct fan beam (20 views, 360 deg)": ("ct-sparse", ["geometry=fanbeam", "angular_range=360"]),
    "fourier (25%)": ("fourier", []),
    "random-cs (m = 25%)": ("random-cs", []),
    "hadamard (25%)": ("hadamard", []),
    "mask (10% + 5 cosmic rays)": ("mask", []),
    "inpaint-psf (30% + Moffat)": ("inpaint-psf", []),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    for _ in range(2):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _buffer_gib(preset: str, overrides: list[str], n: int) -> float:
    """Size of the largest buffer, estimated before building (only dense sensing is large)."""
    spec = ops.resolve_spec(preset, overrides)
    if spec["type"] == "random-cs":
        m = spec["m"] or max(1, round(spec["ratio"] * n * n))
        return 4.0 * m * n * n / 2**30
    return 0.0


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU / GPU model, cores, load, library versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import deepinv

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "deepinv": deepinv.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(
    sizes: list[int],
    threads: list[int],
    batch: int,
    repeats: int,
    device: torch.device,
    max_gib: float,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for n in sizes:
            for name, (preset, overrides) in OPERATORS.items():
                row: dict[str, Any] = {
                    "operator": name,
                    "size": n,
                    "threads": n_threads,
                    "batch": batch,
                    "preset": preset,
                    "overrides": overrides,
                }
                gib = _buffer_gib(preset, overrides, n)
                if gib > max_gib:
                    row["skipped"] = f"needs a {gib:.1f} GiB matrix (> --max-gib {max_gib})"
                    rows.append(row)
                    print(f"{name:34s} {n:4d}  skipped ({row['skipped']})", flush=True)
                    continue
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    op = ops.build_operator(
                        ops.resolve_spec(preset, overrides + ["noise=none"]),
                        (1, n, n),
                        device=device,
                    )
                row["build_s"] = time.perf_counter() - t0
                x = torch.rand(batch, 1, n, n, device=device)
                with torch.no_grad():
                    y = op.A(x)
                    t_a = _time(lambda op=op, x=x: op.A(x), device, repeats)
                    t_at = _time(lambda op=op, y=y: op.A_adjoint(y), device, repeats)
                row["measurement_shape"] = list(op.measurement_shape)
                for key, ts in (("A", t_a), ("A_adjoint", t_at)):
                    row[f"{key}_median_ms"] = 1e3 * statistics.median(ts)
                    row[f"{key}_min_ms"] = 1e3 * min(ts)
                    row[f"{key}_max_ms"] = 1e3 * max(ts)
                rows.append(row)
                print(
                    f"{name:34s} {n:4d}  threads {n_threads}  A {row['A_median_ms']:9.3f} ms"
                    f"  A^T {row['A_adjoint_median_ms']:9.3f} ms  (build {row['build_s']:.2f} s)",
                    flush=True,
                )
                del op, x, y
    return rows


def write(
    rows: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace, out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": args.command,
        "note": args.note,
        "machine": info,
        "settings": {
            "batch": args.batch,
            "repeats": args.repeats,
            "sizes": args.sizes,
            "threads": args.threads,
        },
        "results": rows,
    }
    (out / "operator_timing.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Operator timing: A and A^T",
        "",
        "Generated by `python benchmarks/operator_timing.py "
        + " ".join(args.command)
        + "`. Median wall time of "
        f"{args.repeats} calls after 2 warm-up calls, batch of {args.batch} single-channel "
        "image(s), no autograd. min-max in brackets. Build = constructing the operator "
        "(grids, matrices, masks).",
        "",
        "## Machine",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [
        "",
        "The machine was shared with other jobs (see the load average): absolute numbers are "
        "indicative, the ratios between operators and sizes more so.",
        "",
    ]
    if args.note:
        lines += [f"**Note.** {args.note}", ""]
    for n_threads in args.threads:
        lines += [
            f"## {n_threads} thread(s)",
            "",
            "| operator | size | measurement | A (ms) | A^T (ms) | build (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["threads"] != n_threads:
                continue
            if "skipped" in r:
                lines.append(f"| {r['operator']} | {r['size']} | | skipped: {r['skipped']} | | |")
                continue
            lines.append(
                f"| {r['operator']} | {r['size']} | {tuple(r['measurement_shape'])} | "
                f"{r['A_median_ms']:.3f} [{r['A_min_ms']:.3f}-{r['A_max_ms']:.3f}] | "
                f"{r['A_adjoint_median_ms']:.3f} "
                f"[{r['A_adjoint_min_ms']:.3f}-{r['A_adjoint_max_ms']:.3f}] | "
                f"{r['build_s']:.2f} |"
            )
        lines.append("")
    (out / "operator_timing.md").write_text("\n".join(lines))
    print(f"wrote {out / 'operator_timing.md'} and {out / 'operator_timing.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-gib", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="free text added to the Markdown report")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the Markdown report from a saved JSON file (no timing)",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        for key, value in saved["settings"].items():
            setattr(args, key, value)
        args.command = saved.get("command", [])
        args.note = args.note or saved.get("note", "")
        write(saved["results"], saved["machine"], args, args.out)
        return 0
    args.command = sys.argv[1:] if argv is None else list(argv)
    device = torch.device(args.device)
    info = machine_info(device)
    rows = run(args.sizes, args.threads, args.batch, args.repeats, device, args.max_gib)
    info["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write(rows, info, args, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
