"""Batch reconstruction: many inputs, one output each, resumable, shared over processes.

A job is planned first, identically in every process (:func:`~dwgf_sci.pipelines.plan.plan_batch`,
re-exported here): the inputs (files, folders, glob patterns, input lists) become
:class:`~dwgf_sci.pipelines.plan.BatchItem` objects, each with its output file, its *key* and its
seed. Then each process works on its round-robin share
(:meth:`Comm.local_indices <dwgf_sci.pipelines.distributed.Comm.local_indices>`) and records every
item in the job's status manifest (:mod:`dwgf_sci.pipelines.manifest`).

Names and seeds
    See :mod:`~dwgf_sci.pipelines.plan`: an input ``<stem>.<ext>`` gives
    ``<stem>_posterior.<ext>`` and key ``<stem>`` (disambiguated when stems collide), and its seed
    depends on the base ``--seed`` and its key only.

Resuming
    An item is skipped when the manifest records it done with the same *fingerprint* (a hash of
    the input file's bytes, the key, the seed, the output name and every setting that changes the
    result: prior, operator, solver settings except ``max_batch``, samples stored or not) and its
    output has the recorded SHA-256. An output that exists without such a record (the job was
    killed between writing it and recording it) is kept when its provenance carries the same
    fingerprint and it reads back whole; any other existing output is an error unless
    ``--overwrite``. Outputs are written atomically, so a killed job never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import secrets
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DwgfError, FileFormatError, OutputExistsError
from ..io import read_fits, read_hdf5, read_provenance
from ..io.formats import file_format
from ..io.survey import ReadOptions
from ..solvers.base import LatentSolver
from .distributed import Comm
from .failures import failure_message, is_out_of_memory
from .manifest import (
    MANIFEST_NAME,
    consolidate,
    job_lock,
    load_status,
    part_path,
    read_run,
    remove_stale_temporaries,
    utc_now,
    write_status,
)
from .plan import BatchItem, item_seed, plan_batch
from .reconstruct import reconstruct_file

__all__ = [
    "BatchItem",
    "BatchRunner",
    "BatchSummary",
    "is_out_of_memory",
    "item_seed",
    "plan_batch",
]

#: Solver settings that change how a result is computed, not what it is.
EXECUTION_ONLY = frozenset({"max_batch"})


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a regular file's bytes.

    :raises FileFormatError: not a regular file (a folder, a FIFO that would block), unreadable.
    """
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise FileFormatError(f"{path} is not a regular file")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from None
    return digest.hexdigest()


def one_line(text: str) -> str:
    """``text`` on one line: line breaks become spaces, other control characters escapes."""
    text = str(text).replace("\r\n", " ").replace("\n", " ")
    out = []
    for ch in text:
        code = ord(ch)
        if code < 32 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out).strip()


@dataclass
class BatchSummary:
    """Counts over the whole job (every process).

    :ivar total: items in the job.
    :ivar done: items done now or before.
    :ivar skipped: of those, items done by an earlier run.
    :ivar failed: items that failed.
    """

    total: int
    done: int
    skipped: int
    failed: int

    @property
    def ok(self) -> bool:
        """True when every item is done."""
        return self.failed == 0 and self.done == self.total

    def line(self, manifest: Path) -> str:
        """The one-line summary the CLI prints."""
        already = f" ({self.skipped} already done)" if self.skipped else ""
        return one_line(
            f"dwgf-sci: {self.total} input(s): {self.done} done{already}, {self.failed} failed; "
            f"status in {manifest}"
        )


def _batch_record(path: Path) -> dict[str, Any] | None:
    """The ``batch`` field of an output's provenance, or None when it cannot be read."""
    try:
        record = read_provenance(path)
    except DwgfError:
        return None
    batch = record.get("batch") if isinstance(record, dict) else None
    return batch if isinstance(batch, dict) else None


def _reads_back(path: Path) -> bool:
    """True when the posterior mean of an output reads back (no truncation, finite)."""
    try:
        if file_format(path) == "fits":
            read_fits(path)
        else:
            read_hdf5(path, key="mean")
    except DwgfError:
        return False
    return True


class BatchRunner:
    """Run the items of a job that fall to this process, recording each one.

    :param items: the job's items (:func:`plan_batch`), the same list in every process.
    :param solver: the sampler (its ``seed`` is the job's base seed).
    :param out_dir: the output folder.
    :param spec: operator spec overriding the files' own (``--operator``), or None.
    :param samples: how many posterior samples to store in each output (the first ones;
        ``None``: all, 0: none).
    :param overwrite: replace existing outputs that this job's settings did not make.
    :param prior_name: the prior's name or folder, for provenance and fingerprints.
    :param comm: the job's processes (:func:`~dwgf_sci.pipelines.distributed.batch_comm`).
    :param debug: let unexpected errors raise (with their traceback) instead of recording them.
    :param read: how to read the inputs (:class:`~dwgf_sci.io.survey.ReadOptions`), or None.
    :param share_patches: under ``torchrun``, every process takes every item and the solver's
        patch prior splits each image's patches between them
        (:meth:`~dwgf_sci.priors.patches.PatchPrior.share`): for a few images larger than the
        processes' count; the outputs are one process's, bit for bit.
    :param echo: where progress lines go (default: stdout); errors go to ``echo_err``.
    """

    def __init__(
        self,
        items: Sequence[BatchItem],
        solver: LatentSolver,
        out_dir: str | Path,
        *,
        spec: dict[str, Any] | None = None,
        samples: int | None = None,
        overwrite: bool = False,
        prior_name: str | None = None,
        comm: Comm | None = None,
        debug: bool = False,
        echo: Callable[[str], None] | None = None,
        echo_err: Callable[[str], None] | None = None,
        read: ReadOptions | None = None,
        share_patches: bool = False,
    ) -> None:
        self.items = list(items)
        self.solver = solver
        self.out_dir = Path(out_dir)
        self.spec = spec
        self.samples = None if samples is None else int(samples)
        self.overwrite = overwrite
        self.prior_name = prior_name
        self.comm = comm or Comm()
        self.debug = debug
        self.read = read
        self.echo = echo or (lambda s: print(s, flush=True))
        self.echo_err = echo_err or (lambda s: print(s, file=sys.stderr, flush=True))
        #: every process takes every item, splitting its patches (the solver's prior shares
        #: them); rank 0 writes and reports, the others only compute
        self.share_patches = bool(share_patches) and self.comm.distributed
        self.helper = self.share_patches and self.comm.rank != 0
        if self.helper:
            self.echo = self.echo_err = lambda s: None
        self.job = self._job_settings()

    # ------------------------------------------------------------------ identity
    def _job_settings(self) -> dict[str, Any]:
        settings = {k: v for k, v in self.solver.settings().items() if k not in EXECUTION_ONLY}
        prior = self.prior_name
        if prior is not None and Path(prior).is_dir():
            prior = str(Path(prior).resolve())
        job = {
            "solver": settings,
            "operator": self.spec,
            "prior": prior,
            "samples": self.samples,
        }
        if self.read is not None and not self.read.is_default():
            job["read"] = self.read.record()
        return job

    def fingerprint(self, item: BatchItem, input_sha256: str) -> str:
        """Hash of everything that determines ``item``'s output."""
        doc = {
            "job": self.job,
            "key": item.key,
            "seed": item.seed,
            "output": item.name,
            "input_sha256": input_sha256,
        }
        text = json.dumps(doc, sort_keys=True, ensure_ascii=True, default=str)
        return hashlib.sha256(text.encode("ascii")).hexdigest()[:32]

    # ------------------------------------------------------------------ the job
    @property
    def manifest_path(self) -> Path:
        """The job's status manifest."""
        return self.out_dir / MANIFEST_NAME

    def _prefix(self) -> str:
        return f"[rank {self.comm.rank}] " if self.comm.distributed else ""

    def _prepare(self, stack: contextlib.ExitStack) -> int:
        """Process 0: lock the folder, delete a killed job's temporaries, merge leftover parts.

        :return: the run's id, the same in every process.
        """
        error: DwgfError | None = None
        run_id = 0
        if self.comm.rank == 0:
            run_id = secrets.randbits(62) + 1
            try:
                stack.enter_context(job_lock(self.out_dir))
                remove_stale_temporaries(self.out_dir, {it.name for it in self.items})
                consolidate(self.out_dir)
            except DwgfError as exc:
                error = exc
        failed, run_id = self.comm.sum([error is not None, run_id])
        if error is not None:
            raise error
        if failed:
            raise ConfigError("process 0 could not prepare the output folder (see its message)")
        return run_id

    def _parts_final(self, run_id: int) -> dict[str, int] | None:
        """Summed counts once every process has written its final part of run ``run_id``."""
        totals = {"done": 0, "skipped": 0, "failed": 0}
        for rank in range(self.comm.world_size):
            run = read_run(part_path(self.out_dir, rank))
            if run is None or run.get("id") != run_id or not run.get("final"):
                return None
            for key in totals:
                totals[key] += int(run.get(key, 0))
        return totals

    def _merged(self, run_id: int) -> dict[str, Any] | None:
        """The main manifest's run record once process 0 has merged run ``run_id``."""
        run = read_run(self.manifest_path)
        return run if run is not None and run.get("id") == run_id else None

    @staticmethod
    def _wait(ready: Callable[[], Any]) -> Any:
        """Poll ``ready`` until it returns something (the file system, without any timeout:
        a process may finish hours before the others, and ``torchrun`` ends the job if one of
        them dies)."""
        delay = 0.05
        while True:
            value = ready()
            if value:
                return value
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)

    def run(self) -> BatchSummary:
        """Work on this process's items; return the counts of the whole job."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FileFormatError(
                f"cannot create the output folder {self.out_dir}: {exc}"
            ) from None
        if self.comm.rank != 0:
            self.solver.progress = False
        with contextlib.ExitStack() as stack:
            run_id = self._prepare(stack)
            previous = load_status(self.out_dir)
            self.comm.barrier()  # every process has read the status before any part is written
            if self.comm.distributed:
                own: dict[str, dict[str, Any]] = {}
                target = part_path(self.out_dir, self.comm.rank)
            else:
                own = dict(previous)
                target = self.manifest_path
            done = skipped = failed = 0
            indices = (
                range(len(self.items))
                if self.share_patches
                else self.comm.local_indices(len(self.items))
            )
            for i in indices:
                item = self.items[i]
                status, entry = self._process(item, previous.get(item.key))
                if self.helper:  # rank 0 counts and records the item
                    continue
                done += status in ("done", "skipped")
                skipped += status == "skipped"
                failed += status == "failed"
                if entry is not None:
                    own[item.key] = entry
                    write_status(target, own)
            if not self.comm.distributed:
                return BatchSummary(len(self.items), done, skipped, failed)
            # the end is met through files: a collective would time out while the others work
            counts = {"done": done, "skipped": skipped, "failed": failed}
            write_status(target, own, run={"id": run_id, "final": True, **counts})
            totals = self._wait(lambda: self._parts_final(run_id) or self._merged(run_id))
            if self.comm.rank == 0:
                run = {"id": run_id, "world_size": self.comm.world_size, **totals}
                consolidate(self.out_dir, run=run)
            merged = self._wait(lambda: self._merged(run_id))
            done, skipped, failed = (int(merged[k]) for k in ("done", "skipped", "failed"))
        return BatchSummary(len(self.items), done, skipped, failed)

    # ------------------------------------------------------------------ one item
    def _check_existing(
        self, item: BatchItem, previous: dict[str, Any] | None, fp: str
    ) -> tuple[str, bool]:
        """What to do with an existing output: ``("skip"|"adopt"|"write", overwrite)``."""
        if isinstance(previous, dict) and previous.get("fingerprint") == fp:
            recorded = previous.get("status") == "done" and previous.get("output") == item.name
            if recorded:
                if previous.get("sha256") == sha256_file(item.output):
                    return "skip", False
                self.echo_err(
                    f"{self._prefix()}dwgf-sci: warning: {item.output} changed since it was "
                    "written (checksum mismatch); computing it again"
                )
                return "write", True
        batch = _batch_record(item.output)
        if (
            batch is not None
            and batch.get("fingerprint") == fp
            and batch.get("key") == item.key
            and _reads_back(item.output)
        ):
            return "adopt", False
        if not self.overwrite:
            raise OutputExistsError(
                f"{item.output} exists already and was not made with this job's input and "
                "settings; pass --overwrite to replace it, or choose another --out"
            )
        return "write", True

    def _process(
        self, item: BatchItem, previous: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any] | None]:
        """Reconstruct one item unless it is done; never raises for a bad input."""
        start = time.perf_counter()
        entry: dict[str, Any] = {
            "input": str(item.input),
            "output": item.name,
            "seed": item.seed,
            "rank": self.comm.rank,
        }
        try:
            fp = self.fingerprint(item, sha256_file(item.input))
            entry["fingerprint"] = fp
            overwrite = self.overwrite
            if item.output.exists() or item.output.is_symlink():
                action, overwrite = self._check_existing(item, previous, fp)
                if action == "skip":
                    self.echo(f"{self._prefix()}{item.input}: done already ({item.output})")
                    return "skipped", None
                if action == "adopt":
                    self.echo(
                        f"{self._prefix()}{item.input} -> {item.output} (kept: written by an "
                        "earlier run of this job)"
                    )
                    entry.update(self._done_fields(item, start))
                    entry["adopted"] = True
                    return "done", entry
            result = reconstruct_file(
                item.input,
                self.solver,
                self.out_dir,
                spec=self.spec,
                overwrite=overwrite,
                samples=self.samples,
                prior_name=self.prior_name,
                target=item.output,
                seed=item.seed,
                record={"batch": {"key": item.key, "fingerprint": fp}},
                read=self.read,
                echo=lambda line: self.echo(f"{self._prefix()}{line}"),
                write=not self.helper,
            )
            entry.update(self._done_fields(item, start))
        except DwgfError as exc:
            return "failed", self._failed(entry, item, str(exc), start)
        except Exception as exc:
            if is_out_of_memory(exc) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            known = failure_message(exc, self.solver)  # out of memory, storage: no bug
            if known is not None:
                return "failed", self._failed(entry, item, known, start)
            if self.debug:
                raise
            reason = (
                f"unexpected error ({type(exc).__name__}: {exc}); rerun with --debug for the "
                "traceback and please report it"
            )
            return "failed", self._failed(entry, item, reason, start)
        metrics = result.metrics
        scores = " ".join(f"{k}={v:.3g}" for k, v in metrics.items())
        if metrics.get("reduced_chi2_mean", 0.0) > metrics.get("reduced_chi2_limit", math.inf):
            scores += (
                " -- poor data fit (reduced chi2 above its limit): check the noise level and "
                "the operator; a fast-preset result may fit with the default preset"
            )
        self.echo(
            f"{self._prefix()}{item.input} -> {item.output} ({entry['seconds']:.1f} s) {scores}"
        )
        return "done", entry

    def _done_fields(self, item: BatchItem, start: float) -> dict[str, Any]:
        return {
            "status": "done",
            "sha256": sha256_file(item.output),
            "bytes": item.output.stat().st_size,
            "seconds": round(time.perf_counter() - start, 3),
            "finished": utc_now(),
        }

    def _failed(
        self, entry: dict[str, Any], item: BatchItem, reason: str, start: float
    ) -> dict[str, Any]:
        reason = one_line(reason)
        self.echo_err(one_line(f"{self._prefix()}dwgf-sci: error: {item.input}: {reason}"))
        entry.update(
            {
                "status": "failed",
                "error": reason,
                "seconds": round(time.perf_counter() - start, 3),
                "finished": utc_now(),
            }
        )
        return entry
