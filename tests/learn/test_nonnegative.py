import numba
import numpy as np
import pytest
from conftest import dense_codes, unit_rows
from scipy.optimize import nnls

from daskdict.learn import kernels
from daskdict.learn import nonnegative as nn


def _inputs(y, atoms):
    return y @ atoms.T, atoms @ atoms.T, np.einsum("ij,ij->i", y, y)


def _clustered_atoms(rng, n_atoms=48, n_features=32, n_clusters=8):
    """Atoms around a few centres: correlated enough that the refit drops atoms."""
    centres = rng.standard_normal((n_clusters, n_features))
    atoms = centres[rng.integers(0, n_clusters, n_atoms)]
    return unit_rows(atoms + 0.5 * rng.standard_normal((n_atoms, n_features)))


def _planted_positive(rng, n=400, d=64, k_atoms=128, n_nonzero=3):
    atoms = unit_rows(rng.standard_normal((k_atoms, d)))
    codes = np.zeros((n, k_atoms))
    for i in range(n):
        codes[i, rng.choice(k_atoms, n_nonzero, replace=False)] = rng.uniform(0.5, 2.0,
                                                                              n_nonzero)
    return codes @ atoms, atoms, codes


def _support(indices, values, i):
    keep = indices[i] >= 0
    return indices[i][keep], values[i][keep].astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_codes_are_non_negative_and_well_formed(rng, dtype):
    atoms = _clustered_atoms(rng).astype(dtype)
    y = rng.standard_normal((300, atoms.shape[1])).astype(dtype)
    indices, values = nn.nonnegative_omp(*_inputs(y, atoms), 12, 0.0)
    assert indices.dtype == np.int32 and values.dtype == dtype
    assert indices.shape == values.shape == (300, 12)
    valid = indices >= 0
    assert np.all(values >= 0.0)
    assert np.all(values[valid] > 0.0)
    assert np.all(values[~valid] == 0.0)
    # padding only after the stored atoms
    assert np.all(np.diff(valid.astype(int), axis=1) <= 0)
    for i in range(300):
        support = indices[i][valid[i]]
        assert len(set(support)) == support.size
    assert valid.sum(axis=1).min() >= 1


def test_coefficients_are_the_nnls_solution_on_the_support(rng):
    atoms = _clustered_atoms(rng)
    y = rng.standard_normal((200, atoms.shape[1]))
    indices, values = nn.nonnegative_omp(*_inputs(y, atoms), 10, 0.0)
    for i in range(200):
        support, coef = _support(indices, values, i)
        expected, _ = nnls(atoms[support].T, y[i])
        np.testing.assert_allclose(coef, expected, atol=1e-6)
        residual = y[i] - coef @ atoms[support]
        np.testing.assert_allclose(atoms[support] @ residual, 0.0, atol=1e-9)


def test_without_a_budget_limit_it_is_the_global_nnls_solution(rng):
    # Non-negative OMP with Lawson-Hanson refits, run until no correlation is positive, is
    # Lawson-Hanson's NNLS over the whole dictionary (atoms do leave the support here)
    atoms = _clustered_atoms(rng)
    y = rng.standard_normal((100, atoms.shape[1]))
    indices, values = nn.nonnegative_omp(*_inputs(y, atoms), atoms.shape[1], 0.0)
    expected = np.array([nnls(atoms.T, row)[0] for row in y])
    np.testing.assert_allclose(dense_codes(indices, values, atoms.shape[0]), expected,
                               atol=1e-8)
    # a row's residual has no positive correlation left
    residual = y - dense_codes(indices, values, atoms.shape[0]) @ atoms
    assert (residual @ atoms.T).max() <= 1e-9


def test_recovers_planted_non_negative_codes(rng):
    y, atoms, codes = _planted_positive(rng)
    indices, values = nn.nonnegative_omp(*_inputs(y, atoms), 3, 0.0)
    found = dense_codes(indices, values, atoms.shape[0])
    exact = np.all(np.abs(found - codes) < 1e-8, axis=1)
    assert exact.mean() >= 0.97


def test_same_as_batch_omp_when_its_solution_is_non_negative(rng):
    y, atoms, _ = _planted_positive(rng, n_nonzero=4)
    y = y + 0.05 * rng.standard_normal(y.shape)
    inputs = _inputs(y, atoms)
    signed_idx, signed_val = kernels.batch_omp(*inputs, 4, 0.0)
    idx, val = nn.nonnegative_omp(*inputs, 4, 0.0)
    positive = np.all(signed_val > 0, axis=1)
    assert positive.mean() > 0.5  # the comparison covers many rows
    for i in np.flatnonzero(positive):
        np.testing.assert_array_equal(idx[i], signed_idx[i])
        np.testing.assert_allclose(val[i], signed_val[i], rtol=1e-9, atol=1e-12)


def test_rows_without_positive_correlation_and_zero_rows_get_empty_codes(rng):
    atoms = unit_rows(np.abs(rng.standard_normal((40, 16))))  # in the positive orthant
    y = rng.standard_normal((10, 16))
    y[0] = -np.abs(y[0])  # every correlation < 0
    y[1] = 0.0
    indices, values = nn.nonnegative_omp(*_inputs(y, atoms), 5, 0.0)
    assert np.all(indices[:2] == -1) and np.all(values[:2] == 0.0)
    assert np.all(indices[2:, 0] >= 0)


def test_tolerance_stops_early(rng):
    y, atoms, _ = _planted_positive(rng, n=200, d=32, k_atoms=64, n_nonzero=8)
    y = y + 0.05 * rng.standard_normal(y.shape)
    inputs = _inputs(y, atoms)
    tol = 0.3
    indices, values = nn.nonnegative_omp(*inputs, 16, tol)
    full_idx, _ = nn.nonnegative_omp(*inputs, 16, 0.0)
    x = dense_codes(indices, values, atoms.shape[0])
    rel = np.linalg.norm(y - x @ atoms, axis=1) / np.linalg.norm(y, axis=1)
    n_used = (indices >= 0).sum(axis=1)
    stopped = n_used < (full_idx >= 0).sum(axis=1)
    assert stopped.mean() > 0.5  # the tolerance, not the budget, ended most rows
    assert np.all(rel[stopped] <= tol + 1e-9)


def test_float32_is_close_to_float64(rng):
    y, atoms, _ = _planted_positive(rng, n_nonzero=5)
    y = y + 0.05 * rng.standard_normal(y.shape)
    idx64, val64 = nn.nonnegative_omp(*_inputs(y, atoms), 5, 0.0)
    y32, atoms32 = y.astype(np.float32), atoms.astype(np.float32)
    idx32, val32 = nn.nonnegative_omp(*_inputs(y32, atoms32), 5, 0.0)
    assert val32.dtype == np.float32
    same = np.all(idx32 == idx64, axis=1)
    assert same.mean() >= 0.95
    np.testing.assert_allclose(val32[same], val64[same], rtol=1e-3, atol=1e-4)


def test_duplicated_atoms_do_not_blow_up(rng):
    atoms = unit_rows(rng.standard_normal((30, 12)))
    atoms[7] = atoms[3]
    codes = np.zeros((100, 30))
    codes[:, 3] = rng.uniform(0.5, 2.0, 100)
    codes[:, 11] = rng.uniform(0.5, 2.0, 100)
    y = codes @ atoms + 0.1 * rng.standard_normal((100, 12))
    for dtype in (np.float64, np.float32):
        indices, values = nn.nonnegative_omp(*_inputs(y.astype(dtype), atoms.astype(dtype)),
                                             8, 0.0)
        assert np.isfinite(values).all() and np.abs(values).max() < 10.0
        for i in range(100):
            support = indices[i][indices[i] >= 0]
            assert len(set(support)) == support.size
            assert not {3, 7} <= set(support)


def test_empty_budget_and_empty_block(rng):
    atoms = unit_rows(rng.standard_normal((10, 4)))
    y = rng.standard_normal((3, 4))
    indices, values = nn.nonnegative_omp(*_inputs(y, atoms), 0, 0.0)
    assert indices.shape == values.shape == (3, 0)
    indices, values = nn.nonnegative_omp(*_inputs(y[:0], atoms), 4, 0.0)
    assert indices.shape == values.shape == (0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_helpers_match_their_references(rng, dtype):
    @numba.njit
    def compiled(alpha, row, step):
        best = nn._positive_argmax(alpha)
        work = alpha.copy()
        top = nn._update_top(work, row, step)
        return best, top, nn._find_top(work, top), work

    for case in range(20):
        alpha = rng.standard_normal(37).astype(dtype)
        if case % 4 == 0:
            alpha = -np.abs(alpha)  # nothing positive
        if case % 4 == 1:
            alpha[[3, 20]] = alpha.max() + 1  # a tie: the first index wins
        row = rng.standard_normal(37).astype(dtype)
        best, top, found, work = compiled(alpha, row, 0.5)
        assert best == nn._positive_argmax(alpha)
        reference = alpha.copy()
        assert top == nn._update_top(reference, row, 0.5)
        np.testing.assert_array_equal(work, reference)
        assert found == nn._find_top(reference, top)
        if reference.max() > 0:
            assert found == int(np.argmax(reference))


def test_registry():
    assert nn.POSITIVE_CODERS == {"omp": nn.nonnegative_omp}
