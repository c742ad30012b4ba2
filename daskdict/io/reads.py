"""Reads of every source that ``fit`` and ``encode`` accept, as row-chunked dask arrays.

:func:`as_dask_array` turns a path to a Zarr array, a path to an embedding store plus
``layer``, a ``zarr.Array`` or ``zarr.Group``, a dask array or a NumPy array into a dask array
with one block per row-chunk and all features in each block, checking shape, dtype and (for
data in memory) values before any work starts. Chunks in this package's default layout (raw
bytes and a CRC32C) are read straight from their files, their checksum checked; a chunk that
cannot be read raises :class:`~daskdict.errors.CorruptChunkError` naming its rows.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import google_crc32c  # zarr's own CRC32C codec uses it
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.codecs.bytes import Endian
from zarr.storage import LocalStore

from daskdict.errors import CorruptChunkError, InvalidInputError, StoreNotFoundError
from daskdict.io.atomic import readable_path
from daskdict.io.formats import open_node
from daskdict.io.resources import n_cores

DEFAULT_LAYER = "final"
# about 32 MiB of float32 per chunk: large enough for an efficient GEMM, small enough that a
# worker holds a few chunks plus their (rows x n_atoms) correlations
_CHUNK_BYTES = 32 * 2**20
# rows whose squared norm exceeds this overflow float32 in the K-SVD's residuals and errors
_MAX_SQUARED_NORM = float(np.finfo(np.float32).max)
# rows checked at a time (bounds the temporary arrays of the check)
_CHECK_ROWS = 16384


def default_chunk_rows(n_features: int, itemsize: int = 4) -> int:
    """Rows per chunk so that one chunk holds about 32 MiB."""
    return max(1, _CHUNK_BYTES // max(1, n_features * itemsize))


def store_layer(group: zarr.Group, name: str | None, label: Any) -> zarr.Array:
    """The Zarr array of one layer of the store ``group`` (``"final"`` by default, or the only
    layer); ``label`` names the store in errors."""
    names = sorted(group["layers"].array_keys()) if "layers" in group else []
    if not names:
        raise InvalidInputError(f"The store {label} holds no layers (empty store).")
    if name is None:
        if DEFAULT_LAYER in names:
            name = DEFAULT_LAYER
        elif len(names) == 1:
            name = names[0]
        else:
            raise InvalidInputError(
                f"The store {label} holds several layers {names}; pass layer=NAME."
            )
    if name not in names:
        raise StoreNotFoundError(
            f"The store {label} has no layer {name!r}. Available layers: {names}."
        )
    return group[f"layers/{name}"]


def _plain_chunk_files(array: zarr.Array) -> str | None:
    """The folder of ``array``'s chunk files when they can be read without Zarr, else None.

    That is a local Zarr v3 array of native little-endian floats, one chunk across the columns,
    whose chunks are the raw C-order bytes and a CRC32C (this package's default layout).
    """
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
    checksum) are read from the chunk file directly, skipping Zarr's per-chunk machinery (most
    of the cost left is the copy from the page cache), since every K-SVD iteration reads every
    chunk. Anything else, and any chunk that fails the check, is read by Zarr.
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


def check_matrix(array: Any, what: str) -> None:
    """Refuse anything but a non-empty 2-D floating-point array (checks shape and dtype only).

    Raises
    ------
    InvalidInputError
        Naming ``what`` and the shape or dtype found.
    """
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


def bad_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``block`` (shape (n_rows, n_features)) that K-SVD cannot use.

    Returns
    -------
    non_finite : ndarray of bool, shape (n_rows,)
        Rows holding NaN or inf.
    overflowing : ndarray of bool, shape (n_rows,)
        Finite rows whose squared norm overflows float32 (e.g. values of 1e20 and more): their
        residuals and errors would be inf, and the fit NaN.
    """
    finite = np.isfinite(block).all(axis=1)
    squared = np.einsum("ij,ij->i", block, block, dtype=np.float64, casting="unsafe")
    with np.errstate(invalid="ignore"):
        return ~finite, finite & ~(squared <= _MAX_SQUARED_NORM)


def check_finite_rows(array: np.ndarray, what: str = "The data", offset: int = 0) -> None:
    """Refuse rows with NaN or inf, and rows whose squared norm overflows float32.

    Parameters
    ----------
    array : ndarray of shape (n_rows, n_features)
    what : str
        Names the data in the message.
    offset : int
        Index of ``array``'s first row in the data (for the row named in the message).

    Raises
    ------
    InvalidInputError
        Counting the bad rows and naming the first.
    """
    counts = [0, 0]
    first = [-1, -1]
    for start in range(0, array.shape[0], _CHECK_ROWS):
        for i, mask in enumerate(bad_rows(np.asarray(array[start:start + _CHECK_ROWS]))):
            hits = np.flatnonzero(mask)
            if hits.size and first[i] < 0:
                first[i] = offset + start + int(hits[0])
            counts[i] += int(hits.size)
    if counts[0]:
        raise InvalidInputError(
            f"{what} holds {counts[0]} row(s) with NaN or inf values, the first at row "
            f"{first[0]}. Remove or repair them before fitting or encoding."
        )
    if counts[1]:
        raise InvalidInputError(
            f"{what} holds {counts[1]} row(s) whose squared norm overflows float32, the first "
            f"at row {first[1]}. Scale the data down (e.g. divide it by its largest row norm) "
            "before fitting or encoding."
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

    Raises
    ------
    StoreNotFoundError
        If a path does not exist, or a store has no such layer.
    InvalidInputError
        If the source is not 2-D floating-point data (a NumPy file, say), or data in memory
        holds NaN, inf or values whose squares overflow float32.
    CorruptChunkError
        If chunk files of a Zarr array are missing.
    """
    description: dict[str, Any] = {"kind": type(source).__name__, "path": None, "layer": layer}
    label = None
    if isinstance(source, str | os.PathLike):
        label = str(source)
        description.update(kind="zarr", path=str(Path(source).resolve()))
        source = open_node(readable_path(source))
    if isinstance(source, zarr.Group):
        return _group_rows(source, layer, skip_flagged, description,
                           label or source.store_path)
    if layer is not None and not isinstance(source, zarr.Array):
        raise InvalidInputError(f"layer={layer!r} applies to an embedding store only.")
    if isinstance(source, zarr.Array):
        check_matrix(source, f"the Zarr array {source.store_path}")
        array, reader = _zarr_rows(source)
        return array, description, reader
    if isinstance(source, da.Array):
        check_matrix(source, "the dask array")
        if source.numblocks[1] != 1:
            raise InvalidInputError(
                f"Expected the dask array to be chunked along rows only. Got {source.numblocks[1]} "
                "blocks along features; call .rechunk({1: -1}) first."
            )
        return source, description, None
    if isinstance(source, np.ndarray) or hasattr(source, "__array__"):
        array = _checked_ndarray(source)
        description["kind"] = "ndarray"
        # at least one block per core: an in-memory array is computed by threads in process
        rows = min(default_chunk_rows(array.shape[1], array.dtype.itemsize),
                   max(1, -(-array.shape[0] // n_cores())))
        return da.from_array(array, chunks=(rows, -1)), description, array
    raise InvalidInputError(
        "Expected a path, zarr.Array, zarr.Group, dask array or NumPy array. "
        f"Got {type(source).__name__}."
    )


def _group_rows(group: zarr.Group, layer: str | None, skip_flagged: bool,
                description: dict, label: Any) -> tuple[da.Array, dict, Any]:
    """:func:`open_rows` of one layer of the embedding store ``group`` (named ``label``)."""
    array = store_layer(group, layer, label)
    description.update(layer=array.basename)
    check_matrix(array, f"the Zarr array {array.store_path}")
    flagged = flagged_rows(group) if skip_flagged else np.empty(0, dtype=np.int64)
    if flagged.size:
        data, reader = _kept_rows(array, flagged)
        description["skipped_rows"] = int(flagged.size)
        return data, description, reader
    data, reader = _zarr_rows(array)
    return data, description, reader


def _checked_ndarray(source: Any) -> np.ndarray:
    array = np.asarray(source)
    if array.ndim == 1:
        raise InvalidInputError(
            f"Expected 2-D data (n_samples, n_features). Got a 1-D array of shape "
            f"{array.shape}; use array.reshape(1, -1) for a single sample."
        )
    check_matrix(array, "the array")
    check_finite_rows(array)
    return array
