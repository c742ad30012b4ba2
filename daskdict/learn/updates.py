"""Dictionary updates of K-SVD, atom replacement and the initial dictionary.

``mod_update`` (the default up to 4,096 atoms: the method of optimal directions, the
least-squares dictionary for the iteration's codes; see its docstring).

``approx_update`` (the approximate K-SVD of Rubinstein, Zibulevsky & Elad (2008),
Efficient Implementation of the K-SVD Algorithm using Batch Orthogonal Matching Pursuit): for
OMP codes ``E_w d_j = x_wj`` (the residual is orthogonal to the chosen atoms), so
``E_w^T x_wj`` is one power step towards the leading right singular vector of the restricted
residual ``E_w`` from the current atom; all atoms are updated from the iteration's start state.

``ksvd_update`` is textbook K-SVD (Aharon, Elad & Bruckstein (2006), K-SVD: An Algorithm for
Designing Overcomplete Dictionaries for Sparse Representation): each atom and its coefficients
are replaced by the leading singular pair of the restricted residual.

Unused atoms (fewer than ``MIN_ATOM_USAGE`` users) and near-duplicates (``|d_i . d_j| >
MAX_COHERENCE``) are replaced by the worst-represented samples, as the K-SVD toolbox's
``clearDictionary`` does (at most ``n_candidates(n_atoms)`` per iteration).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.blas

from daskdict.compute.runtime import blas_controller
from daskdict.errors import InvalidInputError
from daskdict.learn import coding, kernels

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


def exact_ksvd_block(y, atoms, gram, n_nonzero, tol, coder, n_worst, order, batch_size):
    """Textbook K-SVD on a block holding all the data: code, then update atoms by batches.

    Returns the block's statistics and the new atoms, shape (n_atoms, n_features).
    """
    y, indices, values, stats = coding.code_and_summarise(y, atoms, gram, n_nonzero, tol, coder,
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
    residual = y - kernels.codes_times_atoms(indices, values, atoms)
    rows_of, column_of = _users(indices, values, atoms.shape[0])
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        updates = []
        for j in batch:
            rows, columns = rows_of[j], column_of[j]
            if rows.size == 0:
                continue
            coef = values[rows, columns]
            restricted = residual[rows] + np.outer(coef, atoms[j])
            u, s, vt = _leading_singular_pair(restricted)
            sign = -1.0 if vt @ atoms[j] < 0 else 1.0
            updates.append((j, rows, columns, coef, sign * vt, sign * s * u))
        for j, rows, columns, coef, atom, new_coef in updates:
            residual[rows] += np.outer(coef, atoms[j]) - np.outer(new_coef, atom)
            atoms[j] = atom
            values[rows, columns] = new_coef
    return atoms


def _users(indices, values, n_atoms):
    """For each atom, the rows using it and the column of the atom in those rows' codes."""
    used = (indices >= 0) & (values != 0)
    rows, columns = np.nonzero(used)
    atom_ids = indices[rows, columns]
    order = np.argsort(atom_ids, kind="stable")
    bounds = np.searchsorted(atom_ids[order], np.arange(n_atoms + 1))
    rows_of = [rows[order[bounds[j]:bounds[j + 1]]] for j in range(n_atoms)]
    column_of = [columns[order[bounds[j]:bounds[j + 1]]] for j in range(n_atoms)]
    return rows_of, column_of


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


# The step of the all-at-once update for non-negative codes. One-sided atoms share their users
# more than signed ones, so full steps of all atoms at once overshoot together and the error
# climbs after a few iterations; half a step (``d_j + step * sum r_i x_ij / |x_j|^2``) keeps
# it falling.
POSITIVE_STEP = 0.5


def approx_update(atoms: np.ndarray, stats: dict, step: float = 1.0) -> np.ndarray:
    """All atoms from one power step: ``d_j ∝ E_w^T x_wj = sum r_i x_ij + d_j |x_j|^2``.

    ``step < 1`` damps it: ``d_j ∝ step * sum r_i x_ij + d_j |x_j|^2``.
    """
    direction = step * stats["restricted"] + atoms * stats["coef_sq"][:, None]
    norms = np.linalg.norm(direction, axis=1)
    ok = norms > 0
    # in place: masked copies of the whole matrix would cost more than the update
    np.divide(direction, norms[:, None], out=direction, where=ok[:, None])
    direction[~ok] = atoms[~ok]  # unused atoms stay as they were
    return direction


# Ridge of the method of optimal directions, relative to the used atoms' mean diagonal of X^T X
# (at least 16 roundings of the solve's dtype): atoms whose users always come together (or
# with very few users) leave X^T X singular or nearly so.
MOD_RIDGE = 1e-8


def mod_update(atoms: np.ndarray, stats: dict) -> np.ndarray:
    """All atoms at once by the method of optimal directions, rows then normalised.

    The least-squares dictionary for the iteration's codes, ``D = (X^T X)^{-1} X^T Y``
    (Engan, Aase & Husøy (1999), Method of optimal directions for frame design): every atom
    is moved knowing how its users share rows with the others' (which the one power step of
    :func:`approx_update` ignores), at the price of the code Gram matrix ``X^T X`` in the
    statistics. Since ``X^T Y = restricted + X^T X D``, it is the step
    ``D + (X^T X)^{-1} restricted`` from the current atoms: no ``X^T Y`` is summed and no
    n_atoms^2 x n_features product is made.

    Parameters
    ----------
    atoms : ndarray of shape (n_atoms, n_features)
        The solve runs in their dtype (float32 atoms: float32, twice as fast as float64 on
        the one n_atoms^3 / 3 operation of the update).
    stats : dict
        Iteration statistics with ``"code_gram"`` (its upper triangle, see
        :func:`daskdict.learn.kernels.add_code_gram`).

    Returns
    -------
    ndarray of shape (n_atoms, n_features), float64
        Unit rows; an atom no row uses stays as it was.
    """
    dtype = np.result_type(atoms.dtype, np.float32)
    # one BLAS thread: a factorisation sums in another order on another number of threads,
    # and the atoms must not depend on the machine a fit runs or resumes on
    with blas_controller().limit(limits=1, user_api="blas"):
        step = _mod_step(stats["code_gram"], stats["restricted"], dtype)
    new = np.asarray(atoms, dtype=np.float64) + step
    norms = np.linalg.norm(new, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    new[ok] /= norms[ok, None]
    new[~ok] = atoms[~ok]
    return new


def _mod_step(upper, restricted, dtype):
    """``(X^T X + ridge)^{-1} restricted`` in ``dtype``, zero for atoms no row uses.

    From the upper triangle alone: the Cholesky factorisation reads no other entry, so the
    symmetric matrix is never filled in (a fallback for a factorisation that fails does).
    """
    code_gram = np.array(upper, dtype=dtype)
    target = np.array(restricted, dtype=dtype)
    diagonal = np.diag(code_gram).copy()
    unused = diagonal <= 0
    # an unused atom gets the equation scale * step_j = 0, and stays out of the others'
    code_gram[unused, :] = 0.0
    code_gram[:, unused] = 0.0
    # the scale of the used atoms' squared coefficients (what the ridge is relative to)
    scale = float(diagonal[~unused].mean()) if (~unused).any() else 1.0
    diagonal[unused] = scale
    target[unused] = 0.0
    ridge = max(MOD_RIDGE, 16 * float(np.finfo(dtype).eps)) * scale
    np.fill_diagonal(code_gram, diagonal + ridge)
    try:
        factor = scipy.linalg.cho_factor(code_gram, lower=False, overwrite_a=True,
                                         check_finite=False)
        return scipy.linalg.cho_solve(factor, target, overwrite_b=True, check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        code_gram = np.array(upper, dtype=dtype)
        code_gram[unused, :] = 0.0
        code_gram[:, unused] = 0.0
        np.fill_diagonal(code_gram, diagonal + ridge)
        code_gram += np.triu(code_gram, 1).T
        return scipy.linalg.lstsq(code_gram, target, check_finite=False)[0]


def _largest_coherence(single: np.ndarray) -> np.ndarray:
    """``max_{k != j} |d_j . d_k|`` for every atom j, shape (n_atoms,).

    From the upper triangle of the Gram matrix (``ssyrk``: half the work of the full product):
    row j's largest entry off the diagonal is the larger of its row's and its column's in the
    triangle.
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


def summary(stats: dict, n_rows: int, n_zero_rows: int, n_features: int) -> dict:
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


def initial_atoms(data: Any, init: Any, n_atoms: int, rng: np.random.Generator,
                  dtype: Any) -> np.ndarray:
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
    """k-means++ initialisation (D² sampling) with the sign-invariant distance
    ``1 - (d . y)^2`` of unit vectors."""
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
