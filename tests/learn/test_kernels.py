import warnings

import numba
import numpy as np
import pytest
from conftest import dense_codes, unit_rows
from sklearn.linear_model import orthogonal_mp_gram

from daskdict.learn import kernels as _kernels


def _problem(rng, n=200, d=32, k_atoms=96, dtype=np.float64):
    atoms = unit_rows(rng.standard_normal((k_atoms, d))).astype(dtype)
    y = rng.standard_normal((n, d)).astype(dtype)
    return y, atoms, atoms @ atoms.T, y @ atoms.T, np.einsum("ij,ij->i", y, y)


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-10), (np.float32, 1e-4)])
@pytest.mark.parametrize("n_nonzero", [1, 3, 8])
def test_batch_omp_matches_sklearn(rng, dtype, atol, n_nonzero):
    _, atoms, gram, corr, sq = _problem(rng, dtype=dtype)
    indices, values = _kernels.batch_omp(corr, gram, sq, n_nonzero, 0.0)
    assert indices.dtype == np.int32 and values.dtype == dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = orthogonal_mp_gram(gram.astype(np.float64), corr.T.astype(np.float64),
                                      n_nonzero_coefs=n_nonzero).T
    np.testing.assert_allclose(dense_codes(indices, values, atoms.shape[0]), expected, atol=atol)


def test_batch_omp_tolerance_stops_early(rng):
    y, atoms, gram, corr, sq = _problem(rng, d=16, k_atoms=64)
    indices, values = _kernels.batch_omp(corr, gram, sq, 16, 0.3)
    x = dense_codes(indices, values, atoms.shape[0])
    rel = np.linalg.norm(y - x @ atoms, axis=1) / np.linalg.norm(y, axis=1)
    n_used = (indices >= 0).sum(axis=1)
    assert np.all(rel <= 0.3 + 1e-9)
    assert n_used.mean() < 16  # the tolerance, not the budget, ended most rows
    # one atom fewer would not have reached the tolerance
    short = _kernels.batch_omp(corr, gram, sq, 16, 0.0)
    assert np.all(n_used <= (short[0] >= 0).sum(axis=1))


@pytest.mark.parametrize("coder", ["omp", "mp"])
def test_zero_rows_get_empty_codes(rng, coder):
    y, atoms, gram, corr, sq = _problem(rng)
    y[[0, 5]] = 0.0
    corr, sq = y @ atoms.T, np.einsum("ij,ij->i", y, y)
    indices, values = _kernels.CODERS[coder](corr, gram, sq, 5, 0.0)
    assert np.all(indices[[0, 5]] == -1)
    assert np.all(values[[0, 5]] == 0.0)
    assert np.isfinite(values).all()


def test_mp_refit_is_least_squares_on_its_support(rng):
    y, atoms, gram, corr, sq = _problem(rng)
    indices, values = _kernels.matching_pursuit(corr, gram, sq, 6, 0.0)
    for i in range(20):
        support = indices[i][indices[i] >= 0]
        assert len(set(support)) == len(support) <= 6
        coef, *_ = np.linalg.lstsq(atoms[support].T, y[i], rcond=None)
        np.testing.assert_allclose(values[i][: len(support)], coef, atol=1e-8)


def test_omp_recovers_exact_sparse_codes(rng):
    atoms = unit_rows(rng.standard_normal((80, 40)))
    truth = np.zeros((50, 80))
    for row in truth:
        row[rng.choice(80, 4, replace=False)] = rng.standard_normal(4) + 2 * np.sign(
            rng.standard_normal(4))
    y = truth @ atoms
    indices, values = _kernels.batch_omp(y @ atoms.T, atoms @ atoms.T,
                                         np.einsum("ij,ij->i", y, y), 4, 0.0)
    np.testing.assert_allclose(dense_codes(indices, values, 80), truth, atol=1e-8)


@pytest.mark.parametrize("block_rows", [1, 7, 2048])
def test_residual_statistics_against_numpy(rng, block_rows):
    y, atoms, gram, corr, sq = _problem(rng)
    indices, values = _kernels.batch_omp(corr, gram, sq, 5, 0.0)
    indices[3, 2:], values[3, 2:] = -1, 0.0  # a shorter code, and a zero coefficient
    values[4, 1] = 0.0
    x = dense_codes(indices, values, atoms.shape[0])
    residual = y - x @ atoms
    stats = _kernels.residual_statistics(y, atoms, indices, values, 7, block_rows)
    restricted, coef_sq, usage, sums, row_sum, worst_err, worst_rows = stats
    np.testing.assert_allclose(restricted, x.T @ residual, atol=1e-10)
    np.testing.assert_allclose(coef_sq, (x**2).sum(0))
    np.testing.assert_array_equal(usage, (x != 0).sum(0))
    errors = (residual**2).sum(1)
    np.testing.assert_allclose(sums[:2], [errors.sum(), (y**2).sum()])
    np.testing.assert_allclose(sums[2], np.mean(np.sqrt(errors / sq)) * len(y))
    np.testing.assert_allclose(row_sum, y.sum(0))
    order = np.argsort(-errors)[:7]
    np.testing.assert_allclose(worst_err, errors[order])
    np.testing.assert_array_equal(worst_rows, y[order])
    # the rows are grouped by atom within blocks of rows, but each atom's sum runs in row
    # order: the same bits whatever the block size
    whole = _kernels.residual_statistics(y, atoms, indices, values, 7, len(y))
    for got, expected in zip(stats, whole, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_codes_times_atoms(rng):
    _, atoms, gram, corr, sq = _problem(rng)
    indices, values = _kernels.batch_omp(corr, gram, sq, 5, 0.0)
    np.testing.assert_allclose(_kernels.codes_times_atoms(indices, values, atoms),
                               dense_codes(indices, values, atoms.shape[0]) @ atoms, atol=1e-12)


@numba.njit
def _compiled_abs_argmax(alpha):
    return _kernels._abs_argmax(alpha)


@numba.njit
def _compiled_find_bits(alpha, top):
    return _kernels._find_bits(alpha, top)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 200, 3072])
def test_abs_argmax_is_the_first_largest_magnitude(rng, dtype, n):
    for _ in range(20):
        alpha = rng.standard_normal(n).astype(dtype)
        if n > 3:  # a tie between a positive and a negative entry: the first wins
            alpha[n // 2] = -np.abs(alpha).max() * 2
            alpha[n - 1] = -alpha[n // 2]
        best, value = _compiled_abs_argmax(alpha)
        assert best == np.argmax(np.abs(alpha))
        assert value == np.abs(alpha).max()
        assert _kernels._abs_argmax(alpha) == (best, value)
    assert _compiled_abs_argmax(np.zeros(n, dtype))[1] == 0.0


def test_find_bits_reports_a_missing_value():
    alpha = np.array([0.5, -2.0, 1.0], dtype=np.float32)
    top = _kernels._shifted_bits(np.float32(2.0))
    assert _compiled_find_bits(alpha, top) == 1
    assert _compiled_find_bits(alpha, _kernels._shifted_bits(np.float32(3.0))) == -1
    assert _kernels._find_bits(alpha, top) == 1


@numba.njit
def _compiled_new_direction(proj, s, row, lower, alpha, step, scale):
    return _kernels._new_direction(proj, s, row, lower, alpha, step, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("s", [0, 1, 2, 5])
def test_new_direction_matches_its_reference(rng, dtype, s):
    n = 300
    proj = rng.standard_normal((7, n)).astype(dtype)  # the last row is scratch
    lower = rng.standard_normal((6, 6))
    row, alpha = rng.standard_normal((2, n)).astype(dtype)
    step, scale = 0.7, 1.3
    expected_proj, expected_alpha = proj.copy(), alpha.copy()
    expected_top = _kernels._new_direction(expected_proj, s, row, lower, expected_alpha, step,
                                           scale)
    top = _compiled_new_direction(proj, s, row, lower, alpha, step, scale)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(proj[:-1], expected_proj[:-1], rtol=tol, atol=tol)
    np.testing.assert_allclose(alpha, expected_alpha, rtol=tol, atol=tol)
    np.testing.assert_array_equal(proj[:s], expected_proj[:s])  # earlier directions untouched
    # top is the largest |alpha|: it finds that entry
    assert _compiled_find_bits(alpha, top) == np.argmax(np.abs(alpha))
    assert abs(alpha).max() == pytest.approx(abs(expected_alpha).max(), rel=tol)
    assert top == expected_top or dtype == np.float32
