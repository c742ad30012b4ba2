"""The embedding store of :func:`daskdict.embed`: the output check, creation, resumption, writing.

The store is created empty (every array, the item ids, captions and the header) and swapped into
place at once; then a writer thread fills it chunk by chunk and, after every array of a chunk is
written, advances the committed-row counter ``embed.rows_done`` of the header. A later
``embed`` of the same run resumes from that counter.

The layers are written in the header's ``embed.store_dtype`` (float32, or float16 for half the
disk and reads; see :data:`daskdict.io.formats.LAYER_DTYPES`). A chunk holding a finite value
that the layer's dtype cannot hold (beyond +-65504 for float16) is refused before any of its
arrays is written: stored, it would be inf.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from daskdict.embedding.items import ImageItems
from daskdict.errors import CheckpointMismatchError, InvalidInputError, OutputNotWritableError
from daskdict.io import formats
from daskdict.io.atomic import atomic_group, recover_replaced
from daskdict.io.store import KIND, write_store_header, write_vector

# what a store written before the header named its dtype holds
DEFAULT_STORE_DTYPE = "float32"


def embed_meta(store_meta: dict) -> dict:
    """The ``embed`` part of a store header (empty for a store that embed did not write)."""
    return dict(store_meta.get("embed") or {})


def _written_by_embed(path: Path) -> bool:
    return formats.kind_of(path) == KIND and bool(embed_meta(formats.read_header(path)))


def check_embed_output(store: str | os.PathLike, inputs: Iterable) -> Path:
    """The writer rule for embed's store, checked before any work starts.

    A missing path is written; an embedding store written by ``embed`` is resumed or, with
    ``resume=False``, replaced (it is this writer's own output). Anything else, an input of the
    call included, is refused.

    Returns
    -------
    Path

    Raises
    ------
    OutputNotWritableError
    """
    path = recover_replaced(formats.check_writable(store))
    existing_store = formats.kind_of(path) == KIND
    formats.check_output(path, KIND, inputs=inputs, overwrite=existing_store)
    if existing_store and not _written_by_embed(path):
        raise OutputNotWritableError(
            f"{str(path)!r} exists and was not written by daskdict.embed; embed resumes or "
            "replaces only its own stores. Remove it or choose another path.")
    return path


def _open_for_resume(path: Path, wanted: dict, chunk_rows: int | None) -> zarr.Group:
    """The existing store at ``path`` if it continues this run; raise naming any difference."""
    group = zarr.open_group(path, mode="r+")
    header = dict(group.attrs.get(formats.HEADER_KEY, {}))
    formats.check_format(header, path)
    saved = embed_meta(header)
    problems = []
    if saved.get("model") != wanted["model"]:
        problems.append(f"model {saved.get('model')!r}, not {wanted['model']!r}")
    if saved.get("layer_widths") != wanted["layer_widths"]:
        problems.append(f"layers {saved.get('layer_widths')}, not {wanted['layer_widths']}")
    if saved.get("precision") != wanted["precision"]:
        problems.append(f"precision {saved.get('precision')}, not {wanted['precision']} "
                        "(pass precision= explicitly)")
    saved_dtype = saved.get("store_dtype", DEFAULT_STORE_DTYPE)
    wanted_dtype = wanted.get("store_dtype", DEFAULT_STORE_DTYPE)
    if saved_dtype != wanted_dtype:
        problems.append(f"store_dtype {saved_dtype!r}, not {wanted_dtype!r} (pass "
                        f"store_dtype={saved_dtype!r} to continue it)")
    if saved.get("items") != wanted["items"]:
        noun = "texts" if wanted.get("input") == "texts" else "images"
        problems.append(f"other {noun} or captions ({saved.get('items', {}).get('n_items')} "
                        f"items, not {wanted['items']['n_items']}, or other paths/captions)")
    for key in ("input", "pooling", "tokens", "max_seq_length"):
        if saved.get(key) != wanted.get(key):
            problems.append(f"{key}={saved.get(key)!r}, not {wanted.get(key)!r}")
    if chunk_rows is not None and saved.get("chunk_rows") != chunk_rows:
        problems.append(f"chunk_rows={saved.get('chunk_rows')}, not {chunk_rows}")
    if problems:
        raise CheckpointMismatchError(
            f"The store {str(path)!r} was started by another embed run: "
            + "; ".join(problems) + ". Pass resume=False to start over, or another path.")
    return group


def _create(path: Path, items: ImageItems, fields: dict, widths: dict[str, int],
            chunk_rows: int, extra_vectors: dict[str, np.ndarray] | None = None) -> zarr.Group:
    """Write the empty store (arrays, ids, captions, more item vectors, header) and swap it
    into place."""
    n_items = len(items)
    dtype = np.dtype(fields["embed"].get("store_dtype", DEFAULT_STORE_DTYPE))
    with atomic_group(path) as group:
        for name, width in widths.items():
            group.create_array(f"layers/{name}", shape=(n_items, width), dtype=dtype,
                               chunks=(chunk_rows, width), compressors=[Crc32cCodec()],
                               config={"write_empty_chunks": True})
        write_vector(group, "items/id", np.asarray(items.ids))
        for name, values in (extra_vectors or {}).items():
            write_vector(group, name, np.asarray(values))
        if items.captions is not None:
            write_vector(group, "items/caption", np.asarray(items.captions))
        elif items.captions_per_item:
            group.create_array("items/caption", shape=(n_items,), dtype=str,
                               chunks=(chunk_rows,), config={"write_empty_chunks": True})
        group.create_array("items/error", shape=(n_items,), dtype=str, chunks=(chunk_rows,),
                           config={"write_empty_chunks": True})
        write_store_header(group, **fields)
    return zarr.open_group(path, mode="r+")


def _remove_partial_writes(path: Path) -> None:
    """Delete temporary files of chunk writes that a killed run left behind."""
    for leftover in path.rglob("*.partial"):
        leftover.unlink(missing_ok=True)


def store_for_run(path: Path, items: ImageItems, fields: dict, widths: dict[str, int],
                  chunk_rows: int | None, rows_per_chunk: int, resume: bool,
                  extra_vectors: dict[str, np.ndarray] | None = None) -> zarr.Group:
    """The store this run writes: its own unfinished store resumed, or a new one.

    ``path`` has passed :func:`check_embed_output`: it is missing or a store written by
    ``embed``. ``fields`` are the header fields of a new store (``embed`` among them; its
    ``store_dtype``, default float32, is the layers' dtype); ``extra_vectors`` more item
    vectors of shape (n_items,) to write into a new store (e.g. ``items/item`` and
    ``items/position`` of token rows).

    Raises
    ------
    CheckpointMismatchError
        With ``resume=True``, if the existing store was started by another run.
    """
    if path.exists() and resume:
        group = _open_for_resume(path, fields["embed"], chunk_rows)
        _remove_partial_writes(path)
        return group
    return _create(path, items, fields, widths, rows_per_chunk, extra_vectors)


class ChunkWriter:
    """Writes whole chunks in a background thread, then advances the committed-row counter."""

    def __init__(self, group: zarr.Group, names: list[str], widths: dict[str, int],
                 meta: dict, captions_per_item: bool):
        self._group = group
        self._arrays = {name: group[f"layers/{name}"] for name in names}
        self._columns = {}
        offset = 0
        for name in names:
            self._columns[name] = (offset, offset + widths[name])
            offset += widths[name]
        self._errors = group["items/error"]
        self._captions = group["items/caption"] if captions_per_item else None
        self._embed = meta["embed"]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="daskdict-embed-write")
        self._pending: Future | None = None

    def submit(self, start: int, stop: int, rows: np.ndarray, errors: list[str],
               captions: list[str | None]) -> None:
        """Queue one chunk; waits for the previous chunk first (one chunk in flight)."""
        self.wait()
        self._pending = self._pool.submit(self._write, start, stop, rows, errors, captions)

    def _write(self, start, stop, rows, errors, captions) -> None:
        # every layer is checked before any is written, so that a refused chunk leaves none
        blocks = {}
        for name, array in self._arrays.items():
            first, last = self._columns[name]
            blocks[name] = stored_as(rows[:, first:last], array.dtype, name, start)
        for name, array in self._arrays.items():
            array[start:stop] = blocks[name]
        self._errors[start:stop] = np.asarray(errors, dtype=str)
        if self._captions is not None:
            self._captions[start:stop] = np.asarray([c or "" for c in captions], dtype=str)
        # only now, with every array of the chunk written, are its rows committed
        self._embed["rows_done"] = stop
        formats.update_header(self._group, embed=self._embed)

    def wait(self) -> None:
        """Block until the chunk in flight is written (re-raising its error)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Stop the writer thread (after the chunk in flight)."""
        self._pool.shutdown(wait=True)


def stored_as(block: np.ndarray, dtype: np.dtype, layer: str, start: int) -> np.ndarray:
    """``block`` in the layer's ``dtype``; refused if a finite value would become inf.

    Parameters
    ----------
    block : ndarray of shape (n_rows, width)
        Rows ``start:start + n_rows`` of ``layer``, as the model computed them (float32).
    dtype : numpy dtype
        The layer's stored dtype.
    layer : str
        Names the layer in the error.
    start : int
        The store row of ``block``'s first row (named in the error).

    Returns
    -------
    ndarray of shape (n_rows, width) and dtype ``dtype``

    Raises
    ------
    InvalidInputError
        Naming the layer, the rows and the largest magnitude, if it exceeds ``dtype``'s range.
    """
    dtype = np.dtype(dtype)
    if dtype == block.dtype:
        return block
    limit = float(np.finfo(dtype).max)
    magnitudes = np.abs(block)
    largest = float(np.max(magnitudes, initial=0.0, where=np.isfinite(magnitudes)))
    if largest > limit:
        raise InvalidInputError(
            f"Layer {layer!r} holds a value of magnitude {largest:.6g} in rows "
            f"{start}-{start + len(block) - 1}, beyond the range of {dtype.name} (+-{limit:g}): "
            f"stored as {dtype.name} it would be inf. Embed with store_dtype='float32' "
            "(resume=False replaces this unfinished store).")
    return block.astype(dtype)
