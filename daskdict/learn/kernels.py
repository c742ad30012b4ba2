"""Numba kernels for sparse coding and the K-SVD statistics.

Pure functions over NumPy arrays: no Dask, no Python objects. Rows are samples, atoms are rows
of ``D``. Each kernel is serial over rows when called from a Dask task (Dask supplies the
parallelism across chunks) and parallel over rows when called directly on one large block.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.extending import overload

# Relative size below which a new atom is treated as linearly dependent on the chosen ones
# (the Cholesky pivot 1 - w.w); continuing would divide by ~0 and produce huge coefficients.
_DEPENDENCE_EPS = 1e-6

# The largest |a| is found as the largest of the float's bits shifted left by one: the shift
# drops the sign and keeps the order of |a|, and an unsigned integer max vectorises on any x86
# CPU, where a float max does not (LLVM keeps its NaN semantics scalar, and the search would
# dominate the coder). These helpers are compiled per float type
# (overloads); their Python versions are references for tests.


def _unsigned(dtype):
    return numba.uint32 if dtype.bitwidth == 32 else numba.uint64


def _abs_argmax(alpha):
    """First index of max |alpha|, and that max."""
    best = int(np.argmax(np.abs(alpha)))
    return best, abs(alpha[best])


def _new_direction(proj, s, row, lower, alpha, step, scale):
    """``proj[s] = (row - sum_{t<s} lower[s, t] proj[t]) * scale``, then ``alpha -= step *
    proj[s]``; returns the shifted bits of the new max |alpha|. The last row of ``proj`` is
    scratch space (``s < len(proj) - 1``)."""
    u = row.astype(proj.dtype, copy=True)
    for t in range(s):
        u -= proj.dtype.type(lower[s, t]) * proj[t]
    proj[s] = u * proj.dtype.type(scale)
    alpha -= alpha.dtype.type(step) * proj[s]
    return _shifted_bits(np.abs(alpha).max())


def _last_pass(source, prev, coef, u, alpha, step, scale):
    """``u[:] = (source - coef * prev) * scale; alpha -= step * u``; the shifted bits of the
    new max |alpha|."""
    u[:] = (source - u.dtype.type(coef) * prev) * u.dtype.type(scale)
    alpha -= alpha.dtype.type(step) * u
    return _shifted_bits(np.abs(alpha).max())


def _find_bits(alpha, top):
    """First index whose |alpha| has the shifted bits ``top``, or -1."""
    hits = np.flatnonzero(_shifted_bits(np.abs(alpha)) == top)
    return int(hits[0]) if hits.size else -1


def _shifted_bits(values):
    values = np.asarray(values)
    bits = values.view(np.uint32 if values.dtype.itemsize == 4 else np.uint64)
    return bits << bits.dtype.type(1)


_JIT = {"cache": True, "nogil": True}


@overload(_last_pass, jit_options=_JIT)
def _last_pass_numba(source, prev, coef, u, alpha, step, scale):
    bits_type = _unsigned(alpha.dtype)

    def impl(source, prev, coef, u, alpha, step, scale):
        ty = u.dtype.type
        c, z, inv = ty(coef), ty(step), ty(scale)
        bits = alpha.view(bits_type)
        one = bits_type(1)
        top = bits_type(0)
        for j in range(u.shape[0]):
            v = (source[j] - c * prev[j]) * inv
            u[j] = v
            alpha[j] -= z * v
            b = bits_type(bits[j] << one)  # numba widens small ints: keep the SIMD lanes narrow
            if b > top:
                top = b
        return top

    return impl


@overload(_new_direction, jit_options=_JIT)
def _new_direction_numba(proj, s, row, lower, alpha, step, scale):
    def impl(proj, s, row, lower, alpha, step, scale):
        # The last subtraction, the scaling, the update of alpha and its max share one pass,
        # and the first subtraction reads the Gram row directly: about a quarter fewer
        # streams over (n_atoms,) vectors than a copy, s passes, then an update pass. The
        # passes before the last write a scratch row, not u: a pass reading and writing u
        # through two names is not vectorised (LLVM's overlap check fails).
        u = proj[s]
        if s == 0:  # row - 0 * row == row exactly (Gram entries are finite)
            return _last_pass(row, row, 0.0, u, alpha, step, scale)
        if s == 1:
            return _last_pass(row, proj[0], lower[1, 0], u, alpha, step, scale)
        ty = u.dtype.type
        scratch = proj[proj.shape[0] - 1]
        first = ty(lower[s, 0])
        p0 = proj[0]
        for j in range(u.shape[0]):
            scratch[j] = row[j] - first * p0[j]
        for t in range(1, s - 1):  # one pass per term: fusing several gains nothing
            c = ty(lower[s, t])
            p = proj[t]
            for j in range(u.shape[0]):
                scratch[j] -= c * p[j]
        return _last_pass(scratch, proj[s - 1], lower[s, s - 1], u, alpha, step, scale)

    return impl


@overload(_find_bits, jit_options=_JIT)
def _find_bits_numba(alpha, top):
    bits_type = _unsigned(alpha.dtype)

    def impl(alpha, top):
        # One pass of a branch-free "smallest index whose bits match": a select and an
        # unsigned min vectorise, where an early exit or a boolean OR over blocks do not.
        bits = alpha.view(bits_type)
        one = bits_type(1)
        n = bits.shape[0]
        none = bits_type(n)
        first = none
        for j in range(n):
            here = bits_type(j) if bits_type(bits[j] << one) == top else none
            if here < first:
                first = here
        if first < none:
            return np.int64(first)
        return np.int64(-1)  # (uint64 and int64 unify to float: keep both branches int64)

    return impl


@overload(_abs_argmax, jit_options=_JIT)
def _abs_argmax_numba(alpha):
    bits_type = _unsigned(alpha.dtype)

    def impl(alpha):
        bits = alpha.view(bits_type)
        one = bits_type(1)
        top = bits_type(0)
        for j in range(bits.shape[0]):
            v = bits_type(bits[j] << one)
            if v > top:
                top = v
        best = _find_bits(alpha, top)
        return best, abs(alpha[best])

    return impl


@numba.njit(cache=True, nogil=True)
def back_substitute(lower, z, out, n_sel):
    """The coefficients ``gamma = L^{-T} z`` of the ``n_sel`` chosen atoms into ``out``
    (``lower``: the Cholesky factor of their Gram matrix, ``L z = alpha0[chosen]``)."""
    for r in range(n_sel - 1, -1, -1):
        acc = z[r]
        for c in range(r + 1, n_sel):
            acc -= lower[c, r] * out[c]
        out[r] = acc / lower[r, r]


@numba.njit(cache=True, nogil=True)
def cholesky_append(gram, proj, lower, z, alpha0_best, best, n_sel):
    """Add atom ``best`` as row ``n_sel`` of the Cholesky factor ``lower`` of the chosen
    atoms' Gram matrix, and its coefficient of ``L z = alpha0[chosen]`` to ``z``; return the
    new diagonal entry, 0.0 (nothing written to ``z``) when ``best`` is linearly dependent on
    the chosen atoms.

    The new row ``w``, the solution of ``L w = G[chosen, best]``, is ``w_t = q_t . d_best =
    u_t[best]``: read from the cached directions ``proj`` (shape (>= n_sel, n_atoms)), not
    from scattered entries of the Gram matrix (one cache miss each);
    ``pivot = G[best, best] - w.w``.
    """
    wsq = 0.0
    for r in range(n_sel):
        lower[n_sel, r] = proj[r, best]
        wsq += lower[n_sel, r] * lower[n_sel, r]
    pivot = gram[best, best] - wsq
    if pivot <= _DEPENDENCE_EPS * gram[best, best]:
        return 0.0
    diag = np.sqrt(pivot)
    lower[n_sel, n_sel] = diag
    acc = np.float64(alpha0_best)
    for c in range(n_sel):
        acc -= lower[n_sel, c] * z[c]
    z[n_sel] = acc / diag
    return diag


@numba.njit(cache=True, nogil=True)
def _omp_row(alpha0, gram, y_sqnorm, n_nonzero, tol_sq, idx_out, val_out, alpha, lower, z, proj):
    """Batch-OMP for one row; returns the number of atoms selected (outputs filled in place).

    With G_II = L L^T over the chosen atoms, the orthonormalised directions q_s of the chosen
    atoms have correlations u_s = D q_s = (G[j_s] - sum_t L[s, t] u_t) / L[s, s] with every atom,
    and the residual's correlations shrink as alpha -= z_s u_s with z = L^{-1} alpha0[I]. Keeping
    the u_s in a small (n_nonzero + 1, K) buffer ``proj`` (its last row is scratch) touches one
    new row of the Gram matrix per step instead of all chosen ones, which keeps the kernel out
    of main memory. The squared residual norm is |y|^2 - |z|^2.

    alpha0 : (K,) correlations D y; gram : (K, K) D D^T; y_sqnorm : |y|^2;
    tol_sq : stop once the squared residual norm <= tol_sq.
    """
    n_atoms = alpha0.shape[0]
    for j in range(n_atoms):  # a slice assignment is not vectorised by numba
        alpha[j] = alpha0[j]
    n_sel = 0
    if y_sqnorm <= tol_sq or y_sqnorm == 0.0:
        return 0
    residual_sq = y_sqnorm
    best, best_val = _abs_argmax(alpha)
    for _ in range(n_nonzero):
        if best_val <= 0.0:
            break
        diag = cholesky_append(gram, proj, lower, z, alpha0[best], best, n_sel)
        if diag == 0.0:
            break  # linearly dependent on the chosen atoms
        idx_out[n_sel] = best
        n_sel += 1
        residual_sq -= z[n_sel - 1] * z[n_sel - 1]
        if n_sel == n_nonzero or residual_sq <= tol_sq:
            break
        # u_s = (G[best] - sum_t L[s, t] u_t) / L[s, s];  alpha -= z_s u_s, and the new max
        s = n_sel - 1
        top = _new_direction(proj, s, gram[best], lower, alpha, z[s], 1.0 / diag)
        for t in range(n_sel):
            alpha[idx_out[t]] = 0.0  # chosen atoms are not chosen again
        best = _find_bits(alpha, top)
        if best < 0:  # the largest was a chosen atom (a residual at rounding level)
            best, best_val = _abs_argmax(alpha)
        else:
            best_val = abs(alpha[best])
    back_substitute(lower, z, val_out, n_sel)
    return n_sel


@numba.njit(cache=True, nogil=True)
def batch_omp(corr, gram, y_sqnorms, n_nonzero, tol):
    """Batch-OMP (Rubinstein, Zibulevsky & Elad 2008) over the rows of a block.

    Parameters
    ----------
    corr : ndarray of shape (n_samples, n_atoms)
        Correlations ``Y D^T`` (one GEMM, computed by the caller).
    gram : ndarray of shape (n_atoms, n_atoms)
        ``D D^T`` for unit-norm atoms.
    y_sqnorms : ndarray of shape (n_samples,)
        Squared norms of the rows of ``Y``.
    n_nonzero : int
        Maximum number of atoms per row.
    tol : float
        Stop a row once ``|y - x D| <= tol * |y|``; 0 disables.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_nonzero), int32, -1 padded
    values : ndarray of shape (n_samples, n_nonzero), 0 padded
    """
    n_samples, n_atoms = corr.shape
    indices = np.full((n_samples, n_nonzero), -1, dtype=np.int32)
    values = np.zeros((n_samples, n_nonzero), dtype=corr.dtype)
    alpha = np.empty(n_atoms, dtype=corr.dtype)
    lower = np.zeros((n_nonzero, n_nonzero), dtype=np.float64)
    z = np.empty(n_nonzero, dtype=np.float64)
    val = np.empty(n_nonzero, dtype=np.float64)
    proj = np.empty((n_nonzero + 1, n_atoms), dtype=corr.dtype)  # + a scratch row
    for i in range(n_samples):
        tol_sq = tol * tol * y_sqnorms[i]
        n_sel = _omp_row(corr[i], gram, y_sqnorms[i], n_nonzero, tol_sq, indices[i], val, alpha,
                         lower, z, proj)
        for s in range(n_sel):
            values[i, s] = val[s]
        for s in range(n_sel, n_nonzero):
            indices[i, s] = -1
    return indices, values


@numba.njit(cache=True, nogil=True)
def matching_pursuit(corr, gram, y_sqnorms, n_nonzero, tol):
    """Matching pursuit with a least-squares refit on the chosen support.

    Runs ``n_nonzero`` greedy steps (an atom may be chosen again), then solves the normal
    equations on the distinct atoms chosen, as KSVD.jl's default coder does. Same parameters
    and returns as :func:`batch_omp`.
    """
    n_samples, n_atoms = corr.shape
    indices = np.full((n_samples, n_nonzero), -1, dtype=np.int32)
    values = np.zeros((n_samples, n_nonzero), dtype=corr.dtype)
    alpha = np.empty(n_atoms, dtype=np.float64)
    coef = np.zeros(n_atoms, dtype=np.float64)
    support = np.empty(n_nonzero, dtype=np.int64)
    for i in range(n_samples):
        for j in range(n_atoms):
            alpha[j] = corr[i, j]
        residual_sq = y_sqnorms[i]
        tol_sq = tol * tol * y_sqnorms[i]
        n_sel = 0
        for _ in range(n_nonzero):
            if residual_sq <= tol_sq:
                break
            best, best_val = _abs_argmax(alpha)
            if best_val <= 0.0:
                break
            a = alpha[best]
            new = True
            for s in range(n_sel):
                if support[s] == best:
                    new = False
            if new:
                support[n_sel] = best
                n_sel += 1
            coef[best] += a
            residual_sq -= a * a
            row = gram[best]
            for j in range(n_atoms):
                alpha[j] -= a * row[j]
        if n_sel > 0:
            sub = np.empty((n_sel, n_sel), dtype=np.float64)
            rhs = np.empty(n_sel, dtype=np.float64)
            for r in range(n_sel):
                rhs[r] = corr[i, support[r]]
                for c in range(n_sel):
                    sub[r, c] = gram[support[r], support[c]]
            # the refit is skipped when the chosen atoms are (nearly) dependent
            if np.linalg.cond(sub) < 1e8:
                sol = np.linalg.solve(sub, rhs)
                for r in range(n_sel):
                    coef[support[r]] = sol[r]
        for s in range(n_sel):
            indices[i, s] = support[s]
            values[i, s] = coef[support[s]]
            coef[support[s]] = 0.0
    return indices, values


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _sq_sum(v):
    """``sum(v**2)`` accumulated in float64. Reassociation lets LLVM vectorise the sum; a
    strict left-to-right loop is a chain of dependent additions, one per element."""
    acc = 0.0
    for f in range(v.shape[0]):
        acc += np.float64(v[f]) * v[f]
    return acc


# Rows whose residuals are kept at once by ``residual_statistics`` (enough to group each
# atom's users, few enough to stay in cache).
STATISTICS_ROWS = 2048


@numba.njit(cache=True, nogil=True)
def residual_statistics(y, atoms, indices, values, n_worst, block_rows=STATISTICS_ROWS):
    """Everything one K-SVD iteration needs from a coded block, in one sweep over its rows.

    Parameters
    ----------
    y : ndarray of shape (n_samples, n_features)
    atoms : ndarray of shape (n_atoms, n_features)
    indices, values : ndarrays of shape (n_samples, n_nonzero)
        The codes of ``y`` (-1 / 0 padded).
    n_worst : int
        How many of the worst-represented rows to return (for atom replacement).
    block_rows : int
        Rows whose residuals are held at once (the result does not depend on it).

    Returns
    -------
    restricted : ndarray of shape (n_atoms, n_features), dtype of ``y``
        Row j is ``sum_i r_i x_ij`` over the rows using atom j, in increasing i, where
        ``r = y - x D`` (the restricted residual product without its ``d_j |x_j|^2`` term,
        added after reduction).
    coef_sq : ndarray of shape (n_atoms,)
        ``sum_i x_ij^2``.
    usage : ndarray of shape (n_atoms,), int64
        Number of rows using each atom.
    sums : ndarray of shape (5,)
        ``|R|^2``, ``|Y|^2``, the sum of per-row relative residuals over non-zero rows, the
        number of non-zero rows and the number of non-zeros in the codes.
    row_sum : ndarray of shape (n_features,)
        Column sums of ``y`` (for the FVU's mean).
    worst_err, worst_rows : ndarrays of shape (m,) and (m, n_features)
        Squared residual norms and rows of the ``m = min(n_worst, n_samples)`` worst rows.
    """
    n_samples, n_features = y.shape
    n_atoms = atoms.shape[0]
    n_nonzero = indices.shape[1]
    # per-block sums in the data's dtype (float32 halves memory traffic and transfers); blocks
    # are summed in float64 by the caller
    restricted = np.zeros((n_atoms, n_features), dtype=y.dtype)
    coef_sq = np.zeros(n_atoms, dtype=np.float64)
    usage = np.zeros(n_atoms, dtype=np.int64)
    sums = np.zeros(5, dtype=np.float64)
    row_sum = np.zeros(n_features, dtype=np.float64)
    err = np.empty(n_samples, dtype=np.float64)
    block_rows = max(1, min(block_rows, n_samples))
    residuals = np.empty((block_rows, n_features), dtype=y.dtype)
    # The (row, atom) pairs of a group of rows, grouped by atom (a counting sort that keeps the
    # row order): each row of ``restricted`` is then updated once per group, in atom order,
    # instead of n_nonzero scattered read-modify-writes of long rows per sample, which stall
    # on the cache.
    first = np.zeros(n_atoms + 1, dtype=np.int64)
    fill = np.empty(n_atoms, dtype=np.int64)
    pair_row = np.empty(block_rows * n_nonzero, dtype=np.int64)
    pair_value = np.empty(block_rows * n_nonzero, dtype=values.dtype)
    for begin in range(0, n_samples, block_rows):
        end = min(begin + block_rows, n_samples)
        first[:] = 0
        _residual_rows(y, atoms, indices, values, begin, end, residuals, first, usage,
                       coef_sq, sums, row_sum, err)
        _group_by_atom(indices, values, begin, end, first, fill, pair_row, pair_value)
        _add_restricted(restricted, first, pair_row, pair_value, residuals)
    worst_err, worst_rows = _worst_rows(y, err, n_worst)
    return restricted, coef_sq, usage, sums, row_sum, worst_err, worst_rows


@numba.njit(cache=True, nogil=True)
def _residual_rows(y, atoms, indices, values, begin, end, residuals, first, usage, coef_sq,
                   sums, row_sum, err):
    """Residuals of rows ``begin:end`` into ``residuals``; adds their sums (see
    :func:`residual_statistics`) and counts each atom's users in ``first[j + 1]``."""
    n_features = y.shape[1]
    n_nonzero = indices.shape[1]
    for i in range(begin, end):
        yi = y[i]
        r = residuals[i - begin]
        y_sq = _sq_sum(yi)
        for f in range(n_features):
            r[f] = yi[f]
            row_sum[f] += r[f]
        for s in range(n_nonzero):
            j = indices[i, s]
            if j < 0:
                continue
            x = values[i, s]
            atom = atoms[j]
            for f in range(n_features):
                r[f] -= x * atom[f]
            if x != 0.0:
                first[j + 1] += 1
                sums[4] += 1.0
                usage[j] += 1
                coef_sq[j] += np.float64(x) * x
        r_sq = _sq_sum(r)
        err[i] = r_sq
        sums[0] += r_sq
        sums[1] += y_sq
        if y_sq > 0.0:
            sums[2] += np.sqrt(r_sq / y_sq)
            sums[3] += 1.0


@numba.njit(cache=True, nogil=True)
def _group_by_atom(indices, values, begin, end, first, fill, pair_row, pair_value):
    """Counting sort of the (row, value) pairs of rows ``begin:end`` by atom, keeping row order:
    atom j's pairs end up in ``pair_*[first[j]:first[j + 1]]`` (``first`` holds the counts
    shifted by one on entry, the offsets on exit)."""
    n_atoms = fill.shape[0]
    for j in range(n_atoms):
        first[j + 1] += first[j]
        fill[j] = first[j]
    for i in range(begin, end):
        for s in range(indices.shape[1]):
            j = indices[i, s]
            if j < 0 or values[i, s] == 0.0:
                continue
            pair_row[fill[j]] = i - begin
            pair_value[fill[j]] = values[i, s]
            fill[j] += 1


@numba.njit(cache=True, nogil=True)
def _add_restricted(restricted, first, pair_row, pair_value, residuals):
    """``restricted[j] += sum x r`` over atom j's pairs, atom by atom, in row order."""
    n_features = restricted.shape[1]
    for j in range(restricted.shape[0]):
        if first[j] == first[j + 1]:
            continue
        row = restricted[j]
        for p in range(first[j], first[j + 1]):
            x = pair_value[p]
            r = residuals[pair_row[p]]
            for f in range(n_features):
                row[f] += x * r[f]


@numba.njit(cache=True, nogil=True)
def _worst_rows(y, err, n_worst):
    """The squared errors and rows of the ``min(n_worst, n_samples)`` largest errors."""
    m = min(n_worst, y.shape[0])
    order = np.argsort(-err)[:m]
    worst_err = err[order]
    worst_rows = np.empty((m, y.shape[1]), dtype=y.dtype)
    for t in range(m):
        worst_rows[t] = y[order[t]]
    return worst_err, worst_rows


@numba.njit(cache=True, nogil=True)
def codes_times_atoms(indices, values, atoms):
    """Reconstruction ``X D`` of a block from its fixed-width codes.

    Returns an array of shape (n_samples, n_features).
    """
    n_samples, n_nonzero = indices.shape
    out = np.zeros((n_samples, atoms.shape[1]), dtype=atoms.dtype)
    for i in range(n_samples):
        for s in range(n_nonzero):
            j = indices[i, s]
            if j >= 0:
                x = values[i, s]
                for f in range(atoms.shape[1]):
                    out[i, f] += x * atoms[j, f]
    return out


CODERS = {"omp": batch_omp, "mp": matching_pursuit}


@numba.njit(cache=True, nogil=True)
def add_code_gram(code_gram, indices, values):
    """Add a block's code Gram matrix ``X^T X`` to ``code_gram``, upper triangle only.

    Parameters
    ----------
    code_gram : ndarray of shape (n_atoms, n_atoms), float64
        Updated in place: entry ``(j, k)``, ``j <= k``, gains ``sum_i x_ij x_ik``; the lower
        triangle is left as it is (the matrix is symmetric: half the scattered writes).
    indices, values : ndarrays of shape (n_samples, n_nonzero)
        Fixed-width codes (-1 / 0 padded).
    """
    n_samples, n_nonzero = indices.shape
    for i in range(n_samples):
        for s in range(n_nonzero):
            a = indices[i, s]
            if a < 0 or values[i, s] == 0.0:
                continue
            xa = np.float64(values[i, s])
            for t in range(s, n_nonzero):
                b = indices[i, t]
                if b < 0:
                    continue
                if a <= b:
                    code_gram[a, b] += xa * values[i, t]
                else:
                    code_gram[b, a] += xa * values[i, t]
