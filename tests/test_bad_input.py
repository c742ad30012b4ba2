"""Bad input: every mistake gets a daskdict error naming the problem, raised before any K-SVD work
starts (no initialisation, no iteration, no output written), and the input store is left
byte-identical. The same through the ``daskdict`` command: exit code 2, one line, no traceback.

These are the fit-centred cases in depth (non-finite rows counted across chunks, corrupt chunks,
damaged layers), and property-based ones drawn by hypothesis; test_bad_input_matrix.py runs every
entry point over every kind of bad input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from helpers_bad_input import api_refused, example, tree_hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskdict
import daskdict.learn.training as learn
from daskdict.cli.app import main as cli_main
from daskdict.datasets.planted import make_planted
from daskdict.errors import (
    CorruptChunkError,
    DaskdictError,
    InvalidInputError,
    StoreNotFoundError,
)

N, D, K, S, CHUNK = 2000, 16, 32, 3, 500


# --------------------------------------------------------------------------- helpers


def planted(seed=0) -> np.ndarray:
    return make_planted(N, D, K, S, random_state=seed).data.astype(np.float32)


def write_store(path: Path, data=None, **layers) -> Path:
    daskdict.create_store(path, {"final": planted() if data is None else data, **layers},
                          chunk_rows=CHUNK)
    return path


@pytest.fixture
def work(monkeypatch):
    """Records every initialisation and iteration: bad input must fail before both."""
    calls: list[str] = []
    real_init, real_iterate = learn.initial_atoms, learn._iterate

    def init(*a, **k):
        calls.append("init")
        return real_init(*a, **k)

    def iterate(*a, **k):
        calls.append("iterate")
        return real_iterate(*a, **k)

    monkeypatch.setattr(learn, "initial_atoms", init)
    monkeypatch.setattr(learn, "_iterate", iterate)
    return calls


def refused(work, exc_type, fragments, fn, *, watch=(), must_not_exist=()):
    """Call ``fn``; check the error type, that its message names every fragment, that no work
    started, that the watched paths are byte-identical and no output appeared."""
    before = {str(p): tree_hashes(p) for p in watch}
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error message: {message!r}"
    assert "\n" not in message.strip(), f"a multi-line message: {message!r}"
    assert work == [], f"work started before the error: {work}"
    for p in watch:
        assert tree_hashes(p) == before[str(p)], f"{p} was modified"
    for p in must_not_exist:
        assert not Path(p).exists(), f"{p} was written"
    return info.value


def fit_kw(**kw):
    base = dict(n_atoms=K, n_nonzero=S, n_iter=2, random_state=0, client="sync", verbose=False)
    return {**base, **kw}


# --------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_in_a_store(tmp_path, work, bad):
    data = planted()
    data[777, 3] = bad
    data[901, 0] = bad  # same chunk (rows 500-999)
    store = write_store(tmp_path / "s.zarr", data)
    ck = tmp_path / "ck.zarr"
    err = refused(work, InvalidInputError, ["NaN", "inf", "2 row(s)", "row 777"],
                  lambda: daskdict.fit(store, **fit_kw(checkpoint=ck)),
                  watch=[store], must_not_exist=[ck])
    assert isinstance(err, ValueError) and isinstance(err, DaskdictError)


def test_non_finite_rows_in_several_chunks_are_counted(tmp_path, work):
    data = planted()
    data[777, 3] = np.nan
    data[1500, 0] = np.nan
    store = write_store(tmp_path / "s.zarr", data)
    refused(work, InvalidInputError, ["2 row(s)", "first at row 777"],
            lambda: daskdict.fit(store, **fit_kw()), watch=[store])


def test_non_finite_rows_in_an_array(work):
    data = planted()
    data[12] = np.nan
    refused(work, InvalidInputError, ["NaN", "row 12"],
            lambda: daskdict.fit(data, **fit_kw()))
    data[12] = 0
    data[1999, 5] = np.inf
    refused(work, InvalidInputError, ["inf", "row 1999"],
            lambda: daskdict.fit(da.from_array(data, chunks=(700, -1)), **fit_kw()))


def test_non_finite_rows_at_encode(tmp_path, work):
    model = daskdict.fit(planted(), **fit_kw(client="threads"))
    work.clear()
    data = planted(1)
    data[1234, 2] = np.nan
    store = write_store(tmp_path / "s.zarr", data)
    default_out = tmp_path / "s.zarr.codes-final.zarr"
    refused(work, InvalidInputError, ["NaN", "row 1234"],
            lambda: model.encode(store, client="sync"), watch=[store],
            must_not_exist=[default_out])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"], "temporary files left"


# --------------------------------------------------------------------------- shape and dtype


@pytest.mark.parametrize("array, fragments", [
    (np.ones(16, dtype=np.float32), ["2-D", "1-D", "(16,)"]),
    (np.ones((10, 4, 4), dtype=np.float32), ["2-D", "(10, 4, 4)"]),
    (np.ones((100, 16), dtype=np.int64), ["floating-point", "int64"]),
    (np.full((100, 16), "x"), ["floating-point", "<U1"]),
    (np.ones((0, 16), dtype=np.float32), ["non-empty", "(0, 16)"]),
    (np.ones((100, 0), dtype=np.float32), ["non-empty", "(100, 0)"]),
], ids=["1d", "3d", "int", "str", "no-rows", "no-features"])
def test_bad_arrays(work, array, fragments):
    refused(work, InvalidInputError, fragments, lambda: daskdict.fit(array, **fit_kw()))


def _store_with_raw_layer(path: Path, array: np.ndarray) -> Path:
    """A store whose layer was written by hand (create_store refuses such layers)."""
    group = zarr.open_group(path, mode="w")
    group.attrs["daskdict"] = {"format": 1, "n_items": int(array.shape[0]), "layers": ["final"]}
    chunks = tuple(max(1, min(CHUNK, s)) for s in array.shape)
    layer = group.create_array("layers/final", shape=array.shape, dtype=array.dtype,
                               chunks=chunks)
    if array.size:
        layer[...] = array
    return path


@pytest.mark.parametrize("array, fragments", [
    (np.ones((40, 4, 4), dtype=np.float32), ["2-D", "(40, 4, 4)"]),
    (np.ones(40, dtype=np.float32), ["2-D", "(40,)"]),
    (np.ones((100, 16), dtype=np.int32), ["floating-point", "int32"]),
    (np.full((100, 16), "x", dtype=np.dtypes.StringDType()), ["floating-point", "String"]),
    (np.zeros((0, 16), dtype=np.float32), ["non-empty", "(0, 16)"]),
], ids=["3d", "1d", "int", "str", "no-rows"])
def test_bad_store_layers(tmp_path, work, array, fragments):
    store = _store_with_raw_layer(tmp_path / "s.zarr", array)
    refused(work, InvalidInputError, [*fragments, "layers/final"],
            lambda: daskdict.fit(store, **fit_kw()), watch=[store])


def test_bare_zarr_array_of_wrong_shape(tmp_path, work):
    path = tmp_path / "a.zarr"
    zarr.create_array(path, shape=(5, 4, 4), dtype=np.float32, chunks=(5, 4, 4))[...] = 1.0
    refused(work, InvalidInputError, ["2-D", "(5, 4, 4)"],
            lambda: daskdict.fit(path, **fit_kw()), watch=[path])


def test_create_store_refuses_bad_layers(tmp_path):
    for bad in (np.ones(16, np.float32), np.ones((4, 4, 4), np.float32),
                np.ones((4, 4), np.int16), np.ones((0, 4), np.float32)):
        with pytest.raises(InvalidInputError):
            daskdict.create_store(tmp_path / "s.zarr", {"final": bad})
        assert not (tmp_path / "s.zarr").exists()
    assert list(tmp_path.iterdir()) == [], "temporary folders left behind"


# --------------------------------------------------------------------------- stores and paths


def test_empty_store(tmp_path, work):
    bare = tmp_path / "bare.zarr"
    zarr.open_group(bare, mode="w").attrs["daskdict"] = {"format": 1}
    empty_layers = tmp_path / "empty.zarr"
    zarr.open_group(empty_layers, mode="w").create_group("layers")
    for store in (bare, empty_layers):
        refused(work, InvalidInputError, ["no layers", str(store)],
                lambda store=store: daskdict.fit(store, **fit_kw()), watch=[store])


def test_missing_path(tmp_path, work):
    missing = tmp_path / "nowhere.zarr"
    err = refused(work, StoreNotFoundError, [str(missing), "does not exist"],
                  lambda: daskdict.fit(missing, **fit_kw()), must_not_exist=[missing])
    assert isinstance(err, FileNotFoundError)
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        daskdict.open_store(missing)


def test_path_that_is_not_zarr(tmp_path, work):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    text = tmp_path / "data.csv"
    text.write_text("1,2,3\n")
    # a file is not a store: the message says what it is instead (io.formats' hints)
    refused(work, InvalidInputError, [str(text), "CSV"],
            lambda: daskdict.fit(text, **fit_kw()), watch=[text])
    refused(work, DaskdictError, [str(folder)], lambda: daskdict.fit(folder, **fit_kw()),
            watch=[folder])


def test_missing_layer_lists_available_layers(tmp_path, work):
    store = write_store(tmp_path / "s.zarr", mid=planted(1))
    refused(work, StoreNotFoundError, ["'nope'", "'final'", "'mid'"],
            lambda: daskdict.fit(store, layer="nope", **fit_kw()), watch=[store])
    # and an ambiguous store without "final" asks for layer=
    store2 = tmp_path / "two.zarr"
    daskdict.create_store(store2, {"a": planted(), "b": planted(1)}, chunk_rows=CHUNK)
    refused(work, InvalidInputError, ["'a'", "'b'", "layer="],
            lambda: daskdict.fit(store2, **fit_kw()), watch=[store2])


# --------------------------------------------------------------------------- parameters


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "s.zarr")


def test_n_nonzero_larger_than_features(store, work):
    refused(work, InvalidInputError, ["n_nonzero=17", "16"],
            lambda: daskdict.fit(store, **fit_kw(n_nonzero=17, n_atoms=64)), watch=[store])


def test_more_atoms_than_samples(store, work):
    refused(work, InvalidInputError, ["n_atoms=2001", "2000"],
            lambda: daskdict.fit(store, **fit_kw(n_atoms=2001)), watch=[store])


@pytest.mark.parametrize("kw, fragment", [
    ({"n_atoms": 0}, "n_atoms"),
    ({"n_nonzero": 0}, "n_nonzero"),
    ({"n_iter": -1}, "n_iter"), ({"n_atoms": 8, "n_nonzero": 9}, "n_nonzero=9"),
    ({"coder": "lasso"}, "'lasso'"), ({"update": "svd"}, "'svd'"), ({"tol": 1.5}, "tol"),
    ({"init": "zeros"}, "'zeros'"), ({"dtype": "float16"}, "float16"),
    ({"random_state": "seed"}, "random_state"),
    ({"update": "ksvd"}, "one chunk"),
])
def test_bad_parameters(store, work, kw, fragment):
    refused(work, InvalidInputError, [fragment],
            lambda: daskdict.fit(store, **fit_kw(**kw)), watch=[store])


def test_bad_init_array_is_refused_before_iterating(store, work):
    """The init array's shape is checked in initial_atoms (after the data's validation pass),
    still before any iteration."""
    with pytest.raises(InvalidInputError, match=rf"\({K}, {D}\)"):
        daskdict.fit(store, **fit_kw(init=np.ones((K, D + 1))))
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        daskdict.fit(store, **fit_kw(init=np.full((K, D), np.nan)))
    assert "iterate" not in work


# --------------------------------------------------------------------------- corrupt chunks


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_chunk_names_the_rows(store, work, damage):
    chunk = store / "layers" / "final" / "c" / "2" / "0"  # rows 1000-1499
    assert chunk.is_file(), sorted(p.name for p in chunk.parent.iterdir())
    raw = chunk.read_bytes()
    if damage == "garbage":
        chunk.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    else:
        chunk.write_bytes(raw[: len(raw) // 2])
    err = refused(work, CorruptChunkError, ["1000–1499", "layers/final"],
                  lambda: daskdict.fit(store, **fit_kw(client="threads")), watch=[store])
    assert isinstance(err, OSError)
    model = daskdict.fit(planted(), **fit_kw(client="threads"))
    work.clear()
    refused(work, CorruptChunkError, ["1000"], lambda: model.encode(store, client="sync"),
            watch=[store], must_not_exist=[store.with_name("s.zarr.codes-final.zarr")])


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def small_model():
    return daskdict.fit(planted(), **fit_kw(client="threads"))


def test_save_under_a_regular_file(tmp_path, small_model):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(OSError) as info:
        small_model.save(blocker / "out.zarr")
    assert str(blocker) in str(info.value)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: a read-only folder does not stop writes")
def test_save_and_checkpoint_into_read_only_folder(tmp_path, small_model, store, work):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            small_model.save(ro / "out.zarr")
        work.clear()
        refused(work, PermissionError, [str(ro)],
                lambda: daskdict.fit(store, **fit_kw(checkpoint=ro / "ck.zarr")),
                watch=[store])
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_checkpoint_under_a_regular_file_fails_before_work(tmp_path, store, work):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    refused(work, OSError, [str(blocker)],
            lambda: daskdict.fit(store, **fit_kw(checkpoint=blocker / "ck.zarr")),
            watch=[store, blocker])


def test_encode_with_wrong_number_of_features(tmp_path, small_model, work):
    other = tmp_path / "wide.zarr"
    daskdict.create_store(other, {"final": np.ones((100, D + 4), np.float32)}, chunk_rows=50)
    refused(work, InvalidInputError, [f"{D} features", f"{D + 4}"],
            lambda: small_model.encode(other, client="sync"), watch=[other],
            must_not_exist=[tmp_path / "wide.zarr.codes-final.zarr"])
    refused(work, InvalidInputError, [f"{D} features", f"{D - 1}"],
            lambda: small_model.encode(np.ones((10, D - 1), np.float32)))
    with pytest.raises(InvalidInputError, match="n_nonzero"):
        small_model.encode(np.ones((10, D), np.float32), n_nonzero=D + 1)


# --------------------------------------------------------------------------- all-zero rows


def test_all_zero_rows_are_valid(tmp_path):
    data = planted()
    zero_rows = [0, 499, 500, 1234, 1999]
    data[zero_rows] = 0.0
    store = write_store(tmp_path / "s.zarr", data)
    before = tree_hashes(store)
    model = daskdict.fit(store, **fit_kw(client="threads", n_iter=3))
    assert np.isfinite(model.atoms).all()
    assert np.allclose(np.linalg.norm(model.atoms, axis=1), 1.0, atol=1e-5)
    for record in model.history:
        assert all(np.isfinite(v) for v in record.values() if isinstance(v, float))
    codes = model.encode(store, out=tmp_path / "codes.zarr", client="threads").compute()
    assert (codes.indices[zero_rows] == -1).all()
    assert (codes.values[zero_rows] == 0).all()
    others = np.setdiff1d(np.arange(N), zero_rows)
    assert (codes.indices[others] >= 0).any(axis=1).all()
    assert np.isfinite(codes.values).all()
    assert tree_hashes(store) == before
    # in memory too
    mem = model.encode(data, client="sync")
    assert (mem.indices[zero_rows] == -1).all() and (mem.values[zero_rows] == 0).all()


# --------------------------------------------------------------------------- command line


def _cli(capsys, *args):
    code = cli_main(["fit", *map(str, args), "--in-process", "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", ["missing", "nan", "inf", "empty-store", "missing-layer",
                                  "int-layer", "nonzero-gt-d", "atoms-gt-n", "corrupt"])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, work, case):
    store = tmp_path / "s.zarr"
    data = planted()
    args: list = ["--atoms", K, "--nonzero", S, "--iters", 2, "--seed", 0]
    expected: list[str] = []
    if case == "missing":
        store = tmp_path / "nowhere.zarr"
        expected = ["does not exist", str(store)]
    elif case in ("nan", "inf"):
        data[321, 1] = np.nan if case == "nan" else np.inf
        write_store(store, data)
        expected = ["NaN or inf", "row 321"]
    elif case == "empty-store":
        zarr.open_group(store, mode="w")
        expected = ["no layers"]
    elif case == "missing-layer":
        write_store(store)
        args += ["--layer", "nope"]
        expected = ["'nope'", "'final'"]
    elif case == "int-layer":
        _store_with_raw_layer(store, np.ones((100, D), np.int32))
        expected = ["floating-point", "int32"]
    elif case == "nonzero-gt-d":
        write_store(store)
        args = ["--atoms", 64, "--nonzero", D + 1]
        expected = [f"n_nonzero={D + 1}"]
    elif case == "atoms-gt-n":
        write_store(store)
        args = ["--atoms", N + 1, "--nonzero", S]
        expected = [f"n_atoms={N + 1}"]
    elif case == "corrupt":
        write_store(store)
        (store / "layers" / "final" / "c" / "1" / "0").write_bytes(b"\x00garbage" * 20)
        expected = ["Could not read rows", "500"]
    out_path = tmp_path / "dict.zarr"
    ck = tmp_path / "ck.zarr"
    before = tree_hashes(store) if store.exists() else None
    code, out, err = _cli(capsys, store, *args, "--out", out_path, "--checkpoint", ck)
    assert code == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("daskdict: error: ")
    assert "Traceback" not in err
    for fragment in expected:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert work == []
    assert not out_path.exists() and not ck.exists()
    if before is not None:
        assert tree_hashes(store) == before


def test_cli_unwritable_out_fails_before_work(tmp_path, capsys, work, store):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = _cli(capsys, store, "--atoms", K, "--nonzero", S, "--iters", 2,
                        "--out", blocker / "dict.zarr")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert work == [], f"work started before the error: {work}"


def _run_cli(*args, timeout=120):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "daskdict", "fit", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"not one line: {result.stderr!r}"
    assert lines[0].startswith("daskdict: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_subprocess_bad_input_no_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    data = planted()
    data[42] = np.nan
    store = write_store(tmp_path / "s.zarr", data)
    before = tree_hashes(store)
    out = tmp_path / "d.zarr"
    _assert_one_line_error(_run_cli(tmp_path / "nowhere.zarr", "--out", out, "--quiet"),
                           "does not exist")
    _assert_one_line_error(_run_cli(store, "--out", out, "--atoms", K, "--nonzero", S,
                                    "--quiet", "--in-process"), "row 42")
    assert tree_hashes(store) == before
    assert not out.exists()


def test_cli_subprocess_bad_input_on_local_cluster_is_one_line(tmp_path):
    data = planted()
    data[42] = np.nan
    store = write_store(tmp_path / "s.zarr", data)
    before = tree_hashes(store)
    result = _run_cli(store, "--out", tmp_path / "d.zarr", "--atoms", K, "--nonzero", S,
                      "--quiet")
    assert tree_hashes(store) == before
    assert not (tmp_path / "d.zarr").exists()
    _assert_one_line_error(result, "row 42")


# --------------------------------------------------------------------------- property-based

# counts a user may type that are not positive integers (0 and negatives, floats, bools, text)
BAD_COUNTS = st.one_of(st.integers(max_value=0), st.floats(allow_nan=True, allow_infinity=True),
                       st.booleans(), st.text(max_size=4), st.lists(st.integers(1, 9),
                                                                    max_size=2))
# the same examples on every run (a failure is reproducible) and no example database in the
# checkout; function-scoped tmp_path is fine: every example leaves it as it found it
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(name=st.sampled_from(["n_atoms", "n_nonzero", "n_iter"]), value=BAD_COUNTS)
def test_any_bad_count_is_refused_by_name(tmp_path, name, value):
    """fit, KSVD and encode refuse every count that is not a positive integer, naming it."""
    data = planted()[:200]
    kw = {"n_atoms": 8, "n_nonzero": 2, "n_iter": 1, name: value}
    with example(entry="fit", name=name, value=value):
        api_refused(lambda: daskdict.fit(data, **kw, client="sync", verbose=False), [name],
                    root=tmp_path, error=InvalidInputError)
    with example(entry="KSVD.fit", name=name, value=value):
        api_refused(lambda: daskdict.KSVD(**kw, client="sync").fit(data), [name],
                    root=tmp_path, error=InvalidInputError)
    if name == "n_nonzero":
        model = daskdict.Dictionary(np.eye(8, D, dtype=np.float32))
        with example(entry="encode", name=name, value=value):
            api_refused(lambda: model.encode(data, n_nonzero=value, client="sync"), [name],
                        root=tmp_path, error=InvalidInputError)


@PROPERTY
@given(cells=st.lists(st.tuples(st.integers(0, 299), st.integers(0, D - 1)), min_size=1,
                      max_size=4),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_cells_anywhere_are_refused_with_the_first_row(tmp_path, cells, bad):
    """Wherever NaN or inf hides, encode names the first bad row and how many there are."""
    model = daskdict.Dictionary(np.eye(8, D, dtype=np.float32), params={"n_nonzero": 2})
    data = planted()[:300]
    for row, col in cells:
        data[row, col] = bad
    rows = sorted({row for row, _ in cells})
    with example(cells=cells, bad=bad):
        api_refused(lambda: model.encode(data, client="sync"),
                    [f"row {rows[0]}", f"{len(rows)} row(s)"], root=tmp_path,
                    error=InvalidInputError)


@PROPERTY
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1,
                    max_size=20).filter(lambda n: n not in (".", "..")))
def test_any_missing_path_is_named(tmp_path, name):
    """A path that does not exist is a StoreNotFoundError naming it, whatever its name."""
    missing = tmp_path / "nowhere" / name
    # as typed, or as repr() shows it (control characters escaped)
    named = (str(missing), repr(str(missing))[1:-1])
    for entry, call in (("open_store", lambda: daskdict.open_store(missing)),
                        ("load", lambda: daskdict.load(missing)),
                        ("fit", lambda: daskdict.fit(missing, n_atoms=8, n_iter=1,
                                                     verbose=False)),
                        ("Codes.load", lambda: daskdict.Codes.load(missing))):
        with example(entry=entry, name=name):
            api_refused(call, [named], root=tmp_path, error=StoreNotFoundError)
