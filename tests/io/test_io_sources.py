"""Sources that are not what they should be, headers of stores, and reads that leave the disk
as it was."""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import daskdict.io as dio
from daskdict.errors import InvalidInputError, OutputNotWritableError, StoreNotFoundError
from daskdict.io import formats


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path, rng):
    data = rng.standard_normal((60, 5)).astype(np.float32)
    dio.create_store(tmp_path / "s.zarr", {"final": data}, chunk_rows=25, model="m")
    return tmp_path / "s.zarr"


READERS = {
    "open_store": dio.open_store,
    "as_dask_array": dio.as_dask_array,
    "describe": formats.describe,
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", ["data.npy", "data"])
def test_numpy_file_says_how_to_convert(tmp_path, reader, name):
    path = tmp_path / name
    with open(path, "wb") as file:  # no suffix added: the file is known by its content
        np.save(file, np.ones((4, 3), np.float32))
    with pytest.raises(InvalidInputError) as info:
        READERS[reader](path)
    message = str(info.value)
    assert "NumPy file" in message and "numpy.load" in message, message
    assert "create_store" in message and str(path) in message, message
    assert "StorePath" not in message and "\n" not in message, message


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("name", "content", "what"), [
    ("report.html", "<!DOCTYPE html><html><body>hi</body></html>", "HTML report"),
    ("page", "<html><body>hi</body></html>", "HTML report"),
    ("settings.json", json.dumps({"n_atoms": 3}), "JSON file"),
    ("table.csv", "1,2,3\n", "CSV table"),
])
def test_other_files_say_what_they_are(tmp_path, reader, name, content, what):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError) as info:
        READERS[reader](path)
    message = str(info.value)
    assert what in message and str(path) in message, message
    assert "StorePath" not in message and "zarr.json" not in message, message


@pytest.mark.parametrize("reader", ["open_store", "as_dask_array"])
def test_folder_that_is_not_zarr(tmp_path, reader):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(StoreNotFoundError, match="folder but not a Zarr store"):
        READERS[reader](folder)


def test_reads_leave_sibling_folders_alone(store):
    """Only writers recover: a reader that finds the leftovers of another writer (a swap that
    crashed, a temporary folder of a writer that died) leaves them where they are."""
    old = store.with_name(f".{store.name}.old-0badcafe")
    tmp = store.with_name(f".{store.name}.tmp-0badcafe")
    zarr.open_group(old, mode="w").attrs["x"] = 1
    tmp.mkdir()
    (tmp / "part").write_bytes(b"partial")
    past = time.time() - 3600  # older than this process: a recovery would delete it
    os.utime(tmp, (past, past))
    before = {p: tree_hashes(p) for p in (store, old, tmp)}
    dio.open_store(store).layer().compute()
    dio.as_dask_array(store)[0].compute()
    formats.describe(store)
    assert formats.kind_of(store) == "embedding store"
    assert {p: tree_hashes(p) for p in (store, old, tmp)} == before


def test_read_after_a_crash_between_the_two_renames(store):
    """The store was renamed away and the new one not yet renamed in: readers find the old
    one without moving it; the next writer puts things right."""
    expected = dio.open_store(store).layer().compute()
    old = store.with_name(f".{store.name}.old-0badcafe")
    os.replace(store, old)
    np.testing.assert_array_equal(dio.open_store(store).layer().compute(), expected)
    np.testing.assert_array_equal(dio.as_dask_array(store)[0].compute(), expected)
    assert old.is_dir() and not store.exists()
    dio.create_store(store, {"final": expected[:10]}, overwrite=True)
    assert dio.open_store(store).n_items == 10
    assert [p.name for p in store.parent.iterdir()] == [store.name]


def test_store_header_is_a_formats_header(store):
    meta = formats.read_header(store)
    assert meta == {**formats.header("embedding store", model="m", n_items=60,
                                     layers=["final"])}
    assert meta["format"] == formats.FORMAT_VERSION
    assert formats.kind_of(store) == "embedding store"
    described = formats.describe(store)
    assert described["kind"] == "embedding store"
    assert described["layers"]["final"]["shape"] == [60, 5]
    loaded = formats.load(store)
    assert isinstance(loaded, dio.EmbeddingStore) and loaded.n_items == 60


def test_write_store_header(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    meta = dio.write_store_header(group, model="clip", n_items=3, layers=["b", "a"],
                                  embed={"rows_done": 0})
    assert meta == formats.header("embedding store", model="clip", n_items=3,
                                  layers=["a", "b"], embed={"rows_done": 0})
    assert dict(group.attrs[formats.HEADER_KEY]) == meta


def test_store_written_before_headers_had_a_kind_still_opens(store):
    group = zarr.open_group(store, mode="r+")
    group.attrs["daskdict"] = {"format": 1, "model": "m", "n_items": 60, "layers": ["final"]}
    assert dio.open_store(store).n_items == 60
    assert formats.describe(store)["layers"]["final"]["shape"] == [60, 5]
    assert formats.load(store).layer_names == ["final"]


def test_open_store_refuses_other_daskdict_objects(tmp_path):
    path = tmp_path / "d.zarr"
    formats.write_header(zarr.open_group(path, mode="w"), "dictionary")
    with pytest.raises(InvalidInputError, match=r"embedding store\. Got daskdict dictionary"):
        dio.open_store(path)
    newer = tmp_path / "new.zarr"
    zarr.open_group(newer, mode="w").attrs["daskdict"] = {"format": 99,
                                                          "kind": "embedding store"}
    with pytest.raises(InvalidInputError, match="upgrade daskdict"):
        dio.open_store(newer)


def test_create_store_replaces_only_a_store(tmp_path, rng):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputNotWritableError, match="not a daskdict embedding store"):
        dio.create_store(folder, {"final": rng.standard_normal((5, 2))}, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"
    with pytest.raises(InvalidInputError, match="header fields"):
        dio.create_store(tmp_path / "s.zarr", {"final": rng.standard_normal((5, 2))},
                         attrs={"format": 7})
    assert not (tmp_path / "s.zarr").exists()
