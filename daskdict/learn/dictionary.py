"""The learned dictionary, sparse codes, and the scikit-learn estimator.

Everything is saved as Zarr groups with JSON attributes (never pickle: loading an untrusted file
cannot run code).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import sparse
import zarr
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from daskdict._version import __version__
from daskdict.compute.runtime import runtime
from daskdict.errors import InvalidInputError, StoreNotFoundError
from daskdict.io.store import (
    as_dask_array,
    atomic_group,
    check_writable,
    recover_replaced,
)
from daskdict.learn.training import check_block, code_block, fit, gram_matrix, raise_for_bad_rows

FORMAT_VERSION = 1


class Codes:
    """Fixed-width sparse codes of N samples over a dictionary of ``n_atoms`` atoms.

    Parameters
    ----------
    indices : array of shape (n_samples, n_nonzero), int32
        Atom indices per sample, ``-1`` for padding.
    values : array of shape (n_samples, n_nonzero)
        Coefficients, ``0`` for padding.
    n_atoms : int
        Number of atoms of the dictionary (columns of :meth:`to_sparse`).

    NumPy arrays for in-memory codes; dask arrays for codes read from a Zarr group.
    """

    def __init__(self, indices, values, n_atoms: int):
        if indices.shape != values.shape or len(indices.shape) != 2:
            raise InvalidInputError(
                f"Expected indices and values of the same 2-D shape. Got {indices.shape} "
                f"and {values.shape}."
            )
        self.indices = indices
        self.values = values
        self.n_atoms = int(n_atoms)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_samples, n_atoms), the shape of the sparse matrix."""
        return (int(self.indices.shape[0]), self.n_atoms)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return (f"Codes(n_samples={len(self)}, n_atoms={self.n_atoms}, "
                f"n_nonzero={self.indices.shape[1]})")

    def compute(self) -> Codes:
        """The same codes with NumPy arrays."""
        indices, values = dask.compute(self.indices, self.values)
        return Codes(np.asarray(indices), np.asarray(values), self.n_atoms)

    def to_sparse(self) -> sparse.COO:
        """The codes as a ``sparse.COO`` matrix of shape (n_samples, n_atoms)."""
        codes = self.compute()
        keep = (codes.indices >= 0) & (codes.values != 0)
        rows = np.broadcast_to(np.arange(len(codes))[:, None], codes.indices.shape)[keep]
        return sparse.COO(np.stack([rows, codes.indices[keep]]), codes.values[keep],
                          shape=self.shape)

    def to_dense(self) -> np.ndarray:
        """The codes as a dense array of shape (n_samples, n_atoms)."""
        return self.to_sparse().todense()

    def save(self, path: str | os.PathLike, *, attrs: dict | None = None) -> Path:
        """Write the codes as a Zarr group (atomically: a crash leaves the old or new group)."""
        path = check_writable(path)
        with atomic_group(path) as group:
            _write_codes(group, self.indices, self.values)
            group.attrs["daskdict"] = {"format": FORMAT_VERSION, "kind": "codes",
                                       "n_atoms": self.n_atoms, "version": __version__,
                                       **(attrs or {})}
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Codes:
        """Open codes written by :meth:`save` or by ``encode``; arrays are read lazily."""
        group, meta = _open_group(path, "codes")
        return cls(da.from_zarr(group["indices"]), da.from_zarr(group["values"]),
                   meta["n_atoms"])


def _write_codes(group, indices, values, compute=None):
    rows = min(max(1, indices.shape[0]), 65536)
    targets = [group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                                  chunks=(rows, arr.shape[1]))
               for name, arr in (("indices", indices), ("values", values))]
    sources = [a.rechunk((rows, -1)) if isinstance(a, da.Array) else da.from_array(
        a, chunks=(rows, -1)) for a in (indices, values)]
    stored = da.store(sources, targets, lock=False, compute=False)
    (compute or dask.compute)(stored)


def _open_group(path, kind: str):
    path = recover_replaced(path)
    if not path.exists():
        raise StoreNotFoundError(f"Nothing at {str(path)!r}: the path does not exist.")
    group = zarr.open_group(path, mode="r")
    meta = dict(group.attrs.get("daskdict", {}))
    if meta.get("kind") != kind:
        raise InvalidInputError(
            f"Expected {str(path)!r} to hold daskdict {kind}. Got {meta.get('kind')!r}."
        )
    return group, meta


class Dictionary:
    """A learned dictionary.

    Attributes
    ----------
    atoms : ndarray of shape (n_atoms, n_features)
        Unit-norm atoms (rows).
    params : dict
        The fit's hyper-parameters (and its ``random_state`` seed).
    history : list of dict
        One record per iteration (relative error, FVU, mean relative residual, mean L0, dead
        atoms, replaced atoms, seconds).
    fingerprint : dict
        Shape, dtype, chunking and path of the training data.
    """

    def __init__(self, atoms: np.ndarray, params: dict | None = None,
                 history: list[dict] | None = None, fingerprint: dict | None = None):
        self.atoms = np.asarray(atoms)
        self.params = dict(params or {})
        self.history = list(history or [])
        self.fingerprint = dict(fingerprint or {})

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def n_features(self) -> int:
        return self.atoms.shape[1]

    def __repr__(self) -> str:
        err = self.history[-1]["relative_error"] if self.history else float("nan")
        return (f"Dictionary(n_atoms={self.n_atoms}, n_features={self.n_features}, "
                f"n_iter={len(self.history)}, relative_error={err:.4g})")

    def encode(self, source: Any, *, layer: str | None = None, n_nonzero: int | None = None,
               tol: float | None = None, coder: str | None = None,
               out: str | os.PathLike | None = None, client: Any = None,
               progress: bool = False) -> Codes:
        """Sparse codes of ``source`` over this dictionary.

        Parameters
        ----------
        source : path, zarr.Array, zarr.Group, dask array or ndarray of shape (N, n_features)
        layer : str, optional
            Layer of an embedding store.
        n_nonzero, tol, coder : optional
            Default to the values used for fitting.
        out : path, optional
            Zarr group to write the codes to. When ``source`` is a path and ``out`` is not
            given, the codes are written next to it as ``<source>.codes[-<layer>].zarr`` (the
            input store itself is never modified).
        client : distributed.Client, "local", "threads", "sync" or None
            As for :func:`daskdict.fit`.

        Returns
        -------
        Codes
            In memory, or read lazily from ``out`` when written.
        """
        data, description = as_dask_array(source, layer)
        if data.shape[1] != self.n_features:
            raise InvalidInputError(
                f"Expected data with {self.n_features} features (the dictionary's). Got "
                f"{data.shape[1]}."
            )
        n_nonzero = int(n_nonzero or self.params.get("n_nonzero", 10))
        if n_nonzero > min(self.n_features, self.n_atoms):
            raise InvalidInputError(
                f"n_nonzero={n_nonzero} exceeds min(n_features, n_atoms)="
                f"{min(self.n_features, self.n_atoms)}."
            )
        tol = float(self.params.get("tol", 0.0) if tol is None else tol)
        coder = coder or self.params.get("coder", "omp")
        if out is None and description["path"] is not None:
            suffix = f"-{description['layer']}" if description["layer"] else ""
            out = f"{description['path']}.codes{suffix}.zarr"
        if out is not None:
            out = check_writable(out)
        dtype = np.dtype(self.params.get("dtype", "float32"))
        atoms = np.ascontiguousarray(self.atoms, dtype=dtype)
        in_memory = description["kind"] == "ndarray"
        with runtime(client, in_memory=in_memory, verbose=progress) as rt:
            shared_atoms = rt.share(atoms)
            shared_gram = dask.delayed(gram_matrix)(shared_atoms)
            offsets = np.concatenate([[0], np.cumsum(data.chunks[0])[:-1]])
            index_parts, value_parts = [], []
            blocks = data.to_delayed().ravel()
            for block, offset, rows in zip(blocks, offsets, data.chunks[0], strict=True):
                task = dask.delayed(_encode_block, nout=2)(
                    block, int(offset), shared_atoms, shared_gram, n_nonzero, tol, coder)
                index_parts.append(da.from_delayed(task[0], (rows, n_nonzero), np.int32))
                value_parts.append(da.from_delayed(task[1], (rows, n_nonzero), dtype))
            indices = da.concatenate(index_parts)
            values = da.concatenate(value_parts)
            if out is None:
                indices, values = rt.compute(indices, values)
                return Codes(indices, values, self.n_atoms)
            with atomic_group(out) as group:
                _write_codes(group, indices, values, compute=rt.compute)
                group.attrs["daskdict"] = {"format": FORMAT_VERSION, "kind": "codes",
                                           "n_atoms": self.n_atoms, "version": __version__,
                                           "source": description}
        return Codes.load(out)

    def reconstruct(self, codes: Codes) -> np.ndarray:
        """``X D`` for in-memory codes, shape (n_samples, n_features)."""
        return np.asarray(codes.to_sparse() @ self.atoms)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the dictionary as a Zarr group, atomically."""
        path = check_writable(path)
        with atomic_group(path) as group:
            group.create_array("atoms", data=np.ascontiguousarray(self.atoms))
            group.attrs["daskdict"] = {
                "format": FORMAT_VERSION, "kind": "dictionary", "version": __version__,
                "params": self.params, "history": self.history, "fingerprint": self.fingerprint}
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dictionary:
        """Read a dictionary written by :meth:`save`."""
        group, meta = _open_group(path, "dictionary")
        return cls(np.asarray(group["atoms"][...]), meta.get("params"), meta.get("history"),
                   meta.get("fingerprint"))


def _encode_block(y, offset, atoms, gram, n_nonzero, tol, coder):
    report = check_block(y, offset)
    raise_for_bad_rows(int(report[2]), int(report[3]))
    y = np.ascontiguousarray(y, dtype=atoms.dtype)
    return code_block(y, atoms, gram, n_nonzero, tol, coder)


def load(path: str | os.PathLike) -> Dictionary:
    """Load a :class:`Dictionary` saved with :meth:`Dictionary.save`."""
    return Dictionary.load(path)


class KSVD(TransformerMixin, BaseEstimator):
    """K-SVD dictionary learning as a scikit-learn estimator.

    Parameters are those of :func:`daskdict.fit`. ``transform`` returns dense codes of shape
    (n_samples, n_atoms), as scikit-learn's decomposition estimators do; use
    ``dictionary_.encode`` for sparse codes.

    Attributes
    ----------
    components_ : ndarray of shape (n_atoms, n_features)
        The atoms.
    dictionary_ : Dictionary
    n_iter_ : int
    error_ : list of float
        Relative error per iteration.
    """

    def __init__(self, n_atoms=None, n_nonzero=10, n_iter=10, *, coder="omp", tol=0.0,
                 update="approx", atom_batch_size=None, shuffle_atoms=True, replace_atoms=True,
                 init="data", dtype="float32", random_state=None, client=None, verbose=False):
        self.n_atoms = n_atoms
        self.n_nonzero = n_nonzero
        self.n_iter = n_iter
        self.coder = coder
        self.tol = tol
        self.update = update
        self.atom_batch_size = atom_batch_size
        self.shuffle_atoms = shuffle_atoms
        self.replace_atoms = replace_atoms
        self.init = init
        self.dtype = dtype
        self.random_state = random_state
        self.client = client
        self.verbose = verbose

    def fit(self, X, y=None):
        """Learn the dictionary from X of shape (n_samples, n_features)."""
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        self.dictionary_ = fit(
            X, self.n_atoms, self.n_nonzero, self.n_iter, coder=self.coder, tol=self.tol,
            update=self.update, atom_batch_size=self.atom_batch_size,
            shuffle_atoms=self.shuffle_atoms, replace_atoms=self.replace_atoms, init=self.init,
            dtype=self.dtype, random_state=self.random_state,
            client=self.client if self.client is not None else "threads",
            progress=self.verbose)
        self.components_ = self.dictionary_.atoms
        self.n_iter_ = len(self.dictionary_.history)
        self.error_ = [h["relative_error"] for h in self.dictionary_.history]
        return self

    def transform(self, X):
        """Dense codes of X, shape (n_samples, n_atoms)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        codes = self.dictionary_.encode(
            X, client=self.client if self.client is not None else "threads")
        return codes.to_dense().astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """Reconstruction ``X @ components_`` of dense codes."""
        check_is_fitted(self)
        return np.asarray(X) @ self.components_

    @property
    def _n_features_out(self):
        return self.components_.shape[0]
