"""Centred fits: the rows minus their mean, as the fit's dask graph and its readers see them."""

from __future__ import annotations

from typing import Any

import numpy as np

from daskdict.compute.runtime import Runtime

__all__ = ["CenteredRows", "centered_rows"]


class CenteredRows:
    """A reader of row ranges (``reader[start:stop]``) that subtracts a mean from the rows
    another reader returns; what the workers of a centred fit read their shares through."""

    def __init__(self, reader: Any, mean: np.ndarray, dtype: str):
        self.reader, self.mean, self.dtype = reader, mean.astype(dtype), np.dtype(dtype)
        self.shape = reader.shape

    def __getitem__(self, rows: slice) -> np.ndarray:
        return (np.asarray(self.reader[rows], dtype=self.dtype) - self.mean).astype(
            self.dtype, copy=False)


def centered_rows(data: Any, reader: Any, rt: Runtime, dtype: str) -> tuple[Any, Any, np.ndarray]:
    """The rows minus their mean (one pass to compute it).

    Parameters
    ----------
    data : dask array of shape (n_samples, n_features)
    reader : ndarray, reader of row ranges, or None
        What the fit's shares read (see :func:`daskdict.io.reads.open_rows`).
    rt : Runtime
    dtype : str
        The fit's dtype.

    Returns
    -------
    centred : dask array of shape (n_samples, n_features), in ``dtype``
    reader : ndarray (a centred copy of in-memory rows), CenteredRows, or None
    mean : ndarray of shape (n_features,), float64
    """
    (mean,) = rt.compute(data.mean(axis=0, dtype=np.float64))
    mean = np.asarray(mean, dtype=np.float64)
    centred = (data - mean.astype(dtype)).astype(dtype)
    if isinstance(reader, np.ndarray):
        # the same rounding as the graph's and the shares' rows, and no float64 copy
        reader = np.subtract(reader, mean.astype(dtype), dtype=dtype)
    elif reader is not None:
        reader = CenteredRows(reader, mean, dtype)
    return centred, reader, mean
