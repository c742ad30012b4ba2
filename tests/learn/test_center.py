"""Centred fits (center=True): the training mean is kept in the dictionary and every use of
the dictionary (encode, reconstruct, save/load, levels, the estimator, explain) applies it."""

import numpy as np
import pytest

import daskdict
from daskdict import cli
from daskdict.errors import InvalidInputError


@pytest.fixture(scope="module")
def offset_rows():
    """Sparse mixtures of 32 atoms plus a large common offset (the mean a fit should not
    spend atoms on)."""
    rng = np.random.default_rng(1)
    atoms = rng.standard_normal((32, 24))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((2000, 32))
    for row in codes:
        row[rng.choice(32, 3, replace=False)] = rng.normal(0.0, 1.0, 3)
    offset = 3.0 * rng.standard_normal(24)
    return (codes @ atoms + offset).astype(np.float32)


def _fit(rows, **options):
    return daskdict.fit(rows, 32, 3, 8, random_state=0, client="threads", verbose=False,
                        **options)


def test_centred_fit_keeps_the_mean_and_reconstructs_better(offset_rows):
    plain, centred = _fit(offset_rows), _fit(offset_rows, center=True)
    assert plain.mean is None and centred.params["center"] is True
    np.testing.assert_allclose(centred.mean, offset_rows.mean(axis=0, dtype=np.float64),
                               rtol=1e-6, atol=1e-6)

    def error(model):
        codes = model.encode(offset_rows, client="threads")
        return np.linalg.norm(offset_rows - model.reconstruct(codes)) / np.linalg.norm(
            offset_rows - offset_rows.mean(axis=0))

    # with the offset removed the atoms go to the mixtures: the centred error is far lower
    assert error(centred) < 0.5 * error(plain)


def test_encode_codes_the_rows_minus_the_mean(offset_rows):
    centred = _fit(offset_rows, center=True)
    same_atoms = daskdict.Dictionary(centred.atoms, {**centred.params, "center": False})
    ours = centred.encode(offset_rows, client="threads").to_dense()
    theirs = same_atoms.encode(offset_rows - centred.mean.astype(np.float32),
                               client="threads").to_dense()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_store_read_out_of_core_gives_the_atoms_of_the_array(tmp_path, offset_rows):
    daskdict.create_store(tmp_path / "e.zarr", {"final": offset_rows}, chunk_rows=300)
    from_store = _fit(tmp_path / "e.zarr", center=True)
    np.testing.assert_allclose(from_store.atoms, _fit(offset_rows, center=True).atoms,
                               atol=1e-5)


def test_the_mean_survives_save_load_levels_and_the_estimator(tmp_path, offset_rows):
    centred = _fit(offset_rows, center=True)
    centred.save(tmp_path / "d.zarr")
    np.testing.assert_array_equal(daskdict.load(tmp_path / "d.zarr").mean, centred.mean)
    levels = daskdict.fit(offset_rows, [16, 16], [1, 2], 4, center=True, random_state=0,
                          client="threads", verbose=False)
    np.testing.assert_allclose(levels.mean, centred.mean, rtol=1e-6)
    assert [p["center"] for p in levels.params["levels"]] == [True, False]
    estimator = daskdict.KSVD(32, 3, 4, center=True, random_state=0).fit(offset_rows)
    back = estimator.inverse_transform(estimator.transform(offset_rows))
    assert np.linalg.norm(back - offset_rows) < 0.5 * np.linalg.norm(offset_rows)
    estimator.save(tmp_path / "k.zarr")
    np.testing.assert_array_equal(daskdict.load(tmp_path / "k.zarr").dictionary_.mean,
                                  estimator.dictionary_.mean)


def test_a_centred_fit_resumes_and_refuses_an_uncentred_checkpoint(tmp_path, offset_rows):
    checkpoint = tmp_path / "state.zarr"
    first = daskdict.fit(offset_rows, 32, 3, 2, center=True, random_state=0,
                         checkpoint=checkpoint, verbose=False)
    resumed = daskdict.fit(offset_rows, 32, 3, 4, center=True, random_state=0,
                           checkpoint=checkpoint, verbose=False)
    whole = daskdict.fit(offset_rows, 32, 3, 4, center=True, random_state=0, verbose=False)
    assert resumed.history[:2] == first.history
    np.testing.assert_allclose(resumed.atoms, whole.atoms, atol=1e-5)
    with pytest.raises(daskdict.CheckpointMismatchError):
        daskdict.fit(offset_rows, 32, 3, 4, random_state=0, checkpoint=checkpoint,
                     verbose=False)


def test_center_must_be_a_bool(offset_rows):
    with pytest.raises(InvalidInputError, match="center to be True or False"):
        daskdict.fit(offset_rows, 32, 3, 2, center="yes", verbose=False)


def test_cli_fits_a_centred_dictionary(tmp_path, offset_rows):
    daskdict.create_store(tmp_path / "e.zarr", {"final": offset_rows}, chunk_rows=500)
    out = tmp_path / "d.zarr"
    assert cli.main(["fit", str(tmp_path / "e.zarr"), "--atoms", "32", "--nonzero", "3",
                     "--iters", "2", "--center", "--out", str(out), "--in-process",
                     "--quiet"]) == 0
    assert daskdict.load(out).mean is not None
