"""The PyTorch device coder against the numba coders, on the CPU build of torch."""

import subprocess
import sys

import numpy as np
import pytest

from daskdict.datasets.planted import make_planted
from daskdict.errors import InvalidInputError
from daskdict.learn import device_coder, kernels, nonnegative

torch = pytest.importorskip("torch")


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _numba(y, atoms, n_nonzero, tol, positive=False):
    """The numba coder's codes, from the correlations the device coder makes on the CPU when
    it codes all rows in one batch (the same GEMM shape, so the same bits)."""
    corr = np.matmul(y, atoms.T)
    gram = atoms @ atoms.T
    sqnorms = np.einsum("ij,ij->i", y, y)
    coder = nonnegative.nonnegative_omp if positive else kernels.batch_omp
    return coder(corr, gram, sqnorms, n_nonzero, tol)


def _device(y, atoms, n_nonzero, tol, positive=False, rows_per_batch=None):
    return device_coder.device_batch_omp(y, atoms, atoms @ atoms.T, n_nonzero, tol,
                                         device="cpu", positive=positive,
                                         rows_per_batch=rows_per_batch or len(y))


def _reconstruct(indices, values, atoms):
    return kernels.codes_times_atoms(indices, values, atoms).astype(np.float64)


def _assert_close(ref, got, atoms, share=0.99):
    """Same supports (in order) for ``share`` of the rows, values within 1e-4 relative where
    they agree, and close reconstructions."""
    (ri, rv), (di, dv) = ref, got
    assert di.dtype == np.int32 and dv.dtype == np.float32
    assert di.shape == dv.shape == ri.shape
    same = (ri == di).all(axis=1)
    assert same.mean() >= share
    scale = np.abs(rv[same]).max(axis=1, keepdims=True) + 1e-30
    assert np.all(np.abs(rv[same] - dv[same]) <= 1e-4 * scale)
    assert np.all(dv[di < 0] == 0)
    np.testing.assert_allclose(_reconstruct(di, dv, atoms)[same],
                               _reconstruct(ri, rv, atoms)[same], atol=1e-4)


@pytest.fixture
def gaussian(rng):
    atoms = _unit(rng.standard_normal((96, 24)))
    return rng.standard_normal((300, 24)).astype(np.float32), atoms


def test_gaussian_rows_match_the_numba_coder(gaussian):
    y, atoms = gaussian
    ref = _numba(y, atoms, 6, 0.0)
    got = _device(y, atoms, 6, 0.0)
    _assert_close(ref, got, atoms)
    # the same correlations give the same codes: same arithmetic, in the same order
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    assert (got[0] >= 0).all()  # no early stop on random rows


def test_batches_and_compaction_do_not_change_the_codes(gaussian):
    y, atoms = gaussian
    one = _device(y, atoms, 6, 0.4)
    small = _device(y, atoms, 6, 0.4, rows_per_batch=37)  # other GEMM shapes, other rounding
    _assert_close(one, small, atoms)


def test_planted_rows_match_and_recover_the_planted_supports():
    planted = make_planted(400, 64, 96, 4, snr_db=30.0, random_state=3, dtype=np.float32)
    y, atoms = planted.data, planted.atoms.astype(np.float32)
    ref = _numba(y, atoms, 4, 0.0)
    got = _device(y, atoms, 4, 0.0, rows_per_batch=128)
    _assert_close(ref, got, atoms)
    recovered = np.mean([set(a) == set(b) for a, b in zip(got[0], planted.indices,
                                                          strict=True)])
    assert recovered > 0.85
    residual = np.linalg.norm(y - _reconstruct(*got, atoms), axis=1)
    assert np.median(residual / np.linalg.norm(y, axis=1)) < 0.1


def test_tol_stops_rows_as_the_numba_coder_does(gaussian):
    y, atoms = gaussian
    tol = 0.5
    ref = _numba(y, atoms, 10, tol)
    got = _device(y, atoms, 10, tol)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    n_used = (got[0] >= 0).sum(axis=1)
    assert n_used.min() < n_used.max() <= 10
    early = n_used < 10
    assert early.any()
    residual = np.linalg.norm(y - _reconstruct(*got, atoms), axis=1)
    assert np.all(residual[early] <= tol * np.linalg.norm(y, axis=1)[early] * (1 + 1e-4))


@pytest.mark.parametrize("positive", [False, True])
def test_zero_rows_and_rows_within_tol_get_empty_codes(gaussian, positive):
    y, atoms = gaussian
    y = y[:20].copy()
    y[[0, 5, 19]] = 0.0
    indices, values = _device(y, atoms, 5, 0.0, positive)
    assert np.all(indices[[0, 5, 19]] == -1) and np.all(values[[0, 5, 19]] == 0)
    assert np.all(indices[[1, 2, 3]] >= 0)
    # tol >= 1: every row is already within tolerance
    indices, values = _device(y, atoms, 5, 1.0, positive)
    assert np.all(indices == -1) and np.all(values == 0)


def test_rows_in_the_span_of_few_atoms_stop_when_the_residual_vanishes(rng):
    atoms = _unit(rng.standard_normal((40, 16)))
    y = (rng.standard_normal((30, 2)) @ atoms[[3, 7]]).astype(np.float32)
    y[:10] = atoms[11] * 2.0  # an atom itself: one step, then every correlation is ~0
    ref = _numba(y, atoms, 6, 1e-3)
    got = _device(y, atoms, 6, 1e-3)
    np.testing.assert_array_equal(got[0], ref[0])
    assert np.all(got[0][:10, 0] == 11) and np.all(got[0][:10, 1:] == -1)
    np.testing.assert_allclose(got[1][:10, 0], 2.0, rtol=1e-5)


@pytest.mark.parametrize("positive", [False, True])
def test_n_nonzero_equal_to_n_features(rng, positive):
    atoms = _unit(rng.standard_normal((30, 12)))
    y = rng.standard_normal((50, 12)).astype(np.float32)
    ref = _numba(y, atoms, 12, 0.0, positive)
    got = _device(y, atoms, 12, 0.0, positive)
    _assert_close(ref, got, atoms)
    if not positive:
        residual = y - _reconstruct(*got, atoms)
        assert np.abs(residual).max() < 1e-3 * np.abs(y).max()


@pytest.mark.parametrize("positive", [False, True])
def test_n_nonzero_above_n_atoms(rng, positive):
    atoms = _unit(rng.standard_normal((5, 12)))
    y = rng.standard_normal((40, 12)).astype(np.float32)
    ref = _numba(y, atoms, 9, 0.0, positive)
    got = _device(y, atoms, 9, 0.0, positive)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    n_used = (got[0] >= 0).sum(axis=1)
    assert n_used.max() <= 5 and np.all(got[0][:, 5:] == -1)
    assert positive or n_used.min() == 5  # signed rows use every atom there is


@pytest.mark.parametrize("positive", [False, True])
def test_duplicate_atoms_stop_on_linear_dependence(rng, positive):
    base = _unit(rng.standard_normal((10, 8)))
    atoms = np.vstack([base, base[:5]])  # atoms 10..14 repeat atoms 0..4
    y = rng.standard_normal((60, 8)).astype(np.float32)
    ref = _numba(y, atoms, 12, 0.0, positive)  # more atoms than the rows' dimension
    got = _device(y, atoms, 12, 0.0, positive)
    _assert_close(ref, got, atoms)
    if not positive:
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    n_used = (got[0] >= 0).sum(axis=1)
    assert n_used.max() <= 8  # the 9th atom is dependent on the first 8
    assert positive or (n_used == 8).mean() > 0.5  # (not: every correlation exactly 0)
    for row in got[0]:
        chosen = row[row >= 0] % 10
        assert len(set(chosen)) == chosen.size  # never an atom and its copy
    assert np.all(np.isfinite(got[1])) and np.abs(got[1]).max() < 1e3


@pytest.mark.parametrize("tol", [0.0, 0.3])
def test_positive_codes_match_the_nonnegative_coder(rng, tol):
    centres = rng.standard_normal((6, 20))
    atoms = _unit(centres[rng.integers(0, 6, 64)] + 0.5 * rng.standard_normal((64, 20)))
    y = rng.standard_normal((300, 20)).astype(np.float32)
    ref = _numba(y, atoms, 8, tol, positive=True)
    got = _device(y, atoms, 8, tol, positive=True, rows_per_batch=90)
    _assert_close(ref, got, atoms)
    indices, values = got
    valid = indices >= 0
    assert np.all(values[valid] > 0) and np.all(values[~valid] == 0)
    assert np.all(np.diff(valid.astype(int), axis=1) <= 0)  # padding after the atoms


def test_positive_coefficients_are_nnls_optimal(rng):
    atoms = _unit(rng.standard_normal((50, 16)))
    y = rng.standard_normal((80, 16)).astype(np.float32)
    indices, values = _device(y, atoms, 6, 0.0, positive=True)
    for i in range(len(y)):
        keep = indices[i] >= 0
        support, coef = indices[i][keep], values[i][keep].astype(np.float64)
        sub = atoms[support].astype(np.float64)
        gradient = sub @ (y[i] - coef @ sub)
        # KKT on the support: coefficients > 0 have zero gradient
        assert np.abs(gradient).max() < 1e-4 * np.linalg.norm(y[i])


def test_positive_planted_codes_recover_the_planted_supports(rng):
    atoms = _unit(rng.standard_normal((120, 48)))
    codes = np.zeros((200, 120))
    for i in range(200):
        codes[i, rng.choice(120, 3, replace=False)] = rng.uniform(0.5, 2.0, 3)
    y = (codes @ atoms).astype(np.float32)
    ref = _numba(y, atoms, 3, 0.0, positive=True)
    got = _device(y, atoms, 3, 0.0, positive=True)
    _assert_close(ref, got, atoms)
    assert np.mean([set(np.flatnonzero(c)) == set(r) for c, r in zip(codes, got[0],
                                                                     strict=True)]) > 0.95


def test_empty_shapes(gaussian):
    y, atoms = gaussian
    indices, values = _device(y, atoms, 0, 0.0)
    assert indices.shape == values.shape == (300, 0)
    indices, values = device_coder.device_batch_omp(y[:0], atoms, atoms @ atoms.T, 3, 0.0,
                                                    device="cpu")
    assert indices.shape == (0, 3) and indices.dtype == np.int32


@pytest.mark.parametrize("n_atoms,n_nonzero", [(3072, 10), (64, 4), (10**6, 200)])
def test_batch_rows_bound_the_working_state(n_atoms, n_nonzero):
    rows = device_coder.batch_rows(n_atoms, n_nonzero)
    assert device_coder.MIN_BATCH_ROWS <= rows <= device_coder.MAX_BATCH_ROWS
    if rows > device_coder.MIN_BATCH_ROWS:
        assert rows * n_atoms * (n_nonzero + 8) * 4 <= device_coder.STATE_BYTES
    cpu_rows = device_coder.batch_rows(n_atoms, n_nonzero, device_type="cpu")
    assert device_coder.MIN_BATCH_ROWS <= cpu_rows <= rows
    assert device_coder.batch_rows(n_atoms, n_nonzero, positive=True) >= rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_missing_cuda_device_is_a_named_error(gaussian, device):
    y, atoms = gaussian
    with pytest.raises(InvalidInputError, match="sees no CUDA device") as info:
        device_coder.device_batch_omp(y, atoms, atoms @ atoms.T, 3, 0.0, device=device)
    assert repr(device) in str(info.value) and "is_available() is False" in str(info.value)
    assert device_coder.available_devices() == ["cpu"]


@pytest.mark.parametrize("device", ["tpu", "mps", 3.5])
def test_unsupported_device_is_a_named_error(gaussian, device):
    y, atoms = gaussian
    with pytest.raises(InvalidInputError, match="device"):
        device_coder.device_batch_omp(y, atoms, atoms @ atoms.T, 3, 0.0, device=device)


def test_missing_torch_names_the_extra(gaussian, monkeypatch):
    y, atoms = gaussian
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(InvalidInputError, match=r"daskdict\[embed\]"):
        device_coder.device_batch_omp(y, atoms, atoms @ atoms.T, 3, 0.0, device="cpu")
    assert device_coder.available_devices() == []


@pytest.mark.parametrize("change,match", [
    (lambda y, a, g: (y[:, :5], a, g), "n_features"),
    (lambda y, a, g: (y, a, g[:5]), "Gram matrix of shape"),
    (lambda y, a, g: (np.where(np.arange(len(y))[:, None] == 7, np.nan, y), a, g), "row 7"),
    (lambda y, a, g: (y, a, np.full_like(g, np.inf)), "Gram matrix hold NaN"),
    (lambda y, a, g: (y[:, :0], a[:, :0], g), "at least one atom"),
])
def test_bad_input_is_a_named_error(gaussian, change, match):
    y, atoms = gaussian
    with pytest.raises(InvalidInputError, match=match):
        device_coder.device_batch_omp(*change(y, atoms, atoms @ atoms.T), 3, 0.0,
                                      device="cpu")


@pytest.mark.parametrize("n_nonzero,tol", [(-1, 0.0), (2.5, 0.0), (True, 0.0), (3, -0.1),
                                           (3, float("nan")), (3, "0.1")])
def test_bad_parameters_are_named_errors(gaussian, n_nonzero, tol):
    y, atoms = gaussian
    with pytest.raises(InvalidInputError, match=r"n_nonzero|tol"):
        device_coder.device_batch_omp(y, atoms, atoms @ atoms.T, n_nonzero, tol, device="cpu")


@pytest.mark.parametrize("rows", [0, -5, 2.0, True, "8"])
def test_bad_rows_per_batch_is_a_named_error(gaussian, rows):
    y, atoms = gaussian
    with pytest.raises(InvalidInputError, match="rows_per_batch"):
        device_coder.device_batch_omp(y, atoms, atoms @ atoms.T, 3, 0.0, device="cpu",
                                      rows_per_batch=rows)


def test_exact_float32_window_turns_tf32_off_and_restores_it():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has only the legacy TF32 switch")
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        with device_coder.exact_float32(torch, torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
            with device_coder.exact_float32(torch, torch.device("cuda")):
                assert matmul.fp32_precision == "ieee"
            assert matmul.fp32_precision == "ieee"  # still one user
        assert matmul.fp32_precision == "tf32"
        with device_coder.exact_float32(torch, torch.device("cpu")):
            assert matmul.fp32_precision == "tf32"  # nothing changes off CUDA
    finally:
        matmul.fp32_precision = before


def test_device_correlations_are_the_float32_product(gaussian):
    y, atoms = gaussian
    corr = device_coder.device_correlations(torch, y, torch.from_numpy(atoms))
    assert corr.dtype == torch.float32 and tuple(corr.shape) == (300, 96)
    expected = y.astype(np.float64) @ atoms.T.astype(np.float64)
    np.testing.assert_allclose(corr.numpy(), expected, rtol=0, atol=1e-5)


def test_importing_daskdict_does_not_import_torch():
    code = ("import sys, daskdict, daskdict.learn.device_coder; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0
