import dask.array as da
import numpy as np
import pytest
import zarr

import daskdict.io as dio
from daskdict.errors import CorruptChunkError, InvalidInputError, OutputNotWritableError
from daskdict.io import as_dask_array


def test_create_and_open_store(tmp_path, rng):
    final = rng.standard_normal((250, 12)).astype(np.float32)
    hidden = rng.standard_normal((250, 5))
    captions = [f"a photo of thing {i}" for i in range(250)]
    store = dio.create_store(tmp_path / "e.zarr", {"final": final, "hidden_00": hidden},
                                  captions=captions, ids=[f"img{i}.jpg" for i in range(250)],
                                  model="test-model", chunk_rows=100)
    reopened = dio.open_store(tmp_path / "e.zarr")
    assert reopened.layer_names == ["final", "hidden_00"]
    assert reopened.n_items == 250
    assert reopened.attrs["format"] == 1 and reopened.attrs["model"] == "test-model"
    assert list(reopened.captions[:2]) == captions[:2]
    assert reopened.ids[3] == "img3.jpg"
    layer = reopened.layer("final")
    assert layer.chunks[0] == (100, 100, 50) and layer.chunks[1] == (12,)
    np.testing.assert_array_equal(layer.compute(), final)
    assert reopened.layer("hidden_00").dtype == np.float32
    info = store.info()
    assert info["layers"]["hidden_00"]["shape"] == [250, 5]


def test_create_store_from_dask_and_refuses_overwrite(tmp_path, rng):
    data = da.from_array(rng.standard_normal((90, 4)), chunks=(40, 4))
    dio.create_store(tmp_path / "d.zarr", {"final": data}, chunk_rows=30)
    with pytest.raises(OutputNotWritableError, match="overwrite=True"):
        dio.create_store(tmp_path / "d.zarr", {"final": data})
    store = dio.create_store(tmp_path / "d.zarr", {"final": data[:10]}, overwrite=True)
    assert store.n_items == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("kind", ["path-array", "path-store", "zarr-array", "dask", "numpy"])
def test_every_source_kind(tmp_path, rng, kind):
    data = rng.standard_normal((120, 6)).astype(np.float32)
    dio.create_store(tmp_path / "s.zarr", {"final": data}, chunk_rows=50)
    source = {
        "path-array": tmp_path / "s.zarr" / "layers" / "final",
        "path-store": tmp_path / "s.zarr",
        "zarr-array": zarr.open_array(tmp_path / "s.zarr" / "layers" / "final", mode="r"),
        "dask": da.from_array(data, chunks=(50, 6)),
        "numpy": data,
    }[kind]
    array, description = as_dask_array(source)
    assert array.shape == (120, 6) and array.numblocks[1] == 1
    np.testing.assert_array_equal(array.compute(), data)
    if kind.startswith("path"):
        assert description["path"].endswith(".zarr") or description["path"].endswith("final")


def test_store_with_several_layers_needs_a_layer_unless_final(tmp_path, rng):
    dio.create_store(tmp_path / "m.zarr", {"hidden_00": rng.standard_normal((20, 3)),
                                                "hidden_01": rng.standard_normal((20, 3))})
    with pytest.raises(InvalidInputError, match="several layers"):
        as_dask_array(tmp_path / "m.zarr")
    _, description = as_dask_array(tmp_path / "m.zarr", layer="hidden_01")
    assert description["layer"] == "hidden_01"


def test_dask_array_chunked_along_features_is_rejected(rng):
    data = da.from_array(rng.standard_normal((20, 6)), chunks=(10, 3))
    with pytest.raises(InvalidInputError, match="rechunk"):
        as_dask_array(data)


def test_missing_chunk_file_is_an_error_not_zeros(tmp_path, rng):
    data = rng.standard_normal((300, 4)).astype(np.float32)
    data[100:200] = 0.0  # an all-zero chunk is still written
    dio.create_store(tmp_path / "s.zarr", {"final": data}, chunk_rows=100)
    assert as_dask_array(tmp_path / "s.zarr")[0].compute()[150].sum() == 0
    (tmp_path / "s.zarr" / "layers" / "final" / "c" / "2" / "0").unlink()
    with pytest.raises(CorruptChunkError, match="1 of the 3 chunks"):
        as_dask_array(tmp_path / "s.zarr")


def test_chunks_in_the_default_layout_are_read_directly_and_checked(tmp_path, rng):
    """Rows inside one chunk of a store in the default layout (raw bytes and a CRC32C) are
    read from the chunk file, as Zarr reads them; a chunk failing its checksum is left to
    Zarr, which names it; other layouts are read by Zarr."""
    from zarr.codecs import ZstdCodec

    from daskdict.io.reads import _read_plain_chunk, open_rows

    data = rng.standard_normal((250, 6)).astype(np.float32)
    dio.create_store(tmp_path / "s.zarr", {"final": data}, chunk_rows=100)
    _, _, reader = open_rows(tmp_path / "s.zarr")
    assert reader._folder is not None
    for rows in [slice(0, 100), slice(100, 200), slice(130, 140), slice(200, 250),
                 slice(90, 120)]:  # the last spans two chunks: Zarr reads it
        direct = reader._direct(rows)
        assert (direct is None) == (rows.start == 90)
        np.testing.assert_array_equal(reader[rows], data[rows])
    assert reader[130:140].base is None  # a few rows are copied out of the chunk
    assert reader._direct((slice(100, 200), slice(0, 6))) is not None  # as dask asks
    assert reader._direct((slice(100, 200), slice(0, 3))) is None
    np.testing.assert_array_equal(reader[100:200, 0:3], data[100:200, 0:3])
    assert reader[100:200].flags.c_contiguous
    chunk = tmp_path / "s.zarr" / "layers" / "final" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[40] ^= 0xFF  # one flipped bit pattern inside the data: the checksum fails
    chunk.write_bytes(bytes(raw))
    assert _read_plain_chunk(str(chunk.parent.parent.parent), "c/1/0", (100, 6),
                             np.dtype(np.float32)) is None
    with pytest.raises(CorruptChunkError, match="100–199"):
        reader[100:200]
    packed = tmp_path / "packed.zarr"
    zarr.create_array(packed, shape=data.shape, chunks=(100, 6), dtype="float32",
                      compressors=[ZstdCodec()])[...] = data
    _, _, other = open_rows(packed)
    assert other._folder is None
    np.testing.assert_array_equal(other[100:200], data[100:200])
