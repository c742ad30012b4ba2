"""Held-out rows in a fit (validation=...): their error after each iteration, and early
stopping (patience=...) that keeps the best atoms."""

import dask
import dask.array as da
import numpy as np
import pytest

import daskdict
from daskdict.datasets import make_planted
from daskdict.errors import InvalidInputError

N_ATOMS, N_NONZERO = 40, 3


@pytest.fixture(scope="module")
def planted():
    """Training rows and held-out rows of the same planted dictionary, and pure noise rows."""
    data = make_planted(3000, 20, N_ATOMS, N_NONZERO, snr_db=20, random_state=0,
                        dtype=np.float32).data
    noise = np.random.default_rng(1).standard_normal((400, 20)).astype(np.float32)
    return data[:2500], data[2500:], noise


def _fit(rows, n_iter, **options):
    options = {"random_state": 0, "client": "threads", "verbose": False, **options}
    return daskdict.fit(rows, N_ATOMS, N_NONZERO, n_iter, **options)


def _error(model, rows, centred_norm=False):
    """The relative error of ``rows`` coded by ``model.encode`` (relative to the centred rows
    when asked)."""
    back = model.reconstruct(model.encode(rows, client="threads"))
    norm = np.linalg.norm(model.centered(rows) if centred_norm else rows)
    return np.linalg.norm(rows - back) / norm


def test_the_recorded_error_is_that_of_encode_with_the_iterations_atoms(planted):
    train, held_out, _ = planted
    model = _fit(train, 4, validation=held_out)
    assert all("validation_error" in r and r["validation_seconds"] >= 0 for r in model.history)
    assert model.params["best_iteration"] >= 1 and model.params["patience"] is None
    assert model.params["validation"]["n_samples"] == len(held_out)
    np.testing.assert_allclose(model.history[-1]["validation_error"],
                               _error(model, held_out), rtol=1e-5)
    # an earlier iteration's record: the atoms of a fit of that many iterations
    shorter = _fit(train, 2)
    np.testing.assert_allclose(model.history[1]["validation_error"],
                               _error(shorter, held_out), rtol=1e-5)
    # the held-out rows are not trained on: the training history is that of a fit without them
    assert [r["relative_error"] for r in shorter.history] == [
        r["relative_error"] for r in model.history[:2]]


def test_the_error_does_not_depend_on_how_the_rows_are_chunked(planted):
    train, held_out, _ = planted
    whole = _fit(train, 2, validation=held_out)
    chunked = _fit(train, 2, validation=da.from_array(held_out, chunks=(77, -1)))
    # the same codes: only the order of the float64 sums differs
    np.testing.assert_allclose([r["validation_error"] for r in chunked.history],
                               [r["validation_error"] for r in whole.history], rtol=1e-12)


def test_patience_stops_when_the_error_stalls_and_keeps_the_best_atoms(planted):
    train, _, noise = planted
    model = _fit(train, 40, validation=noise, patience=2)
    errors = [r["validation_error"] for r in model.history]
    assert len(errors) < 40
    assert model.history[-1]["stopped_early"] is True
    assert not any(r.get("stopped_early") for r in model.history[:-1])
    best = model.params["best_iteration"]
    assert errors[best - 1] == min(errors) and best < len(errors)
    np.testing.assert_allclose(_error(model, noise), min(errors), rtol=1e-5)
    # the atoms kept are those of the best iteration, not the last one
    np.testing.assert_allclose(model.atoms, _fit(train, best).atoms, atol=1e-6)


def test_patience_needs_validation_and_a_positive_count(planted):
    train, held_out, _ = planted
    with pytest.raises(InvalidInputError, match="validation"):
        _fit(train, 2, patience=3)
    with pytest.raises(InvalidInputError, match="patience"):
        _fit(train, 2, validation=held_out, patience=0)


def _untouchable(shape):
    """A dask array that fails if anything computes it."""
    def fail():
        raise AssertionError("the data was read")
    return da.from_delayed(dask.delayed(fail)(), shape, np.float32)


def test_bad_validation_rows_are_refused_before_any_work(planted, tmp_path):
    train, held_out, _ = planted
    with pytest.raises(InvalidInputError, match="validation rows with 20 features"):
        _fit(_untouchable(train.shape), 2, validation=held_out[:, :10])
    with pytest.raises(InvalidInputError, match="validation rows with 20 features"):
        daskdict.fit(_untouchable(train.shape), [8, 8], [1, 2], 2,
                     validation=held_out[:, :10], verbose=False)
    with pytest.raises(InvalidInputError, match="training data itself"):
        _fit(train, 2, validation=train)
    daskdict.create_store(tmp_path / "t.zarr", {"final": train})
    with pytest.raises(InvalidInputError, match="training source"):
        _fit(tmp_path / "t.zarr", 2, validation=str(tmp_path / "t.zarr"))
    bad = held_out.copy()
    bad[5, 3] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        _fit(train, 2, validation=da.from_array(bad, chunks=(50, -1)))


def test_validation_rows_from_a_store(planted, tmp_path):
    train, held_out, _ = planted
    daskdict.create_store(tmp_path / "t.zarr", {"final": train}, chunk_rows=700)
    daskdict.create_store(tmp_path / "v.zarr", {"final": held_out}, chunk_rows=150)
    in_memory = _fit(train, 2, validation=held_out)
    from_path = _fit(tmp_path / "t.zarr", 2, validation=tmp_path / "v.zarr")
    from_store = _fit(tmp_path / "t.zarr", 2,
                      validation=daskdict.open_store(tmp_path / "v.zarr"))
    for model in (from_path, from_store):
        np.testing.assert_allclose([r["validation_error"] for r in model.history],
                                   [r["validation_error"] for r in in_memory.history],
                                   rtol=1e-5)
    assert from_path.params["validation"]["path"] == str((tmp_path / "v.zarr").resolve())


def test_a_centred_fit_codes_the_rows_minus_the_mean(planted):
    train, held_out, _ = planted
    offset = np.linspace(-3.0, 3.0, 20).astype(np.float32)
    model = _fit(train + offset, 3, validation=held_out + offset, center=True)
    recorded = model.history[-1]["validation_error"]
    # relative to the centred rows, like the training error of a centred fit
    np.testing.assert_allclose(recorded, _error(model, held_out + offset, centred_norm=True),
                               rtol=1e-5)
    # the offset costs nothing: the error is about that of the uncentred rows without it
    plain = _fit(train, 3, validation=held_out, center=True)
    assert abs(recorded - plain.history[-1]["validation_error"]) < 0.02


def _untimed(history):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]


def test_a_stopped_fit_stays_stopped_and_an_interrupted_one_resumes_its_best_atoms(
        planted, tmp_path):
    train, _, noise = planted
    whole = _fit(train, 40, validation=noise, patience=2)
    n_run, best = len(whole.history), whole.params["best_iteration"]
    checkpoint = tmp_path / "state.zarr"
    # interrupted one iteration before it stops, when its best atoms are not its last ones
    cut = _fit(train, n_run - 1, validation=noise, patience=2, checkpoint=checkpoint)
    assert cut.params["best_iteration"] == best < n_run - 1
    assert (tmp_path / "state.zarr.best").exists()
    resumed = _fit(train, 40, validation=noise, patience=2, checkpoint=checkpoint)
    assert _untimed(resumed.history) == _untimed(whole.history)
    assert resumed.params["best_iteration"] == best
    np.testing.assert_allclose(resumed.atoms, whole.atoms, atol=1e-6)
    # stopped: resuming (even with more iterations, or without validation) runs none and
    # still returns the best atoms
    for again in (_fit(train, 60, validation=noise, checkpoint=checkpoint),
                  _fit(train, 60, checkpoint=checkpoint)):
        assert _untimed(again.history) == _untimed(whole.history)
        assert again.params["best_iteration"] == best
        np.testing.assert_allclose(again.atoms, whole.atoms, atol=1e-6)


def test_levels_validate_each_level_on_what_the_levels_before_leave(planted):
    train, held_out, _ = planted
    model = daskdict.fit(train, [8, 32], [1, 2], 3, validation=held_out, random_state=0,
                         client="threads", verbose=False)
    assert [r["level"] for r in model.history] == [0, 0, 0, 1, 1, 1]
    assert all("validation_error" in r for r in model.history)
    coarse = daskdict.Dictionary(model.atoms[:8], model.params["levels"][0])
    left = held_out - coarse.reconstruct(coarse.encode(held_out, client="threads"))
    np.testing.assert_allclose(model.history[2]["validation_error"],
                               np.linalg.norm(left) / np.linalg.norm(held_out), rtol=1e-5)
    both = np.linalg.norm(held_out - model.reconstruct(model.encode(held_out,
                                                                    client="threads")))
    np.testing.assert_allclose(model.history[-1]["validation_error"],
                               both / np.linalg.norm(left), rtol=1e-4)


def test_the_progress_bar_shows_the_validation_error(planted, capsys):
    train, held_out, _ = planted
    _fit(train, 2, validation=held_out, verbose=True)
    assert "val_err=" in capsys.readouterr().err
