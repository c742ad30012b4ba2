"""Non-negative codes (positive=True): fit, encode, save and the command line keep them."""

import numpy as np
import pytest
import zarr

import daskdict
from daskdict import cli
from daskdict.errors import InvalidInputError


@pytest.fixture(scope="module")
def parts():
    """Rows that are non-negative mixtures of 24 parts (3 per row)."""
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((24, 20))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((1500, 24))
    for row in codes:
        row[rng.choice(24, 3, replace=False)] = rng.uniform(0.5, 2.0, 3)
    return (codes @ atoms).astype(np.float32), atoms


def test_positive_fit_codes_every_row_with_positive_weights(parts):
    y, _ = parts
    model = daskdict.fit(y, 24, 3, 30, positive=True, random_state=0, verbose=False)
    signed = daskdict.fit(y, 24, 3, 30, random_state=0, verbose=False)
    codes, signed_codes = model.encode(y), signed.encode(y)
    used = codes.indices >= 0
    assert (codes.values[used] > 0).all() and (codes.values[~used] == 0).all()
    assert (signed_codes.values < 0).any()  # the constraint is what makes them positive
    assert model.params["positive"] is True


def test_positive_fit_keeps_improving(parts):
    """All atoms updated at once with full steps make the error climb back with one-sided
    codes; the damped step keeps it falling."""
    errors = [r["relative_error"] for r in daskdict.fit(
        parts[0], 24, 3, 30, positive=True, random_state=0, verbose=False).history]
    assert errors[-1] < 0.5 * errors[0]
    assert max(errors[20:]) < errors[10]


def test_positive_codes_survive_save_load_and_levels(tmp_path, parts):
    y, _ = parts
    model = daskdict.fit(y, [6, 24], [1, 2], 5, positive=True, random_state=0, verbose=False)
    loaded = daskdict.load(model.save(tmp_path / "d.zarr"))
    codes = loaded.encode(y)
    assert (codes.values[codes.indices >= 0] > 0).all()
    np.testing.assert_array_equal(codes.values, model.encode(y).values)


def test_estimator_takes_positive(parts):
    y, _ = parts
    dense = daskdict.KSVD(24, 3, 5, positive=True, random_state=0).fit(y).transform(y)
    assert (dense >= 0).all() and (dense > 0).any()


@pytest.mark.parametrize("options, words", [
    ({"coder": "mp"}, "needs coder='omp'"),
    ({"update": "ksvd"}, "needs update='approx'"),
])
def test_positive_refuses_what_cannot_keep_codes_positive(parts, options, words):
    with pytest.raises(InvalidInputError, match=words):
        daskdict.fit(parts[0], 24, 3, 2, positive=True, verbose=False, **options)
    with pytest.raises(InvalidInputError, match="positive True or False"):
        daskdict.fit(parts[0], 24, 3, 2, positive="yes", verbose=False)


def test_cli_fits_positive_codes(tmp_path, parts, capsys):
    store = tmp_path / "emb.zarr"
    daskdict.create_store(store, {"final": parts[0]}, chunk_rows=500)
    out = tmp_path / "d.zarr"
    assert cli.main(["fit", str(store), "--atoms", "24", "--nonzero", "3", "--iters", "2",
                     "--positive", "--out", str(out), "--in-process", "--quiet"]) == 0
    assert daskdict.load(out).params["positive"] is True


def test_a_checkpoint_from_before_positive_existed_resumes(tmp_path, parts):
    checkpoint = tmp_path / "state.zarr"
    first = daskdict.fit(parts[0], 24, 3, 2, random_state=0, checkpoint=checkpoint,
                         verbose=False)
    group = zarr.open_group(checkpoint, mode="r+")
    header = dict(group.attrs["daskdict"])
    header["params"] = {k: v for k, v in header["params"].items() if k != "positive"}
    group.attrs["daskdict"] = header
    resumed = daskdict.fit(parts[0], 24, 3, 3, random_state=0, checkpoint=checkpoint,
                           verbose=False)
    assert resumed.history[:2] == first.history and len(resumed.history) == 3
