"""Embedding stores: create, open and validate them, and read any supported source as dask.

An embedding store is a Zarr v3 group (DESIGN.md §2)::

    embeddings.zarr/
      zarr.json            attrs: {"daskdict": {"format": 1, "model": ..., "n_items": N, ...}}
      layers/<name>        float32 (N, d_layer), chunked by rows
      items/id             (N,) string or int64
      items/caption        (N,) string (optional)
      items/error          (N,) string (optional; written by ``embed``: why an item could not
                           be read, empty when it was; such rows are zeros, and ``fit`` skips
                           them)

:func:`as_dask_array` turns every input that ``fit`` and ``encode`` accept (a path to a Zarr
array, a path to a store plus ``layer``, a ``zarr.Array``, a dask array, a NumPy array) into a
row-chunked dask array, checking shape and dtype before any work starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from daskdict.compute.runtime import n_cores
from daskdict.errors import (
    CorruptChunkError,
    InvalidInputError,
    OutputNotWritableError,
    StoreNotFoundError,
)

FORMAT_VERSION = 1
DEFAULT_LAYER = "final"
# about 32 MiB of float32 per chunk: large enough for an efficient GEMM, small enough that a
# worker holds a few chunks plus their (rows x n_atoms) correlations
_CHUNK_BYTES = 32 * 2**20
# temporary folders older than this process are left over from writers that died
_start_time = time.time() - 1.0


def default_chunk_rows(n_features: int, itemsize: int = 4) -> int:
    """Rows per chunk so that one chunk holds about 32 MiB."""
    return max(1, _CHUNK_BYTES // max(1, n_features * itemsize))


def atomic_replace(tmp: Path, path: Path) -> None:
    """Move the finished directory ``tmp`` to ``path``; a crash leaves the old or the new one.

    Directories cannot be swapped in one rename, so the old one is first renamed to a hidden
    ``.<name>.old-*`` sibling; :func:`recover_replaced` puts it back if a crash came between
    the two renames.
    """
    if path.exists():
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def recover_replaced(path: str | os.PathLike) -> Path:
    """Undo a swap that crashed between its two renames; remove stale temporary folders."""
    path = Path(path)
    if path.parent.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
        if not path.exists():
            complete = [p for p in leftovers if (p / "zarr.json").exists()]
            if complete:
                os.replace(complete[-1], path)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            # a temporary folder is only ever renamed into place, never read: left over
            # means its writer died
            if stale.stat().st_mtime < _start_time:
                shutil.rmtree(stale, ignore_errors=True)
        for stale in leftovers:
            if stale.exists():
                shutil.rmtree(stale, ignore_errors=True)
    return path


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden path next to ``path`` (same filesystem, so renames are atomic)."""
    check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_group(path: str | os.PathLike) -> Iterator[zarr.Group]:
    """A new Zarr group, written beside ``path`` and swapped into place when the block ends.

    A crash or an error inside the block leaves whatever was at ``path`` before; the swap
    itself leaves the old group or the new one (:func:`atomic_replace`).
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield zarr.open_group(tmp, mode="w")
        atomic_replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, naming the path, if an output could not be written there."""
    path = Path(path)
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: {str(probe)!r} is a file, not a folder."
        )
    if not os.access(probe, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: {str(probe)!r} is not writable."
        )
    if path.exists() and not path.is_dir():
        raise OutputNotWritableError(
            f"Cannot write the output {str(path)!r}: a file of that name exists."
        )
    return path


def create_store(
    path: str | os.PathLike,
    layers: Mapping[str, Any],
    *,
    ids: Sequence | np.ndarray | None = None,
    captions: Sequence[str] | np.ndarray | None = None,
    model: str | None = None,
    chunk_rows: int | None = None,
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
    compressors: Any = None,
) -> EmbeddingStore:
    """Write an embedding store from in-memory or dask arrays.

    Parameters
    ----------
    path : str or path-like
        Where to write the store (a folder ending in ``.zarr`` by convention).
    layers : mapping of str to array-like of shape (n_items, n_features_layer)
        One array per layer, e.g. ``{"final": Y}``; all with the same number of rows.
    ids : sequence of length n_items, optional
        Item ids (strings or integers); default ``0 … n_items-1``.
    captions : sequence of str of length n_items, optional
    model : str, optional
        Name of the model that made the embeddings, recorded in the attributes.
    chunk_rows : int, optional
        Rows per chunk; by default about 32 MiB per chunk.
    overwrite : bool, default=False
        Replace an existing store at ``path``.
    attrs : mapping, optional
        Extra attributes stored under ``attrs["daskdict"]``.
    compressors : list of Zarr codecs, optional
        Bytes-to-bytes codecs of the layers. By default a CRC32C checksum per chunk and no
        compression: float32 embeddings shrink by under 10% with zstd, reading them
        uncompressed is about twice as fast (every K-SVD iteration reads every chunk), and the
        checksum still turns a damaged chunk into an error instead of wrong numbers. Chunks in
        this layout are read straight from their files (checksum checked), at about twice
        Zarr's speed.

    Returns
    -------
    EmbeddingStore
        The store, opened for reading.

    Notes
    -----
    The store is written to a temporary folder beside ``path`` and renamed into place, so a
    crash leaves either the previous store or the new one.
    """
    path = recover_replaced(check_writable(path))
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
    if not layers:
        raise InvalidInputError("Expected at least one layer. Got an empty mapping.")
    arrays = {}
    n_items = None
    for name, array in layers.items():
        array = array if isinstance(array, da.Array) else np.asarray(array)
        _check_matrix(array, f"layer {name!r}")
        if n_items is not None and array.shape[0] != n_items:
            raise InvalidInputError(
                f"Expected every layer to have {n_items} rows. Got {array.shape[0]} for {name!r}."
            )
        n_items = array.shape[0]
        arrays[name] = array
    with atomic_group(path) as group:
        for name, array in arrays.items():
            rows = chunk_rows or default_chunk_rows(array.shape[1])
            target = group.create_array(
                f"layers/{name}", shape=array.shape, dtype=np.float32,
                chunks=(min(rows, array.shape[0]), array.shape[1]),
                compressors=[Crc32cCodec()] if compressors is None else compressors,
                # every chunk is written, so a missing chunk file means a damaged store
                config={"write_empty_chunks": True},
            )
            if isinstance(array, da.Array):
                da.store(array.astype(np.float32).rechunk((target.chunks[0], -1)), target,
                         lock=False)
            else:
                target[...] = array.astype(np.float32, copy=False)
        item_ids = np.arange(n_items, dtype=np.int64) if ids is None else np.asarray(ids)
        if item_ids.shape != (n_items,):
            raise InvalidInputError(f"Expected {n_items} ids. Got shape {item_ids.shape}.")
        _write_vector(group, "items/id", item_ids)
        if captions is not None:
            caption_array = np.asarray(captions, dtype=str)
            if caption_array.shape != (n_items,):
                raise InvalidInputError(
                    f"Expected {n_items} captions. Got shape {caption_array.shape}."
                )
            _write_vector(group, "items/caption", caption_array)
        meta = {"format": FORMAT_VERSION, "model": model, "n_items": int(n_items),
                "layers": sorted(arrays), **dict(attrs or {})}
        group.attrs["daskdict"] = meta
    return open_store(path)


def _write_vector(group: zarr.Group, name: str, values: np.ndarray) -> None:
    dtype = str if values.dtype.kind in "UOT" else values.dtype
    target = group.create_array(name, shape=values.shape, dtype=dtype,
                                chunks=(min(max(1, len(values)), 65536),))
    target[...] = values


@dataclass(frozen=True)
class EmbeddingStore:
    """An opened embedding store (read-only view).

    Attributes
    ----------
    path : Path
    group : zarr.Group
    """

    path: Path
    group: zarr.Group

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs.get("daskdict", {}))

    @property
    def layer_names(self) -> list[str]:
        if "layers" not in self.group:
            return []
        return sorted(self.group["layers"].array_keys())

    @property
    def n_items(self) -> int:
        return int(self.attrs.get("n_items", self.layer_array(self.layer_names[0]).shape[0]))

    def layer_array(self, name: str | None = None) -> zarr.Array:
        """The Zarr array of one layer (``"final"`` by default, or the only layer)."""
        names = self.layer_names
        if not names:
            raise InvalidInputError(f"The store {self.path} holds no layers (empty store).")
        if name is None:
            if DEFAULT_LAYER in names:
                name = DEFAULT_LAYER
            elif len(names) == 1:
                name = names[0]
            else:
                raise InvalidInputError(
                    f"The store {self.path} holds several layers {names}; pass layer=NAME."
                )
        if name not in names:
            raise StoreNotFoundError(
                f"The store {self.path} has no layer {name!r}. Available layers: {names}."
            )
        return self.group[f"layers/{name}"]

    def layer(self, name: str | None = None) -> da.Array:
        """One layer as a row-chunked dask array of shape (n_items, n_features)."""
        return zarr_to_dask(self.layer_array(name))

    def _item_vector(self, name: str) -> np.ndarray | None:
        key = f"items/{name}"
        return np.asarray(self.group[key][...]) if key in self.group else None

    @property
    def ids(self) -> np.ndarray | None:
        return self._item_vector("id")

    @property
    def captions(self) -> np.ndarray | None:
        return self._item_vector("caption")

    def info(self) -> dict:
        """A JSON-ready summary: attributes, layers with shapes, dtypes and chunks, items."""
        layers = {}
        for name in self.layer_names:
            array = self.group[f"layers/{name}"]
            layers[name] = {"shape": list(array.shape), "dtype": str(array.dtype),
                            "chunks": list(array.chunks)}
        return {"kind": "embedding store", "path": str(self.path), "attrs": self.attrs,
                "layers": layers, "has_captions": "items/caption" in self.group}


def open_store(path: str | os.PathLike) -> EmbeddingStore:
    """Open an embedding store for reading.

    Raises
    ------
    StoreNotFoundError
        If ``path`` does not exist or is not a Zarr group.
    """
    path = recover_replaced(path)
    if not path.exists():
        raise StoreNotFoundError(f"No store at {str(path)!r}: the path does not exist.")
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise StoreNotFoundError(f"{str(path)!r} is not a Zarr store: {exc}") from exc
    if not isinstance(node, zarr.Group):
        raise InvalidInputError(
            f"{str(path)!r} is a bare Zarr array, not an embedding store (a group)."
        )
    return EmbeddingStore(path=path, group=node)


def _plain_chunk_files(array: zarr.Array) -> str | None:
    """The folder of ``array``'s chunk files when they can be read without Zarr, else None.

    That is a local Zarr v3 array of native little-endian floats, one chunk across the columns,
    whose chunks are the raw C-order bytes and a CRC32C (this package's default layout).
    """
    from zarr.codecs import BytesCodec
    from zarr.codecs.bytes import Endian
    from zarr.storage import LocalStore

    meta = array.metadata
    codecs = getattr(meta, "codecs", ())
    plain = (
        meta.zarr_format == 3 and isinstance(array.store, LocalStore) and array.ndim == 2
        and array.dtype.kind == "f" and np.little_endian
        and array.chunks[1] == array.shape[1] and len(codecs) == 2
        and isinstance(codecs[0], BytesCodec) and codecs[0].endian == Endian.little
        and isinstance(codecs[1], Crc32cCodec)
    )
    return str(Path(array.store.root) / array.path) if plain else None


def _read_plain_chunk(folder: str, key: str, shape: tuple[int, int], dtype) -> np.ndarray | None:
    """One chunk file read straight into an array, its checksum checked; None if the file is
    not what it should be (Zarr then reads it and names the problem)."""
    import google_crc32c  # zarr's own CRC32C codec uses it

    n_bytes = shape[0] * shape[1] * dtype.itemsize
    raw = np.empty(n_bytes + 4, dtype=np.uint8)
    try:
        with open(os.path.join(folder, key), "rb", buffering=0) as file:
            if file.readinto(raw) != raw.size or file.read(1):
                return None
    except OSError:
        return None
    if google_crc32c.value(raw[:n_bytes]) != int(raw[n_bytes:].view("<u4")[0]):
        return None
    return raw[:n_bytes].view(dtype).reshape(shape)


class _CheckedZarrRows:
    """Array-like over a zarr.Array whose reads name the chunk when decoding fails.

    Rows inside one chunk of an array in this package's default layout (raw bytes and a
    checksum) are read from the chunk file directly: Zarr took 60-110 ms for a 33.5 MB chunk
    that this reads and checks in 35 ms (most of it the copy from the page cache), and every
    K-SVD iteration reads every chunk. Anything else, and any chunk that fails the check, is
    read by Zarr.
    """

    def __init__(self, array: zarr.Array, label: str):
        self.array = array
        self.label = label
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self._folder = _plain_chunk_files(array)

    def _direct(self, key) -> np.ndarray | None:
        rows, columns = key if isinstance(key, tuple) and len(key) == 2 else (key, slice(None))
        width = self.shape[1]
        if (self._folder is None or not isinstance(rows, slice) or not isinstance(columns, slice)
                or columns.indices(width) != (0, width, 1)):  # (dask asks for slice(0, width))
            return None
        start, stop, step = rows.indices(self.shape[0])
        chunk_rows = self.array.chunks[0]
        if step != 1 or stop <= start or start // chunk_rows != (stop - 1) // chunk_rows:
            return None
        index = start // chunk_rows
        chunk = _read_plain_chunk(self._folder, self.array.metadata.encode_chunk_key((index, 0)),
                                  (chunk_rows, self.shape[1]), self.dtype)
        if chunk is None:
            return None
        offset = index * chunk_rows
        part = chunk[start - offset:stop - offset]
        # a view would keep the whole chunk alive for a few of its rows
        return part if 2 * len(part) >= chunk_rows else part.copy()

    def __getitem__(self, key):
        direct = self._direct(key)
        if direct is not None:
            return direct
        try:
            return self.array[key]
        except Exception as exc:
            rows = key[0] if isinstance(key, tuple) else key
            if isinstance(rows, slice):
                start, stop, _ = rows.indices(self.shape[0])
                rows = f"{start}–{stop - 1}"
            raise CorruptChunkError(
                f"Could not read rows {rows} of {self.label}: {type(exc).__name__}: {exc}. "
                "The chunk file is damaged or was only partly written; rewrite the store."
            ) from exc


def zarr_to_dask(array: zarr.Array) -> da.Array:
    """A dask array with one block per row-chunk of ``array`` and all features in each block.

    Raises
    ------
    CorruptChunkError
        If chunk files are missing (Zarr would silently read them as zeros).
    """
    return _zarr_rows(array)[0]


def _zarr_rows(array: zarr.Array) -> tuple[da.Array, _CheckedZarrRows]:
    label = f"Zarr array {array.store_path}"
    missing = array.nchunks - array.nchunks_initialized
    if missing:
        raise CorruptChunkError(
            f"{missing} of the {array.nchunks} chunks of {label} are missing; Zarr would read "
            "them as zeros. The store was only partly written or damaged: rewrite it (if those "
            "chunks are all zeros on purpose, write them with write_empty_chunks=True)."
        )
    rows = array.chunks[0]
    reader = _CheckedZarrRows(array, label)
    return da.from_array(reader, chunks=(rows, array.shape[1]), asarray=True, lock=False,
                         name=f"daskdict-read-{uuid.uuid4().hex}",
                         meta=np.empty((0, 0), dtype=array.dtype)), reader


def flagged_rows(group: zarr.Group) -> np.ndarray:
    """Sorted indices of the rows that ``items/error`` flags (non-empty messages)."""
    if "items/error" not in group:
        return np.empty(0, dtype=np.int64)
    errors = np.asarray(group["items/error"][...])
    return np.flatnonzero(errors != "").astype(np.int64)


class _KeptRows:
    """Array-like over the rows of ``rows`` not listed in ``flagged`` (sorted indices).

    ``self[a:b]`` reads the stored rows from the one holding kept row ``a`` to the one holding
    kept row ``b - 1`` and drops the flagged ones among them.
    """

    def __init__(self, rows, flagged: np.ndarray):
        self.rows = rows
        self.flagged = flagged
        # kept rows that come before each flagged row
        self._kept_before = flagged - np.arange(flagged.size)
        self.shape = (rows.shape[0] - flagged.size, rows.shape[1])
        self.dtype = rows.dtype
        self.ndim = 2

    def stored_index(self, kept: int) -> int:
        """Row of the stored array that holds kept row ``kept``."""
        return int(kept + np.searchsorted(self._kept_before, kept, side="right"))

    def __getitem__(self, key):
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("only contiguous row ranges can be read")
        if stop <= start:
            return np.empty((0, self.shape[1]), dtype=self.dtype)[:, columns]
        first, last = self.stored_index(start), self.stored_index(stop - 1)
        block = self.rows[first:last + 1]
        inside = self.flagged[(self.flagged >= first) & (self.flagged <= last)]
        return np.delete(block, inside - first, axis=0)[:, columns]


def _kept_rows(array: zarr.Array, flagged: np.ndarray) -> tuple[da.Array, _KeptRows]:
    """The unflagged rows of ``array``: a dask array (a block per stored chunk) and a reader."""
    if flagged.size == array.shape[0]:
        raise InvalidInputError(
            f"All {array.shape[0]} rows of {array.store_path} are flagged in items/error "
            "(images that could not be read): there is nothing to fit."
        )
    _, stored = _zarr_rows(array)  # checks for missing chunks
    reader = _KeptRows(stored, flagged)
    bounds = np.append(np.arange(0, array.shape[0], array.chunks[0]), array.shape[0])
    kept_bounds = bounds - np.searchsorted(flagged, bounds, side="left")
    chunks = tuple(int(c) for c in np.diff(kept_bounds) if c > 0)
    return da.from_array(reader, chunks=(chunks, array.shape[1]), asarray=True, lock=False,
                         name=f"daskdict-read-{uuid.uuid4().hex}",
                         meta=np.empty((0, 0), dtype=array.dtype)), reader


def _check_matrix(array, what: str) -> None:
    if array.ndim != 2:
        raise InvalidInputError(
            f"Expected {what} to be 2-D (n_samples, n_features). Got shape {array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"Expected a non-empty {what}. Got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(
            f"Expected {what} to hold floating-point numbers. Got dtype {array.dtype}; "
            "cast it with .astype('float32')."
        )


def as_dask_array(source: Any, layer: str | None = None) -> tuple[da.Array, dict]:
    """Turn any supported source into a row-chunked dask array.

    Same as :func:`open_rows` without the reader.
    """
    array, description, _ = open_rows(source, layer)
    return array, description


def open_rows(source: Any, layer: str | None = None,
              skip_flagged: bool = False) -> tuple[da.Array, dict, Any]:
    """Turn any supported source into a row-chunked dask array, and a reader of row ranges.

    Parameters
    ----------
    source : str, path-like, zarr.Array, zarr.Group, dask.array.Array or ndarray
        A path to a Zarr array, a path to an embedding store (with ``layer``), a Zarr array or
        group, a dask array or a NumPy array of shape (n_samples, n_features).
    layer : str, optional
        The layer to read from a store; default ``"final"`` or the store's only layer.
    skip_flagged : bool, default=False
        Leave out the rows of a store that ``items/error`` flags (images ``embed`` could not
        read, stored as zeros).

    Returns
    -------
    array : dask.array.Array of shape (n_samples, n_features)
        One block spans all features.
    description : dict
        ``kind``, ``path`` and ``layer`` of the source (JSON-ready), for fingerprints; with
        ``skipped_rows`` when flagged rows were left out.
    reader : array-like or None
        For Zarr and NumPy sources, an object whose ``reader[start:stop]`` returns those rows
        as an ndarray (cheap to send to workers, so a task can read its own rows); None for a
        dask array, whose blocks come from its graph.
    """
    description: dict[str, Any] = {"kind": type(source).__name__, "path": None, "layer": layer}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise StoreNotFoundError(f"No data at {str(path)!r}: the path does not exist.")
        try:
            node = zarr.open(path, mode="r")
        except Exception as exc:
            raise StoreNotFoundError(f"{str(path)!r} is not a Zarr array or store: {exc}") from exc
        description.update(kind="zarr", path=str(path.resolve()))
        source = node
    if isinstance(source, zarr.Group):
        store = EmbeddingStore(path=Path(str(source.store_path)), group=source)
        array = store.layer_array(layer)
        description.update(layer=array.basename)
        flagged = flagged_rows(source) if skip_flagged else np.empty(0, dtype=np.int64)
        if flagged.size:
            _check_matrix(array, f"the Zarr array {array.store_path}")
            data, reader = _kept_rows(array, flagged)
            description["skipped_rows"] = int(flagged.size)
            return data, description, reader
        source = array
    elif layer is not None and not isinstance(source, zarr.Array):
        raise InvalidInputError(f"layer={layer!r} applies to an embedding store only.")
    if isinstance(source, zarr.Array):
        _check_matrix(source, f"the Zarr array {source.store_path}")
        array, reader = _zarr_rows(source)
        return array, description, reader
    if isinstance(source, da.Array):
        _check_matrix(source, "the dask array")
        if source.numblocks[1] != 1:
            raise InvalidInputError(
                f"Expected the dask array to be chunked along rows only. Got {source.numblocks[1]} "
                "blocks along features; call .rechunk({1: -1}) first."
            )
        return source, description, None
    if isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        array = np.asarray(source)
        if array.ndim == 1:
            raise InvalidInputError(
                f"Expected 2-D data (n_samples, n_features). Got a 1-D array of shape "
                f"{array.shape}; use array.reshape(1, -1) for a single sample."
            )
        _check_matrix(array, "the array")
        description["kind"] = "ndarray"
        # at least one block per core: an in-memory array is computed by threads in process
        rows = min(default_chunk_rows(array.shape[1], array.dtype.itemsize),
                   max(1, -(-array.shape[0] // n_cores())))
        return da.from_array(array, chunks=(rows, -1)), description, array
    raise InvalidInputError(
        "Expected a path, zarr.Array, zarr.Group, dask array or NumPy array. "
        f"Got {type(source).__name__}."
    )
