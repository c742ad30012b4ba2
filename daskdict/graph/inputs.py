"""What a concept graph is fit on: per-layer codes as CSR matrices, checked once at the boundary.

Also the small helpers the estimator's tables share (:func:`table`, :func:`nanmedian`).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import sparse

from daskdict.errors import InvalidInputError
from daskdict.learn.coding import codes_to_csr
from daskdict.learn.dictionary import Codes


def as_code_matrix(codes: Any, what: str = "codes") -> sp.csr_matrix:
    """One layer's codes as a CSR matrix of shape (n_samples, n_concepts), float64.

    Parameters
    ----------
    codes : daskdict.Codes, scipy.sparse matrix or array, sparse.SparseArray or ndarray
        Codes of shape (n_samples, n_concepts); zeros are inactive concepts.
    what : str
        How error messages name the input.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_concepts)
        Sorted indices, no explicit zeros, no duplicates.

    Raises
    ------
    InvalidInputError
        For another type, a shape that is not 2-D and non-empty, or NaN/inf values.
    """
    if isinstance(codes, Codes):
        matrix = codes_to_csr(codes).astype(np.float64)
    elif sp.issparse(codes):
        matrix = sp.csr_matrix(codes)
    elif isinstance(codes, sparse.SparseArray | np.ndarray):
        if codes.ndim != 2:
            raise InvalidInputError(
                f"Expected {what} to be 2-D (n_samples, n_concepts). Got shape {codes.shape}.")
        if codes.dtype.kind not in "biuf":
            raise InvalidInputError(f"Expected {what} to hold numbers. Got dtype {codes.dtype}.")
        matrix = sp.csr_matrix(codes.to_scipy_sparse() if isinstance(codes, sparse.SparseArray)
                               else codes)
    else:
        raise InvalidInputError(
            f"Expected {what} to be daskdict.Codes, a scipy.sparse matrix, a sparse.COO or a "
            f"2-D NumPy array. Got {type(codes).__name__}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InvalidInputError(f"Expected non-empty {what}. Got shape {matrix.shape}.")
    if matrix.dtype.kind not in "biuf":
        raise InvalidInputError(f"Expected {what} to hold numbers. Got dtype {matrix.dtype}.")
    matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix.data).all():
        raise InvalidInputError(f"{what} holds NaN or inf values; repair them first.")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def as_layers(codes: Any) -> list[sp.csr_matrix]:
    """Per-layer codes (a sequence, layer order) as CSR matrices with the same samples.

    Parameters
    ----------
    codes : sequence of codes, each of shape (n_samples, n_concepts[l])
        At least two layers; each as :func:`as_code_matrix` takes it.

    Returns
    -------
    list of scipy.sparse.csr_matrix of shape (n_samples, n_concepts[l])
    """
    if isinstance(codes, str | bytes | os.PathLike) or not isinstance(codes, Sequence):
        raise InvalidInputError(
            "Expected codes to be a list of per-layer codes (daskdict.Codes or sparse "
            f"matrices) in layer order. Got {type(codes).__name__}.")
    if len(codes) < 2:
        raise InvalidInputError(
            f"Expected codes of at least 2 layers (a graph links adjacent layers). Got "
            f"{len(codes)}.")
    layers = [as_code_matrix(c, f"the codes of layer {i}") for i, c in enumerate(codes)]
    for i, layer in enumerate(layers[1:], start=1):
        if layer.shape[0] != layers[0].shape[0]:
            raise InvalidInputError(
                f"Expected every layer's codes to have the same number of samples. Layer 0 has "
                f"{layers[0].shape[0]}, layer {i} has {layer.shape[0]}.")
    return layers


def layer_fingerprint(matrix: sp.csr_matrix) -> int:
    """CRC32 of a layer's sparsity pattern and values (a resumed fit must see the same)."""
    digest = zlib.crc32(np.ascontiguousarray(matrix.indptr, dtype=np.int64))
    digest = zlib.crc32(np.ascontiguousarray(matrix.indices, dtype=np.int64), digest)
    return zlib.crc32(np.ascontiguousarray(matrix.data, dtype=np.float64), digest)


def mean_active_value(layer: sp.csr_matrix) -> np.ndarray:
    """Each concept's mean non-zero code, shape (n_concepts,); 0 for a concept never active."""
    counts = np.bincount(layer.indices, minlength=layer.shape[1])
    sums = np.bincount(layer.indices, weights=layer.data, minlength=layer.shape[1])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def input_scale(layer: sp.csr_matrix) -> np.ndarray:
    """Each concept's mean absolute non-zero code, shape (n_concepts,); 1 for one never active.

    The unit of :func:`model_inputs`: a concept enters the models as ``|x| / scale``, so its
    average active input is 1 whatever the dictionary's scale, as a binarised input is.
    """
    counts = np.bincount(layer.indices, minlength=layer.shape[1])
    sums = np.bincount(layer.indices, weights=np.abs(layer.data), minlength=layer.shape[1])
    return np.where((counts > 0) & (sums > 0), sums / np.maximum(counts, 1), 1.0)


def model_inputs(layer: sp.csr_matrix, scale: np.ndarray, binarize: bool) -> sp.csr_matrix:
    """What the logistic models see of a layer's codes, shape (n_samples, n_concepts).

    Parameters
    ----------
    layer : scipy.sparse.csr_matrix of shape (n_samples, n_concepts)
        Codes as :func:`as_code_matrix` returns them (no explicit zeros).
    scale : ndarray of shape (n_concepts,)
        The concepts' :func:`input_scale` from the codes the graph was fit on.
    binarize : bool
        Use ``x != 0`` (the support) instead of ``|x| / scale``.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_concepts), float64, non-negative
        An active concept is positive, an inactive one zero. The sign of a code is dropped:
        the targets are activities (``x != 0``), and a parent's positive and negative codes
        both say it is active; as signed inputs of a linear model they would cancel.
    """
    inputs = layer.copy()
    inputs.data = (np.ones_like(inputs.data) if binarize
                   else np.abs(inputs.data) / scale[inputs.indices])
    return inputs


def table(columns: dict[str, np.ndarray]):
    """A pandas DataFrame when pandas is installed, else the dict of column arrays."""
    try:
        import pandas as pd
    except ImportError:
        return columns
    return pd.DataFrame(columns)


def nanmedian(values: np.ndarray) -> float:
    """The median of the non-NaN values (NaN when there are none, without a warning)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")
