"""Foreseeable storage failures told in one line: a folder that cannot be written, a file name too
long for the file system, a full disk.

:func:`storage_message` turns such an :class:`OSError` into a sentence (None for any other error);
:func:`check_output_folder` checks an output folder before any work is done: it creates the
folder, writes and removes a probe file in it, and checks that the outputs' names fit the file
system (with the temporary name :func:`~dwgf_sci.io.atomic.atomic_output` writes under first).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from ..errors import StorageError
from ._common import PathLike

__all__ = [
    "DENIED_ERRNOS",
    "FULL_ERRNOS",
    "FULL_MESSAGE_START",
    "TEMP_OVERHEAD",
    "check_output_folder",
    "format_bytes",
    "storage_message",
]

#: Errors meaning "this folder cannot be written": permissions, a read-only file system.
DENIED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
#: Errors meaning "no room left": a full device, an exhausted quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: How the message of a full disk starts.
FULL_MESSAGE_START = "no space left on the device"
#: What a full disk says when the error carries no errno (h5py; astropy's own space check).
_FULL_PHRASES = ("no space left on device", "not enough space on disk")
#: Characters a temporary name adds to an output's name (``.tmp-<12 hex>-<name>``).
TEMP_OVERHEAD = len(".tmp-") + 12 + 1
#: Longest file name assumed where the file system does not say.
_DEFAULT_NAME_MAX = 255


def format_bytes(n: float) -> str:
    """``n`` bytes in a readable unit (``"1.5 GB"``; decimal units)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover - the loop always returns


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (the current folder at worst)."""
    for candidate in (path, *path.parents):
        try:
            if candidate.is_dir():
                return candidate
        except OSError:
            continue
    return Path.cwd()


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) that the file system of ``folder`` accepts."""
    try:
        return int(os.pathconf(_existing_ancestor(folder), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _DEFAULT_NAME_MAX


def _free_bytes(folder: Path) -> int | None:
    """Bytes free for an ordinary user on the file system of ``folder``, or None if unknown."""
    try:
        return shutil.disk_usage(_existing_ancestor(folder)).free
    except OSError:
        return None


def _shown(name: str, limit: int = 40) -> str:
    """``name`` shortened for a message."""
    return repr(name if len(name) <= limit else f"{name[: limit - 3]}...")


def storage_message(
    exc: BaseException, path: PathLike | None = None, needed: int | None = None
) -> str | None:
    """One line for a foreseeable storage failure, or None for any other exception.

    :param exc: the exception caught.
    :param path: the file or folder being written (default: the exception's ``filename``, which
        may have been read or written: a denied access is then not called a write).
    :param needed: bytes the write needed, if known (said for a full disk).
    :return: the message: a folder that cannot be written (permissions, read-only file system),
        a name too long for the file system, or a full disk (with the space needed and free).
    """
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    text = str(exc).lower()
    if code is None and any(phrase in text for phrase in _FULL_PHRASES):
        code = errno.ENOSPC
    if code is None:
        return None
    where = Path(os.fspath(path if path is not None else exc.filename or "."))
    if code in DENIED_ERRNOS:
        reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
        if path is None and code != errno.EROFS:  # read or written? the exception does not say
            return f"cannot access {where}: {reason}; check the permissions of the files named"
        return (
            f"cannot write to {where}: {reason}; choose a writable output folder (--out) or make "
            "this one writable"
        )
    if code == errno.ENAMETOOLONG:
        limit = _name_max(where.parent)
        failed = Path(os.fspath(exc.filename)) if isinstance(exc.filename, str) else where
        parts = [p for p in failed.parts if len(os.fsencode(p)) > limit]
        if parts and max(parts, key=len).startswith(".tmp-"):  # the temporary name of ``where``
            return (
                f"file name too long for the file system: {_shown(where.name)} has "
                f"{len(os.fsencode(where.name))} bytes, at most {limit - TEMP_OVERHEAD} fit (the "
                f"file is first written under a temporary name {TEMP_OVERHEAD} bytes longer); "
                "choose a shorter output name"
            )
        if parts:
            longest = max(parts, key=len)
            return (
                f"file name too long for the file system: {_shown(longest)} has "
                f"{len(os.fsencode(longest))} bytes, at most {limit} fit; choose a shorter "
                "output folder or output name"
            )
        return (
            f"path too long for the file system ({len(os.fsencode(str(where)))} bytes): {where}; "
            "choose a shorter output folder"
        )
    if code in FULL_ERRNOS:
        named = path is not None or exc.filename is not None
        free = _free_bytes(where) if named else None
        amounts = []
        if needed is not None:
            amounts.append(f"it needs about {format_bytes(needed)}")
        if free is not None:
            amounts.append(f"{format_bytes(free)} free there")
        detail = f" ({', '.join(amounts)})" if amounts else ""
        return (
            f"{FULL_MESSAGE_START}{f' to write {where}' if named else ''}{detail}; free some "
            "space or choose another output folder"
        )
    return None


def _probe(folder: Path) -> None:
    """Create, write and remove a small file in ``folder``.

    :raises OSError: when that fails.
    """
    probe = folder / f".tmp-{secrets.token_hex(6)}-write-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.write(fd, b"dwgf-sci")
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def check_output_folder(folder: PathLike, names: Iterable[str] = ()) -> Path:
    """Check before any work that ``folder`` can hold the outputs ``names``; return it.

    Each name (relative to ``folder``, ``/`` separators) must fit the file system's longest file
    name together with the temporary name it is first written under; then the folder is created
    if needed (with its parents), and a probe file is written in it and removed.

    :param folder: the output folder.
    :param names: the outputs' names relative to ``folder``.
    :return: ``folder`` as a Path.
    :raises StorageError: a folder that cannot be created or written, a name too long.
    """
    out = Path(os.fspath(folder)).expanduser()
    limit = _name_max(out)
    for name in names:
        for part in PurePosixPath(name).parts:
            size = len(os.fsencode(part))
            if size + TEMP_OVERHEAD > limit:
                raise StorageError(
                    f"the output name {_shown(part)} is too long for the file system of {out}: "
                    f"{size} bytes, at most {limit - TEMP_OVERHEAD} fit (the file is first "
                    f"written under a temporary name {TEMP_OVERHEAD} bytes longer); rename the "
                    "input, or give a shorter output name in an input list (--manifest)"
                )
    if out.exists() and not out.is_dir():
        raise StorageError(f"the output folder {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe(out)
    except OSError as exc:
        message = storage_message(exc, out)
        raise StorageError(message or f"cannot write to the output folder {out}: {exc}") from None
    return out
