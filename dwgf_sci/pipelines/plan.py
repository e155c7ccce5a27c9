"""Planning a reconstruction job: which files, which outputs, which seeds.

Both :func:`~dwgf_sci.pipelines.reconstruct.reconstruct_files` and the batch runner
(:mod:`~dwgf_sci.pipelines.batch`) plan a job here, identically in every process:
:func:`plan_batch` turns the inputs (files, folders, glob patterns, input lists) into
:class:`BatchItem` objects, each with its output file, its *key* and its seed.

Names
    An input ``<stem>.<ext>`` gives ``<stem>_posterior.<ext>`` (``--format`` changes the suffix);
    its key is ``<stem>``. Inputs whose stems are equal (ignoring case, so that case-insensitive
    file systems are safe) all get ``<stem>_<h>_posterior.<ext>`` and key ``<stem>_<h>``, where
    ``<h>`` is the first 8 hex digits of the SHA-256 of the shortest trailing part of their paths
    that tells them apart (``night1/obj.fits``). An input list may name an output explicitly; its
    key is that name without the suffix.

Seeds
    Item seed = the first 63 bits of ``SHA-256("dwgf-sci item seed v1", base seed, key)``: it
    depends on the base ``--seed`` and the item's key only, so an output is the same whatever the
    order of the inputs, the other inputs, or the number of processes.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, FileFormatError
from ..io.formats import FITS_SUFFIXES, HDF5_SUFFIXES, file_format
from .manifest import InputEntry, confined_output

__all__ = [
    "BatchItem",
    "expand_inputs",
    "item_seed",
    "output_path",
    "plan_batch",
    "split_name",
]

_SEED_DOMAIN = "dwgf-sci item seed v1"


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files from paths, folders (their FITS/HDF5 files, sorted) and glob patterns.

    :raises FileFormatError: if an input matches nothing.
    """
    found: list[Path] = []
    suffixes = FITS_SUFFIXES + HDF5_SUFFIXES
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.name.lower().endswith(suffixes))
            if not files:
                raise FileFormatError(f"{p}: the folder holds no FITS or HDF5 file")
            found.extend(files)
        elif p.exists():
            found.append(p)
        elif any(ch in str(item) for ch in "*?["):
            files = sorted(Path(q) for q in glob.glob(str(item)))
            if not files:
                raise FileFormatError(f"{item}: the pattern matches no file")
            found.extend(files)
        else:
            raise FileFormatError(f"{p}: no such file or folder")
    return found


def split_name(path: Path) -> tuple[str, str]:
    """``(stem, suffix)`` of a FITS/HDF5 file name, with double suffixes (``.fits.gz``) kept."""
    name = path.name
    for suffix in sorted(FITS_SUFFIXES + HDF5_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return path.stem, path.suffix


def output_path(path: Path, out_dir: Path, file_type: str | None, stem: str | None = None) -> Path:
    """``out_dir/<stem>_posterior.<fits|h5>`` (never the input itself).

    :param stem: the stem to use instead of the input's (batch jobs pass a disambiguated one).
    """
    own_stem, ext = split_name(path)
    stem = own_stem if stem is None else stem
    if file_type == "fits":
        ext = ".fits"
    elif file_type == "hdf5":
        ext = ".h5"
    return out_dir / f"{stem}_posterior{ext.replace('.gz', '')}"


@dataclass(frozen=True)
class BatchItem:
    """One input of a job and what the job makes of it.

    :ivar input: the input file.
    :ivar output: the output file (inside the output folder).
    :ivar name: the output's path relative to the output folder (``/`` separators).
    :ivar key: the item's identity in the job (its manifest key; seeds derive from it).
    :ivar seed: the sampler's seed for this item (:func:`item_seed`).
    """

    input: Path
    output: Path
    name: str
    key: str
    seed: int


def item_seed(base_seed: int, key: str) -> int:
    """The seed of the item ``key`` in a job with base seed ``base_seed`` (0 <= seed < 2**63).

    The seed is the first 63 bits of the SHA-256 of ``"dwgf-sci item seed v1"``, the base seed
    and the key (NUL-separated), so it depends on nothing else (input order, other inputs, number
    of processes).

    :param base_seed: the job's ``--seed``.
    :param key: the item's key (see the module docstring).
    :return: the item's seed, a non-negative int below :math:`2^{63}`.
    """
    text = f"{_SEED_DOMAIN}\0{int(base_seed)}\0{key}"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _distinct_tails(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing parts (as many for all) that tell ``paths`` apart, ignoring case."""
    parts = [p.parts for p in paths]
    longest = max(len(ps) for ps in parts)
    for k in range(1, longest + 1):
        tails = ["/".join(ps[-k:]) for ps in parts]
        if len({t.casefold() for t in tails}) == len(tails):
            return tails
    return ["/".join(ps) for ps in parts]  # pragma: no cover - resolved paths are distinct


def _expand(item: str | Path, out_dir: Path) -> list[Path]:
    """Files named by one input; a folder or pattern never yields the job's own outputs (files
    named ``*_posterior.<ext>`` inside the output folder), so ``--out`` may lie among the inputs."""
    files = expand_inputs([item])
    if Path(item).is_file():
        return files
    root = out_dir.resolve()
    kept = []
    for p in files:
        stem = split_name(p)[0]
        if stem.endswith("_posterior") and p.resolve().is_relative_to(root):
            continue
        kept.append(p)
    if not kept:
        raise FileFormatError(f"{item}: only outputs of this job (*_posterior.*) are there")
    return kept


def _collect(
    inputs: Sequence[str | Path], entries: Sequence[InputEntry], out_dir: Path
) -> list[tuple[Path, str | None]]:
    found: list[tuple[Path, str | None]] = []
    for item in inputs:
        found.extend((p, None) for p in _expand(item, out_dir))
    for entry in entries:
        where = f"input list, line {entry.line}"
        if entry.output is None:
            try:
                files = _expand(entry.path, out_dir)
            except FileFormatError as exc:
                raise FileFormatError(f"{where}: {exc}") from None
            found.extend((p, None) for p in files)
            continue
        p = Path(entry.path)
        if not p.exists():
            raise FileFormatError(f"{where}: {p}: no such file")
        try:
            file_format(p)
        except FileFormatError as exc:
            raise FileFormatError(f"{where}: {exc}") from None
        found.append((p, entry.output))
    return found


def _unique(found: Sequence[tuple[Path, str | None]]) -> list[tuple[Path, str | None]]:
    """Inputs named more than once (folder and glob, say) are kept once, at their first place."""
    index: dict[Path, int] = {}
    unique: list[tuple[Path, str | None]] = []
    for p, out in found:
        real = p.resolve()
        if real not in index:
            index[real] = len(unique)
            unique.append((p, out))
            continue
        i = index[real]
        before = unique[i][1]
        if out is not None and before is not None and out != before:
            raise ConfigError(f"{p} is listed twice with different outputs: {before!r}, {out!r}")
        if before is None:
            unique[i] = (unique[i][0], out)
    return unique


def plan_batch(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    base_seed: int = 0,
    file_type: str | None = None,
    entries: Sequence[InputEntry] = (),
) -> list[BatchItem]:
    """The items of a job, in input order (see the module docstring for names and seeds).

    :param inputs: files, folders and glob patterns (folders and patterns skip the outputs of
        the job, ``*_posterior.<ext>`` files inside ``out_dir``).
    :param out_dir: the output folder.
    :param base_seed: the job's ``--seed``.
    :param file_type: ``"fits"``/``"hdf5"`` to force the outputs' format (named outputs of an
        input list keep the format of their suffix).
    :param entries: lines of an input list (:func:`~dwgf_sci.pipelines.manifest.read_input_list`).
    :raises FileFormatError: an input that matches nothing.
    :raises ConfigError: no input at all, an output name that leaves the output folder, two inputs
        with the same output or key.
    """
    if not inputs and not entries:
        raise ConfigError("no input: give files, folders, glob patterns or --manifest LIST")
    out = Path(out_dir)
    unique = _unique(_collect(inputs, entries, out))
    groups: dict[str, list[int]] = {}
    for i, (p, name) in enumerate(unique):
        if name is None:
            groups.setdefault(split_name(p)[0].casefold(), []).append(i)
    keys: dict[int, str] = {}
    for members in groups.values():
        if len(members) == 1:
            keys[members[0]] = split_name(unique[members[0]][0])[0]
            continue
        tails = _distinct_tails([unique[i][0].resolve() for i in members])
        for i, tail in zip(members, tails, strict=True):
            keys[i] = f"{split_name(unique[i][0])[0]}_{_short_hash(tail)}"
    items: list[BatchItem] = []
    by_name: dict[str, Path] = {}
    by_key: dict[str, Path] = {}
    for i, (p, name) in enumerate(unique):
        if name is None:
            key = keys[i]
            target = output_path(p, out, file_type, stem=key)
            rel = target.name
        else:
            target = confined_output(name, out)
            rel = name
            stem = split_name(Path(rel))[0]
            parent = PurePosixPath(rel).parent
            key = stem if str(parent) == "." else f"{parent.as_posix()}/{stem}"
        for table, value, what in ((by_name, rel, "output"), (by_key, key, "key")):
            other = table.get(value.casefold())
            if other is not None:
                raise ConfigError(
                    f"{other} and {p} would have the same {what} {value!r}; rename one or name "
                    "the outputs in an input list (INPUT<TAB>OUTPUT)"
                )
            table[value.casefold()] = p
        items.append(BatchItem(p, target, rel, key, item_seed(base_seed, key)))
    return items
