"""The embedding loop of :func:`daskdict.embed`, shared by images and texts.

Rows of the store are embedded chunk by chunk: a thread pool prepares the next batches (reads,
decodes, preprocesses or tokenizes) while the model runs on the current one; the rows of a
chunk are gathered and handed whole to the :class:`~daskdict.embedding.writer.ChunkWriter`,
which commits them. What a batch holds and how the model turns it into rows is up to the
caller (``prepare`` and ``forward``).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daskdict.embedding.writer import ChunkWriter
from daskdict.io import formats
from daskdict.io.reads import default_chunk_rows

# rows per chunk at most: a chunk is the unit of resumption (work lost to a kill) and of the
# writer's memory (rows x all layers)
MAX_CHUNK_ROWS = 4096

__all__ = ["MAX_CHUNK_ROWS", "Batch", "Prefetcher", "chunk_rows_for", "describe_error",
           "input_paths",
           "mark_complete", "progress_bar", "run_chunks"]


@dataclass
class Batch:
    """Rows ``start:stop``, prepared for the model.

    Attributes
    ----------
    start, stop : int
        The rows of the store this batch fills.
    inputs : Any
        What ``forward`` takes for the good rows (pixels, tokenized texts), or None if none is.
    ok : ndarray of shape (stop - start,) of bool
        Rows that the forward pass fills; the others stay zeros.
    errors : list of str, length stop - start
        Why a row could not be embedded (empty for good rows).
    captions : list of (str or None), length stop - start
    """

    start: int
    stop: int
    inputs: Any
    ok: np.ndarray
    errors: list[str]
    captions: list[str | None]


def describe_error(exc: BaseException) -> str:
    """The message recorded in ``items/error`` for an item that could not be embedded."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


class Prefetcher:
    """Prepares batches in a thread pool, ``depth`` ahead of the consumer, in order."""

    def __init__(self, ranges: list[tuple[int, int]], prepare: Callable[[int, int], Batch],
                 n_workers: int, depth: int):
        self._pool = ThreadPoolExecutor(n_workers, thread_name_prefix="daskdict-embed-load")
        self._ranges = iter(ranges)
        self._prepare = prepare
        self._queue: deque[Future] = deque()
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        span = next(self._ranges, None)
        if span is not None:
            self._queue.append(self._pool.submit(self._prepare, *span))

    def __iter__(self) -> Iterator[Batch]:
        while self._queue:
            future = self._queue.popleft()
            self._submit()
            yield future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def progress_bar(total: int, initial: int, enabled: bool, unit: str = "img"):
    """A tqdm bar over ``total`` rows (None when disabled)."""
    if not enabled:
        return None
    # tqdm.auto warns inside Jupyter when ipywidgets is missing; the text bar works everywhere
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, initial=initial, desc="embed", unit=unit)


def run_chunks(n_rows: int, rows_done: int, chunk_rows: int,
               batches_of: Callable[[int, int], list[tuple[int, int]]],
               prepare: Callable[[int, int], Batch], forward: Callable[[Any], np.ndarray],
               writer: ChunkWriter, total_width: int, n_workers: int, bar) -> None:
    """Embed every chunk from the one holding row ``rows_done`` on, and write them in order.

    Parameters
    ----------
    n_rows : int
        Rows of the store.
    rows_done : int
        The committed-row counter; the chunk holding it and all later ones are (re)written.
    chunk_rows : int
        Rows per chunk of the store.
    batches_of : callable
        ``batches_of(start, stop)``: the row ranges, covering ``start:stop`` in order, that
        ``prepare`` is called with.
    prepare : callable
        ``prepare(start, stop) -> Batch`` (runs in a loader thread).
    forward : callable
        ``forward(batch.inputs)``: float32 rows of shape (batch.ok.sum(), total_width).
    writer : ChunkWriter
    total_width : int
        The width of a row: the widths of all layers written.
    n_workers : int
        Loader threads.
    bar : tqdm or None
    """
    first = (rows_done // chunk_rows) * chunk_rows
    chunks = [(start, min(start + chunk_rows, n_rows))
              for start in range(first, n_rows, chunk_rows)]
    ranges = [span for start, stop in chunks for span in batches_of(start, stop)]
    loader = Prefetcher(ranges, prepare, n_workers, depth=n_workers + 2)
    batches = iter(loader)
    try:
        for start, stop in chunks:
            rows = np.zeros((stop - start, total_width), dtype=np.float32)
            errors: list[str] = []
            captions: list[str | None] = []
            filled = start
            while filled < stop:
                batch = next(batches)
                if batch.inputs is not None:
                    rows[batch.start - start:batch.stop - start][batch.ok] = forward(batch.inputs)
                errors.extend(batch.errors)
                captions.extend(batch.captions)
                filled = batch.stop
                if bar is not None:
                    bar.update(batch.stop - batch.start)
            writer.submit(start, stop, rows, errors, captions)
        writer.wait()
    finally:
        loader.close()
        writer.close()


def mark_complete(group, meta: dict, ids: np.ndarray, unreadable: str,
                  stacklevel: int = 4) -> None:
    """Mark the store complete in its header; warn about the rows flagged in ``items/error``.

    Parameters
    ----------
    group : zarr.Group
        The store, every row written.
    meta : dict
        Its header (``meta["embed"]`` is updated).
    ids : ndarray of shape (n_rows,)
        The row ids (named in the warning).
    unreadable : str
        What the flagged rows are, for the warning (e.g. ``"images could not be read"``).
    stacklevel : int, default=4
        Of the warning, counted from this function (4: the caller of ``embed``).
    """
    embed_meta = meta["embed"]
    errors = np.asarray(group["items/error"][...])
    failed = np.flatnonzero(errors != "")
    embed_meta.update(rows_done=len(errors), complete=True, n_failed=int(failed.size))
    formats.update_header(group, embed=embed_meta)
    if failed.size:
        warnings.warn(
            f"{failed.size} of {len(errors)} {unreadable}; their rows are zeros and flagged in "
            f"items/error (fit skips them). First: item {str(ids[failed[0]])!r}: "
            f"{errors[failed[0]]}", UserWarning, stacklevel=stacklevel)


def input_paths(named: list, model, items) -> list:
    """The paths embed reads (the store may be none of them, nor lie inside one).

    Parameters
    ----------
    named : list
        The call's arguments that may be paths (images, texts, captions).
    model : str, path-like or None
    items : ImageItems
        Its ``root`` (a folder or file the items come from) is read too.
    """
    named = [*named, items.root]
    if isinstance(model, str | os.PathLike) and Path(model).exists():
        named.append(model)
    return [p for p in named if isinstance(p, str | os.PathLike)]


def chunk_rows_for(chunk_rows: int | None, widths: dict[str, int], n_rows: int) -> int:
    """Rows per chunk of a new store: ``chunk_rows`` if given, else at most ``MAX_CHUNK_ROWS``
    and 32 MiB of the widest layer."""
    return chunk_rows or min(MAX_CHUNK_ROWS, default_chunk_rows(max(widths.values())), n_rows)
