"""Atomic file output, shared by every writer of the package.

A writer never writes its output path directly. It writes a temporary file in the same folder (same
file system, so the final rename is atomic), flushes it to disk, then moves it into place. A reader
therefore sees either the old file or the complete new one, and a failure (exception, Ctrl-C, full
disk) leaves no partial output behind.

Example::

    with atomic_output("out.fits", overwrite=False) as tmp:
        hdul.writeto(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError, DwgfError, FileFormatError, OutputExistsError, StorageError
from ._common import PathLike
from .storage import FULL_MESSAGE_START, storage_message

__all__ = ["atomic_output", "check_output_path"]

#: Errors of :func:`os.link` that mean "hard links are not available here", not "the target exists".
_NO_LINK_ERRNOS = {
    errno.EPERM,
    errno.EXDEV,
    errno.EMLINK,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
    errno.ENOSYS,
    errno.EACCES,
}


def check_output_path(path: PathLike, overwrite: bool = False) -> Path:
    """Check that ``path`` can be written, before any work is done; return it as a Path.

    :param path: output file.
    :param overwrite: allow replacing an existing file.
    :raises OutputExistsError: if the file exists and ``overwrite`` is False.
    :raises FileFormatError: if the path is a folder or its parent folder does not exist.
    :raises ConfigError: if ``path`` is not a str or path-like object.
    """
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"output path must be a str or os.PathLike, found {type(path).__name__}")
    target = Path(os.fspath(path)).expanduser()
    if target.is_dir():
        raise FileFormatError(f"output path is a folder, not a file: {target}")
    parent = target.parent
    if not parent.is_dir():
        raise FileFormatError(f"output folder does not exist: {parent} (create it first)")
    if not overwrite and (target.exists() or target.is_symlink()):
        raise OutputExistsError(
            f"output file exists already: {target}; pass overwrite=True to replace it"
        )
    return target


def _make_temp(target: Path) -> Path:
    """Create an empty temporary file next to ``target`` (normal permissions, umask applied).

    The name keeps ``target``'s full name at its end so that writers which choose a format from the
    suffix (``.fits.gz``) behave as they would for the real name.
    """
    for _ in range(100):
        tmp = target.with_name(f".tmp-{secrets.token_hex(6)}-{target.name}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileFormatError(f"cannot create a temporary file in {target.parent}")  # pragma: no cover


def _fsync_path(path: Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries to disk (best effort; not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move ``tmp`` to ``target``; without ``overwrite`` never clobber a file made meanwhile."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic "create if absent"
    except FileExistsError:
        raise OutputExistsError(
            f"output file exists already: {target}; pass overwrite=True to replace it"
        ) from None
    except OSError as err:
        if err.errno not in _NO_LINK_ERRNOS:
            raise
        if target.exists():  # no hard links on this file system: check, then rename
            raise OutputExistsError(
                f"output file exists already: {target}; pass overwrite=True to replace it"
            ) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_output(
    path: PathLike, overwrite: bool = False, *, needed: int | None = None
) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; it becomes ``path`` on success.

    On entry the output is checked (:func:`check_output_path`) and an empty temporary file is
    created in the target folder. When the block ends normally the temporary file is flushed to disk
    (``fsync``) and moved to ``path`` (``os.replace``; without ``overwrite`` an atomic hard link, so
    a file that appeared in the meantime is never clobbered). When the block raises, the temporary
    file is removed and the exception propagates; ``path`` is left as it was.

    Foreseeable storage failures become a :class:`~dwgf_sci.errors.StorageError` with a one-line
    message (:func:`~dwgf_sci.io.storage.storage_message`): a folder that cannot be written or a
    name too long (creating or moving the file), a full disk (anywhere, saying ``needed``).

    :param path: final output file.
    :param overwrite: allow replacing an existing file.
    :param needed: about how many bytes the file takes, if known (said when the disk is full).
    :raises OutputExistsError: if the file exists and ``overwrite`` is False.
    :raises FileFormatError: if the path is a folder or its folder does not exist.
    :raises StorageError: the folder is not writable, the name too long, the disk full.
    """
    target = check_output_path(path, overwrite)
    try:
        tmp = _make_temp(target)
    except OSError as exc:
        _raise_storage(exc, target, needed, any_kind=True)
        raise
    try:
        try:
            yield tmp
            _fsync_path(tmp)
        except OSError as exc:
            _raise_storage(exc, target, needed, any_kind=False, tmp=tmp)
            raise
        try:
            _commit(tmp, target, overwrite)
        except OSError as exc:
            _raise_storage(exc, target, needed, any_kind=True, tmp=tmp)
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def _raise_storage(
    exc: OSError, target: Path, needed: int | None, any_kind: bool, tmp: Path | None = None
) -> None:
    """Raise a :class:`StorageError` for a foreseeable storage failure (a full disk only, unless
    ``any_kind``); return for any other error. The temporary file ``tmp`` is removed first, so
    that the free space said is the space there is."""
    if isinstance(exc, DwgfError):
        return
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()
    message = storage_message(exc, target, needed)
    if message is not None and (any_kind or message.startswith(FULL_MESSAGE_START)):
        raise StorageError(message) from exc
