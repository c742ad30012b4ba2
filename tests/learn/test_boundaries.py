"""The boundaries of daskdict.learn: outputs never replace inputs and fail before any work,
parameters and data are checked where they enter, codes do not depend on their batch, and every
learned object saves and loads through daskdict.io.formats."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import dense_codes
from sklearn.utils.estimator_checks import parametrize_with_checks

import daskdict
import daskdict.learn.dictionary as dictionary_mod
import daskdict.learn.training as training
from daskdict.datasets.planted import make_planted
from daskdict.errors import InvalidInputError, OutputNotWritableError
from daskdict.io import formats
from daskdict.learn import KSVD, checkpoints, codes_to_csr, unit_rows

N, D, K, S = 1200, 16, 32, 3


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def planted():
    return make_planted(N, D, K, S, 25.0, random_state=0, dtype=np.float32)


@pytest.fixture(scope="module")
def model(planted):
    return daskdict.fit(planted.data, K, S, 5, random_state=0, verbose=False)


@pytest.fixture
def store(tmp_path, planted):
    path = tmp_path / "emb.zarr"
    daskdict.create_store(path, {"final": planted.data}, chunk_rows=400)
    return path


@pytest.fixture
def work(monkeypatch):
    """Records every initialisation, iteration and coded chunk: refusals come before all."""
    calls: list[str] = []
    real_init, real_iterate = training.initial_atoms, training._iterate
    real_encode = dictionary_mod.encode_block
    monkeypatch.setattr(training, "initial_atoms",
                        lambda *a, **k: calls.append("init") or real_init(*a, **k))
    monkeypatch.setattr(training, "_iterate",
                        lambda *a, **k: calls.append("iterate") or real_iterate(*a, **k))
    monkeypatch.setattr(dictionary_mod, "encode_block",
                        lambda *a, **k: calls.append("encode") or real_encode(*a, **k))
    return calls


# --------------------------------------------------------------------------- outputs


def test_fit_refuses_its_input_as_output_before_any_work(store, work):
    before = tree_hashes(store)
    for out in (store, store / "layers" / "final", store.parent):
        with pytest.raises(OutputNotWritableError, match="input"):
            daskdict.fit(store, K, S, 2, out=out, client="sync", verbose=False)
    assert work == [] and tree_hashes(store) == before


def test_fit_refuses_an_unwritable_output_before_any_work(store, work):
    with pytest.raises(OutputNotWritableError, match="/proc"):
        daskdict.fit(store, K, S, 2, out="/proc/x.zarr", client="sync", verbose=False)
    with pytest.raises(OutputNotWritableError, match="/proc"):
        daskdict.fit(store, K, S, 2, checkpoint="/proc/ck.zarr", client="sync",
                     verbose=False)
    assert work == []


def test_fit_saves_to_out_and_refuses_to_replace_it(store, tmp_path, work):
    out = tmp_path / "dict.zarr"
    fitted = daskdict.fit(store, K, S, 2, out=out, client="sync", random_state=0,
                          verbose=False)
    np.testing.assert_array_equal(daskdict.load(out).atoms, fitted.atoms)
    work.clear()
    with pytest.raises(OutputNotWritableError, match="overwrite"):
        daskdict.fit(store, K, S, 2, out=out, client="sync", verbose=False)
    assert work == []
    again = daskdict.fit(store, K, S, 3, out=out, overwrite=True, client="sync",
                         random_state=0, verbose=False)
    assert len(daskdict.load(out).history) == len(again.history) == 3


def test_encode_refuses_its_input_as_output_before_any_work(store, model, work):
    before = tree_hashes(store)
    with pytest.raises(OutputNotWritableError, match="input"):
        model.encode(store, out=store, client="sync")
    with pytest.raises(OutputNotWritableError, match="input"):
        model.encode(store, out=store, overwrite=True, client="sync")
    with pytest.raises(OutputNotWritableError, match="/proc"):
        model.encode(store, out="/proc/codes.zarr", client="sync")
    assert work == [] and tree_hashes(store) == before


def test_dictionary_save_never_replaces_an_embedding_store(store, model):
    before = tree_hashes(store)
    for overwrite in (False, True):
        with pytest.raises(OutputNotWritableError, match="embedding store"):
            model.save(store, overwrite=overwrite)
    assert tree_hashes(store) == before
    assert daskdict.open_store(store).layer_array("final").shape == (N, D)


def test_codes_are_not_saved_over_their_own_store(tmp_path, planted, model):
    path = model.encode(planted.data).save(tmp_path / "codes.zarr")
    lazy = daskdict.Codes.load(path)
    with pytest.raises(OutputNotWritableError, match="input"):
        lazy.save(path, overwrite=True)
    assert formats.kind_of(path) == "codes"
    np.testing.assert_array_equal(np.asarray(daskdict.Codes.load(path).indices),
                                  np.asarray(lazy.indices))


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("kwargs, fragment", [
    ({"n_nonzero": 0}, "n_nonzero"), ({"n_nonzero": -1}, "n_nonzero"),
    ({"n_nonzero": K + 1}, "n_nonzero"), ({"n_nonzero": 2.5}, "n_nonzero"),
    ({"coder": "nope"}, "'nope'"), ({"tol": 2.0}, "tol"), ({"tol": -0.1}, "tol"),
])
def test_encode_checks_its_parameters_before_any_work(planted, model, work, kwargs, fragment):
    with pytest.raises(InvalidInputError, match=fragment) as info:
        model.encode(planted.data, client="sync", **kwargs)
    assert "negative dimensions" not in str(info.value)
    assert work == []


def test_encode_n_nonzero_above_n_atoms_is_refused(planted):
    small = daskdict.Dictionary(unit_rows(np.eye(4, D)), {"n_nonzero": 2})
    with pytest.raises(InvalidInputError, match="n_atoms=4"):
        small.encode(planted.data, n_nonzero=5, client="sync")
    assert small.encode(planted.data[:10], client="sync").indices.shape == (10, 2)


# --------------------------------------------------------------------------- overflow


@pytest.mark.parametrize("scale", [3e38, 1e30])
def test_values_whose_squares_overflow_float32_are_refused(planted, work, scale):
    data = planted.data.copy()
    data[7] = scale
    with pytest.raises(InvalidInputError, match="overflow") as info:
        daskdict.fit(data, K, S, 2, client="sync", verbose=False)
    assert "row 7" in str(info.value)
    with pytest.raises(InvalidInputError, match="overflow") as info:
        daskdict.fit(da.from_array(data, chunks=(400, D)), K, S, 2, client="sync",
                     verbose=False)
    assert "row 7" in str(info.value)
    assert "iterate" not in work and "init" not in work


def test_encode_refuses_values_whose_squares_overflow(planted, model, work):
    data = planted.data.copy()
    data[403] = 3e38
    for source in (data, da.from_array(data, chunks=(400, D))):
        with pytest.raises(InvalidInputError, match="overflow") as info:
            model.encode(source, client="sync")
        assert "row 403" in str(info.value)


# --------------------------------------------------------------------------- batches


def test_a_rows_code_does_not_depend_on_its_batch(planted):
    est = KSVD(n_nonzero=2, n_iter=3, random_state=0).fit(planted.data)
    whole = est.transform(planted.data)
    # a slice is other data: its rows sit elsewhere in their GEMMs, and some BLAS kernels sum
    # a row in an order that depends on its place, so its codes agree to float32 rounding
    # (a near tie may go the other way in a rare row)
    for start, size in [(0, 1), (5, 1), (3, 2), (17, 7), (100, 64), (999, 201), (1, 1100)]:
        part, same = est.transform(planted.data[start:start + size]), whole[start:start + size]
        agree = ((part != 0) == (same != 0)).all(axis=1)
        assert agree.mean() >= 0.99 or agree.sum() >= size - 1
        np.testing.assert_allclose(part[agree], same[agree], rtol=1e-5, atol=1e-6)
    # the same data chunked differently, in a dask array, with the in-process schedulers: the
    # same bits
    dictionary = est.dictionary_
    reference = dictionary.encode(planted.data)
    for chunks, client in [((250, D), "threads"), ((1, D), "sync"), ((1199, D), "threads")]:
        codes = dictionary.encode(da.from_array(planted.data, chunks=chunks), client=client)
        np.testing.assert_array_equal(np.asarray(codes.indices), reference.indices)
        np.testing.assert_array_equal(np.asarray(codes.values), reference.values)


@parametrize_with_checks([KSVD(n_atoms=3, n_nonzero=2, n_iter=2, random_state=0)],
                         expected_failed_checks=lambda est: {
    "check_fit2d_1sample": "a dictionary needs at least as many samples as atoms",
})
def test_ksvd_passes_scikit_learns_checks(estimator, check):
    check(estimator)


# --------------------------------------------------------------------------- formats


def test_codes_convert_to_csr_in_one_place(planted, model):
    codes = model.encode(planted.data)
    expected = dense_codes(codes.indices, codes.values, K)
    np.testing.assert_array_equal(codes_to_csr(codes).toarray(), expected)
    np.testing.assert_array_equal(codes_to_csr(codes.indices, codes.values, K).toarray(),
                                  expected)
    np.testing.assert_array_equal(codes.to_csr().toarray(), codes.to_dense())


def test_ksvd_saves_and_loads(tmp_path, planted):
    est = KSVD(n_atoms=K, n_nonzero=S, n_iter=3, random_state=0, client="sync")
    unfitted = KSVD.load(est.save(tmp_path / "unfitted.zarr"))
    assert unfitted.get_params() == est.get_params() and not hasattr(unfitted, "dictionary_")
    est.fit(planted.data)
    path = est.save(tmp_path / "ksvd.zarr")
    assert formats.kind_of(path) == "estimator"
    loaded = daskdict.load(path)
    assert isinstance(loaded, KSVD) and loaded.get_params() == est.get_params()
    np.testing.assert_array_equal(loaded.components_, est.components_)
    assert loaded.error_ == est.error_ and loaded.n_features_in_ == D
    np.testing.assert_array_equal(loaded.transform(planted.data[:50]),
                                  est.transform(planted.data[:50]))
    assert formats.describe(path)["fitted"] is True
    with pytest.raises(OutputNotWritableError, match="overwrite"):
        est.save(path)
    with pytest.raises(InvalidInputError, match="estimator"):
        KSVD.load(est.dictionary_.save(tmp_path / "dict.zarr"))


def test_headers_come_from_the_formats_module(tmp_path, planted, model, store):
    dict_path = model.save(tmp_path / "dict.zarr")
    codes_path = model.encode(planted.data).save(tmp_path / "codes.zarr")
    assert formats.kind_of(dict_path) == "dictionary" and formats.kind_of(codes_path) == "codes"
    assert formats.describe(dict_path)["n_atoms"] == K
    assert formats.describe(codes_path)["n_nonzero"] == S
    ck = tmp_path / "ck.zarr"
    daskdict.fit(store, K, S, 1, checkpoint=ck, client="sync", verbose=False)
    assert formats.kind_of(ck) == "checkpoint"
    assert len(checkpoints.load_checkpoint(ck)["history"]) == 1
    with pytest.raises(InvalidInputError, match="dictionary"):
        daskdict.Dictionary.load(ck)
