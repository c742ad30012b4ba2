"""K-SVD out of core: each iteration is one Dask graph over the row chunks of the data.

One iteration (``update="approx"``, the default) reads every chunk once. Per chunk, a task
computes the correlations ``Y_b D^T`` (GEMM), codes the rows (Batch-OMP or matching pursuit,
numba), and sums the restricted residual products ``sum_i r_i x_ij`` of every atom, the squared
coefficients, usage counts, error sums and the worst-represented rows. Zarr and NumPy data are
cut into one equal share per worker process (see ``share_spans``); the threads of a worker code
its share together, piece by piece (see ``share_pieces``), so the (n_atoms x n_features) sums
leave each worker once; a dask array gets one task per block and a tree reduction. The driver
then updates all atoms at once: for OMP codes ``E_w d_j = x_wj`` (the residual is orthogonal to
the chosen atoms), so ``E_w^T x_wj`` is one power step towards the leading right singular vector
of the restricted residual ``E_w`` from the current atom (approximate K-SVD, Rubinstein et al.
2008), with all atoms updated from the state at the iteration's start.

``update="ksvd"`` is textbook K-SVD (Aharon, Elad & Bruckstein 2006): each atom and its
coefficients are replaced by the leading singular pair of the restricted residual, in batches of
``atom_batch_size`` atoms (Jacobi inside a batch, Gauss–Seidel across batches). It needs all rows of
an atom's restricted residual at once, so it holds all the data in one task (a NumPy array, or
a store or dask array of one chunk).

Unused atoms (fewer than 4 users) and near-duplicates (``|d_i . d_j| > 0.99``) are replaced by the
worst-represented samples, as the K-SVD toolbox's ``clearDictionary`` does (at most
``n_candidates(n_atoms)`` per iteration).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import scipy.linalg.blas
import zarr

from daskdict._version import __version__
from daskdict.compute.runtime import Runtime, n_cores, release_memory, runtime
from daskdict.errors import CheckpointMismatchError, InvalidInputError
from daskdict.io.store import (
    atomic_group,
    check_writable,
    open_rows,
    recover_replaced,
)
from daskdict.learn import kernels as _kernels

# K-SVD toolbox (clearDictionary): atoms used by fewer samples, or closer than this to another
# atom, are replaced.
MIN_ATOM_USAGE = 4
MAX_COHERENCE = 0.99
# Candidates for replacement kept per iteration: every task returns its worst-represented rows
# (n_features floats each), and keeping n_atoms of them would double what each task sends.
# Atoms beyond this many are replaced in the following iterations.
MIN_CANDIDATES = 256


def n_candidates(n_atoms: int) -> int:
    """Worst-represented rows kept per iteration for replacing atoms."""
    return min(n_atoms, max(MIN_CANDIDATES, n_atoms // 8))
_CODERS = ("omp", "mp")
_UPDATES = ("approx", "ksvd")
_INITS = ("data", "kmeans++", "random")


@dataclass(frozen=True)
class FitParams:
    """Hyper-parameters of a fit, validated; stored in models and checkpoints."""

    n_atoms: int
    n_nonzero: int
    n_iter: int
    coder: str = "omp"
    tol: float = 0.0
    update: str = "approx"
    atom_batch_size: int | None = None
    shuffle_atoms: bool = True
    replace_atoms: bool = True
    init: str = "data"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def validate_params(n_atoms, n_nonzero, n_iter, coder, tol, update, atom_batch_size,
                    shuffle_atoms, replace_atoms, init, dtype, n_samples, n_features) -> FitParams:
    """Check every hyper-parameter against the data's shape; raise naming the problem."""
    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"Expected {name} to be a positive integer. Got {value!r}.")
        return int(value)

    n_atoms = positive_int("n_atoms", n_atoms)
    n_nonzero = positive_int("n_nonzero", n_nonzero)
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
        raise InvalidInputError(f"Expected n_iter to be a non-negative integer. Got {n_iter!r}.")
    if n_nonzero > n_features:
        raise InvalidInputError(
            f"n_nonzero={n_nonzero} exceeds the number of features ({n_features}): a sample "
            f"cannot use more than {n_features} linearly independent atoms."
        )
    if n_nonzero > n_atoms:
        raise InvalidInputError(f"n_nonzero={n_nonzero} exceeds n_atoms={n_atoms}.")
    if n_atoms > n_samples:
        raise InvalidInputError(
            f"n_atoms={n_atoms} is larger than the number of samples ({n_samples}); a dictionary "
            "needs at least as many samples as atoms."
        )
    if coder not in _CODERS:
        raise InvalidInputError(f"Expected coder in {_CODERS}. Got {coder!r}.")
    if update not in _UPDATES:
        raise InvalidInputError(f"Expected update in {_UPDATES}. Got {update!r}.")
    if not (isinstance(tol, (int, float)) and 0.0 <= tol < 1.0):
        raise InvalidInputError(f"Expected 0 <= tol < 1 (relative residual). Got {tol!r}.")
    if atom_batch_size is not None:
        atom_batch_size = positive_int("atom_batch_size", atom_batch_size)
    if isinstance(init, str) and init not in _INITS:
        raise InvalidInputError(f"Expected init in {_INITS} or an array. Got {init!r}.")
    if not isinstance(init, str) and np.shape(init) != (n_atoms, n_features):
        raise InvalidInputError(
            f"Expected init of shape ({n_atoms}, {n_features}). Got {np.shape(init)}.")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise InvalidInputError(f"Expected dtype float32 or float64. Got {dtype}.")
    return FitParams(n_atoms, n_nonzero, int(n_iter), coder, float(tol), update, atom_batch_size,
                     bool(shuffle_atoms), bool(replace_atoms),
                     init if isinstance(init, str) else "array", dtype.name)


def base_seed(random_state) -> int:
    """One integer from which every random draw of a fit is derived (so resumes agree)."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % 2**63)
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31))
    raise InvalidInputError(
        f"Expected random_state None, an int or a Generator. Got {random_state!r}.")


def iteration_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of one iteration (iteration 0 is the initialisation)."""
    return np.random.default_rng([seed, iteration])


# --------------------------------------------------------------------------- chunk tasks


def _as_block(y: np.ndarray, dtype=None) -> np.ndarray:
    """``y`` C-contiguous and aligned, in ``dtype``.

    Arrays unpickled on a Dask worker can sit at odd addresses (the atoms arrived at an address
    that was 31 mod 64); numba's kernels and the GEMM ran 20 % slower on them, measured.
    """
    return np.require(y, dtype=dtype, requirements=["C", "A"])


def check_block(y: np.ndarray, offset: int) -> np.ndarray:
    """Validation report of one block, computed where the block lives.

    Returns int64 ``[n_rows, n_zero_rows, n_bad_rows, first_bad_row, crc32]``: rows with NaN or
    inf are counted (``first_bad_row`` is -1 when there are none) rather than raised on a worker,
    so the driver can report the total; the CRC32 of the block's bytes fingerprints the content.
    """
    finite = np.isfinite(y).all(axis=1)
    bad = np.flatnonzero(~finite)
    first_bad = offset + int(bad[0]) if bad.size else -1
    digest = zlib.crc32(np.ascontiguousarray(y))
    return np.array([y.shape[0], int((~y.any(axis=1)).sum()), bad.size, first_bad, digest],
                    dtype=np.int64)


def raise_for_bad_rows(n_bad: int, first_bad: int) -> None:
    """The error for NaN/inf rows, naming how many and the first."""
    if n_bad:
        raise InvalidInputError(
            f"The data holds {n_bad} row(s) with NaN or inf values, the first at row "
            f"{first_bad}. Remove or repair them before fitting or encoding."
        )


# Rows of the Gram matrix per product. Made in fixed row blocks everywhere, so that the threads
# of a worker can share the blocks out (``_process_gram``) and still make the same bits as one
# thread alone. Blocks of 512 rows cost about what one product does (0.21 s against 0.18-0.24 s
# at K=3072, d=768, one thread; 256 rows cost up to 2x: BLAS packs all atoms for every block).
GRAM_ROWS = 512


def _gram_block(atoms: np.ndarray, gram: np.ndarray, start: int) -> None:
    stop = start + GRAM_ROWS
    np.matmul(atoms[start:stop], atoms.T, out=gram[start:stop])


def gram_matrix(atoms: np.ndarray) -> np.ndarray:
    """``D D^T``, shape (n_atoms, n_atoms)."""
    atoms = _as_block(atoms)
    gram = np.empty((atoms.shape[0], atoms.shape[0]), dtype=atoms.dtype)
    for start in range(0, atoms.shape[0], GRAM_ROWS):
        _gram_block(atoms, gram, start)
    return gram


# Rows coded per GEMM. The correlations of a sub-block stay in cache for the coder and their
# buffer is reused: a fresh (chunk rows x n_atoms) product per chunk spent a fifth of the GEMM's
# time in page faults, and 134 MB per task at d=768, K=3072.
CODE_ROWS = 1024


def code_block(y, atoms, gram, n_nonzero, tol, coder, buffer=None):
    """Sparse codes of one block: correlations by GEMM, then the numba coder, by sub-blocks.

    ``buffer``, optional, of shape (CODE_ROWS, n_atoms): where the correlations of a sub-block
    go (a task coding many blocks passes its own, instead of faulting in a new 12 MB one each
    time). Returns ``indices`` (int32, -1 padded) and ``values``, each of shape
    (n_rows, n_nonzero).
    """
    n_rows = y.shape[0]
    atoms, gram = _as_block(atoms), _as_block(gram)
    sqnorms = np.einsum("ij,ij->i", y, y)
    indices = np.empty((n_rows, n_nonzero), dtype=np.int32)
    corr = _correlation_buffer(atoms, y.dtype, n_rows) if buffer is None else buffer
    values = np.empty((n_rows, n_nonzero), dtype=corr.dtype)
    for start in range(0, n_rows, CODE_ROWS):
        stop = min(start + CODE_ROWS, n_rows)
        part = corr[:stop - start]
        np.matmul(y[start:stop], atoms.T, out=part)
        indices[start:stop], values[start:stop] = _kernels.CODERS[coder](
            part, gram, sqnorms[start:stop], n_nonzero, tol)
    return indices, values


_STATISTICS = ("restricted", "coef_sq", "usage", "sums", "row_sum", "worst_err", "worst_rows")


def _correlation_buffer(atoms, dtype, n_rows=CODE_ROWS):
    """Room for the correlations of one sub-block of at most ``n_rows`` (<= CODE_ROWS) rows."""
    return np.empty((min(n_rows, CODE_ROWS), atoms.shape[0]), dtype=np.result_type(dtype, atoms))


def _code_and_summarise(y, atoms, gram, n_nonzero, tol, coder, n_worst, buffer=None):
    """Code a block and compute its iteration statistics (see ``residual_statistics``)."""
    y, atoms = _as_block(y, atoms.dtype), _as_block(atoms)
    indices, values = code_block(y, atoms, gram, n_nonzero, tol, coder, buffer)
    stats = _kernels.residual_statistics(y, atoms, indices, values, n_worst)
    return y, indices, values, dict(zip(_STATISTICS, stats, strict=True))


def _chunk_statistics(y, atoms, gram, n_nonzero, tol, coder, n_worst, buffer=None):
    return _code_and_summarise(y, atoms, gram, n_nonzero, tol, coder, n_worst, buffer)[3]


_SUMMED = ("restricted", "coef_sq", "sums", "row_sum")


def _merge_statistics(parts, n_worst):
    """The statistics of several blocks or shares, added in order (float64 sums; the worst
    rows of all, the earlier first among equal errors). One part is added at a time: stacking
    eight shares' sums first took 150 MB more at K=3072, d=768."""
    total = None
    for part in parts:
        total = _accumulate(total, part, n_worst)
    return total


def share_spans(chunk_rows: tuple[int, ...], n_shares: int) -> list[list[tuple[int, int]]]:
    """Split the rows into ``n_shares`` contiguous shares of equal size, cut at chunk boundaries.

    Returns, per share, its *spans*: the ``(start, stop)`` row ranges it reads, each inside one
    stored chunk (a chunk on a share boundary is read in part by both shares).
    """
    bounds = np.concatenate([[0], np.cumsum(chunk_rows)])
    n_rows = int(bounds[-1])
    shares = np.linspace(0, n_rows, min(n_shares, n_rows) + 1).round().astype(int)
    out = []
    for start, stop in itertools.pairwise(shares):
        inner = bounds[(bounds > start) & (bounds < stop)]
        cuts = [int(start), *map(int, inner), int(stop)]
        out.append(list(itertools.pairwise(cuts)))
    return out


# The threads of a worker take a share's pieces in turn: its spans (up to a chunk each) and,
# towards its end, pieces that halve in size down to CODE_ROWS rows, so that the threads finish
# within about one small piece of each other whatever their speeds (equal shares per thread
# ended up to 1 s apart on a 2-core VM where one core ran 15 % slower than the other). The
# cut depends only on the spans, never on the number of threads. Each piece's statistics
# (n_atoms x n_features) are made and summed on their own, a few ms a piece: cutting the whole
# share into small pieces cost more than it balanced (measured).
TAIL_PIECES = (1, 1, 2, 4, 8)  # in CODE_ROWS, from the share's end


def share_pieces(spans: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The pieces a share is coded in: ``(span index, start, stop)``, in row order.

    The spans, cut where the last ``TAIL_PIECES`` pieces (counted from the share's end) begin.
    """
    end = spans[-1][1]
    cuts = end - CODE_ROWS * np.cumsum(TAIL_PIECES)
    pieces = []
    for index, (start, stop) in enumerate(spans):
        inner = sorted(int(c) for c in cuts if start < c < stop)
        pieces += [(index, a, b) for a, b in itertools.pairwise([start, *inner, stop])]
    return pieces


class _SharedGram:
    """A Gram matrix made by the threads that need it, each taking the next row block, as
    :func:`gram_matrix` makes it (the same bits): the first thread of an iteration no longer
    makes it alone while the others wait (0.15 s an iteration at d=768, K=3072)."""

    def __init__(self, atoms):
        self.atoms = _as_block(atoms)
        n_atoms = self.atoms.shape[0]
        self.gram = np.empty((n_atoms, n_atoms), dtype=self.atoms.dtype)
        self.starts = range(0, n_atoms, GRAM_ROWS)
        self.next_block = self.n_done = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def make(self) -> np.ndarray:
        """Make blocks until none is left; the matrix once every block is made."""
        while True:
            with self.changed:
                if self.next_block == len(self.starts) or self.error is not None:
                    break
                start = self.starts[self.next_block]
                self.next_block += 1
            try:
                _gram_block(self.atoms, self.gram, start)
            except BaseException as error:  # (MemoryError) the others must not wait forever
                with self.changed:
                    self.error = error
                    self.changed.notify_all()
                raise
            with self.changed:
                self.n_done += 1
                if self.n_done == len(self.starts):
                    self.changed.notify_all()
        with self.changed:
            self.changed.wait_for(
                lambda: self.n_done == len(self.starts) or self.error is not None)
            if self.error is not None:
                raise RuntimeError("another thread failed to make the Gram matrix") from self.error
        return self.gram


_GRAM_LOCK = threading.Lock()
_GRAM_CACHE: list = [None, None]  # [the atoms object, its _SharedGram]


def _process_gram(atoms: np.ndarray) -> np.ndarray:
    """The Gram matrix of ``atoms``, made once per process and dictionary.

    The tasks of one iteration that run in one process (threads of a worker, or of the
    in-process scheduler) receive the same atoms object; they make its Gram matrix together
    and share one copy in the CPU's cache instead of each making and streaming its own.
    """
    with _GRAM_LOCK:
        if _GRAM_CACHE[0] is not atoms or _GRAM_CACHE[1].error is not None:
            _GRAM_CACHE[:] = [None, None]  # free the last iteration's before making this one
            _GRAM_CACHE[:] = [atoms, _SharedGram(atoms)]
        shared = _GRAM_CACHE[1]
    return shared.make()


class _ShareWork:
    """The pieces of one share in one iteration, shared by the threads of a process coding it.

    Threads claim pieces in row order; each piece's statistics are folded into the share's
    total in piece order, whichever thread made them, so the sums (and the atoms) do not depend
    on how many threads took part or how fast each was. A span is read once, by the first
    thread that needs it, and dropped when its last piece is claimed.
    """

    def __init__(self, reader, spans, pieces):
        self.reader, self.spans, self.pieces = reader, spans, pieces
        self.lock = threading.Lock()
        self.next_piece = 0
        self.left = np.bincount([p[0] for p in pieces], minlength=len(spans)).tolist()
        self.read: dict[int, list] = {}  # span index -> [lock, rows or None]
        self.waiting: dict[int, dict] = {}  # piece index -> statistics not folded yet
        self.n_folded = 0
        self.total = None

    def claim(self):
        """The next piece: ``(piece index, its rows)``, or None when all are taken."""
        with self.lock:
            if self.next_piece == len(self.pieces):
                return None
            index = self.next_piece
            self.next_piece += 1
            span, start, stop = self.pieces[index]
            entry = self.read.setdefault(span, [threading.Lock(), None])
            self.left[span] -= 1
            if self.left[span] == 0:
                del self.read[span]  # the threads that use it hold it meanwhile
        with entry[0]:
            if entry[1] is None:
                begin, end = self.spans[span]
                entry[1] = self.reader[begin:end]
        offset = self.spans[span][0]
        return index, entry[1][start - offset:stop - offset]

    def fold(self, index, stats, n_worst):
        """Add a piece's statistics in piece order; the total once the last is in, else None."""
        with self.lock:
            self.waiting[index] = stats
            while self.n_folded in self.waiting:
                self.total = _accumulate(self.total, self.waiting.pop(self.n_folded), n_worst)
                self.n_folded += 1
            if self.n_folded < len(self.pieces):
                return None
            total, self.total = self.total, None  # handed over once
            return total


_SHARES_LOCK = threading.Lock()
_SHARES: dict[str, _ShareWork] = {}


def _clear_worker_state() -> None:
    """Drop this process's Gram matrix and unfinished shares."""
    with _GRAM_LOCK:
        _GRAM_CACHE[:] = [None, None]
    with _SHARES_LOCK:
        _SHARES.clear()


def _forget_worker_state(rt: Runtime) -> None:
    """Free the cached Gram matrices (47 MB each at 3072 atoms in float32), here and in the
    workers, once a fit ends, and any share left unfinished by an error; a worker lost
    meanwhile has nothing to free."""
    _clear_worker_state()
    if rt.client is not None:
        with contextlib.suppress(Exception):
            rt.client.run(_clear_worker_state)


def _share_statistics(reader, spans, token, atoms, n_nonzero, tol, coder, n_worst,
                      timings=None):
    """One of the tasks coding a share (the rows of ``spans``) in one iteration.

    Every thread of the worker runs one such task per share; all tasks with the same ``token``
    in one process code the share together, each taking the next piece until none is left.
    Returns the share's statistics from the task that folded the last piece, None from the
    others (also from one that starts after the share is done: the finished share stays
    registered, without its sums, until the fit ends). A task that runs alone (elsewhere after
    its worker was lost, or under the sync scheduler) codes the whole share and returns the
    same total. ``timings``, a list, receives
    ``(rows, seconds)`` of each piece this task coded (for :func:`daskdict.plan`).
    """
    with _SHARES_LOCK:
        work = _SHARES.get(token)
        if work is None:
            work = _SHARES[token] = _ShareWork(reader, spans, share_pieces(spans))
    gram = _process_gram(atoms)
    atoms = _as_block(atoms)
    buffer = _correlation_buffer(atoms, atoms.dtype)
    while (claimed := work.claim()) is not None:
        begin = time.perf_counter()
        index, rows = claimed
        stats = _chunk_statistics(rows, atoms, gram, n_nonzero, tol, coder, n_worst, buffer)
        del rows
        total = work.fold(index, stats, n_worst)
        release_memory()
        if timings is not None:
            _, start, stop = work.pieces[index]
            timings.append((stop - start, time.perf_counter() - begin))
        if total is not None:
            return total
    return None


def _accumulate(total, stats, n_worst):
    """Add one block's statistics to a running total (float64 sums, updated in place)."""
    if total is None:  # a copy: the total is updated in place, its first part must not be
        return {key: np.array(value, dtype=np.float64) if key in _SUMMED else value.copy()
                for key, value in stats.items()}
    for key in _SUMMED:
        total[key] += stats[key]
    total["usage"] += stats["usage"]
    err = np.concatenate([total["worst_err"], stats["worst_err"]])
    rows = np.concatenate([total["worst_rows"], stats["worst_rows"]])
    keep = np.argsort(-err, kind="stable")[:n_worst]
    total["worst_err"], total["worst_rows"] = err[keep], rows[keep]
    return total


# Statistics merged per task of the reduction tree (as many shares' as arrive at one worker).
MERGE_EVERY = 8


def _tree_reduce(parts, n_worst, split_every=MERGE_EVERY):
    """Merge statistics by a tree of tasks on the workers, in order, at least once: the driver
    receives one set (19 MB at K=3072, d=768), however many workers made them.

    The tree depends only on the number of parts, so its sums are the same every time.
    """
    while True:
        parts = [dask.delayed(_merge_statistics)(parts[i:i + split_every], n_worst)
                 for i in range(0, len(parts), split_every)]
        if len(parts) == 1:
            return parts[0]


def _share_total(*results):
    """A share's statistics, from the results of its tasks (the one that folded the last
    piece holds them; a share coded twice, elsewhere after a lost worker, has equal sums)."""
    for result in results:
        if result is not None:
            return result
    raise RuntimeError("no task of a share returned its statistics")


def _exact_ksvd_block(y, atoms, gram, n_nonzero, tol, coder, n_worst, order, batch_size):
    """Textbook K-SVD on a block holding all the data: code, then update atoms by batches."""
    y, indices, values, stats = _code_and_summarise(y, atoms, gram, n_nonzero, tol, coder,
                                                    n_worst)
    return stats, ksvd_update(y, atoms, indices, values, order, batch_size)


def ksvd_update(y, atoms, indices, values, order, batch_size):
    """Exact K-SVD dictionary update (in memory).

    For each atom j, in ``order`` and in batches of ``batch_size`` (each batch from the state at
    its start), the restricted residual ``E = Y_w - X_w D + x_wj d_j`` over the rows w using j
    is replaced by its leading singular pair: ``d_j = v``, ``x_wj = s u``, with the sign chosen
    so that ``d_j`` keeps its direction (``d_new . d_old >= 0``).

    Returns the new atoms, shape (n_atoms, n_features).
    """
    atoms = atoms.astype(np.float64, copy=True)
    y = y.astype(np.float64)
    values = values.astype(np.float64, copy=True)
    residual = y - _kernels.codes_times_atoms(indices, values, atoms)
    rows_of, slot_of = _users(indices, values, atoms.shape[0])
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        updates = []
        for j in batch:
            rows, slots = rows_of[j], slot_of[j]
            if rows.size == 0:
                continue
            coef = values[rows, slots]
            restricted = residual[rows] + np.outer(coef, atoms[j])
            u, s, vt = _leading_singular_pair(restricted)
            sign = -1.0 if vt @ atoms[j] < 0 else 1.0
            updates.append((j, rows, slots, coef, sign * vt, sign * s * u))
        for j, rows, slots, coef, atom, new_coef in updates:
            residual[rows] += np.outer(coef, atoms[j]) - np.outer(new_coef, atom)
            atoms[j] = atom
            values[rows, slots] = new_coef
    return atoms


def _users(indices, values, n_atoms):
    """For each atom, the rows using it and the slot of the atom in those rows' codes."""
    used = (indices >= 0) & (values != 0)
    rows, slots = np.nonzero(used)
    atom_ids = indices[rows, slots]
    order = np.argsort(atom_ids, kind="stable")
    bounds = np.searchsorted(atom_ids[order], np.arange(n_atoms + 1))
    rows_of = [rows[order[bounds[j]:bounds[j + 1]]] for j in range(n_atoms)]
    slot_of = [slots[order[bounds[j]:bounds[j + 1]]] for j in range(n_atoms)]
    return rows_of, slot_of


def _leading_singular_pair(matrix):
    """(u, s, v) of the largest singular value; falls back to an eigensolver if LAPACK fails."""
    try:
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        return u[:, 0], s[0], vt[0]
    except np.linalg.LinAlgError:  # gesdd occasionally fails to converge; eigh does not
        w, v = np.linalg.eigh(matrix.T @ matrix)
        vec = v[:, -1]
        s = float(np.sqrt(max(w[-1], 0.0)))
        u = matrix @ vec / s if s > 0 else np.zeros(matrix.shape[0])
        return u, s, vec


# --------------------------------------------------------------------------- driver


def approx_update(atoms: np.ndarray, stats: dict) -> np.ndarray:
    """All atoms from one power step: ``d_j ∝ E_w^T x_wj = sum r_i x_ij + d_j |x_j|^2``."""
    direction = stats["restricted"] + atoms * stats["coef_sq"][:, None]
    norms = np.linalg.norm(direction, axis=1)
    ok = norms > 0
    # in place (masked copies of the whole matrix took 40% of the time)
    np.divide(direction, norms[:, None], out=direction, where=ok[:, None])
    direction[~ok] = atoms[~ok]  # unused atoms stay as they were
    return direction


def _largest_coherence(single: np.ndarray) -> np.ndarray:
    """``max_{k != j} |d_j . d_k|`` for every atom j, shape (n_atoms,).

    From the upper triangle of the Gram matrix (``ssyrk``: half the work of the full product,
    0.05 s instead of 0.11 s at 3072 x 768): row j's largest entry off the diagonal is the
    larger of its row's and its column's in the triangle.
    """
    upper = scipy.linalg.blas.ssyrk(1.0, single.T, trans=1)  # (a Fortran view: no copy)
    np.abs(upper, out=upper)
    np.fill_diagonal(upper, 0.0)
    return np.maximum(upper.max(axis=0), upper.max(axis=1))


def replace_atoms(atoms: np.ndarray, stats: dict) -> tuple[np.ndarray, int]:
    """Replace unused and near-duplicate atoms by the worst-represented samples.

    Atoms are checked in order, each against the atoms as they are by then (earlier
    replacements included). Returns the atoms and how many were replaced.
    """
    atoms = atoms.copy()
    candidates = stats["worst_rows"][stats["worst_err"] > 0]
    # float32 is ample to compare coherences with 0.99, and twice as fast as float64
    single = np.ascontiguousarray(atoms, dtype=np.float32)
    coherence = _largest_coherence(single)
    replaced = 0
    for j in range(atoms.shape[0]):
        if stats["usage"][j] >= MIN_ATOM_USAGE and coherence[j] <= MAX_COHERENCE:
            continue
        if replaced >= len(candidates):
            break
        row = np.asarray(candidates[replaced], dtype=np.float64)
        atoms[j] = row / np.linalg.norm(row)
        before = np.abs(single @ single[j])
        single[j] = atoms[j]
        after = np.abs(single @ single[j])
        before[j] = after[j] = 0.0
        # an atom whose most coherent partner was the old atom j is measured again (with a
        # margin: the triangle and these products may round the same entry differently)
        again = np.flatnonzero((before >= coherence - 1e-4) & (after < before))
        np.maximum(coherence, after, out=coherence)
        coherence[j] = after.max()
        for k in again:
            column = np.abs(single @ single[k])
            column[k] = 0.0
            coherence[k] = column.max()
        replaced += 1
    return atoms, replaced


def _summary(stats: dict, n_rows: int, n_zero_rows: int, n_features: int) -> dict:
    residual_sq, y_sq, rel_sum, n_nonzero_rows, nnz = stats["sums"]
    mean = stats["row_sum"] / n_rows
    centred = y_sq - n_rows * float(mean @ mean)
    return {
        "relative_error": float(np.sqrt(residual_sq / y_sq)) if y_sq > 0 else 0.0,
        "fvu": float(residual_sq / centred) if centred > 0 else 0.0,
        "mean_relative_residual": float(rel_sum / n_nonzero_rows) if n_nonzero_rows else 0.0,
        "mean_l0": float(nnz / n_rows),
        "dead_atoms": int((stats["usage"] == 0).sum()),
    }


def initial_atoms(data, init, n_atoms: int, rng: np.random.Generator, dtype) -> np.ndarray:
    """Initial dictionary, unit rows, shape (n_atoms, n_features).

    ``"data"``: distinct random non-zero rows; ``"kmeans++"``: D²-sampling on a sample of rows
    (up to 20 per atom); ``"random"``: Gaussian; an array: used as given (normalised).
    """
    n_samples, n_features = data.shape
    if not isinstance(init, str):
        atoms = np.asarray(init, dtype=np.float64)
        if atoms.shape != (n_atoms, n_features):
            raise InvalidInputError(
                f"Expected init of shape ({n_atoms}, {n_features}). Got {atoms.shape}."
            )
        if not np.isfinite(atoms).all():
            raise InvalidInputError("The initial dictionary holds NaN or inf values.")
    elif init == "random":
        atoms = rng.standard_normal((n_atoms, n_features))
    else:
        n_draw = min(n_samples, n_atoms * (20 if init == "kmeans++" else 2))
        rows = np.sort(rng.choice(n_samples, size=n_draw, replace=False))
        sample = np.asarray(data[rows].compute(scheduler="sync"), dtype=np.float64)
        sample = sample[np.linalg.norm(sample, axis=1) > 0]
        if sample.shape[0] < n_atoms:
            raise InvalidInputError(
                f"Only {sample.shape[0]} non-zero rows were found for {n_atoms} atoms; the "
                "data has too few non-zero samples (or use init='random')."
            )
        sample /= np.linalg.norm(sample, axis=1, keepdims=True)
        if init == "data":
            atoms = sample[rng.permutation(sample.shape[0])[:n_atoms]]
        else:
            atoms = _kmeans_plus_plus(sample, n_atoms, rng)
    norms = np.linalg.norm(atoms, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInputError("The initial dictionary holds an all-zero atom.")
    return (atoms / norms).astype(dtype)


def _kmeans_plus_plus(sample, n_atoms, rng):
    """D² seeding with the sign-invariant distance 1 - (d . y)^2 of unit vectors."""
    chosen = [int(rng.integers(sample.shape[0]))]
    dist = 1.0 - (sample @ sample[chosen[0]]) ** 2
    for _ in range(1, n_atoms):
        p = np.clip(dist, 0, None)
        total = p.sum()
        nxt = int(rng.choice(sample.shape[0], p=p / total)) if total > 0 else int(
            rng.integers(sample.shape[0]))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - (sample @ sample[nxt]) ** 2)
    return sample[chosen]


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(data, description: dict) -> dict:
    return {"shape": list(data.shape), "dtype": str(data.dtype),
            "chunks": [list(c) for c in data.chunks][:1], **description}


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the state after an iteration as a new Zarr group, then swap it in atomically."""
    with atomic_group(path) as group:
        group.create_array("atoms", data=state["atoms"])
        group.attrs["daskdict_checkpoint"] = {k: v for k, v in state.items() if k != "atoms"}


def load_checkpoint(path: Path) -> dict | None:
    """The saved state, or None if there is no finished checkpoint at ``path``."""
    recover_replaced(path)
    if not (path / "zarr.json").exists():
        return None
    group = zarr.open_group(path, mode="r")
    state = dict(group.attrs["daskdict_checkpoint"])
    state["atoms"] = np.asarray(group["atoms"][...])
    return state


def _jsonable(value):
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------- public


def fit(
    source: Any,
    n_atoms: int | None = None,
    n_nonzero: int = 10,
    n_iter: int = 10,
    *,
    layer: str | None = None,
    coder: str = "omp",
    tol: float = 0.0,
    update: str = "approx",
    atom_batch_size: int | None = None,
    shuffle_atoms: bool = True,
    replace_atoms: bool = True,
    init: str | np.ndarray = "data",
    dtype: str | np.dtype = "float32",
    random_state: int | np.random.Generator | None = None,
    client: Any = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
):
    """Learn a K-SVD dictionary out of core.

    Parameters
    ----------
    source : str, path-like, zarr.Array, zarr.Group, dask array or ndarray
        Data of shape (n_samples, n_features): a path to a Zarr array, a path to an embedding
        store (see ``layer``), a Zarr array, a dask array chunked along rows, or a NumPy array.
        Rows of a store flagged in ``items/error`` (images ``embed`` could not read) are left
        out.
    n_atoms : int, optional
        Number of atoms; default ``4 * n_features`` (the seed's overcompleteness).
    n_nonzero : int, default=10
        Maximum number of atoms per sample.
    n_iter : int, default=10
        Number of K-SVD iterations.
    layer : str, optional
        Layer of an embedding store; default ``"final"`` (or the only layer).
    coder : {"omp", "mp"}, default="omp"
        Batch-OMP, or matching pursuit with a least-squares refit.
    tol : float, default=0.0
        Also stop coding a sample once its relative residual ``|y - xD| / |y|`` is at most
        ``tol``.
    update : {"approx", "ksvd"}, default="approx"
        ``"approx"``: one power step per atom from the iteration's codes, all atoms at once, one
        pass over the data. ``"ksvd"``: exact leading singular pairs of the restricted residuals
        (textbook K-SVD); the data must be a NumPy array, or a store or dask array of one
        chunk.
    atom_batch_size : int, optional
        For ``update="ksvd"``: atoms updated together from the same state (default: all).
        ``1`` is the sequential textbook update.
    shuffle_atoms : bool, default=True
        For ``update="ksvd"``: visit atoms in a random order each iteration.
    replace_atoms : bool, default=True
        Replace unused and near-duplicate atoms by the worst-represented samples.
    init : {"data", "kmeans++", "random"} or ndarray of shape (n_atoms, n_features)
        Initial dictionary.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the computation and the atoms.
    random_state : int, Generator or None
        Makes the fit reproducible.
    client : distributed.Client, a Dask cluster, "local", "threads", "sync" or None
        Where to compute; None starts a LocalCluster (closed afterwards) except for NumPy input,
        which is computed in this process. For SLURM, PBS and other batch systems pass a
        cluster from :func:`daskdict.cluster`.
    checkpoint : str or path-like, optional
        Zarr group where the state is saved atomically after every iteration. If it already
        holds the state of the same fit, the fit resumes after its last finished iteration
        (e.g. after the batch job running the fit hit its walltime).
    resume : bool, default=True
        Resume from ``checkpoint`` when it holds a finished iteration; False starts over and
        overwrites it.
    progress : bool, default=True
        Show a progress bar with the error (and the dashboard link of a started cluster).

    Returns
    -------
    Dictionary
        ``atoms`` of shape (n_atoms, n_features) with unit rows, ``history`` (one dict per
        iteration: relative error, FVU, mean per-sample relative residual, mean L0, dead atoms,
        replaced atoms, seconds; measured by the iteration's coding step) and ``params``.
    """
    from daskdict.learn.dictionary import Dictionary

    data, description, reader = open_rows(source, layer, skip_flagged=True)
    n_samples, n_features = data.shape
    params = validate_params(4 * n_features if n_atoms is None else n_atoms, n_nonzero, n_iter,
                             coder, tol, update, atom_batch_size, shuffle_atoms, replace_atoms,
                             init, dtype, n_samples, n_features)
    if params.update == "ksvd" and not isinstance(reader, np.ndarray) and data.numblocks[0] > 1:
        raise InvalidInputError(
            f"update='ksvd' (exact) needs all the data in one task: a NumPy array, or a store "
            f"or dask array of one chunk; this one has {data.numblocks[0]} chunks. Use "
            "update='approx' (one pass per iteration) or load the data into memory."
        )
    checkpoint_path = check_writable(checkpoint) if checkpoint is not None else None
    seed = base_seed(random_state)
    state = load_checkpoint(checkpoint_path) if checkpoint_path is not None and resume else None
    if state is not None:
        # n_iter may grow: a finished fit can be continued with more iterations
        saved = {k: v for k, v in state["params"].items() if k != "n_iter"}
        wanted = {k: v for k, v in _jsonable(params.to_dict()).items() if k != "n_iter"}
        problem = None
        if saved != wanted:
            changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
            problem = f"other parameters ({', '.join(changed)})"
        elif random_state is not None and seed != int(state["seed"]):
            problem = f"random_state={state['seed']}, not {seed}"
        elif len(state["history"]) > params.n_iter:
            problem = f"{len(state['history'])} iterations, more than n_iter={params.n_iter}"
        if problem:
            raise CheckpointMismatchError(
                f"The checkpoint {checkpoint_path} belongs to another fit: {problem}. Remove it "
                "or choose another path.")
        seed = int(state["seed"])
    in_memory = description["kind"] == "ndarray"
    # A LocalCluster started here is one worker process with a thread per core: its threads
    # share one Gram matrix in the CPU's cache and balance their share of the rows, which made
    # an iteration 5-10 % faster than one single-threaded process per core (2-core VM,
    # benchmarks/bench_speed.py --n-workers, --threads-per-worker).
    with runtime(client, in_memory=in_memory, verbose=progress, n_workers=1,
                 threads_per_worker=n_cores()) as rt:
        n_rows, n_zero_rows, digest = _validate_data(data, rt)
        fingerprint = {**_fingerprint(data, description), "content_crc32": digest}
        if state is not None and state["fingerprint"] != _jsonable(fingerprint):
            raise CheckpointMismatchError(
                f"The checkpoint {checkpoint_path} belongs to another fit: other data (shape, "
                "chunks, source or content differ). Remove it or choose another path.")
        if state is None:
            atoms = initial_atoms(data, init, params.n_atoms, iteration_rng(seed, 0),
                                  params.dtype)
            history: list[dict] = []
        else:
            atoms = state["atoms"].astype(params.dtype)
            history = list(state["history"])
        # The rows are cut into as many shares as the cluster has worker processes now, and
        # kept so for the whole fit (and its resumption): a worker lost or added later changes
        # where shares run, not how the statistics are summed, so the atoms stay the same.
        # (Earlier checkpoints call the count "n_lanes".)
        n_shares = (int(state.get("n_shares", state.get("n_lanes", 0)))
                    if state is not None else 0)
        n_shares = n_shares or len(rt.workers())
        bar = _progress_bar(params.n_iter, len(history), progress)
        try:
            for iteration in range(len(history) + 1, params.n_iter + 1):
                atoms, record = _iterate(data, reader, atoms, params, rt,
                                         iteration_rng(seed, iteration), n_rows, n_zero_rows,
                                         n_features, n_shares)
                record["iteration"] = iteration
                history.append(record)
                if checkpoint_path is not None:
                    save_checkpoint(checkpoint_path, {
                        "atoms": atoms, "history": history, "seed": seed,
                        "params": params.to_dict(), "fingerprint": fingerprint,
                        "n_shares": n_shares, "version": __version__})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(rel_err=f"{record['relative_error']:.4f}",
                                    dead=record["dead_atoms"])
        finally:
            if bar is not None:
                bar.close()
            _forget_worker_state(rt)
    return Dictionary(atoms=atoms, params={**params.to_dict(), "random_state": seed},
                      history=history, fingerprint=fingerprint)


def _progress_bar(total, initial, enabled):
    if not enabled:
        return None
    import importlib.util

    # tqdm.auto warns inside Jupyter when ipywidgets is missing; the text bar works everywhere
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, initial=initial, desc="K-SVD", unit="iter")


def _validate_data(data, rt: Runtime) -> tuple[int, int, int]:
    """One pass before any work: NaN/inf rows and unreadable chunks fail here, with names.

    Returns the number of rows, of all-zero rows, and a CRC32 of the content.
    """
    offsets = np.concatenate([[0], np.cumsum(data.chunks[0])[:-1]])
    blocks = data.to_delayed().ravel()
    parts = [dask.delayed(check_block)(b, int(o))
             for b, o in zip(blocks, offsets, strict=True)]
    reports = np.array(rt.compute(*parts))
    bad = reports[:, 3][reports[:, 3] >= 0]
    raise_for_bad_rows(int(reports[:, 2].sum()), int(bad.min()) if bad.size else -1)
    digest = zlib.crc32(reports[:, 4].tobytes())
    return int(reports[:, 0].sum()), int(reports[:, 1].sum()), digest


def _iterate(data, reader, atoms, params: FitParams, rt: Runtime, rng, n_rows, n_zero_rows,
             n_features, n_shares):
    """One K-SVD iteration: a single graph over the chunks, then the atom update here.

    With a ``reader`` (Zarr or NumPy data) the rows are cut into ``n_shares`` equal shares,
    spread over the workers present in turn; every thread of a share's worker gets a task that
    reads and codes pieces of it. Otherwise one task per block of the dask array, reduced by a
    tree.
    """
    start = time.perf_counter()
    dtype = np.dtype(params.dtype)
    atoms = np.ascontiguousarray(atoms, dtype=dtype)
    n_worst = n_candidates(params.n_atoms)
    shared_atoms = rt.share(atoms)
    shared_gram = dask.delayed(gram_matrix)(shared_atoms)  # computed only where used
    if params.update == "ksvd":
        if isinstance(reader, np.ndarray):
            block = rt.share(reader)
        else:  # a store or dask array of one chunk
            block = data.to_delayed().ravel()[0]
        order = rng.permutation(params.n_atoms) if params.shuffle_atoms else np.arange(
            params.n_atoms)
        task = dask.delayed(_exact_ksvd_block, nout=2)(
            block, shared_atoms, shared_gram, params.n_nonzero, params.tol, params.coder,
            n_worst, order, params.atom_batch_size or params.n_atoms)
        stats, new_atoms = rt.compute(task)[0]
    elif reader is not None:
        workers = rt.workers()
        token = uuid.uuid4().hex
        shared_reader = rt.share(reader) if isinstance(reader, np.ndarray) else reader
        totals = []
        for share, spans in enumerate(share_spans(data.chunks[0], n_shares)):
            worker, n_threads = workers[share % len(workers)]
            # each share prefers its own worker, one task per thread; another worker takes
            # them if that one is lost (and codes the whole share there: the same sums)
            placement = {"workers": [worker], "allow_other_workers": True} if worker else {}
            with dask.annotate(**placement):
                totals.append(dask.delayed(_share_total)(*[dask.delayed(_share_statistics)(
                    shared_reader, spans, f"{token}-{share}", shared_atoms, params.n_nonzero,
                    params.tol, params.coder, n_worst) for _ in range(n_threads)]))
        (stats,) = rt.compute(_tree_reduce(totals, n_worst))
        new_atoms = approx_update(atoms, stats)
    else:
        blocks = data.to_delayed().ravel()
        parts = [dask.delayed(_chunk_statistics)(b, shared_atoms, shared_gram, params.n_nonzero,
                                                 params.tol, params.coder, n_worst)
                 for b in blocks]
        (stats,) = rt.compute(_tree_reduce(parts, n_worst))
        new_atoms = approx_update(atoms, stats)
    record = _summary(stats, n_rows, n_zero_rows, n_features)
    replaced = 0
    if params.replace_atoms:
        new_atoms, replaced = replace_atoms(new_atoms, stats)
    record.update(replaced_atoms=replaced, passes=1, seconds=time.perf_counter() - start)
    return new_atoms.astype(dtype), record
