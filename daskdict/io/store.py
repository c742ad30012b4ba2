"""Embedding stores: write them, open them, and describe them.

An embedding store is a Zarr v3 group::

    embeddings.zarr/
      zarr.json            attrs: {"daskdict": {"format": 1, "kind": "embedding store",
                                                "model": ..., "n_items": N, "layers": [...]}}
      layers/<name>        float32 or float16 (N, d_layer), chunked by rows
      items/id             (N,) string or int64
      items/caption        (N,) string (optional)
      items/error          (N,) string (optional; written by ``embed``: why an item could not
                           be read, empty when it was; such rows are zeros, and ``fit`` skips
                           them)

Every writer of a store stamps its header with :func:`write_store_header`; stores written
before the header named its kind still open (:func:`daskdict.io.formats.kind_of`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import atomic_group, readable_path, recover_replaced
from daskdict.io.formats import check_output, check_writable, open_node
from daskdict.io.reads import check_matrix, default_chunk_rows, store_layer, zarr_to_dask

KIND = "embedding store"
# header fields that create_store's attrs= may not replace
_RESERVED = ("format", "kind", "version", "model", "n_items", "layers")


def write_vector(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Write a 1-D array of item values (ids, captions, errors) into ``group`` at ``name``.

    Strings are stored as Zarr strings, anything else in its own dtype.
    """
    dtype = str if values.dtype.kind in "UOT" else values.dtype
    target = group.create_array(name, shape=values.shape, dtype=dtype,
                                chunks=(min(max(1, len(values)), 65536),))
    target[...] = values


def write_store_header(group: zarr.Group, *, model: str | None, n_items: int,
                       layers: Sequence[str], **fields: Any) -> dict:
    """Stamp ``group`` as an embedding store: the one way a store's header is written.

    Parameters
    ----------
    group : zarr.Group
        The store being written.
    model : str or None
        The model that made the embeddings.
    n_items : int
        Rows of every layer.
    layers : sequence of str
        Names of the layers (stored sorted).
    **fields
        More header fields (e.g. ``embed`` for a store that ``daskdict.embed`` fills).

    Returns
    -------
    dict
        The header written (change it later with :func:`daskdict.io.formats.update_header`).
    """
    return formats.write_header(group, KIND, model=model, n_items=int(n_items),
                                layers=sorted(layers), **fields)


def _checked_layers(layers: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The layers as NumPy or dask arrays, checked, and their common number of rows."""
    if not layers:
        raise InvalidInputError("Expected at least one layer. Got an empty mapping.")
    arrays: dict[str, Any] = {}
    n_items = None
    for name, array in layers.items():
        array = array if isinstance(array, da.Array) else np.asarray(array)
        check_matrix(array, f"layer {name!r}")
        if isinstance(array, np.ndarray) and array.dtype.itemsize > 4:
            _check_float32_range(array, f"layer {name!r}")
        if n_items is not None and array.shape[0] != n_items:
            raise InvalidInputError(
                f"Expected every layer to have {n_items} rows. Got {array.shape[0]} for {name!r}."
            )
        n_items = array.shape[0]
        arrays[name] = array
    return arrays, int(n_items)


def _item_vectors(n_items: int, ids: Any, captions: Any) -> dict[str, np.ndarray]:
    """``items/id`` (default ``0 … n_items-1``) and ``items/caption``, checked."""
    vectors = {"items/id": np.arange(n_items, dtype=np.int64) if ids is None
               else np.asarray(ids)}
    if captions is not None:
        vectors["items/caption"] = np.asarray(captions, dtype=str)
    for name, values in vectors.items():
        if values.shape != (n_items,):
            raise InvalidInputError(
                f"Expected {n_items} {name.removeprefix('items/')}s. Got shape {values.shape}."
            )
    return vectors


def _write_layer(group: zarr.Group, name: str, array: Any, chunk_rows: int | None,
                 compressors: Any) -> None:
    rows = chunk_rows or default_chunk_rows(array.shape[1])
    target = group.create_array(
        f"layers/{name}", shape=array.shape, dtype=np.float32,
        chunks=(min(rows, array.shape[0]), array.shape[1]),
        compressors=[Crc32cCodec()] if compressors is None else compressors,
        # every chunk is written, so a missing chunk file means a damaged store
        config={"write_empty_chunks": True},
    )
    if isinstance(array, da.Array):
        da.store(array.astype(np.float32).rechunk((target.chunks[0], -1)), target, lock=False)
    else:
        target[...] = array.astype(np.float32, copy=False)


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
        Name of the model that made the embeddings, recorded in the header.
    chunk_rows : int, optional
        Rows per chunk; by default about 32 MiB per chunk.
    overwrite : bool, default=False
        Replace an existing embedding store at ``path`` (never anything else).
    attrs : mapping, optional
        Extra header fields, stored under ``attrs["daskdict"]``.
    compressors : list of Zarr codecs, optional
        Bytes-to-bytes codecs of the layers. By default a CRC32C checksum per chunk and no
        compression: float32 embeddings barely compress, every K-SVD iteration reads every
        chunk (uncompressed chunks are read straight from their files), and the checksum still
        turns a damaged chunk into an error instead of wrong numbers.

    Returns
    -------
    EmbeddingStore
        The store, opened for reading.

    Raises
    ------
    OutputNotWritableError
        If ``path`` exists (without ``overwrite``, or holds something else) or is not writable.

    Notes
    -----
    The store is written to a temporary folder beside ``path`` and renamed into place, so a
    crash leaves either the previous store or the new one.
    """
    path = recover_replaced(check_writable(path))
    check_output(path, KIND, overwrite=overwrite)
    arrays, n_items = _checked_layers(layers)
    vectors = _item_vectors(n_items, ids, captions)
    clashes = sorted(set(attrs or {}) & set(_RESERVED))
    if clashes:
        raise InvalidInputError(f"attrs may not set the header fields {clashes}.")
    with atomic_group(path) as group:
        for name, array in arrays.items():
            _write_layer(group, name, array, chunk_rows, compressors)
        for name, values in vectors.items():
            write_vector(group, name, values)
        write_store_header(group, model=model, n_items=n_items, layers=arrays,
                           **dict(attrs or {}))
    return open_store(path)


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
        """The store's header."""
        return dict(self.group.attrs.get(formats.HEADER_KEY, {}))

    @property
    def layer_names(self) -> list[str]:
        if "layers" not in self.group:
            return []
        return sorted(self.group["layers"].array_keys())

    @property
    def n_items(self) -> int:
        if "n_items" in self.attrs:
            return int(self.attrs["n_items"])
        names = self.layer_names
        return int(self.layer_array(names[0] if names else None).shape[0])

    def layer_array(self, name: str | None = None) -> zarr.Array:
        """The Zarr array of one layer (``"final"`` by default, or the only layer)."""
        return store_layer(self.group, name, self.path)

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
        return {"kind": KIND, "path": str(self.path), "attrs": self.attrs,
                "layers": layers, "has_captions": "items/caption" in self.group}


def open_store(path: str | os.PathLike) -> EmbeddingStore:
    """Open an embedding store for reading (nothing on disk changes).

    Raises
    ------
    StoreNotFoundError
        If ``path`` does not exist or is a folder but not a Zarr store.
    InvalidInputError
        If ``path`` is a file (a NumPy file, a JSON, a report…), a bare Zarr array, or another
        daskdict object.
    """
    path = Path(path)
    node = open_node(readable_path(path))
    if not isinstance(node, zarr.Group):
        raise InvalidInputError(
            f"{str(path)!r} is a bare Zarr array, not an embedding store (a group); pass it "
            "to fit or encode directly."
        )
    meta = dict(node.attrs.get(formats.HEADER_KEY, {}))
    found = meta.get("kind")
    if found not in (None, KIND):
        raise InvalidInputError(
            f"Expected {str(path)!r} to hold daskdict {KIND}. Got daskdict {found}."
        )
    formats.check_format(meta, path)
    return EmbeddingStore(path=path, group=node)


def _describe(path: Path) -> dict:
    return open_store(path).info()


formats.register(KIND, open_store, _describe)


def _check_float32_range(array: np.ndarray, what: str) -> None:
    """Refuse finite values that float32 storage would turn into inf."""
    with np.errstate(invalid="ignore"):
        too_large = np.abs(array) > np.finfo(np.float32).max
    too_large &= np.isfinite(array)
    if too_large.any():
        row = int(np.flatnonzero(too_large.any(axis=1))[0])
        raise InvalidInputError(
            f"Expected {what} to fit in float32 (|x| <= 3.4e38), as stores hold float32. Row "
            f"{row} holds {array[row][too_large[row]][0]:.3g}; rescale the data."
        )
