"""The ``dwgf-sci`` command line: ``demo``, ``simulate``, ``reconstruct``, ``train-prior`` and
``benchmark``.

User mistakes (bad files, bad specs, mismatched shapes) and foreseeable failures (an output
folder that cannot be written, a file name too long, a full disk, memory exhausted by too many
particles) print one ``dwgf-sci: error: ...`` line and exit with status 2; no traceback.
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ._version import __version__
from .errors import DwgfError

EXIT_USER_ERROR = 2


def _count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, found {value}")
    return value


def _add_operator_options(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--operator",
        default=default,
        metavar="PRESET|FILE.toml",
        help="operator preset (psf, ct-sparse, ct-limited, fourier, random-cs, inpaint-psf, "
        "hadamard, mask) or a TOML spec file"
        + (f" (default: {default})" if default else " (default: the one stored in each file)"),
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an operator key, e.g. --set fwhm=3 --set noise.sigma=0.02 (repeatable)",
    )


def _add_solver_options(p: argparse.ArgumentParser, preset_note: str = "default") -> None:
    p.add_argument(
        "--preset",
        default="default",
        choices=("default", "fast", "reference"),
        help=f"DWGF preset (default: {preset_note})",
    )
    p.add_argument("--particles", type=int, default=None, help="posterior samples per input")
    p.add_argument("--steps", type=int, default=None, help="DWGF steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dwgf-sci``."""
    parser = argparse.ArgumentParser(
        prog="dwgf-sci",
        description="Posterior sampling for scientific imaging with latent-diffusion priors.",
    )
    parser.add_argument("--version", action="version", version=f"dwgf-sci {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="simulate a galaxy observation and reconstruct it (the main job, shipped defaults)",
        description="Simulate a blurred, noisy galsim galaxy, deconvolve it with Richardson-Lucy, "
        "Wiener and DWGF with a shipped prior, and write FITS files and a PNG panel.",
    )
    demo.add_argument("--out", default="dwgf-demo", help="output folder (default: dwgf-demo)")
    demo.add_argument(
        "--prior",
        default=None,
        help="prior name or folder (default: galaxy-64; field-64 with --field)",
    )
    demo.add_argument(
        "--field",
        action="store_true",
        help="a simulated 256x256 survey field instead of one galaxy: photon-noise map, "
        "weighted Richardson-Lucy, DWGF by patches (fast preset; a few minutes on 2 cores)",
    )
    _add_operator_options(demo, "psf")
    demo.add_argument(
        "--noise",
        type=float,
        default=0.01,
        help="Gaussian noise std as a fraction of the blurred peak (default: 0.01)",
    )
    _add_solver_options(demo, "default; fast with --field")
    # one galaxy, default preset: about 20 s on a 2-core CPU; --field: the fast preset
    demo.set_defaults(particles=4, preset=None)

    sim = sub.add_parser(
        "simulate",
        help="write simulated measurement files (truth, measurement, operator)",
        description="Draw items of a dataset, apply an operator and its noise, and write one "
        "self-describing file per item (obs_00000.fits, ...) holding the measurement, the truth "
        "and the operator spec, so that 'reconstruct' can rebuild the operator.",
    )
    sim.add_argument(
        "--dataset",
        default="galaxies",
        help="galaxies, phantoms, fields (survey fields), an HDF5 file or a folder of FITS files",
    )
    _add_operator_options(sim, "psf")
    sim.add_argument("--n", type=int, default=1, help="number of items (default: 1)")
    sim.add_argument("--start", type=int, default=0, help="index of the first item (default: 0)")
    sim.add_argument("--seed", type=int, default=0, help="dataset and noise seed (default: 0)")
    sim.add_argument("--size", type=int, default=64, help="image size in pixels (default: 64)")
    sim.add_argument("--format", dest="file_type", default="fits", choices=("fits", "hdf5"))
    sim.add_argument(
        "--noise-scale",
        default="peak",
        choices=("peak", "absolute"),
        help="Gaussian sigma as a fraction of each noise-free measurement's peak "
        "(default) or in absolute measurement units; files store the absolute value",
    )
    sim.add_argument("--psf", default=None, help="PSF FITS file for --set profile=array")
    sim.add_argument("--out", required=True, help="output folder")
    sim.add_argument("--overwrite", action="store_true", help="replace existing files")
    sim.add_argument(
        "--noise-map",
        action="store_true",
        help="also store the per-pixel noise drawn (FITS ERR, HDF5 variance), as surveys do",
    )

    rec = sub.add_parser(
        "reconstruct",
        help="sample the posterior of measurement files",
        description="Reconstruct FITS/HDF5 measurements (files, folders, glob patterns or an "
        "input list) with DWGF and a latent prior; write the posterior mean, std and samples with "
        "the input's header and full provenance, one output file per input "
        "(<stem>_posterior.<ext>). The job keeps its status in OUT/dwgf-manifest.json: a rerun "
        "skips what is done and retries what failed; one bad input is reported and the rest go "
        "on; the exit status is 0 only if every input is done. Under torchrun "
        "(torchrun --nproc_per_node=K -m dwgf_sci.cli reconstruct ...) the inputs are shared "
        "among the processes; each input's seed derives from --seed and its name, so the outputs "
        "do not depend on the number of processes.",
    )
    rec.add_argument("inputs", nargs="*", help="files, folders or glob patterns")
    rec.add_argument(
        "--manifest",
        default=None,
        metavar="LIST.txt",
        help="input list: one file, folder or glob pattern per line (relative to the list's "
        "folder; '#' comments), optionally followed by a TAB and the output name inside --out",
    )
    rec.add_argument(
        "--prior", default="galaxy-64", help="prior name or folder (default: galaxy-64)"
    )
    _add_operator_options(rec, None)
    _add_solver_options(rec)
    rec.add_argument(
        "--noise-sigma",
        type=float,
        default=None,
        help="Gaussian noise std (default: from the operator spec)",
    )
    rec.add_argument(
        "--patches",
        action="store_true",
        help="images larger than the prior: apply it by shifted patches (automatic for a prior "
        "trained with --patch-size)",
    )
    rec.add_argument(
        "--share-patches",
        action="store_true",
        help="under torchrun: the processes take each image together, splitting its patches "
        "(for a few large images; the output is one process's, bit for bit); without it they "
        "share out the files",
    )
    rec.add_argument(
        "--flux-scale",
        default="auto",
        metavar="auto|off|S",
        help="units to solve in: 'auto' (default) rescales the data into the prior's training "
        "intensity range and the result back (linear operators); 'off' keeps the file's units; "
        "a number S solves for data / S",
    )
    rec.add_argument("--max-batch", type=int, default=None, help="most particles per network call")
    rec.add_argument(
        "--dtype",
        default=None,
        help="network dtype: float32, float16 or bfloat16 (half precision on CUDA only; default: "
        "float16 on CUDA for Stable Diffusion, float32 otherwise)",
    )
    rec.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last network weights (faster half-precision convolutions on CUDA)",
    )
    rec.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the networks (slow first calls; faster afterwards on CUDA)",
    )
    from .pipelines.read_cli import add_read_options

    add_read_options(rec)
    rec.add_argument("--out", required=True, help="output folder")
    rec.add_argument(
        "--format",
        dest="file_type",
        default=None,
        choices=("fits", "hdf5"),
        help="output format (default: the input's)",
    )
    rec.add_argument(
        "--samples",
        type=_count,
        default=None,
        metavar="N",
        help="store the first N posterior samples in each output (default: all; 0: none; the "
        "mean and std always use all of them)",
    )
    rec.add_argument(
        "--no-samples", dest="samples", action="store_const", const=0, help="same as --samples 0"
    )
    rec.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads per process (default: torch's; torchrun sets OMP_NUM_THREADS=1). CPU "
        "results are bit-identical for the same thread count, whatever the number of processes",
    )
    rec.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs that this job's inputs and settings did not make (outputs "
        "the job already made are skipped either way)",
    )
    _add_train_prior_parser(sub)
    _add_benchmark_parser(sub)
    return parser


def _add_train_prior_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train-prior`` subcommand (options: :mod:`dwgf_sci.training.cli`)."""
    from .training.cli import add_train_prior_arguments

    train = sub.add_parser(
        "train-prior",
        help="train a latent-diffusion prior on your images (or fine-tune Stable Diffusion)",
    )
    add_train_prior_arguments(train)


def _add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    """The ``benchmark`` subcommand (options: :mod:`dwgf_sci.benchmark.cli`)."""
    from .benchmark.cli import add_benchmark_arguments

    bench = sub.add_parser(
        "benchmark", help="compare DWGF, the latent baselines and classical methods on the tasks"
    )
    add_benchmark_arguments(bench)


def _spec(args: argparse.Namespace):
    from .operators import resolve_spec

    if args.operator is None:
        if args.sets:
            raise DwgfError("--set needs --operator (the spec to override)")
        return None
    return resolve_spec(args.operator, args.sets)


def _speed_up(prior, *, channels_last: bool, compile_networks: bool) -> None:
    """Apply ``--channels-last`` and ``--compile`` to a loaded prior."""
    for flag, wanted, method in (
        ("--channels-last", channels_last, "enable_channels_last"),
        ("--compile", compile_networks, "compile_networks"),
    ):
        if wanted and not hasattr(prior, method):
            raise DwgfError(f"{flag} applies to autoencoder priors, not {type(prior).__name__}")
        if wanted:
            getattr(prior, method)()


def _run_demo(args: argparse.Namespace) -> int:
    from .io.storage import check_output_folder
    from .pipelines.demo import run_demo

    check_output_folder(args.out)  # before any work
    common = {
        "out": args.out,
        "particles": args.particles,
        "steps": args.steps,
        "seed": args.seed,
        "device": args.device,
        "progress": not args.quiet,
    }
    if args.field:
        from .pipelines.field_demo import run_field_demo

        run_field_demo(prior=args.prior or "field-64", preset=args.preset or "fast", **common)
        return 0
    run_demo(
        prior=args.prior or "galaxy-64",
        operator=args.operator,
        sets=args.sets,
        noise=args.noise,
        preset=args.preset or "default",
        **common,
    )
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    from .io.storage import check_output_folder
    from .pipelines.simulate import simulate

    check_output_folder(args.out)  # before any work
    arrays = {"psf": args.psf} if args.psf else None
    paths = simulate(
        args.dataset,
        _spec(args),
        args.out,
        n=args.n,
        seed=args.seed,
        size=args.size,
        file_type=args.file_type,
        noise_scale=args.noise_scale,
        overwrite=args.overwrite,
        start=args.start,
        arrays=arrays,
        noise_map=args.noise_map,
    )
    print(f"wrote {len(paths)} file(s) to {args.out}")
    return 0


def _run_reconstruct(args: argparse.Namespace) -> int:
    from .pipelines.batch import one_line

    try:
        return _reconstruct(args)
    except DwgfError as exc:  # one line, whatever the file names or --set values hold
        exc.args = (one_line(str(exc)),)
        raise


def _reconstruct(args: argparse.Namespace) -> int:
    from .io.storage import check_output_folder
    from .pipelines.batch import BatchRunner, plan_batch
    from .pipelines.distributed import batch_comm
    from .pipelines.manifest import read_input_list
    from .pipelines.read_cli import read_options
    from .priors import load_prior
    from .priors.patches import as_patch_prior
    from .solvers import DWGF
    from .solvers.flux_scale import check_flux_scale

    if args.threads is not None:
        if not 1 <= args.threads <= 4096:
            raise DwgfError(f"--threads must be between 1 and 4096, found {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    entries = read_input_list(args.manifest) if args.manifest is not None else []
    items = plan_batch(
        args.inputs, args.out, base_seed=args.seed, file_type=args.file_type, entries=entries
    )
    check_output_folder(args.out, [item.name for item in items])  # before any work
    spec = _spec(args)
    read = read_options(args)
    options = {
        "seed": args.seed,
        "progress": not args.quiet,
        "max_batch": args.max_batch,
        "noise_sigma": args.noise_sigma,
        "flux_scale": check_flux_scale(args.flux_scale),
    }
    if args.particles is not None:
        options["particles"] = args.particles
    if args.steps is not None:
        options["steps"] = args.steps
    with batch_comm(args.device) as comm:
        prior = as_patch_prior(
            load_prior(args.prior, device=comm.device, dtype=args.dtype), args.patches
        )
        _speed_up(prior, channels_last=args.channels_last, compile_networks=args.compile)
        if args.share_patches:
            _share_patches(prior, comm)
        solver = DWGF(prior, preset=args.preset, **options)
        runner = BatchRunner(
            items,
            solver,
            args.out,
            spec=spec,
            samples=args.samples,
            overwrite=args.overwrite,
            prior_name=args.prior,
            comm=comm,
            debug=args.debug,
            read=read,
            share_patches=args.share_patches,
        )
        summary = runner.run()
    if comm.rank == 0:
        print(summary.line(runner.manifest_path), file=sys.stdout if summary.ok else sys.stderr)
    return 0 if summary.ok else EXIT_USER_ERROR


def _share_patches(prior: Any, comm: Any) -> None:
    """``--share-patches``: the processes split every image's patches (a patch prior only)."""
    from .priors.patches import PatchPrior
    from .priors.sharing import ChunkSharing

    if not isinstance(prior, PatchPrior):
        raise DwgfError(
            "--share-patches needs a patch prior: a prior trained on crops (train-prior "
            "--patch-size) or --patches"
        )
    if comm.distributed:
        prior.share(ChunkSharing(comm.rank, comm.world_size))


def _run_train_prior(args: argparse.Namespace) -> int:
    from .training.cli import run_train_prior

    return run_train_prior(args)


COMMANDS = {"demo": _run_demo, "simulate": _run_simulate, "reconstruct": _run_reconstruct}
COMMANDS["train-prior"] = _run_train_prior


def _run_benchmark(args: argparse.Namespace) -> int:
    from .benchmark.cli import run_benchmark_cli

    return run_benchmark_cli(args)


COMMANDS["benchmark"] = _run_benchmark


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dwgf-sci`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        with warnings.catch_warnings():
            if not args.debug:  # a warning is one line, as errors are
                warnings.showwarning = _warning_line
            return COMMANDS[args.command](args)
    except DwgfError as exc:
        if args.debug:
            raise
        print(f"dwgf-sci: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("dwgf-sci: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = None if args.debug else _foreseeable(exc)
        if message is None:
            raise
        print(f"dwgf-sci: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _warning_line(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Print a warning as ``dwgf-sci: warning: ...`` on one line (no source line)."""
    text = " ".join(str(message).split())
    print(f"dwgf-sci: warning: {text}", file=sys.stderr)


def _foreseeable(exc: Exception) -> str | None:
    """One line for a failure that is no bug (memory exhausted, an output folder that cannot be
    written, a name too long, a full disk), else None."""
    from .pipelines.batch import one_line
    from .pipelines.failures import failure_message

    message = failure_message(exc)
    return None if message is None else one_line(message)


if __name__ == "__main__":
    sys.exit(main())
