"""Held-out rows of a fit: their error after every iteration, and stopping when it stalls.

A fit given ``validation`` rows codes them after each iteration with the iteration's new atoms
(the fit's coder, ``n_nonzero``, ``tol``, sign rule and centring) and records the relative
error ``||V - X D||_F / ||V||_F`` (of the centred rows for a centred fit, as the training
error is) as ``validation_error``. One task per chunk of ``V`` returns two float64 sums, so
the rows are never looped over in Python and never leave their workers.

With ``patience`` the fit stops once the validation error has not improved by more than a
relative :data:`MIN_IMPROVEMENT` for ``patience`` iterations in a row, and returns the atoms of
the iteration with the lowest validation error. A checkpointed fit keeps those atoms in a
second checkpoint next to its own (``<checkpoint>.best``), written when they are not the
latest ones, so that a resumed fit returns them too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import numpy as np

from daskdict.errors import CheckpointMismatchError, InvalidInputError
from daskdict.io.reads import open_rows
from daskdict.io.store import EmbeddingStore
from daskdict.learn import coding
from daskdict.learn.checkpoints import load_checkpoint, save_checkpoint
from daskdict.learn.params import FitParams, coder_key
from daskdict.validation import check_positive_int

__all__ = ["MIN_IMPROVEMENT", "EarlyStopping", "best_checkpoint_path", "check_patience",
           "load_best", "open_validation", "save_best", "validation_block", "validation_error"]

# Relative decrease of the validation error that counts as an improvement for ``patience``.
MIN_IMPROVEMENT = 1e-4


def check_patience(patience: Any, validation: Any) -> int | None:
    """``patience`` as a positive int or None; refused without validation rows."""
    patience = check_positive_int("patience", patience, optional=True)
    if patience is not None and validation is None:
        raise InvalidInputError(
            f"patience={patience} stops the fit when the error of held-out rows stalls: pass "
            "those rows as validation=... (rows not trained on).")
    return patience


def open_validation(validation: Any, layer: str | None, source: Any, description: dict,
                    n_features: int) -> tuple[Any, dict, Any]:
    """Open the validation rows and check them against the training data before any work.

    Parameters
    ----------
    validation : path, EmbeddingStore, zarr.Array, zarr.Group, dask array or ndarray
        Rows of shape (n_validation, n_features), in any form ``fit`` takes as its source
        (a store is read at the same ``layer``; rows flagged in ``items/error`` are left out).
    layer : str or None
        The fit's layer.
    source : any
        The fit's training source, as given.
    description : dict
        The training source's description (see :func:`daskdict.io.reads.open_rows`).
    n_features : int
        The training data's width.

    Returns
    -------
    rows : dask array of shape (n_validation, n_features)
    description : dict
        The validation source's ``kind``, ``path`` and ``layer``.
    reader : ndarray or other
        As :func:`daskdict.io.reads.open_rows` returns it.

    Raises
    ------
    InvalidInputError
        If the rows are the training source, of another width, or empty.
    """
    if isinstance(validation, EmbeddingStore):
        validation = validation.path
    if validation is source:
        raise InvalidInputError("validation is the training data itself: pass rows the fit "
                                "does not train on.")
    rows, found, reader = open_rows(validation, layer, skip_flagged=True)
    if found["path"] is not None and found["path"] == description["path"]:
        raise InvalidInputError(
            f"validation is the training source {found['path']}: pass rows the fit does not "
            "train on (e.g. a store of held-out items).")
    if rows.shape[1] != n_features:
        raise InvalidInputError(
            f"Expected validation rows with {n_features} features (the training data's). Got "
            f"{rows.shape[1]}.")
    if rows.shape[0] == 0:
        raise InvalidInputError("validation holds no rows.")
    return rows, found, reader


def validation_block(y: np.ndarray, mean: np.ndarray | None, atoms: np.ndarray,
                     gram: np.ndarray, n_nonzero: int, tol: float, coder: str,
                     offset: int = 0) -> np.ndarray:
    """Squared residual and squared norm of one chunk of validation rows, coded as
    ``Dictionary.encode`` codes them.

    Parameters
    ----------
    y : ndarray of shape (n_rows, n_features)
    mean : ndarray of shape (n_features,), float64, or None
        The training mean of a centred fit (subtracted first), else None.
    atoms : ndarray of shape (n_atoms, n_features)
    gram : ndarray of shape (n_atoms, n_atoms)
    n_nonzero, tol, coder, offset :
        As for :func:`daskdict.learn.coding.code_block` (``offset``: the chunk's first row).

    Returns
    -------
    ndarray of shape (2,), float64
        ``sum ||y_i - x_i D||^2`` and ``sum ||y_i||^2`` (of the centred rows when centred).
    """
    y = coding.as_block(y if mean is None else np.asarray(y) - mean, atoms.dtype)
    # one level of the level coder: the codes of encode (exact batches) and the residual
    residual = coding.code_levels(y, atoms, [gram], [atoms.shape[0]], [n_nonzero], tol, coder,
                                  exact=True, offset=offset)[2]
    return np.array([np.einsum("ij,ij->", residual, residual, dtype=np.float64),
                     np.einsum("ij,ij->", y, y, dtype=np.float64)])


def _sum(parts: list[np.ndarray]) -> np.ndarray:
    return np.sum(parts, axis=0)


def validation_error(rows: Any, atoms: np.ndarray, mean: np.ndarray | None, params: FitParams,
                     rt: Any) -> float:
    """The relative error of the validation ``rows`` (a dask array) coded with ``atoms``,
    computed by ``rt`` as one graph: one task per chunk, then one sum.

    Returns 0.0 for rows that are all zero (nothing to represent).
    """
    atoms = np.ascontiguousarray(atoms, dtype=np.dtype(params.dtype))
    shared_atoms = rt.share(atoms)
    shared_gram = dask.delayed(coding.gram_matrix)(shared_atoms)
    offsets = np.cumsum((0, *rows.chunks[0][:-1])).tolist()
    # as encode codes them: on the CPU, whatever device the fit codes its rows on
    encode_key = coder_key(params.coder, params.positive, params.correlation_dtype)
    parts = [dask.delayed(validation_block)(chunk, mean, shared_atoms, shared_gram,
                                            params.n_nonzero, params.tol, encode_key,
                                            offset)
             for chunk, offset in zip(rows.to_delayed().ravel(), offsets, strict=True)]
    (total,) = rt.compute(dask.delayed(_sum)(parts))
    residual_sq, norm_sq = (float(v) for v in total)
    return float(np.sqrt(residual_sq / norm_sq)) if norm_sq > 0 else 0.0


class EarlyStopping:
    """The best iteration so far by validation error, and when to stop.

    Parameters
    ----------
    patience : int or None
        Iterations without an improvement of more than a relative :data:`MIN_IMPROVEMENT`
        after which to stop; None never stops.
    history : list of dict
        The records of the iterations already run (a resumed fit), replayed.
    """

    def __init__(self, patience: int | None, history: list[dict]):
        self.patience = patience
        self.best_iteration, self.best_error = 0, np.inf
        self.best_atoms: np.ndarray | None = None
        self._reference, self.stale = np.inf, 0
        # the iteration whose atoms the ``.best`` group next to a checkpoint holds
        self.saved_iteration = 0
        self.stopped = bool(history) and bool(history[-1].get("stopped_early", False))
        for number, record in enumerate(history, start=1):
            if "validation_error" in record:
                self.update(number, record["validation_error"], None)

    def update(self, iteration: int, error: float, atoms: np.ndarray | None) -> bool:
        """Take the validation error of ``iteration`` (whose new atoms are ``atoms``); True
        when the fit should stop after it."""
        if error < self.best_error:
            self.best_iteration, self.best_error = iteration, float(error)
            self.best_atoms = None if atoms is None else np.array(atoms, copy=True)
        if error < self._reference * (1.0 - MIN_IMPROVEMENT):
            self._reference, self.stale = float(error), 0
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


def best_checkpoint_path(checkpoint: str | os.PathLike | None) -> Path | None:
    """Where a checkpointed fit with validation rows keeps its best atoms:
    ``<checkpoint>.best``."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path.with_name(f"{path.name}.best")


def save_best(path: Path, atoms: np.ndarray, iteration: int, error: float, seed: int,
              data_fingerprint: dict) -> None:
    """Keep the best atoms so far next to the checkpoint (atomically)."""
    save_checkpoint(path, {"atoms": atoms, "iteration": int(iteration),
                           "validation_error": float(error), "seed": int(seed),
                           "fingerprint": data_fingerprint})


def load_best(path: Path, iteration: int, error: float, seed: int,
              data_fingerprint: dict) -> np.ndarray:
    """The best atoms a resumed fit kept at ``path``; refused unless they are those of
    ``iteration`` of this fit."""
    state = load_checkpoint(path)
    if (state is None or int(state.get("iteration", -1)) != iteration
            or state.get("seed") != seed or state.get("fingerprint") != data_fingerprint
            or not np.isclose(state.get("validation_error", np.nan), error)):
        raise CheckpointMismatchError(
            f"The checkpoint's best atoms (iteration {iteration}) are not at {path}, so a "
            "resumed fit cannot return them. Start over with resume=False.")
    return state["atoms"]
