"""Exceptions raised by dwgf-sci.

Every error a user can cause by passing bad input derives from :class:`DwgfError`, so scripts and
the CLI can tell user mistakes from bugs. Each one also derives from the closest built-in exception
(``ValueError``, ``TypeError``, ``FileNotFoundError``, ``FileExistsError``) so generic handlers keep
working.
"""

from __future__ import annotations


class DwgfError(Exception):
    """Base class of every error caused by bad input or configuration."""


class ShapeError(DwgfError, ValueError):
    """A tensor or array has the wrong number of dimensions or the wrong size."""


class InvalidDataError(DwgfError, ValueError):
    """Data hold NaN/Inf values, the wrong dtype, or values outside their valid range."""


class OperatorMismatchError(DwgfError, ValueError):
    """An image or measurement does not fit the forward operator it is used with."""


class OperatorTypeError(DwgfError, TypeError):
    """Something that is not a forward operator (a deepinv ``Physics``) was given as one."""


class FileFormatError(DwgfError, ValueError):
    """A file is missing, corrupt, or lacks the HDU, dataset or key that was asked for."""


class OutputExistsError(DwgfError, FileExistsError):
    """An output file exists already and ``overwrite`` was not requested."""


class ConfigError(DwgfError, ValueError):
    """An operator spec, preset or option is unknown or has an invalid value."""


class StorageError(DwgfError, OSError):
    """An output cannot be stored: its folder is not writable, a name is too long for the file
    system, or the disk is full."""
