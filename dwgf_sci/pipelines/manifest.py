"""Manifests of a batch job: the list of inputs a user gives, and the status file a job keeps.

Input list (``dwgf-sci reconstruct --manifest inputs.txt``)
    A UTF-8 text file, one input per line. Blank lines and lines starting with ``#`` are skipped.
    A line is a file, a folder or a glob pattern, or a file, a TAB and the name of its output
    inside the output folder (``night1/obj.fits<TAB>night1/obj_posterior.fits``). Relative input
    paths are relative to the folder holding the list. Output names are confined to the output
    folder (:func:`confined_output`): no absolute paths, no ``..``, no hidden names, no way out
    through a symbolic link.

Status manifest (``<out>/dwgf-manifest.json``)
    One JSON document, rewritten atomically after every item, so that a job killed at any moment
    leaves either the previous or the new version::

        {"format": "dwgf-sci batch manifest", "version": 1, "updated": "2025-...Z",
         "counts": {"done": 15, "failed": 1},
         "items": {
           "obs_00000": {"status": "done", "input": "/data/obs_00000.fits",
                         "output": "obs_00000_posterior.fits", "seed": 123..., "fingerprint": "...",
                         "sha256": "...", "bytes": 94080, "seconds": 4.2,
                         "finished": "2025-...Z", "rank": 0},
           "obs_00007": {"status": "failed", "input": "...", "output": "...",
                         "error": "... contains 1 NaN ...", ...}}}

    Items are keyed by their *key* (the output name without ``_posterior.<ext>``). Output names are
    relative to the output folder. Under ``torchrun`` every process writes its own part,
    ``dwgf-manifest.part-<rank>.json``, and process 0 merges the parts into the main file at the
    end of the job (and at the start of the next one, after a job that was killed). The status file
    is read as JSON data only; no path in it is ever written to (outputs are named by the job).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import ConfigError, FileFormatError
from ..io.atomic import atomic_output
from ..io.formats import FITS_SUFFIXES, HDF5_SUFFIXES

__all__ = [
    "LOCK_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "InputEntry",
    "confined_output",
    "consolidate",
    "job_lock",
    "load_status",
    "part_path",
    "read_document",
    "read_input_list",
    "read_run",
    "remove_stale_temporaries",
    "write_status",
]

MANIFEST_NAME = "dwgf-manifest.json"
PART_PREFIX = "dwgf-manifest.part-"
LOCK_NAME = ".dwgf-manifest.lock"
MANIFEST_FORMAT = "dwgf-sci batch manifest"
MANIFEST_VERSION = 1
#: Largest input list read (bytes); a list of a million paths is far smaller.
MAX_LIST_BYTES = 256 * 2**20
#: Temporary files :func:`~dwgf_sci.io.atomic.atomic_output` creates next to an output.
_TEMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{12}-(?P<name>.+)$")
_RESERVED = {MANIFEST_NAME.casefold(), LOCK_NAME.casefold()}


@dataclass(frozen=True)
class InputEntry:
    """One line of an input list.

    :ivar path: the input file, folder or glob pattern (relative ones resolved against the
        list's folder).
    :ivar output: the output name inside the output folder, if the line gives one.
    :ivar line: line number in the list (1-based), for messages.
    """

    path: str
    output: str | None
    line: int


def utc_now() -> str:
    """The current UTC time, ISO 8601 with a ``Z`` (seconds)."""
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------
# input lists
# --------------------------------------------------------------------------------------------------


def read_input_list(path: str | os.PathLike[str]) -> list[InputEntry]:
    """Parse an input list (see the module docstring).

    :param path: the text file.
    :return: its entries, in file order.
    :raises ConfigError: missing or unreadable file, not UTF-8 text, a malformed line.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"input list not found: {p}")
    try:
        size = p.stat().st_size
        if size > MAX_LIST_BYTES:
            raise ConfigError(f"{p}: input list of {size} bytes is too large (a text file?)")
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the input list {p}: {exc}") from None
    if b"\0" in raw:
        raise ConfigError(f"{p}: the input list is not a text file (it holds NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: the input list is not UTF-8 text ({exc.reason})") from None
    base = p.parent
    entries: list[InputEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) > 2:
            raise ConfigError(
                f"{p}, line {number}: expected 'INPUT' or 'INPUT<TAB>OUTPUT', found "
                f"{len(fields)} TAB-separated fields"
            )
        name = fields[0].strip()
        output = fields[1].strip() if len(fields) == 2 else None
        if not name:
            raise ConfigError(f"{p}, line {number}: the input path is empty")
        if output == "":
            raise ConfigError(f"{p}, line {number}: the output name after the TAB is empty")
        target = Path(name).expanduser()
        if not target.is_absolute():
            target = base / target
        entries.append(InputEntry(str(target), output, number))
    if not entries:
        raise ConfigError(f"{p}: the input list names no input")
    return entries


def confined_output(name: str, out_dir: Path) -> Path:
    """The path of the output ``name`` inside ``out_dir``, refusing any way out of it.

    A name is a relative path with ``/`` separators whose parts are plain names: no absolute
    path (``/x``, ``C:\\x``, ``\\\\host\\share``), no ``..`` or ``.`` part, no backslash, no hidden
    part (``.name``, where temporary files live), not the job's status or lock file, and a FITS or
    HDF5 suffix. The resolved path (symbolic links followed) must stay inside ``out_dir``.

    :param name: output name, e.g. ``"obj_posterior.fits"`` or ``"night1/obj_posterior.fits"``.
    :param out_dir: the output folder.
    :raises ConfigError: naming what is wrong.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"output name must be a non-empty string, found {name!r}")
    shown = repr(name)
    if any(ord(c) < 32 for c in name):
        raise ConfigError(f"output name {shown} holds control characters")
    if "\\" in name:
        raise ConfigError(f"output name {shown}: use '/' as separator (no backslash)")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or name.startswith("~"):
        raise ConfigError(
            f"output name {shown} is absolute; it must be relative to the output folder"
        )
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ConfigError(
                f"output name {shown} must stay inside the output folder (no '..', '.' or "
                "empty parts)"
            )
        if part.startswith("."):
            raise ConfigError(f"output name {shown}: hidden names (starting with '.') are refused")
    if parts[-1].casefold() in _RESERVED or parts[-1].casefold().startswith(PART_PREFIX):
        raise ConfigError(f"output name {shown} is reserved for the job's status files")
    if not parts[-1].lower().endswith(FITS_SUFFIXES + HDF5_SUFFIXES):
        raise ConfigError(
            f"output name {shown} must end with a FITS {FITS_SUFFIXES} or HDF5 {HDF5_SUFFIXES} "
            "suffix"
        )
    target = out_dir.joinpath(*parts)
    root = out_dir.resolve()
    try:
        resolved = target.resolve()
    except (OSError, RuntimeError) as exc:  # a symbolic-link loop
        raise ConfigError(f"output name {shown}: cannot resolve it ({exc})") from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise ConfigError(
            f"output name {shown} leads out of the output folder {out_dir} (symbolic link?)"
        )
    return target


# --------------------------------------------------------------------------------------------------
# status manifest
# --------------------------------------------------------------------------------------------------


def part_path(out_dir: Path, rank: int) -> Path:
    """The status part written by process ``rank`` of a distributed job.

    :param out_dir: the job's output folder.
    :param rank: the process's rank.
    :return: ``out_dir/dwgf-manifest.part-<rank>.json``.
    """
    return out_dir / f"{PART_PREFIX}{int(rank)}.json"


def _part_files(out_dir: Path) -> list[Path]:
    pattern = re.compile(re.escape(PART_PREFIX) + r"\d+\.json$")
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def _read_document(path: Path) -> dict[str, dict[str, Any]]:
    """Items of one status file; a file that is not a status manifest is an error."""
    return read_document(path)[0]


def read_run(path: Path) -> dict[str, Any] | None:
    """The ``run`` record of a status file (see :func:`write_status`), or None (no file, none).

    :param path: the status manifest or part.
    :return: the ``run`` dict, or None when the file does not exist or has no such record.
    :raises FileFormatError: a file that exists but is not a status manifest.
    """
    if not path.is_file():
        return None
    run = read_document(path)[1].get("run")
    return run if isinstance(run, dict) else None


def read_document(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``(items, document)`` of one status file.

    :param path: the status manifest or part.
    :return: ``(items, document)``: the items by key (entries that are not JSON objects are
        dropped) and the whole parsed document.
    :raises FileFormatError: a file that is not a status manifest (with what to do about it).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read the job status {path}: {exc}") from None
    advice = f"move {path} away (the job then checks each output by its provenance)"
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path} is not valid JSON ({exc}); {advice}") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise FileFormatError(f"{path} is not a dwgf-sci batch manifest; {advice}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > MANIFEST_VERSION:
        raise FileFormatError(
            f"{path} has manifest version {version!r}; this dwgf-sci reads version "
            f"{MANIFEST_VERSION}. {advice}"
        )
    items = doc.get("items")
    if not isinstance(items, dict):
        raise FileFormatError(f"{path}: 'items' is not an object; {advice}")
    return {str(k): v for k, v in items.items() if isinstance(v, dict)}, doc


def load_status(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Items recorded in ``out_dir``: the main manifest, updated by any leftover parts.

    A part's entry replaces the main manifest's (or an earlier part's) entry for the same key
    when its ``finished`` time is not older.

    :param out_dir: the job's output folder (a missing folder or manifest gives no items).
    :return: the items by key.
    :raises FileFormatError: a status file that is not a manifest (with what to do about it).
    """
    items: dict[str, dict[str, Any]] = {}
    main = out_dir / MANIFEST_NAME
    if main.is_file():
        items.update(_read_document(main))
    for part in _part_files(out_dir):
        for key, entry in _read_document(part).items():
            old = items.get(key)
            if old is None or str(entry.get("finished", "")) >= str(old.get("finished", "")):
                items[key] = entry
    return items


def write_status(
    path: Path, items: Mapping[str, Mapping[str, Any]], run: Mapping[str, Any] | None = None
) -> None:
    """Write a status manifest (or part) holding ``items``, atomically.

    :param run: a record of the run that wrote it (id, counts), for the processes of a
        distributed job to know that a part, or the merged manifest, is final.
    """
    ordered = {k: dict(items[k]) for k in sorted(items)}
    counts: dict[str, int] = {}
    for entry in ordered.values():
        status = str(entry.get("status"))
        counts[status] = counts.get(status, 0) + 1
    doc = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "updated": utc_now(),
        "counts": counts,
        **({"run": dict(run)} if run is not None else {}),
        "items": ordered,
    }
    text = json.dumps(doc, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="ascii")


def consolidate(out_dir: Path, run: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Merge the parts into the main manifest, write it, delete the parts; return the items.

    :param run: the run record to store in the main manifest (it is then written even without
        parts).
    """
    parts = _part_files(out_dir)
    items = load_status(out_dir)
    if parts or run is not None:
        write_status(out_dir / MANIFEST_NAME, items, run=run)
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
    return items


def remove_stale_temporaries(out_dir: Path, names: set[str]) -> int:
    """Delete temporary files left by a killed job next to the outputs ``names`` (paths relative
    to ``out_dir``) and next to the status files; return how many were deleted.

    Only call this while holding :func:`job_lock`: a running job's temporaries look the same.

    :param out_dir: the job's output folder.
    :param names: the outputs' names relative to ``out_dir`` (``/`` separators).
    :return: the number of temporary files deleted.
    """
    wanted: dict[Path, set[str]] = {}
    for name in names:
        rel = PurePosixPath(name)
        wanted.setdefault(out_dir.joinpath(*rel.parent.parts), set()).add(rel.name)
    wanted.setdefault(out_dir, set()).add(MANIFEST_NAME)
    removed = 0
    for folder, targets in wanted.items():
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            match = _TEMP_NAME.match(p.name)
            if not match or not p.is_file():
                continue
            target = match["name"]
            if target in targets or (folder == out_dir and target.startswith(PART_PREFIX)):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
    return removed


@contextlib.contextmanager
def job_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` for one job (released when the process ends, even
    when it is killed). Where ``fcntl`` is missing (Windows) no lock is taken.

    The lock is a ``flock`` on ``out_dir/.dwgf-manifest.lock``, created if needed (the file is
    left in place).

    :param out_dir: the job's output folder; it must exist.
    :raises ConfigError: if another job holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"another dwgf-sci job is writing to {out_dir} (it holds {path}); wait for it "
                "or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)
