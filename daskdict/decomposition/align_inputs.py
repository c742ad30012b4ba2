"""The inputs of :class:`daskdict.decomposition.align.CompAlign`: components and target
checked for shapes and items, and read a row chunk at a time (values checked as they are
read)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from daskdict.decomposition.run import component_layers
from daskdict.errors import InvalidInputError
from daskdict.io.reads import check_matrix, zarr_to_dask
from daskdict.io.store import EmbeddingStore, open_store

__all__ = ["DEFAULT_CHUNK_ROWS", "Inputs", "as_rows", "check_same_items", "chunk_bounds",
           "read_rows", "resolve", "resolve_components", "store_of"]

# rows per read of inputs that have no row chunks of their own (NumPy arrays)
DEFAULT_CHUNK_ROWS = 4096
# at most this many bytes of float64 rows (all components and the target) per read
READ_BYTES = 64 * 2**20


@dataclass
class Inputs:
    """Checked inputs: every component (NumPy or dask, (n, d)) and the target ((n, D))."""

    names: list[str]
    components: list[Any]
    target: Any = None
    paths: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.n_rows, self.width = (int(n) for n in self.components[0].shape)


def as_rows(array: Any, what: str) -> Any:
    """A NumPy or dask array of shape (n, width), checked for shape and dtype."""
    if isinstance(array, zarr.Array):
        check_matrix(array, what)
        return zarr_to_dask(array)
    if not isinstance(array, da.Array):
        if isinstance(array, EmbeddingStore | zarr.Group | Mapping | str | os.PathLike):
            raise InvalidInputError(f"Expected {what} to be an array. Got "
                                    f"{type(array).__name__}.")
        array = np.asarray(array)
    check_matrix(array, what)
    return array


def store_of(source: Any) -> EmbeddingStore | None:
    if isinstance(source, str | os.PathLike):
        return open_store(source)
    return source if isinstance(source, EmbeddingStore) else None


def resolve_components(components: Any, known: list[str] | None = None) -> Inputs:
    """The components as :class:`Inputs`; ``known`` (a fitted model's names) lets a mapping
    hold any non-empty subset of them, in their order."""
    store = store_of(components)
    if store is not None:
        names = component_layers(store)
        arrays = [store.layer(name) for name in names]
        inputs = Inputs(names, arrays, paths=[Path(store.path)])
    elif isinstance(components, Mapping):
        if not components:
            raise InvalidInputError("Expected at least one component. Got an empty mapping.")
        by_name = {str(name): array for name, array in components.items()}
        names = list(by_name)
        if known is not None:  # the fitted order; unknown names last (the caller refuses them)
            names = [n for n in known if n in names] + [n for n in names if n not in known]
        arrays = [as_rows(by_name[name], f"component {name!r}") for name in names]
        inputs = Inputs(names, arrays)
    else:
        raise InvalidInputError(
            "Expected components to be an embedding store written by daskdict.decompose (or "
            f"its path) or a mapping of names to arrays. Got {type(components).__name__}.")
    shape = (inputs.n_rows, inputs.width)
    for name, array in zip(inputs.names, inputs.components, strict=True):
        if tuple(array.shape) != shape:
            raise InvalidInputError(
                f"Expected every component to have the shape of {inputs.names[0]!r}, {shape} "
                f"(rows, width). Got {tuple(array.shape)} for {name!r}.")
    return inputs


def check_same_items(parts: EmbeddingStore | None, target: EmbeddingStore) -> None:
    """Refuse two stores whose items differ (same count, another order or other items): the
    alignment pairs row i of one with row i of the other."""
    if parts is None or parts.ids is None or target.ids is None:
        return
    if len(parts.ids) == len(target.ids) and not np.array_equal(parts.ids, target.ids):
        first = int(np.flatnonzero(np.asarray(parts.ids) != np.asarray(target.ids))[0])
        raise InvalidInputError(
            f"The components' store and the target store list other items (row {first}: "
            f"{parts.ids[first]!r} against {target.ids[first]!r}); write both from the same "
            "items in the same order.")


def resolve(components: Any, target: Any, known: list[str] | None = None) -> Inputs:
    """Components and target, checked for shapes (values are checked chunk by chunk)."""
    inputs = resolve_components(components, known)
    store = store_of(target)
    if store is not None:
        check_same_items(store_of(components), store)
        inputs.target = store.layer("final")
        inputs.paths.append(Path(store.path))
    else:
        inputs.target = as_rows(target, "the target")
    if inputs.target.shape[0] != inputs.n_rows:
        raise InvalidInputError(
            f"Expected the target to have as many rows as the components ({inputs.n_rows}). "
            f"Got {inputs.target.shape[0]}.")
    return inputs


def read_rows(inputs: Inputs, start: int, stop: int, check: bool, chunk: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` of every component, (m, n_components, d), and of the target,
    (m, D), as float64; with ``check``, refuse NaN and inf naming the input and the chunk."""
    sources = [*inputs.components, inputs.target]
    lazy = [i for i, a in enumerate(sources) if isinstance(a, da.Array)]
    parts: list[Any] = [a[start:stop] for a in sources]
    if lazy:
        computed = dask.compute(*[parts[i] for i in lazy], scheduler="threads")
        for i, value in zip(lazy, computed, strict=True):
            parts[i] = value
    names = [f"Component {n!r}" for n in inputs.names] + ["The target"]
    for name, part in zip(names, parts, strict=True) if check else ():
        bad = ~np.isfinite(part).all(axis=1)
        if bad.any():
            raise InvalidInputError(
                f"{name} holds NaN or inf in chunk {chunk} (rows {start}-{stop - 1}), first at "
                f"row {start + int(np.flatnonzero(bad)[0])}. Remove or repair those rows.")
    block = np.empty((stop - start, len(inputs.components), inputs.width))
    for i, part in enumerate(parts[:-1]):
        block[:, i] = part
    return block, np.asarray(parts[-1], dtype=np.float64)


def chunk_bounds(inputs: Inputs, chunk_rows: int | None) -> list[tuple[int, int]]:
    """The row chunks read at a time: ``chunk_rows``, else the row chunks of the first input
    stored in chunks (a read then touches one chunk of each), at most ``READ_BYTES``."""
    if chunk_rows is None:
        chunked = [a for a in [*inputs.components, inputs.target] if isinstance(a, da.Array)]
        chunk_rows = int(chunked[0].chunks[0][0]) if chunked else DEFAULT_CHUNK_ROWS
        row_bytes = 8 * (len(inputs.components) * inputs.width + inputs.target.shape[1])
        chunk_rows = max(1, min(chunk_rows, READ_BYTES // row_bytes))
    n = inputs.n_rows
    return [(start, min(start + chunk_rows, n)) for start in range(0, n, chunk_rows)]
