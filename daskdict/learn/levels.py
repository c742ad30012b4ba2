"""Dictionaries with levels: coarse concepts first, finer ones learned on what they leave.

A fit with ``n_atoms=[128, 512], n_nonzero=[1, 4]`` learns a first dictionary of 128 atoms
with one atom per row (a clustering by direction: each row's coarse concept), then a second
of 512 atoms with four per row on the residuals of the first, and stacks them: the atoms are
numbered level by level, a row's code holds one coarse and four fine atoms, and the
reconstruction is the sum of the levels'. Categories at the top, attributes beneath them: the
concept hierarchy that the essay "Interpreting vision models with sparse dictionary learning: a
case for hierarchical learning" argues a dictionary should expose.

The residuals of a level are never written to disk: for out-of-core data they are a dask
graph that codes each chunk over the coarser levels when the next level reads it, so the data
is read as often as a one-level fit reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.learn import coding
from daskdict.learn.dictionary import Dictionary
from daskdict.learn.params import coder_key

# Rows coded at once when the residuals of in-memory data are computed in memory.
_MEMORY_ROWS = 65536


def split_levels(n_atoms: Any, n_nonzero: Any) -> list[tuple[Any, Any]] | None:
    """Per-level ``(n_atoms, n_nonzero)`` when they are sequences, None for one level.

    Raises
    ------
    InvalidInputError
        If only one of them is a sequence, or their lengths differ or are zero.
    """
    def is_sequence(value: Any) -> bool:
        return isinstance(value, (list, tuple, np.ndarray))

    if not is_sequence(n_atoms) and not is_sequence(n_nonzero):
        return None
    if not (is_sequence(n_atoms) and is_sequence(n_nonzero)) or len(n_atoms) != len(
            n_nonzero) or len(n_atoms) == 0:
        raise InvalidInputError(
            "A dictionary with levels takes one n_atoms and one n_nonzero per level, coarse "
            f"level first (two sequences of the same length). Got n_atoms={n_atoms!r:.100} "
            f"and n_nonzero={n_nonzero!r:.100}.")
    return [(a.item() if isinstance(a, np.generic) else a,
             k.item() if isinstance(k, np.generic) else k)
            for a, k in zip(n_atoms, n_nonzero, strict=True)]


def level_seed(seed: int, level: int) -> int:
    """The seed of a level's fit, drawn from the fit's seed (level 0 keeps it)."""
    if level == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), level]).generate_state(1)[0])


def level_checkpoint(checkpoint: str | os.PathLike | None, level: int) -> Path | None:
    """Where a level's checkpoint goes: ``<checkpoint>.level<k>`` (k counts from 1)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path.with_name(f"{path.name}.level{level + 1}")


def residual_rows(data: da.Array, reader: Any, models: list[Dictionary]) -> Any:
    """The rows minus their reconstruction by the levels fitted so far.

    Parameters
    ----------
    data : dask array of shape (n_samples, n_features)
        The rows the first level was fitted on (as :func:`daskdict.io.reads.open_rows` gives).
    reader : ndarray or other
        An ndarray for in-memory data (the residuals are then computed now, in memory);
        anything else leaves them a lazy graph, one task per chunk of ``data``.
    models : list of Dictionary
        The levels fitted so far, coarse first.

    Returns
    -------
    ndarray or dask array of shape (n_samples, n_features), in the atoms' dtype
    """
    stacked = stack_levels(models)
    atoms = np.ascontiguousarray(stacked.atoms)
    grams = coding.level_grams(atoms, stacked.level_sizes)
    mean = None if stacked.mean is None else stacked.mean.astype(atoms.dtype)
    arguments = (mean, atoms, grams, stacked.level_sizes, stacked.level_nonzeros,
                 float(stacked.params.get("tol", 0.0)),
                 coder_key(stacked.params.get("coder", "omp"),
                           bool(stacked.params.get("positive", False)),
                           stacked.params.get("correlation_dtype", "float32")))
    if isinstance(reader, np.ndarray):
        rows = np.empty(data.shape, dtype=atoms.dtype)
        for start in range(0, data.shape[0], _MEMORY_ROWS):
            stop = min(start + _MEMORY_ROWS, data.shape[0])
            rows[start:stop] = _residual_block(reader[start:stop], *arguments, offset=start)
        return rows
    return data.map_blocks(_residual_block, *arguments, dtype=atoms.dtype)


def _residual_block(y: np.ndarray, mean: np.ndarray | None, atoms: np.ndarray,
                    grams: list[np.ndarray], level_sizes: list[int], n_nonzeros: list[int],
                    tol: float, coder: str, offset: int | None = None,
                    block_info: dict | None = None) -> np.ndarray:
    """One block's residual after the levels (see :func:`coding.code_levels`), of the rows
    minus ``mean`` when the first level was centred; ``offset`` (or, in a dask array's
    ``map_blocks``, its ``block_info``) is the index of the block's first row."""
    if offset is None:
        offset = block_info[0]["array-location"][0][0] if block_info else 0
    y = coding.as_block(y if mean is None else np.asarray(y) - mean, atoms.dtype)
    return coding.code_levels(y, atoms, grams, level_sizes, n_nonzeros, tol, coder,
                              exact=True, offset=offset)[2]


def stack_levels(models: list[Dictionary], seed: int | None = None) -> Dictionary:
    """One dictionary of the levels' atoms, numbered level by level.

    Its ``params`` hold each level's parameters (``levels``), the atoms per level
    (``level_sizes``), and totals: ``n_atoms``, ``n_nonzero`` (summed over levels); its
    history is the levels' histories, each record with its ``level``.
    """
    first = models[0].params
    level_params = [dict(m.params) for m in models]
    params = {**first, "n_atoms": sum(m.n_atoms for m in models),
              "n_nonzero": sum(int(p["n_nonzero"]) for p in level_params),
              "level_sizes": [m.n_atoms for m in models], "levels": level_params,
              "random_state": first.get("random_state") if seed is None else int(seed)}
    history = [{**record, "level": level} for level, m in enumerate(models)
               for record in m.history]
    atoms = np.vstack([m.atoms for m in models])
    return Dictionary(atoms, params, history, models[0].fingerprint, models[0].mean)
