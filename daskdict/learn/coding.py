"""Coding rows over a dictionary: validation of rows, the Gram matrix, correlations and codes.

Words used for groups of rows throughout :mod:`daskdict.learn`:

* a *chunk* is a Zarr (or dask) chunk of rows, as stored;
* a *share* is the rows one worker process codes in an iteration (see
  :mod:`daskdict.learn.shares`);
* a *block* is the rows coded and summarised together by one call of :func:`code_block` (and
  of the numba statistics kernel); a thread takes one block at a time;
* a *batch* is the at most :data:`CODE_ROWS` rows of a block whose correlations one GEMM makes
  and one call of the numba coder codes.

Codes are fixed-width: ``indices`` (int32, ``-1`` padded) and ``values`` (``0`` padded), each of
shape (n_samples, n_nonzero); :func:`codes_to_csr` and :func:`codes_to_coo` are the one place
that turns them into sparse matrices.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import scipy.sparse
import sparse

from daskdict.errors import InvalidInputError
from daskdict.learn import kernels, nonnegative, reduced

# Fields of the int64 report of check_block, in order.
REPORT_FIELDS = ("n_rows", "n_zero_rows", "n_bad_rows", "first_bad_row", "crc32",
                 "n_huge_rows", "first_huge_row")


def unit_rows(rows: Any, dtype: Any = np.float64) -> np.ndarray:
    """``rows`` scaled to unit Euclidean norm (all-zero rows stay zero).

    Parameters
    ----------
    rows : array-like of shape (n_rows, n_features)
    dtype : dtype, default=float64

    Returns
    -------
    ndarray of shape (n_rows, n_features)
    """
    rows = np.asarray(rows, dtype=dtype)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def as_block(y: np.ndarray, dtype: Any = None) -> np.ndarray:
    """``y`` C-contiguous and aligned, in ``dtype``.

    Arrays unpickled on a Dask worker can sit at odd addresses, where numba's kernels and the
    GEMM run markedly slower.
    """
    return np.require(y, dtype=dtype, requirements=["C", "A"])


def sqnorm_limit(dtype: Any, rows_per_chunk: int) -> float:
    """The largest squared row norm that the computation in ``dtype`` can hold.

    A block's statistics add up to ``rows_per_chunk`` products of the size of a squared norm
    in ``dtype`` (see :func:`daskdict.learn.kernels.residual_statistics`), so each row's must
    stay below the largest finite value divided by that many.
    """
    return float(np.finfo(np.dtype(dtype)).max) / max(1, int(rows_per_chunk))


def check_block(y: np.ndarray, offset: int, limit: float = np.inf) -> np.ndarray:
    """Validation report of one chunk of rows, computed where the chunk lives.

    Parameters
    ----------
    y : ndarray of shape (n_rows, n_features)
    offset : int
        Index of ``y``'s first row in the data.
    limit : float, default=inf
        Rows whose squared norm (in float64) reaches it are counted as too large
        (see :func:`sqnorm_limit`).

    Returns
    -------
    ndarray of shape (7,), int64
        The :data:`REPORT_FIELDS`: rows, all-zero rows, rows with NaN or inf and the first of
        them, the CRC32 of the bytes (a fingerprint of the content), rows too large and the
        first of them (first rows are -1 when there are none). Bad rows are counted rather
        than raised on a worker so that the driver can report the total.
    """
    finite = np.isfinite(y).all(axis=1)
    bad = np.flatnonzero(~finite)
    with np.errstate(over="ignore", invalid="ignore"):
        sqnorms = np.einsum("ij,ij->i", y, y, dtype=np.float64)
    huge = np.flatnonzero(finite & ~(sqnorms < limit))
    digest = zlib.crc32(np.ascontiguousarray(y))
    return np.array([y.shape[0], int((~y.any(axis=1)).sum()), bad.size,
                     offset + int(bad[0]) if bad.size else -1, digest, huge.size,
                     offset + int(huge[0]) if huge.size else -1], dtype=np.int64)


def raise_for_bad_rows(n_bad: int, first_bad: int) -> None:
    """The error for NaN/inf rows, naming how many and the first."""
    if n_bad:
        raise InvalidInputError(
            f"The data holds {n_bad} row(s) with NaN or inf values, the first at row "
            f"{first_bad}. Remove or repair them before fitting or encoding."
        )


def raise_for_huge_rows(n_huge: int, first_huge: int, dtype: Any) -> None:
    """The error for rows whose squared norms would overflow ``dtype``."""
    if n_huge:
        name = np.dtype(dtype).name
        raise InvalidInputError(
            f"The data holds {n_huge} row(s) with values so large that their squared norms "
            f"overflow {name} (the largest {name} is {np.finfo(name).max:.3g}), the first at "
            f"row {first_huge}. Rescale the data (e.g. divide by its largest norm) or use "
            "dtype='float64'."
        )


def raise_for_report(report: np.ndarray, dtype: Any) -> None:
    """Raise the error a :func:`check_block` report (or a sum of them) calls for, if any."""
    fields = dict(zip(REPORT_FIELDS, (int(v) for v in report), strict=True))
    raise_for_bad_rows(fields["n_bad_rows"], fields["first_bad_row"])
    raise_for_huge_rows(fields["n_huge_rows"], fields["first_huge_row"], dtype)


# Rows of the Gram matrix per product. Made in fixed row blocks everywhere, so that the threads
# of a worker can share the blocks out (see daskdict.learn.shares) and still make the same bits
# as one thread alone. Smaller blocks cost more: BLAS packs all atoms for every block.
GRAM_ROWS = 512


def gram_block(atoms: np.ndarray, gram: np.ndarray, start: int) -> None:
    """Rows ``start:start + GRAM_ROWS`` of ``atoms @ atoms.T``, written into ``gram``."""
    stop = start + GRAM_ROWS
    np.matmul(atoms[start:stop], atoms.T, out=gram[start:stop])


def gram_matrix(atoms: np.ndarray) -> np.ndarray:
    """``D D^T`` of atoms of shape (n_atoms, n_features); shape (n_atoms, n_atoms)."""
    atoms = as_block(atoms)
    gram = np.empty((atoms.shape[0], atoms.shape[0]), dtype=atoms.dtype)
    for start in range(0, atoms.shape[0], GRAM_ROWS):
        gram_block(atoms, gram, start)
    return gram


# The numba coders by key (see :func:`daskdict.learn.params.coder_key`): the signed ones, the
# non-negative ones under "<coder>-positive", and those of correlations from bfloat16 inputs
# under "<key>-bf16" (they take the rows and atoms too: see daskdict.learn.reduced).
CODERS = {**kernels.CODERS,
          **{f"{name}-positive": coder for name, coder in nonnegative.POSITIVE_CODERS.items()},
          **reduced.CODERS}

# Rows per batch (one GEMM, one call of the coder). The correlations of a batch stay in cache
# for the coder and their buffer is reused: a fresh (block rows x n_atoms) product per block
# spends much of the GEMM's time in page faults.
CODE_ROWS = 1024


def correlation_buffer(atoms: np.ndarray, dtype: Any, n_rows: int | None = None) -> np.ndarray:
    """Room for the correlations of one batch of at most ``n_rows`` (<= CODE_ROWS) rows."""
    n_rows = CODE_ROWS if n_rows is None else min(n_rows, CODE_ROWS)
    return np.empty((n_rows, atoms.shape[0]), dtype=np.result_type(dtype, atoms))


def batches(n_rows: int, offset: int | None = None) -> list[tuple[int, int, int]]:
    """The batches a block of ``n_rows`` rows is coded in: ``(start, stop, at)``, rows
    ``start:stop`` placed from row ``at`` of a GEMM.

    Without ``offset``, batches of CODE_ROWS rows from the block's start (``at`` = 0); with
    it, batches cut where the data's index ``offset + i`` is a multiple of CODE_ROWS, so that
    row i sits at ``(offset + i) % CODE_ROWS`` (see :func:`code_block`).
    """
    if offset is None or n_rows == 0:
        return [(start, min(start + CODE_ROWS, n_rows), 0)
                for start in range(0, n_rows, CODE_ROWS)]
    at = offset % CODE_ROWS
    first = min(n_rows, CODE_ROWS - at)
    return [(0, first, at)] + [(start, min(start + CODE_ROWS, n_rows), 0)
                               for start in range(first, n_rows, CODE_ROWS)]


def code_block(y: np.ndarray, atoms: np.ndarray, gram: np.ndarray, n_nonzero: int, tol: float,
               coder: str, buffer: np.ndarray | None = None, exact: bool = False,
               offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse codes of a block: correlations by GEMM, then the numba coder, batch by batch.

    Parameters
    ----------
    y : ndarray of shape (n_rows, n_features)
    atoms : ndarray of shape (n_atoms, n_features)
    gram : ndarray of shape (n_atoms, n_atoms)
    n_nonzero : int
    tol : float
    coder : {"omp", "mp", "omp-positive", "omp-bf16", "omp-positive-bf16"}
        A key of :data:`CODERS`; a ``-bf16`` coder computes the correlations from bfloat16
        inputs (needs torch) and settles every choice at float32 precision. ``"omp@cuda"``
        (or ``"omp-positive@cuda:1"``, ...) codes on that PyTorch device instead (see
        :mod:`daskdict.learn.device_coder`).
    buffer : ndarray of shape (CODE_ROWS, n_atoms), optional
        Where the correlations of a batch go (a task coding many blocks passes its own,
        instead of faulting in a new one each time).
    exact : bool, default=False
        Code every row in a GEMM of CODE_ROWS rows, at the place ``(offset + i) % CODE_ROWS``
        that its index in the data gives it (the block's first and last batches padded with
        zero rows): BLAS then takes the same path for every row, and a row's code is the
        same, bit for bit, however the data is cut into blocks. Both matter: a single row
        would otherwise go through a matrix-vector product that sums in another order, and
        some GEMM kernels (OpenBLAS's for AVX2, for one) sum a row in an order that depends
        on its place in the matrix. The fit leaves it off: it codes blocks of fixed rows, and
        the padding would cost up to two GEMMs per block.
    offset : int, default=0
        Index in the data of ``y``'s first row (for ``exact``).

    Returns
    -------
    indices : ndarray of shape (n_rows, n_nonzero), int32, -1 padded
    values : ndarray of shape (n_rows, n_nonzero)
    """
    n_rows = y.shape[0]
    atoms, gram = as_block(atoms), as_block(gram)
    name, _, device = coder.partition("@")
    if device:  # the device coder batches the rows itself
        from daskdict.learn import device_coder, devices

        return device_coder.device_batch_omp(y, atoms, gram, n_nonzero, tol,
                                             device=devices.worker_device(device),
                                             positive=name == "omp-positive")
    indices = np.empty((n_rows, n_nonzero), dtype=np.int32)
    if buffer is None:
        buffer = correlation_buffer(atoms, y.dtype, None if exact else n_rows)
    values = np.empty((n_rows, n_nonzero), dtype=buffer.dtype)
    bounds = reduced.rounding(atoms) if coder in reduced.CODERS else None
    for start, stop, at in batches(n_rows, offset if exact else None):
        batch = rows = y[start:stop]
        if exact and (at or stop - start < CODE_ROWS):
            rows = np.zeros((CODE_ROWS, y.shape[1]), dtype=y.dtype)
            rows[at:at + stop - start] = batch
        product = buffer[:rows.shape[0]]
        corr = product[at:at + stop - start]
        sqnorms = np.einsum("ij,ij->i", batch, batch)
        if coder in reduced.CODERS:
            reduced.correlations(rows, atoms, product)
            indices[start:stop], values[start:stop] = CODERS[coder](
                corr, gram, sqnorms, batch, atoms, n_nonzero, tol, bounds)
            continue
        np.matmul(rows, atoms.T, out=product)
        indices[start:stop], values[start:stop] = CODERS[coder](
            corr, gram, sqnorms, n_nonzero, tol)
    return indices, values


def level_bounds(level_sizes: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each level's atoms in a dictionary numbered level by level."""
    stops = np.cumsum(level_sizes).tolist()
    return list(zip([0, *stops[:-1]], stops, strict=True))


def level_grams(atoms: np.ndarray, level_sizes: list[int]) -> list[np.ndarray]:
    """The Gram matrix of each level's atoms (see :func:`gram_matrix`)."""
    return [gram_matrix(atoms[start:stop]) for start, stop in level_bounds(level_sizes)]


def code_levels(y: np.ndarray, atoms: np.ndarray, grams: list[np.ndarray],
                level_sizes: list[int], n_nonzeros: list[int], tol: float, coder: str,
                exact: bool = False, offset: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of a block over a dictionary with levels: each level codes what the coarser
    ones leave.

    Parameters
    ----------
    y : ndarray of shape (n_rows, n_features)
    atoms : ndarray of shape (n_atoms, n_features)
        All levels' atoms, level by level (``level_sizes`` of them each).
    grams : list of ndarray of shape (level_size, level_size)
        Each level's Gram matrix.
    level_sizes, n_nonzeros : lists of int
        Atoms and non-zeros per level.
    tol, coder, exact, offset :
        As for :func:`code_block`, applied at each level.

    Returns
    -------
    indices : ndarray of shape (n_rows, sum(n_nonzeros)), int32
        Atom indices into ``atoms`` (level by level), ``-1`` padded.
    values : ndarray of shape (n_rows, sum(n_nonzeros))
    residual : ndarray of shape (n_rows, n_features)
        ``y`` minus the reconstruction of all levels.
    """
    residual = np.array(y, dtype=atoms.dtype, order="C")
    indices, values = [], []
    for (start, stop), gram, n_nonzero in zip(level_bounds(level_sizes), grams, n_nonzeros,
                                               strict=True):
        level_atoms = as_block(atoms[start:stop])
        level_indices, level_values = code_block(residual, level_atoms, gram, n_nonzero, tol,
                                                 coder, exact=exact, offset=offset)
        residual -= kernels.codes_times_atoms(level_indices, level_values, level_atoms)
        indices.append(np.where(level_indices >= 0, level_indices + start, -1).astype(np.int32))
        values.append(level_values)
    return np.hstack(indices), np.hstack(values), residual


# Names of the statistics of kernels.residual_statistics, in order.
STATISTICS = ("restricted", "coef_sq", "usage", "sums", "row_sum", "worst_err", "worst_rows")


def code_and_summarise(y: np.ndarray, atoms: np.ndarray, gram: np.ndarray, n_nonzero: int,
                       tol: float, coder: str, n_worst: int, buffer: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Code a block and compute its iteration statistics.

    Returns
    -------
    y : ndarray of shape (n_rows, n_features)
        The block in the atoms' dtype.
    indices, values : ndarrays of shape (n_rows, n_nonzero)
    statistics : dict
        :data:`STATISTICS` (see :func:`daskdict.learn.kernels.residual_statistics`).
    """
    y, atoms = as_block(y, atoms.dtype), as_block(atoms)
    indices, values = code_block(y, atoms, gram, n_nonzero, tol, coder, buffer)
    stats = kernels.residual_statistics(y, atoms, indices, values, n_worst)
    return y, indices, values, dict(zip(STATISTICS, stats, strict=True))


def block_statistics(y: np.ndarray, atoms: np.ndarray, gram: np.ndarray, n_nonzero: int,
                     tol: float, coder: str, n_worst: int,
                     buffer: np.ndarray | None = None, keep_codes: bool = False) -> dict:
    """The iteration statistics of a block (see :func:`code_and_summarise`).

    With ``keep_codes``, the statistics also hold ``"codes"``: the block's ``(indices,
    values)``, from which the code Gram matrix of the method of optimal directions is added up
    in block order (see :func:`daskdict.learn.shares.accumulate`).
    """
    _, indices, values, stats = code_and_summarise(y, atoms, gram, n_nonzero, tol, coder,
                                                   n_worst, buffer)
    if keep_codes:
        stats["codes"] = (indices, values)
    return stats


def _codes_arrays(codes: Any, values: Any, n_atoms: int | None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    if values is None:  # a Codes object (its arrays may be dask arrays)
        codes, values, n_atoms = codes.indices, codes.values, codes.n_atoms
    if n_atoms is None:
        raise InvalidInputError("Give n_atoms with indices and values.")
    indices, values = np.asarray(codes), np.asarray(values)
    if indices.shape != values.shape or indices.ndim != 2:
        raise InvalidInputError(
            f"Expected indices and values of the same 2-D shape. Got {indices.shape} and "
            f"{values.shape}.")
    return indices, values, int(n_atoms)


def _nonzeros(indices: np.ndarray, values: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, atom and value of every non-zero entry, in row order."""
    keep = (indices >= 0) & (values != 0)
    rows = np.broadcast_to(np.arange(indices.shape[0])[:, None], indices.shape)[keep]
    return rows, indices[keep], values[keep]


def codes_to_csr(codes: Any, values: Any = None, n_atoms: int | None = None
                 ) -> scipy.sparse.csr_matrix:
    """Fixed-width codes as a SciPy CSR matrix of shape (n_samples, n_atoms).

    Parameters
    ----------
    codes : Codes, or ndarray of shape (n_samples, n_nonzero)
        A :class:`~daskdict.learn.dictionary.Codes`, or the ``indices`` (-1 padded).
    values : ndarray of shape (n_samples, n_nonzero), optional
        The coefficients, when ``codes`` is the indices.
    n_atoms : int, optional
        The number of atoms (columns), when ``codes`` is the indices.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_atoms)
    """
    indices, values, n_atoms = _codes_arrays(codes, values, n_atoms)
    rows, cols, vals = _nonzeros(indices, values)
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(indices.shape[0], n_atoms))


def codes_to_coo(codes: Any, values: Any = None, n_atoms: int | None = None) -> sparse.COO:
    """Fixed-width codes as a ``sparse.COO`` matrix of shape (n_samples, n_atoms).

    Parameters are those of :func:`codes_to_csr`.
    """
    indices, values, n_atoms = _codes_arrays(codes, values, n_atoms)
    rows, cols, vals = _nonzeros(indices, values)
    return sparse.COO(np.stack([rows, cols]), vals, shape=(indices.shape[0], n_atoms))
