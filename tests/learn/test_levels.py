"""Dictionaries with levels: coarse concepts first, finer ones learned on what they leave."""

import json

import numpy as np
import pytest

import daskdict
from daskdict import cli
from daskdict.datasets import write_named_planted_store
from daskdict.datasets.planted import make_planted
from daskdict.errors import InvalidInputError
from daskdict.explanations import item_concepts
from daskdict.learn.levels import level_seed

SIZES, NONZEROS = [8, 32], [1, 2]


@pytest.fixture(scope="module")
def planted():
    return make_planted(1200, 16, 32, 3, 25.0, random_state=0)


@pytest.fixture(scope="module")
def model(planted):
    return daskdict.fit(planted.data, SIZES, NONZEROS, 8, random_state=0, verbose=False)


def test_each_level_is_a_fit_of_what_the_levels_before_leave(planted, model):
    assert model.level_sizes == SIZES and model.level_nonzeros == NONZEROS
    assert model.n_atoms == 40 and model.params["n_nonzero"] == 3
    coarse = daskdict.fit(planted.data, 8, 1, 8, random_state=0, verbose=False)
    np.testing.assert_array_equal(model.atoms[:8], coarse.atoms)
    residual = planted.data.astype(np.float32) - coarse.reconstruct(coarse.encode(planted.data))
    fine = daskdict.fit(residual, 32, 2, 8, random_state=level_seed(0, 1), verbose=False)
    np.testing.assert_allclose(model.atoms[8:], fine.atoms, atol=1e-5)
    assert [r["level"] for r in model.history] == [0] * 8 + [1] * 8


def test_codes_hold_each_levels_atoms_and_reconstruct_better(planted, model):
    codes = model.encode(planted.data)
    assert codes.level_sizes == SIZES and codes.indices.shape == (1200, 3)
    coarse, fine = codes.indices[:, :1], codes.indices[:, 1:]
    assert ((coarse >= 0) & (coarse < 8)).all()  # every row has its coarse concept
    assert ((fine == -1) | ((fine >= 8) & (fine < 40))).all()
    np.testing.assert_array_equal(codes.atom_levels(), [0] * 8 + [1] * 32)
    y = planted.data.astype(np.float32)
    whole = np.linalg.norm(y - model.reconstruct(codes)) / np.linalg.norm(y)
    first = codes.to_csr()[:, :8] @ model.atoms[:8]
    assert whole < 0.8 * np.linalg.norm(y - first) / np.linalg.norm(y)
    fewer = model.encode(planted.data, n_nonzero=[1, 1])
    assert fewer.indices.shape == (1200, 2)
    np.testing.assert_array_equal(fewer.indices[:, 0], codes.indices[:, 0])


def test_store_and_memory_give_the_same_levels(tmp_path, planted, model):
    path = tmp_path / "emb.zarr"
    daskdict.create_store(path, {"final": planted.data}, chunk_rows=500)
    from_store = daskdict.fit(path, SIZES, NONZEROS, 8, random_state=0, client="threads",
                              verbose=False)
    np.testing.assert_allclose(from_store.atoms, model.atoms, atol=1e-4)
    codes = from_store.encode(path, client="threads")
    assert codes.level_sizes == SIZES
    again = daskdict.Codes.load(codes.path)
    assert again.level_sizes == SIZES
    np.testing.assert_array_equal(np.asarray(again.indices), np.asarray(codes.indices))


def test_levels_survive_save_and_load(tmp_path, planted, model):
    path = model.save(tmp_path / "dict.zarr")
    loaded = daskdict.load(path)
    assert loaded.level_sizes == SIZES and loaded.level_nonzeros == NONZEROS
    np.testing.assert_array_equal(loaded.encode(planted.data).indices,
                                  model.encode(planted.data).indices)
    assert daskdict.describe(path)["level_sizes"] == SIZES


@pytest.mark.parametrize("n_atoms, n_nonzero, words", [
    ([8, 32], 2, "one n_atoms and one n_nonzero per level"),
    (8, [1, 2], "one n_atoms and one n_nonzero per level"),
    ([8, 32], [1], "same length"),
    ([8, 32], [1, 40], "n_nonzero=40"),
    ([8, 5000], [1, 2], "n_atoms=5000"),
])
def test_bad_levels_are_refused_before_any_work(tmp_path, planted, n_atoms, n_nonzero, words):
    out, checkpoint = tmp_path / "dict.zarr", tmp_path / "state.zarr"
    with pytest.raises(InvalidInputError, match=words):
        daskdict.fit(planted.data, n_atoms, n_nonzero, 3, out=out, checkpoint=checkpoint,
                     verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_levels_take_init_by_name_and_codes_one_count_per_level(planted, model):
    with pytest.raises(InvalidInputError, match="init by name"):
        daskdict.fit(planted.data, SIZES, NONZEROS, 3, init=np.eye(8, 16), verbose=False)
    with pytest.raises(InvalidInputError, match="2 levels"):
        model.encode(planted.data, n_nonzero=3)


def test_each_level_checkpoints_and_resumes(tmp_path, planted, model):
    checkpoint = tmp_path / "state.zarr"
    first = daskdict.fit(planted.data, SIZES, NONZEROS, 8, random_state=0,
                         checkpoint=checkpoint, verbose=False)
    assert (tmp_path / "state.zarr.level1").is_dir() and (tmp_path / "state.zarr.level2").is_dir()
    resumed = daskdict.fit(planted.data, SIZES, NONZEROS, 8, random_state=0,
                           checkpoint=checkpoint, verbose=False)
    np.testing.assert_array_equal(resumed.atoms, first.atoms)
    assert resumed.history == first.history


def test_cli_fits_levels(tmp_path, planted, capsys):
    store = tmp_path / "emb.zarr"
    daskdict.create_store(store, {"final": planted.data}, chunk_rows=600)
    out = tmp_path / "dict.zarr"
    assert cli.main(["fit", str(store), "--atoms", "8", "32", "--nonzero", "1", "2",
                     "--iters", "3", "--out", str(out), "--in-process", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["level_sizes"] == SIZES
    assert daskdict.load(out).level_sizes == SIZES


def test_levels_reach_explanations_and_item_concepts(tmp_path):
    store, _, _ = write_named_planted_store(tmp_path / "planted.zarr", 2000, 32, 16, 2, 30.0,
                                            random_state=0)
    model = daskdict.fit(store.path, [4, 16], [1, 1], 5, random_state=0, client="threads",
                         verbose=False)
    codes = model.encode(store.path, client="threads")
    explanations = daskdict.explain(codes, store)
    assert explanations.meta["level_sizes"] == [4, 16]
    assert {row["level"] for row in explanations.level(0).rows} == {0}
    assert all(row["atom"] >= 4 for row in explanations.level(1).rows)
    items = item_concepts(model, explanations, store, rows=[0, 1])
    for item, atoms in zip(items, codes.compute().indices[:2], strict=True):
        levels = {c["atom"]: c["level"] for c in item["concepts"]}
        assert levels == {int(a): int(a >= 4) for a in atoms if a >= 0}
