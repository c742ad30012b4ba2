"""Exceptions raised by daskdict.

Every error a user can cause by passing bad input derives from :class:`DaskdictError`, and also
from the built-in exception a Python user would expect (``ValueError``, ``FileNotFoundError``…),
so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class DaskdictError(Exception):
    """Base class of daskdict's own errors."""


class InvalidInputError(DaskdictError, ValueError):
    """Input data or parameters that cannot be used (NaN rows, wrong shape, k > d, …)."""


class StoreNotFoundError(DaskdictError, FileNotFoundError):
    """A path, store, layer or array that does not exist."""


class CorruptChunkError(DaskdictError, OSError):
    """A chunk of a Zarr array that cannot be read or decoded."""


class OutputNotWritableError(DaskdictError, PermissionError):
    """An output path (dictionary, codes, checkpoint, store) that cannot be written."""


class CheckpointMismatchError(DaskdictError, ValueError):
    """A checkpoint written by a different fit (other data or parameters)."""
