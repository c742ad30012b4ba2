"""Numba kernel for non-negative sparse coding: non-negative orthogonal matching pursuit.

Same calling convention as :func:`daskdict.learn.kernels.batch_omp` (correlations ``Y D^T``
from one GEMM, the Gram matrix ``D D^T`` of unit-norm atoms, fixed-width codes), for codes
whose values must be non-negative.

The method is non-negative OMP, as analysed by Bruckstein, Elad & Zibulevsky (2008), "On the
uniqueness of nonnegative sparse solutions to underdetermined systems of equations": at each
step the atom with the largest *positive* correlation with the residual joins the support,
and the coefficients on the support are refitted by non-negative least squares,
``min_{x >= 0} |y - x D_S|``. The refit is the active-set method of Lawson & Hanson (1974),
"Solving Least Squares Problems" (NNLS), started from the previous step's solution: the
unconstrained least-squares solution on the support is taken when it is positive; otherwise
the coefficients move towards it until the first one reaches zero, that atom leaves the
support, and the smaller system is solved again. Everything happens on the small Gram
subproblem ``G_SS x = (D y)_S`` in float64, with a Cholesky factor of ``G_SS`` that grows by
one row per step and is rebuilt only when an atom leaves.

The residual's correlations with all atoms, ``alpha = D y - G[:, S] x_S``, are kept up to date
by passes over the Gram rows of the coefficients that changed (``alpha -= dx_j G[j]``, two
rows per pass), not recomputed from scratch; about as many passes over ``(n_atoms,)`` vectors
as Batch-OMP makes, and the last step, which needs no update, makes none.

The largest positive correlation is found as the largest of the float's bits read as a
signed integer: positive floats order like their bits, negative ones read as negative
integers, and an integer max vectorises where a float max does not (see
:mod:`daskdict.learn.kernels`).

A row stops when no correlation is positive, when ``n_nonzero`` atoms are in the support, when
the squared residual ``|y|^2 - 2 x.(D y)_S + x^T G_SS x`` is at most ``tol^2 |y|^2``, when the
new atom is (nearly) linearly dependent on the support, or after ``STEP_FACTOR * n_nonzero``
additions (atoms that leave the support make room for others; the cap bounds a row's cost).
Every stored index has a value > 0; atoms whose coefficient reaches zero are not stored.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.extending import overload

from daskdict.learn.kernels import _DEPENDENCE_EPS, _JIT

# At most this many additions per allowed non-zero: with the Lawson-Hanson refit the residual
# strictly decreases at every addition, so a row cannot cycle, but atoms that leave the support
# could otherwise let a row run far longer than the signed coder.
STEP_FACTOR = 2

# The three helpers below are compiled per float type (overloads); their Python versions are
# references for tests.


def _signed(dtype):
    return numba.int32 if dtype.bitwidth == 32 else numba.int64


def _signed_bits(values):
    values = np.asarray(values)
    return values.view(np.int32 if values.dtype.itemsize == 4 else np.int64)


def _update_top(alpha, row, step):
    """``alpha -= step * row``; returns ``max(0, max of alpha's bits as signed integers)``,
    which is positive exactly when some entry of alpha is positive."""
    alpha -= alpha.dtype.type(step) * row.astype(alpha.dtype)
    return max(0, int(_signed_bits(alpha).max()))


def _find_top(alpha, top):
    """First index whose bits read as a signed integer equal ``top``, or -1."""
    hits = np.flatnonzero(_signed_bits(alpha) == top)
    return int(hits[0]) if hits.size else -1


def _positive_argmax(alpha):
    """First index of the largest positive entry of alpha, or -1 when none is positive."""
    if alpha.size == 0 or alpha.max() <= 0.0:
        return -1
    return int(np.argmax(alpha))


@overload(_update_top, jit_options=_JIT)
def _update_top_numba(alpha, row, step):
    bits_type = _signed(alpha.dtype)

    def impl(alpha, row, step):
        z = alpha.dtype.type(step)
        bits = alpha.view(bits_type)
        top = bits_type(0)
        for j in range(alpha.shape[0]):
            alpha[j] -= z * row[j]
            b = bits[j]
            if b > top:
                top = b
        return top

    return impl


@overload(_find_top, jit_options=_JIT)
def _find_top_numba(alpha, top):
    bits_type = _signed(alpha.dtype)

    def impl(alpha, top):
        # branch-free "smallest matching index" (a select and a min vectorise)
        bits = alpha.view(bits_type)
        n = bits.shape[0]
        first = n
        for j in range(n):
            here = j if bits[j] == top else n
            if here < first:
                first = here
        return np.int64(first) if first < n else np.int64(-1)

    return impl


@overload(_positive_argmax, jit_options=_JIT)
def _positive_argmax_numba(alpha):
    bits_type = _signed(alpha.dtype)

    def impl(alpha):
        bits = alpha.view(bits_type)
        top = bits_type(0)
        for j in range(bits.shape[0]):
            b = bits[j]
            if b > top:
                top = b
        if top <= 0:
            return np.int64(-1)
        return _find_top(alpha, top)

    return impl


@numba.njit(cache=True, nogil=True)
def _axpy(alpha, row, step):
    """``alpha -= step * row`` in alpha's dtype."""
    z = alpha.dtype.type(step)
    for j in range(alpha.shape[0]):
        alpha[j] -= z * row[j]


@numba.njit(cache=True, nogil=True)
def _axpy2(alpha, row_a, step_a, row_b, step_b):
    """``alpha -= step_a * row_a + step_b * row_b`` in alpha's dtype."""
    a = alpha.dtype.type(step_a)
    b = alpha.dtype.type(step_b)
    for j in range(alpha.shape[0]):
        alpha[j] -= a * row_a[j] + b * row_b[j]


@numba.njit(cache=True, nogil=True)
def _cholesky_row(sub, pos, r, lower):
    """Row ``r`` of the Cholesky factor of ``sub[pos[:r + 1]][:, pos[:r + 1]]`` (rows ``< r``
    of ``lower`` already hold it); returns the pivot ``G_rr - |L[r, :r]|^2``."""
    pr = pos[r]
    wsq = 0.0
    for c in range(r):
        acc = sub[pr, pos[c]]
        for k in range(c):
            acc -= lower[r, k] * lower[c, k]
        lower[r, c] = acc / lower[c, c]
        wsq += lower[r, c] * lower[r, c]
    pivot = sub[pr, pr] - wsq
    # pivots of a subset of an accepted support only grow: the guard is for rounding alone
    lower[r, r] = np.sqrt(pivot) if pivot > 0.0 else np.sqrt(_DEPENDENCE_EPS * sub[pr, pr])
    return pivot


@numba.njit(cache=True, nogil=True)
def _solve(lower, rhs, pos, k, z):
    """``z[:k]``, the solution of ``L L^T z = rhs[pos[:k]]`` (forward, then back in place)."""
    for r in range(k):
        acc = rhs[pos[r]]
        for c in range(r):
            acc -= lower[r, c] * z[c]
        z[r] = acc / lower[r, r]
    for r in range(k - 1, -1, -1):
        acc = z[r]
        for c in range(r + 1, k):
            acc -= lower[c, r] * z[c]
        z[r] = acc / lower[r, r]


@numba.njit(cache=True, nogil=True)
def _nnls_refit(sub, rhs, lower, pos, x, z, m):
    """Lawson-Hanson refit after slot ``m - 1`` joined slots ``0..m-2`` (``x`` feasible with
    ``x[m - 1] = 0``, ``lower`` the factor of slots ``0..m-1``, ``pos`` their identity list).

    On return ``x`` is the NNLS solution on the slots (zero on those that left), ``pos[:k]``
    lists the slots left, in order, and ``lower`` is their factor; returns ``k``, or -1 (and
    ``x`` untouched) when the new atom cannot take a positive coefficient.
    """
    k = m
    for sweep in range(m):  # each sweep but the last removes at least one slot
        _solve(lower, rhs, pos, k, z)
        if sweep == 0 and z[k - 1] <= 0.0:
            return -1
        # step from x towards z until the first coefficient reaches zero
        theta = 2.0
        arg = -1
        for r in range(k):
            if z[r] <= 0.0:
                xr = x[pos[r]]
                step = xr / (xr - z[r])
                if step < theta:
                    theta = step
                    arg = r
        if arg < 0:
            for r in range(k):
                x[pos[r]] = z[r]
            return k
        for r in range(k):
            x[pos[r]] += theta * (z[r] - x[pos[r]])
        x[pos[arg]] = 0.0
        kept = 0
        for r in range(k):
            if x[pos[r]] > 0.0:
                pos[kept] = pos[r]
                kept += 1
            else:
                x[pos[r]] = 0.0
        k = kept
        for r in range(k):
            _cholesky_row(sub, pos, r, lower)
    return k


@numba.njit(cache=True, nogil=True)
def _update_correlations(alpha, gram, atoms, x, x_old, m):
    """``alpha -= sum_t (x[t] - x_old[t]) gram[atoms[t]]`` over the slots that changed;
    returns :func:`_update_top`'s bits.

    The last changed slot's pass also finds the max; the others go two Gram rows per pass,
    which reads and writes ``alpha`` half as often.
    """
    last = m - 1
    while last > 0 and x[last] == x_old[last]:
        last -= 1
    pending = -1
    for t in range(last):
        if x[t] == x_old[t]:
            continue
        if pending < 0:
            pending = t
        else:
            _axpy2(alpha, gram[atoms[pending]], x[pending] - x_old[pending], gram[atoms[t]],
                   x[t] - x_old[t])
            pending = -1
    if pending >= 0:
        _axpy(alpha, gram[atoms[pending]], x[pending] - x_old[pending])
    return _update_top(alpha, gram[atoms[last]], x[last] - x_old[last])


@numba.njit(cache=True, nogil=True)
def _compact(atoms, x, rhs, sub, pos, k):
    """Keep the slots ``pos[:k]`` (increasing), moved to ``0..k-1`` in place. Each entry is
    read from a slot at or after the one written, so nothing is overwritten before use."""
    for r in range(k):
        s = pos[r]
        atoms[r] = atoms[s]
        x[r] = x[s]
        rhs[r] = rhs[s]
        for c in range(k):
            sub[r, c] = sub[s, pos[c]]


@numba.njit(cache=True, nogil=True)
def _residual_sq(y_sqnorm, x, rhs, sub, pos, k):
    """``|y|^2 - 2 x.rhs + x^T sub x`` over the slots ``pos[:k]``."""
    out = y_sqnorm
    for r in range(k):
        acc = 0.0
        for c in range(k):
            acc += sub[pos[r], pos[c]] * x[pos[c]]
        out += x[pos[r]] * (acc - 2.0 * rhs[pos[r]])
    return out


@numba.njit(cache=True, nogil=True)
def _add_slot(alpha0, gram, atoms, rhs, sub, pos, lower, n, best):
    """Put atom ``best`` in slot ``n``: its Gram entries with the support (read from the
    support's rows, which the updates keep in cache), its correlation and its Cholesky row.
    Returns the pivot's size relative to ``G_bb``."""
    atoms[n] = best
    rhs[n] = alpha0[best]
    for t in range(n):
        g = np.float64(gram[atoms[t], best])
        sub[n, t] = g
        sub[t, n] = g
    sub[n, n] = gram[best, best]
    for t in range(n + 1):
        pos[t] = t
    return _cholesky_row(sub, pos, n, lower) / sub[n, n]


@numba.njit(cache=True, nogil=True)
def _nn_row(alpha0, gram, y_sqnorm, n_nonzero, tol_sq, atoms, x, alpha, sub, lower, work, pos):
    """Non-negative OMP for one row; returns the support size ``n`` (``atoms[:n]`` and
    ``x[:n] > 0`` filled in place).

    alpha0 : (K,) correlations D y; gram : (K, K) D D^T; y_sqnorm : |y|^2; tol_sq : stop once
    the squared residual norm <= tol_sq; atoms, x, pos : (n_nonzero,) slots; sub, lower :
    (n_nonzero, n_nonzero) float64 G_SS and its Cholesky factor; work : (3, n_nonzero) float64;
    alpha : (K,) scratch for the residual's correlations.
    """
    for j in range(alpha0.shape[0]):  # a slice assignment is not vectorised by numba
        alpha[j] = alpha0[j]
    if y_sqnorm <= tol_sq or y_sqnorm == 0.0:
        return 0
    rhs, x_old, z = work[0], work[1], work[2]
    n = 0
    best = _positive_argmax(alpha)
    for _ in range(STEP_FACTOR * n_nonzero):
        if best < 0:
            break
        if _add_slot(alpha0, gram, atoms, rhs, sub, pos, lower, n, best) <= _DEPENDENCE_EPS:
            break  # linearly dependent on the support
        for t in range(n):
            x_old[t] = x[t]
        x_old[n] = 0.0
        x[n] = 0.0
        k = _nnls_refit(sub, rhs, lower, pos, x, z, n + 1)
        if k < 0:
            break  # the new atom would get a coefficient <= 0 (rounding): nothing to gain
        if k == n_nonzero or _residual_sq(y_sqnorm, x, rhs, sub, pos, k) <= tol_sq:
            _compact(atoms, x, rhs, sub, pos, k)
            return k  # done: the last update of the correlations is not needed
        top = _update_correlations(alpha, gram, atoms, x, x_old, n + 1)
        _compact(atoms, x, rhs, sub, pos, k)
        n = k
        if top <= 0:
            break  # no positive correlation left
        for t in range(n):
            alpha[atoms[t]] = 0.0  # zero in exact arithmetic (optimality on the support)
        best = _find_top(alpha, top)
        if best < 0:  # the largest was a support atom (a residual at rounding level)
            best = _positive_argmax(alpha)
    return n


@numba.njit(cache=True, nogil=True)
def nonnegative_omp(corr, gram, y_sqnorms, n_nonzero, tol):
    """Non-negative OMP with NNLS refits over the rows of a block (see the module docstring).

    Same parameters and returns as :func:`daskdict.learn.kernels.batch_omp`; every value whose
    index is >= 0 is > 0.
    """
    n_samples, n_atoms = corr.shape
    indices = np.full((n_samples, n_nonzero), -1, dtype=np.int32)
    values = np.zeros((n_samples, n_nonzero), dtype=corr.dtype)
    width = max(n_nonzero, 1)
    alpha = np.empty(n_atoms, dtype=corr.dtype)
    atoms = np.empty(width, dtype=np.int64)
    pos = np.empty(width, dtype=np.int64)
    x = np.zeros(width, dtype=np.float64)
    sub = np.zeros((width, width), dtype=np.float64)
    lower = np.zeros((width, width), dtype=np.float64)
    work = np.zeros((3, width), dtype=np.float64)
    for i in range(n_samples):
        y_sqnorm = np.float64(y_sqnorms[i])
        n = _nn_row(corr[i], gram, y_sqnorm, n_nonzero, tol * tol * y_sqnorm, atoms, x, alpha,
                    sub, lower, work, pos)
        s = 0
        for t in range(n):
            values[i, s] = x[t]
            if values[i, s] > 0.0:  # a positive float64 may round to 0 in float32
                indices[i, s] = atoms[t]
                s += 1
            else:
                values[i, s] = 0.0
    return indices, values


POSITIVE_CODERS = {"omp": nonnegative_omp}
