import numpy as np
import pytest
import sparse
from conftest import dense_codes
from sklearn.utils.estimator_checks import parametrize_with_checks

import daskdict
from daskdict.datasets.planted import make_planted


@pytest.fixture(scope="module")
def planted():
    return make_planted(1200, 16, 32, 3, 25.0, random_state=0)


@pytest.fixture(scope="module")
def model(planted):
    return daskdict.fit(planted.data, 32, 3, 40, random_state=0, verbose=False)


def test_encode_codes_and_sparse(planted, model):
    codes = model.encode(planted.data)
    assert codes.indices.shape == (1200, 3) and codes.indices.dtype == np.int32
    assert codes.values.shape == (1200, 3)
    coo = codes.to_sparse()
    assert isinstance(coo, sparse.COO) and coo.shape == (1200, 32)
    np.testing.assert_allclose(coo.todense(), dense_codes(codes.indices, codes.values, 32))
    recon = model.reconstruct(codes)
    assert np.linalg.norm(planted.data - recon) / np.linalg.norm(planted.data) < 0.2


def test_encode_with_tolerance_and_fewer_nonzeros(planted, model):
    codes = model.encode(planted.data, n_nonzero=2)
    assert codes.indices.shape == (1200, 2)
    loose = model.encode(planted.data, tol=0.9)
    assert (loose.indices >= 0).sum() < (model.encode(planted.data).indices >= 0).sum()


def test_encode_store_writes_codes_next_to_it(tmp_path, planted, model):
    path = tmp_path / "emb.zarr"
    daskdict.create_store(path, {"final": planted.data}, chunk_rows=500)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    codes = model.encode(path, client="threads")
    assert (tmp_path / "emb.zarr.codes-final.zarr").exists()
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    in_memory = model.encode(planted.data.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(codes.indices), in_memory.indices)
    reloaded = daskdict.Codes.load(tmp_path / "emb.zarr.codes-final.zarr")
    assert reloaded.shape == (1200, 32)
    explicit = model.encode(path, out=tmp_path / "codes.zarr", client="sync")
    np.testing.assert_array_equal(np.asarray(explicit.values), np.asarray(codes.values))


def test_save_and_load_roundtrip(tmp_path, model, planted):
    path = model.save(tmp_path / "dict.zarr")
    loaded = daskdict.load(path)
    np.testing.assert_array_equal(loaded.atoms, model.atoms)
    assert loaded.params == model.params
    assert loaded.history == model.history
    assert loaded.fingerprint == model.fingerprint
    np.testing.assert_array_equal(loaded.encode(planted.data).indices,
                                  model.encode(planted.data).indices)
    # saving again needs overwrite=True, replaces atomically and leaves no temporary folders
    with pytest.raises(daskdict.OutputNotWritableError, match="overwrite"):
        model.save(path)
    model.save(path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["dict.zarr"]
    assert not list(tmp_path.rglob("*.pkl"))


def test_load_refuses_other_kinds(tmp_path, planted, model):
    codes = model.encode(planted.data).save(tmp_path / "codes.zarr")
    with pytest.raises(daskdict.InvalidInputError, match="dictionary"):
        daskdict.Dictionary.load(codes)
    assert isinstance(daskdict.load(codes), daskdict.Codes)  # the generic loader reads any kind
    with pytest.raises(daskdict.StoreNotFoundError):
        daskdict.load(tmp_path / "missing.zarr")


def test_ksvd_estimator(planted):
    est = daskdict.KSVD(n_atoms=32, n_nonzero=3, n_iter=40, random_state=0)
    codes = est.fit_transform(planted.data)
    assert codes.shape == (1200, 32)
    assert est.components_.shape == (32, 16)
    assert est.n_iter_ == 40 and len(est.error_) == 40
    assert ((codes != 0).sum(axis=1) <= 3).all()
    recon = est.inverse_transform(codes)
    assert np.linalg.norm(planted.data - recon) / np.linalg.norm(planted.data) < 0.2


# The checks draw tiny data sets (a few samples, 1-5 features), so the estimator is checked with
# a dictionary small enough for them; a single sample cannot fit 3 atoms and gets the clear error.
@parametrize_with_checks(
    [daskdict.KSVD(n_atoms=3, n_nonzero=1, n_iter=2, random_state=0, client="sync")],
    expected_failed_checks=lambda est: {
        "check_fit2d_1sample": "a dictionary needs at least as many samples as atoms",
    },
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
