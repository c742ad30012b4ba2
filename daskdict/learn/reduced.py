"""Reduced-precision correlations: ``Y_b D^T`` from bfloat16 inputs, the code from float32.

The correlations of a batch with every atom are the one large product of the coder (see
:func:`daskdict.learn.coding.code_block`). CPUs with bfloat16 matrix units (Intel AMX,
AVX512-BF16) make it several times faster from bfloat16 inputs, with float32 sums and a
float32 result; PyTorch (an optional dependency) reaches those units through oneDNN.

Everything that decides a code stays float32-exact:

* the correlation of every *selected* atom is recomputed as ``y . d_j`` in float32, so the
  Cholesky updates, the coefficients and the residual are those of float32 correlations on
  the chosen support;
* each choice is settled at full precision. Rounding the inputs to bfloat16 (8 significant
  bits) moves a correlation by at most a bound known for each row (see :func:`rounding`), and
  the residual's correlations ``alpha`` keep that error (their updates are exact given the
  coefficients). So the exact best atom is among the atoms whose ``|alpha|`` is within twice
  the bound of the largest; their correlations are recomputed in float32 (and stay so for
  the rest of the row) before the choice.

The support is then the one float32 correlations choose, up to float32 rounding itself.

The choice of precision (:func:`daskdict.learn.params.check_correlation_dtype`) happens once
per fit, at validation.
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.learn.kernels import (
    _DEPENDENCE_EPS,
    _abs_argmax,
    _new_direction,
    back_substitute,
    cholesky_append,
)
from daskdict.learn.nonnegative import (
    STEP_FACTOR,
    _add_slot,
    _compact,
    _nnls_refit,
    _positive_argmax,
    _residual_sq,
    _update_correlations,
)

# Suffix of a coder key whose correlations come from bfloat16 inputs ("omp-bf16").
SUFFIX = "-bf16"

# Unit roundoff of bfloat16 (8 significant bits, rounded to nearest).
BF16_ROUNDOFF = 2.0**-9

TORCH_INSTALL = "install PyTorch (pip install torch)"
TORCH_FIX = f"{TORCH_INSTALL} or use correlation_dtype='float32'"


def require_torch() -> Any:
    """The torch module, or a named error saying how to get it."""
    try:
        import torch
    except ImportError as exc:
        raise InvalidInputError(f"bfloat16 correlations need PyTorch: {TORCH_FIX}.") from exc
    return torch


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` rounded to bfloat16 (to nearest, ties to even), as float32."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))))
    return (rounded & np.uint32(0xFFFF0000)).view(np.float32)


def rounding(atoms: np.ndarray, rounded_result: bool | None = None) -> np.ndarray:
    """What the coders need to bound the error of the atoms' bfloat16 correlations.

    With ``y~``, ``d~`` the inputs rounded to bfloat16, ``y~.d~ - y.d = y.(d~ - d) +
    (y~ - y).d~``, so by Cauchy-Schwarz the error is at most ``|y| |d~_j - d_j| +
    |y~ - y| |d~_j|``, plus the float32 sums' ``n_features 2^-24 |y~| |d~_j|`` (twice: the
    product's and the float32 recomputation's it is compared with) and, where a backend
    rounds the result to bfloat16, ``2^-9 |y~| |d~_j|``.

    ``rounded_result`` None: whether :func:`correlations` rounds its result here (torch
    without oneDNN's bfloat16 float32 matmul).

    Returns
    -------
    ndarray of shape (3,), float64
        The largest ``|d~_j - d_j|``, the largest ``|d~_j|``, and the relative error of the
        sums (and the result's rounding) per ``|y~| |d~_j|``.
    """
    if rounded_result is None:
        rounded_result = not has_fp32_precision(require_torch())
    moved, norm = _largest_rounding(np.ascontiguousarray(atoms, dtype=np.float32))
    relative = 2 * atoms.shape[1] * 2.0**-24 + (BF16_ROUNDOFF if rounded_result else 0.0)
    return np.array([moved, norm, relative * (1 + 2.0**-8)])


def margins(rows: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Twice the largest error of each row's bfloat16 correlations (``bounds`` from
    :func:`rounding`): the gap below the largest ``|alpha|`` within which an atom may be the
    exact best. Shape (n_rows,), float64."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    scratch = np.empty(rows.shape[1], dtype=np.uint32)
    return np.array([_margin(row, bounds, scratch) for row in rows])


@numba.njit(cache=True, nogil=True)
def _rounding_norms(y, rounded_bits):
    """``|y|^2``, ``|y~ - y|^2`` and ``|y~|^2`` of a float32 row, ``y~`` rounded to bfloat16
    as :func:`to_bfloat16` rounds it (``rounded_bits``: room for its bits)."""
    bits = y.view(np.uint32)
    for f in range(y.shape[0]):
        b = bits[f]
        rounded_bits[f] = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))
                           ) & np.uint32(0xFFFF0000)
    rounded = rounded_bits[:y.shape[0]].view(np.float32)
    y_sq = moved_sq = rounded_sq = 0.0
    for f in range(y.shape[0]):
        v = np.float64(y[f])
        w = np.float64(rounded[f])
        y_sq += v * v
        moved_sq += (w - v) * (w - v)
        rounded_sq += w * w
    return y_sq, moved_sq, rounded_sq


@numba.njit(cache=True, nogil=True)
def _largest_rounding(atoms):
    """The largest ``|d~_j - d_j|`` and ``|d~_j|`` over the rows of ``atoms``."""
    moved = norm = 0.0
    scratch = np.empty(atoms.shape[1], dtype=np.uint32)
    for j in range(atoms.shape[0]):
        _, moved_sq, rounded_sq = _rounding_norms(atoms[j], scratch)
        moved = max(moved, np.sqrt(moved_sq))
        norm = max(norm, np.sqrt(rounded_sq))
    return moved, norm


@numba.njit(cache=True, nogil=True)
def _margin(y, bounds, scratch):
    """:func:`margins` of one float32 row (``scratch``: uint32 room for its bits); a little
    more, for the thresholds' rounding to float32."""
    y_sq, moved_sq, rounded_sq = _rounding_norms(y, scratch)
    return (2.0 + 2.0**-9) * (np.sqrt(y_sq) * bounds[0] + np.sqrt(moved_sq) * bounds[1]
                  + bounds[2] * np.sqrt(rounded_sq) * bounds[1])


def has_fp32_precision(torch: Any) -> bool:
    """Whether torch's oneDNN float32 matmul can take bfloat16 inputs (a float32 result)."""
    backend = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return backend is not None and hasattr(backend, "fp32_precision")


# oneDNN's float32 matmul in bfloat16 (inputs rounded to bfloat16, float32 sums and result) is
# a process-wide torch setting: it is switched on while any coder's product runs and back off
# after the last, so torch's other float32 products are changed only in that window.
_PRECISION_LOCK = threading.Lock()
_PRECISION_USERS = [0, None]  # [products running, the setting before the first]


def _set_precision(torch: Any, entering: bool) -> bool:
    """Count a product in or out of the bfloat16 window; False where torch lacks the setting."""
    if not has_fp32_precision(torch):
        return False
    backend = torch.backends.mkldnn.matmul
    with _PRECISION_LOCK:
        if entering:
            if _PRECISION_USERS[0] == 0:
                _PRECISION_USERS[1] = backend.fp32_precision
                backend.fp32_precision = "bf16"
            _PRECISION_USERS[0] += 1
        else:
            _PRECISION_USERS[0] -= 1
            if _PRECISION_USERS[0] == 0:
                backend.fp32_precision = _PRECISION_USERS[1]
    return True


def correlations(rows: np.ndarray, atoms: np.ndarray, out: np.ndarray) -> None:
    """``rows @ atoms.T`` from bfloat16 inputs, float32 sums, written into ``out``.

    Parameters
    ----------
    rows : ndarray of shape (n_rows, n_features), float32
    atoms : ndarray of shape (n_atoms, n_features), float32
    out : ndarray of shape (n_rows, n_atoms), float32, C-contiguous
    """
    torch = require_torch()
    y, d, result = (torch.from_numpy(a) for a in (rows, atoms, out))
    with torch.no_grad():
        if _set_precision(torch, True):
            try:
                torch.mm(y, d.T, out=result)
            finally:
                _set_precision(torch, False)
        else:  # older torch: a bfloat16 product (its bfloat16 result is within the bound)
            result.copy_(torch.mm(y.to(torch.bfloat16), d.to(torch.bfloat16).T))


_ROUNDS: list[bool] = []


def rounds_inputs() -> bool:
    """Whether :func:`correlations` really takes bfloat16 inputs on this machine (measured
    once per process): oneDNN computes float32 products in float32 where it has no bfloat16
    kernel for the CPU (AVX512-BF16 without AMX, for one), and then bfloat16 correlations
    cost more than NumPy's float32 ones and gain nothing."""
    if not _ROUNDS:
        torch = require_torch()
        rng = np.random.default_rng(0)
        rows, atoms = (rng.standard_normal(shape).astype(np.float32)
                       for shape in ((64, 256), (128, 256)))
        out = np.empty((64, 128), dtype=np.float32)
        correlations(rows, atoms, out)
        rounded = [torch.from_numpy(a).to(torch.bfloat16).double().numpy()
                   for a in (rows, atoms)]
        from_rounded = np.abs(out - rounded[0] @ rounded[1].T).max()
        from_plain = np.abs(out - rows.astype(np.float64) @ atoms.T.astype(np.float64)).max()
        _ROUNDS.append(bool(from_rounded < from_plain))
    return _ROUNDS[0]


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _exact(y, atom):
    """``y . atom`` in the rows' precision, as the float32 product sums it (reassociated, so
    that it vectorises, as BLAS's sums are)."""
    acc = y.dtype.type(0.0)
    for f in range(y.shape[0]):
        acc += y[f] * atom[f]
    return acc


@numba.njit(cache=True, nogil=True)
def _count_above(alpha, threshold, signed):
    """How many entries of alpha (of |alpha| when ``signed``) reach ``threshold``: a branch-free
    count, which vectorises where collecting the indices does not."""
    t = alpha.dtype.type(threshold)
    count = np.int32(0)
    if signed:
        for j in range(alpha.shape[0]):
            count += np.int32(abs(alpha[j]) >= t)
    else:
        for j in range(alpha.shape[0]):
            count += np.int32(alpha[j] >= t)
    return count


@numba.njit(cache=True, nogil=True)
def _find_and_count(alpha, top, least):
    """First index whose |alpha| has the shifted bits ``top`` (-1: none; see
    :func:`daskdict.learn.kernels._find_bits`), and how many |alpha| have shifted bits of at
    least ``least`` (|alpha| >= the float whose shifted bits they are), in one branch-free pass
    over float32 alpha. Integer compares only: they vectorise together."""
    bits = alpha.view(np.uint32)
    one = np.uint32(1)
    n = bits.shape[0]
    none = np.uint32(n)
    first = none
    count = np.uint32(0)
    for j in range(n):
        b = np.uint32(bits[j] << one)
        here = np.uint32(j) if b == top else none
        if here < first:
            first = here
        count += np.uint32(b >= least)
    return (np.int64(first) if first < none else np.int64(-1)), np.int64(count)


@numba.njit(cache=True, nogil=True)
def _find_top_and_count(alpha, top, threshold):
    """First index whose bits, read as a signed integer, equal ``top`` (-1: none; see
    :func:`daskdict.learn.nonnegative._find_top`), and how many entries reach ``threshold``,
    in one branch-free pass (float32 alpha)."""
    bits = alpha.view(np.int32)
    t = alpha.dtype.type(threshold)
    n = bits.shape[0]
    first = n
    count = np.int32(0)
    for j in range(n):
        here = j if bits[j] == top else n
        if here < first:
            first = here
        count += np.int32(alpha[j] >= t)
    return (np.int64(first) if first < n else np.int64(-1)), count


@numba.njit(cache=True, nogil=True)
def _fix(alpha, alpha0, y, atoms, fixed, n_fixed, j):
    """Make atom j's correlation exact: ``alpha0[j]``, and ``alpha[j]`` by the same shift."""
    exact = alpha0.dtype.type(_exact(y, atoms[j]))
    alpha[j] += exact - alpha0[j]
    alpha0[j] = exact
    fixed[j] = 1
    n_fixed[n_fixed[0] + 1] = j
    n_fixed[0] += 1


# Atoms per group of the search for candidates in _settle.
_GROUP = 64


@numba.njit(cache=True, nogil=True)
def _settle(alpha, alpha0, y, atoms, fixed, n_fixed, start, margin, signed, best):
    """Make exact (see :func:`_fix`) every atom that may have the largest exact ``alpha[j]``
    (``|alpha[j]|`` when ``signed``); returns how many it fixed. ``n_fixed`` lists the fixed
    atoms (``fixed`` is cleared from it after the row).

    ``best`` is the approximate largest (its value ``start``), or -1 where there is none to
    start from: the atoms within ``margin`` (twice an error) of ``start`` are candidates. With
    ``best`` made exact first, only the others' errors count: half the margin below its exact
    value. Usually no other candidate is left to fix: a count and the list of exact ones tell,
    without collecting the candidates in a pass over all atoms."""
    fixed_now = 0
    threshold = start - margin
    if best >= 0:
        if fixed[best] == 0:
            _fix(alpha, alpha0, y, atoms, fixed, n_fixed, best)
            fixed_now = 1
        threshold = (abs(alpha[best]) if signed else alpha[best]) - 0.5 * margin
    t = alpha.dtype.type(threshold)
    count = _count_above(alpha, threshold, signed)
    known = 0
    for r in range(n_fixed[0]):
        v = alpha[n_fixed[r + 1]]
        known += (abs(v) if signed else v) >= t
    if count == known:
        return fixed_now
    # the candidates are few: a vectorised count per group of atoms finds the groups that
    # hold any, and only those are searched
    n = 0
    for begin in range(0, alpha.shape[0], _GROUP):
        end = min(begin + _GROUP, alpha.shape[0])
        hits = np.int32(0)
        for j in range(begin, end):
            hits += np.int32((abs(alpha[j]) if signed else alpha[j]) >= t)
        if hits == 0:
            continue
        for j in range(begin, end):
            if fixed[j] == 0 and (abs(alpha[j]) if signed else alpha[j]) >= t:
                _fix(alpha, alpha0, y, atoms, fixed, n_fixed, j)
                n += 1
    return fixed_now + n


@numba.njit(cache=True, nogil=True)
def _best_fixed(alpha, n_fixed, signed):
    """The first index of the largest ``|alpha|`` (``alpha`` when not ``signed``) among the
    fixed atoms, and that value: after :func:`_settle`, every atom that may be the best is
    among them."""
    best = -1
    best_val = 0.0 if signed else -np.inf
    for r in range(n_fixed[0]):
        j = n_fixed[r + 1]
        value = abs(alpha[j]) if signed else alpha[j]
        if value > best_val or (value == best_val and best >= 0 and j < best):
            best, best_val = j, value
    return best, best_val


@numba.njit(cache=True, nogil=True)
def _signed_best(alpha, alpha0, y, atoms, fixed, n_fixed, margin):
    """The exact ``argmax |alpha|`` and its value: the candidates within ``margin`` of the
    largest are made exact first (see :func:`_settle`)."""
    best, best_val = _abs_argmax(alpha)
    if best_val > 0.0:
        _settle(alpha, alpha0, y, atoms, fixed, n_fixed, best_val, margin, True, best)
        best, best_val = _best_fixed(alpha, n_fixed, True)
    return best, best_val


@numba.njit(cache=True, nogil=True)
def _omp_row(alpha0, gram, y, y_sqnorm, atoms, n_nonzero, tol_sq, margin, idx_out, val_out,
             alpha, lower, z, proj, fixed, n_fixed, scratch):
    """Batch-OMP for one row (see :func:`daskdict.learn.kernels._omp_row`) from approximate
    correlations ``alpha0``, which it makes exact where a choice or a coefficient needs them;
    ``margin`` is twice the row's error bound."""
    n_atoms = alpha0.shape[0]
    for j in range(n_atoms):
        alpha[j] = alpha0[j]
    if y_sqnorm <= tol_sq or y_sqnorm == 0.0:
        return 0
    n_sel = 0
    residual_sq = y_sqnorm
    best, best_val = _signed_best(alpha, alpha0, y, atoms, fixed, n_fixed, margin)
    for _ in range(n_nonzero):
        if best_val <= 0.0:
            break
        # alpha0[best] is exact: the best was settled
        diag = cholesky_append(gram, proj, lower, z, alpha0[best], best, n_sel)
        if diag == 0.0:
            break
        idx_out[n_sel] = best
        n_sel += 1
        residual_sq -= z[n_sel - 1] * z[n_sel - 1]
        if n_sel == n_nonzero or residual_sq <= tol_sq:
            break
        s = n_sel - 1
        top = _new_direction(proj, s, gram[best], lower, alpha, z[s], 1.0 / diag)
        for t in range(n_sel):
            alpha[idx_out[t]] = 0.0
        # usually the best alone is within the margin of the largest: one pass finds it and
        # tells so, and then only its correlation needs making exact
        scratch[0] = top >> np.uint32(1)
        approx = np.float64(scratch.view(np.float32)[0])
        scratch.view(np.float32)[0] = np.float32(max(approx - margin, 0.0))
        best, count = _find_and_count(alpha, top, np.uint32(scratch[0] << np.uint32(1)))
        if best >= 0 and count == 1 and approx > margin:
            if fixed[best] == 0:
                _fix(alpha, alpha0, y, atoms, fixed, n_fixed, best)
            best_val = abs(alpha[best])
            continue
        if best < 0:  # the largest was a chosen atom (a residual at rounding level)
            best, best_val = _abs_argmax(alpha)
        else:
            best_val = abs(alpha[best])
        if _settle(alpha, alpha0, y, atoms, fixed, n_fixed, best_val, margin, True, best) > 0:
            for t in range(n_sel):
                alpha[idx_out[t]] = 0.0
            best, best_val = _best_fixed(alpha, n_fixed, True)
    back_substitute(lower, z, val_out, n_sel)
    return n_sel


@numba.njit(cache=True, nogil=True)
def _clear(fixed, n_fixed):
    for t in range(n_fixed[0]):
        fixed[n_fixed[t + 1]] = 0
    n_fixed[0] = 0


@numba.njit(cache=True, nogil=True)
def batch_omp(corr, gram, y_sqnorms, y, atoms, n_nonzero, tol, bounds):
    """Batch-OMP over a block from approximate correlations (see the module docstring).

    Parameters
    ----------
    corr : ndarray of shape (n_samples, n_atoms), float32
        Correlations ``Y D^T`` from bfloat16 inputs; the entries made exact are written back.
    gram : ndarray of shape (n_atoms, n_atoms)
    y_sqnorms : ndarray of shape (n_samples,)
        ``|y_i|^2`` as the float32 coder gets them, so that both stop at the same residual.
    y : ndarray of shape (n_samples, n_features)
    atoms : ndarray of shape (n_atoms, n_features)
    n_nonzero : int
    tol : float
    bounds : ndarray of shape (3,)
        What bounds the errors ``|corr - Y D^T|`` of each row (see :func:`rounding`).

    Returns
    -------
    indices, values : as :func:`daskdict.learn.kernels.batch_omp`
    """
    n_samples, n_atoms = corr.shape
    indices = np.full((n_samples, n_nonzero), -1, dtype=np.int32)
    values = np.zeros((n_samples, n_nonzero), dtype=corr.dtype)
    alpha = np.empty(n_atoms, dtype=corr.dtype)
    lower = np.zeros((n_nonzero, n_nonzero), dtype=np.float64)
    z = np.empty(n_nonzero, dtype=np.float64)
    val = np.empty(n_nonzero, dtype=np.float64)
    proj = np.empty((n_nonzero + 1, n_atoms), dtype=corr.dtype)
    fixed = np.zeros(n_atoms, dtype=np.uint8)
    n_fixed = np.zeros(n_atoms + 1, dtype=np.int64)
    scratch = np.empty(1, dtype=np.uint32)
    row_bits = np.empty(y.shape[1], dtype=np.uint32)
    for i in range(n_samples):
        margin = _margin(y[i], bounds, row_bits)
        tol_sq = tol * tol * y_sqnorms[i]
        n_sel = _omp_row(corr[i], gram, y[i], y_sqnorms[i], atoms, n_nonzero, tol_sq, margin,
                         indices[i], val, alpha, lower, z, proj, fixed, n_fixed, scratch)
        _clear(fixed, n_fixed)
        for s in range(n_sel):
            values[i, s] = val[s]
        for s in range(n_sel, n_nonzero):
            indices[i, s] = -1
    return indices, values


@numba.njit(cache=True, nogil=True)
def _positive_best(alpha, alpha0, y, atoms, fixed, n_fixed, margin, top, scratch):
    """The exact first index of the largest positive ``alpha`` (-1: none), with ``top`` the
    approximate largest's bits as a signed integer (or any value <= 0 to search from
    scratch); ``scratch`` is int32 room for one value."""
    best = np.int64(-1)
    if top > 0:  # as in _omp_row: usually the best alone is within the margin
        scratch[0] = top
        approx = np.float64(scratch.view(np.float32)[0])
        best, count = _find_top_and_count(alpha, top, approx - margin)
        if best >= 0 and count == 1 and approx > margin:
            if fixed[best] == 0:
                _fix(alpha, alpha0, y, atoms, fixed, n_fixed, best)
            return best
    if best < 0:  # none, or the largest was a support atom
        best = _positive_argmax(alpha)
    start = alpha[best] if best >= 0 else alpha[np.argmax(alpha)]
    if _settle(alpha, alpha0, y, atoms, fixed, n_fixed, start, margin, False, best) > 0:
        best, value = _best_fixed(alpha, n_fixed, False)
        if value <= 0.0:
            return np.int64(-1)
    return best


@numba.njit(cache=True, nogil=True)
def _nn_row(alpha0, gram, y, y_sqnorm, atoms_in, n_nonzero, tol_sq, margin, atoms, x, alpha,
            sub, lower, work, pos, fixed, n_fixed, scratch):
    """Non-negative OMP for one row (see :func:`daskdict.learn.nonnegative._nn_row`) from
    approximate correlations, settled as :func:`_omp_row` settles them."""
    for j in range(alpha0.shape[0]):
        alpha[j] = alpha0[j]
    if y_sqnorm <= tol_sq or y_sqnorm == 0.0:
        return 0
    rhs, x_old, z = work[0], work[1], work[2]
    n = 0
    best = _positive_best(alpha, alpha0, y, atoms_in, fixed, n_fixed, margin, 0, scratch)
    for _ in range(STEP_FACTOR * n_nonzero):
        if best < 0:
            break
        # the best was settled: its correlation (the refit's right-hand side) is exact
        if _add_slot(alpha0, gram, atoms, rhs, sub, pos, lower, n, best) <= _DEPENDENCE_EPS:
            break
        for t in range(n):
            x_old[t] = x[t]
        x_old[n] = 0.0
        x[n] = 0.0
        k = _nnls_refit(sub, rhs, lower, pos, x, z, n + 1)
        if k < 0:
            break
        if k == n_nonzero or _residual_sq(y_sqnorm, x, rhs, sub, pos, k) <= tol_sq:
            _compact(atoms, x, rhs, sub, pos, k)
            return k
        top = _update_correlations(alpha, gram, atoms, x, x_old, n + 1)
        _compact(atoms, x, rhs, sub, pos, k)
        n = k
        for t in range(n):
            alpha[atoms[t]] = 0.0
        # an exact correlation may be positive where every approximate one is <= 0
        best = _positive_best(alpha, alpha0, y, atoms_in, fixed, n_fixed, margin, top,
                              scratch)
        for t in range(n):
            alpha[atoms[t]] = 0.0
        if best >= 0 and alpha[best] <= 0.0:
            best = _positive_argmax(alpha)
    return n


@numba.njit(cache=True, nogil=True)
def nonnegative_omp(corr, gram, y_sqnorms, y, atoms, n_nonzero, tol, bounds):
    """Non-negative OMP (see :func:`daskdict.learn.nonnegative.nonnegative_omp`) from
    approximate correlations; same parameters and returns as :func:`batch_omp`."""
    n_samples, n_atoms = corr.shape
    indices = np.full((n_samples, n_nonzero), -1, dtype=np.int32)
    values = np.zeros((n_samples, n_nonzero), dtype=corr.dtype)
    width = max(n_nonzero, 1)
    alpha = np.empty(n_atoms, dtype=corr.dtype)
    slots = np.empty(width, dtype=np.int64)
    pos = np.empty(width, dtype=np.int64)
    x = np.zeros(width, dtype=np.float64)
    sub = np.zeros((width, width), dtype=np.float64)
    lower = np.zeros((width, width), dtype=np.float64)
    work = np.zeros((3, width), dtype=np.float64)
    fixed = np.zeros(n_atoms, dtype=np.uint8)
    n_fixed = np.zeros(n_atoms + 1, dtype=np.int64)
    row_bits = np.empty(y.shape[1], dtype=np.uint32)
    scratch = np.empty(1, dtype=np.int32)
    for i in range(n_samples):
        margin = _margin(y[i], bounds, row_bits)
        n = _nn_row(corr[i], gram, y[i], y_sqnorms[i], atoms, n_nonzero,
                    tol * tol * y_sqnorms[i], margin, slots, x, alpha, sub, lower, work, pos,
                    fixed, n_fixed, scratch)
        _clear(fixed, n_fixed)
        s = 0
        for t in range(n):
            values[i, s] = x[t]
            if values[i, s] > 0.0:
                indices[i, s] = slots[t]
                s += 1
            else:
                values[i, s] = 0.0
    return indices, values


# The coders by key (see daskdict.learn.params.coder_key); their correlations come from
# :func:`correlations` and they read the rows and atoms too.
CODERS = {"omp" + SUFFIX: batch_omp, "omp-positive" + SUFFIX: nonnegative_omp}
