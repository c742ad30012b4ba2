"""The learned dictionary and sparse codes: encoding, saving and loading.

Both are saved as Zarr groups with a daskdict header (kinds ``"dictionary"`` and ``"codes"``,
see :mod:`daskdict.io.formats`), never as pickles: loading an untrusted file cannot run code.
Saving follows the writer rule (:func:`daskdict.io.formats.check_output`): an output is never
one of the call's inputs nor an object of another kind, and replaces one of its own kind only
with ``overwrite=True``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse
import sparse

from daskdict.compute.runtime import runtime
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import atomic_group
from daskdict.io.formats import check_output
from daskdict.io.reads import as_dask_array
from daskdict.learn import coding, params, reduced
from daskdict.validation import check_choice, check_positive_int


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
    path : path, optional
        Where the codes are stored, for codes read from disk.
    level_sizes : sequence of int, optional
        Atoms per level of a dictionary with levels (coarse first), summing to ``n_atoms``;
        atoms are numbered level by level. None for a dictionary of one level.

    NumPy arrays for in-memory codes; dask arrays for codes read from a Zarr group.
    """

    def __init__(self, indices: Any, values: Any, n_atoms: int,
                 path: str | os.PathLike | None = None, level_sizes: Any = None):
        if indices.shape != values.shape or len(indices.shape) != 2:
            raise InvalidInputError(
                f"Expected indices and values of the same 2-D shape. Got {indices.shape} "
                f"and {values.shape}."
            )
        self.indices = indices
        self.values = values
        self.n_atoms = int(n_atoms)
        self.path = None if path is None else Path(path)
        self.level_sizes = check_level_sizes(level_sizes, self.n_atoms)

    def atom_levels(self) -> np.ndarray:
        """The level of each atom (0 = coarsest), shape (n_atoms,); all 0 without levels."""
        return atom_levels(self.level_sizes, self.n_atoms)

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
        return Codes(np.asarray(indices), np.asarray(values), self.n_atoms,
                     level_sizes=self.level_sizes)

    def to_sparse(self) -> sparse.COO:
        """The codes as a ``sparse.COO`` matrix of shape (n_samples, n_atoms)."""
        return coding.codes_to_coo(self.compute())

    def to_csr(self) -> scipy.sparse.csr_matrix:
        """The codes as a SciPy CSR matrix of shape (n_samples, n_atoms)."""
        return coding.codes_to_csr(self.compute())

    def to_dense(self) -> np.ndarray:
        """The codes as a dense array of shape (n_samples, n_atoms)."""
        return self.to_sparse().todense()

    def save(self, path: str | os.PathLike, *, attrs: dict | None = None,
             overwrite: bool = False) -> Path:
        """Write the codes as a Zarr group, atomically (a crash leaves the old or new group).

        Parameters
        ----------
        path : path
        attrs : dict, optional
            JSON-ready fields added to the header.
        overwrite : bool, default=False
            Replace earlier codes at ``path`` (never anything else).
        """
        path = check_output(path, "codes", inputs=[self.path], overwrite=overwrite)
        with atomic_group(path) as group:
            write_codes(group, self.indices, self.values)
            formats.write_header(group, "codes", n_atoms=self.n_atoms,
                                 level_sizes=self.level_sizes, **(attrs or {}))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Codes:
        """Open codes written by :meth:`save` or by ``encode``; arrays are read lazily."""
        group, meta = formats.open_kind(path, "codes")
        return cls(da.from_zarr(group["indices"]), da.from_zarr(group["values"]),
                   meta["n_atoms"], path=path, level_sizes=meta.get("level_sizes"))


def check_level_sizes(level_sizes: Any, n_atoms: int) -> list[int] | None:
    """``level_sizes`` as a list of positive ints summing to ``n_atoms`` (None stays None)."""
    if level_sizes is None:
        return None
    sizes = list(np.atleast_1d(np.asarray(level_sizes)).tolist())
    if (not sizes or not all(isinstance(s, int) and s > 0 for s in sizes)
            or sum(sizes) != n_atoms):
        raise InvalidInputError(f"Expected level_sizes: positive ints summing to n_atoms="
                                f"{n_atoms}. Got {level_sizes!r:.200}.")
    return sizes


def atom_levels(level_sizes: list[int] | None, n_atoms: int) -> np.ndarray:
    """The level of each atom (0 = coarsest), shape (n_atoms,), from ``level_sizes``."""
    if level_sizes is None:
        return np.zeros(n_atoms, dtype=np.int64)
    return np.repeat(np.arange(len(level_sizes)), level_sizes)


def write_codes(group: Any, indices: Any, values: Any, compute: Any = None) -> None:
    """Write ``indices`` and ``values`` (NumPy or dask) as arrays of ``group``."""
    rows = min(max(1, indices.shape[0]), 65536)
    targets = [group.create_array(name, shape=arr.shape, dtype=arr.dtype,
                                  chunks=(rows, arr.shape[1]))
               for name, arr in (("indices", indices), ("values", values))]
    sources = [a.rechunk((rows, -1)) if isinstance(a, da.Array) else da.from_array(
        a, chunks=(rows, -1)) for a in (indices, values)]
    stored = da.store(sources, targets, lock=False, compute=False)
    (compute or dask.compute)(stored)


def describe_codes(path: Path) -> dict:
    """A summary of saved codes, read from their header and array shapes."""
    group, meta = formats.open_kind(path, "codes")
    return {"kind": "codes", "n_samples": int(group["indices"].shape[0]),
            "n_nonzero": int(group["indices"].shape[1]), "n_atoms": int(meta["n_atoms"]),
            "header": meta}


def encode_block(y: np.ndarray, offset: int, atoms: np.ndarray, grams: list[np.ndarray],
                 level_sizes: list[int], n_nonzeros: list[int], tol: float, coder: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Validate and code one chunk of rows, level by level (see
    :func:`daskdict.learn.coding.code_levels`; a one-level dictionary is one level).

    Each row is coded in a batch of fixed shape, at the place its index gives it, so its code
    does not depend on the chunk.
    Coding sums nothing across rows, so a row is refused only when its own squared norm
    (with a factor of 2 for rounding) would overflow the atoms' dtype.
    """
    limit = coding.sqnorm_limit(atoms.dtype, 2)
    coding.raise_for_report(coding.check_block(y, offset, limit), atoms.dtype)
    y = coding.as_block(y, atoms.dtype)
    if len(level_sizes) == 1:
        return coding.code_block(y, atoms, grams[0], n_nonzeros[0], tol, coder, exact=True,
                                 offset=offset)
    return coding.code_levels(y, atoms, grams, level_sizes, n_nonzeros, tol, coder,
                              exact=True, offset=offset)[:2]


class Dictionary:
    """A learned dictionary.

    Attributes
    ----------
    atoms : ndarray of shape (n_atoms, n_features)
        Unit-norm atoms (rows).
    params : dict
        The fit's hyper-parameters (and its ``random_state``: the fit's random seed).
    history : list of dict
        One record per iteration (relative error, FVU, mean relative residual, mean L0, dead
        atoms, replaced atoms, seconds; with a validation set its ``validation_error``, and
        ``stopped_early`` on the last record of a fit that stopped).
    fingerprint : dict
        Shape, dtype, chunking and path of the training data.
    mean : ndarray of shape (n_features,) or None
        The training rows' mean for a dictionary fitted with ``center=True``: :meth:`encode`
        codes ``y - mean`` and :meth:`reconstruct` adds it back; None otherwise.

    A dictionary with levels (see :mod:`daskdict.learn.levels`) numbers its atoms level by
    level; ``params["level_sizes"]`` and ``params["levels"]`` describe them.
    """

    def __init__(self, atoms: np.ndarray, params: dict | None = None,
                 history: list[dict] | None = None, fingerprint: dict | None = None,
                 mean: np.ndarray | None = None):
        self.atoms = np.asarray(atoms)
        self.params = dict(params or {})
        self.history = list(history or [])
        self.fingerprint = dict(fingerprint or {})
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        if self.mean is not None and self.mean.shape != (self.atoms.shape[1],):
            raise InvalidInputError(f"Expected a mean of shape ({self.atoms.shape[1]},). Got "
                                    f"{self.mean.shape}.")

    @property
    def n_atoms(self) -> int:
        return self.atoms.shape[0]

    @property
    def n_features(self) -> int:
        return self.atoms.shape[1]

    @property
    def level_sizes(self) -> list[int] | None:
        """Atoms per level, coarse first; None for a dictionary of one level."""
        sizes = self.params.get("level_sizes")
        return None if sizes is None else [int(s) for s in sizes]

    @property
    def level_nonzeros(self) -> list[int]:
        """Non-zeros per level (one entry for a dictionary of one level)."""
        levels = self.params.get("levels")
        if levels:
            return [int(level["n_nonzero"]) for level in levels]
        return [int(self.params.get("n_nonzero", 10))]

    def __repr__(self) -> str:
        err = self.history[-1]["relative_error"] if self.history else float("nan")
        levels = "" if self.level_sizes is None else f", level_sizes={self.level_sizes}"
        return (f"Dictionary(n_atoms={self.n_atoms}, n_features={self.n_features}{levels}, "
                f"n_iter={len(self.history)}, relative_error={err:.4g})")

    def _coding_params(self, n_nonzero: Any, tol: Any, coder: Any
                       ) -> tuple[list[int], float, str]:
        """The coding parameters (non-zeros per level), the fit's where None, validated."""
        sizes = self.level_sizes
        if n_nonzero is None:
            n_nonzero = self.level_nonzeros
        elif sizes is None:  # one level: one count
            n_nonzero = [check_positive_int("n_nonzero", n_nonzero)]
        elif not isinstance(n_nonzero, (list, tuple, np.ndarray)) or len(n_nonzero) != len(
                sizes):
            raise InvalidInputError(
                f"This dictionary has {len(sizes)} levels: give n_nonzero as one count per "
                f"level (a sequence of {len(sizes)}). Got {n_nonzero!r:.100}.")
        sizes = sizes or [self.n_atoms]
        n_nonzero = [params.check_n_nonzero(k, size, self.n_features)
                     for k, size in zip(n_nonzero, sizes, strict=True)]
        tol = params.check_tol(self.params.get("tol", 0.0) if tol is None else tol)
        coder = check_choice("coder", self.params.get("coder", "omp") if coder is None
                             else coder, params.CODER_NAMES)
        positive = params.check_positive(bool(self.params.get("positive", False)), coder,
                                         "approx")
        # the fit's correlations (bfloat16 ones serve Batch-OMP only; other coders take
        # float32), refused here, naming the fix, where torch is missing
        correlation_dtype = self.params.get("correlation_dtype", "float32")
        if correlation_dtype == "bfloat16" and coder == "omp":
            if params.torch_version() is None:
                raise InvalidInputError(
                    "This dictionary was fitted with bfloat16 correlations, which need "
                    f"PyTorch: {reduced.TORCH_INSTALL}, or set "
                    "dictionary.params['correlation_dtype'] = 'float32' to encode with "
                    "float32 correlations.")
        else:
            correlation_dtype = "float32"
        return n_nonzero, tol, params.coder_key(coder, positive, correlation_dtype)

    def encode(self, source: Any, *, layer: str | None = None, n_nonzero: int | None = None,
               tol: float | None = None, coder: str | None = None,
               out: str | os.PathLike | None = None, overwrite: bool = False,
               client: Any = None, verbose: bool = False) -> Codes:
        """Sparse codes of ``source`` over this dictionary.

        A row's code does not depend on the other rows passed with it (each is coded in a
        batch of fixed shape).

        Parameters
        ----------
        source : path, zarr.Array, zarr.Group, dask array or ndarray of shape (N, n_features)
        layer : str, optional
            Layer of an embedding store.
        n_nonzero : int or sequence of int, optional
            Atoms per sample, in [1, min(n_atoms, n_features)]; one per level for a
            dictionary with levels; default: the fit's.
        tol : float, optional
            Relative residual in [0, 1) at which a sample stops; default: the fit's.
        coder : {"omp", "mp"}, optional
            Default: the fit's. "omp" computes its correlations in the fit's
            ``params["correlation_dtype"]`` (bfloat16 ones need torch), "mp" in float32.
        out : path, optional
            Zarr group to write the codes to. When ``source`` is a path and ``out`` is not
            given, the codes are written next to it as ``<source>.codes[-<layer>].zarr``
            (replacing earlier codes there). ``out`` may never be the input.
        overwrite : bool, default=False
            Replace earlier codes at ``out``.
        client : distributed.Client, "local", "threads", "sync" or None
            As for :func:`daskdict.fit`.

        Returns
        -------
        Codes
            In memory, or read lazily from ``out`` when written; with ``level_sizes`` for a
            dictionary with levels (each row's atoms, coarse level first).

        Raises
        ------
        InvalidInputError
            For bad parameters or data (checked before any work).
        OutputNotWritableError
            If ``out`` is the input, holds something else, or cannot be written.
        """
        n_nonzero, tol, coder = self._coding_params(n_nonzero, tol, coder)
        data, description = as_dask_array(source, layer)
        if data.shape[1] != self.n_features:
            raise InvalidInputError(
                f"Expected data with {self.n_features} features (the dictionary's). Got "
                f"{data.shape[1]}."
            )
        if out is None and description["path"] is not None:
            suffix = f"-{description['layer']}" if description["layer"] else ""
            out, overwrite = f"{description['path']}.codes{suffix}.zarr", True
        if out is not None:
            inputs = [source, description["path"]]
            out = check_output(out, "codes", inputs=inputs, overwrite=overwrite)
        with runtime(client, in_memory=description["kind"] == "ndarray", verbose=verbose) as rt:
            indices, values = self._code_graph(data, rt, n_nonzero, tol, coder)
            if out is None:
                indices, values = rt.compute(indices, values)
                return Codes(indices, values, self.n_atoms, level_sizes=self.level_sizes)
            with atomic_group(out) as group:
                write_codes(group, indices, values, compute=rt.compute)
                formats.write_header(group, "codes", n_atoms=self.n_atoms, source=description,
                                     level_sizes=self.level_sizes)
        return Codes.load(out)

    def centered(self, data: Any) -> Any:
        """``data`` minus the training mean for a dictionary fitted with ``center=True``
        (lazily for a dask array); ``data`` itself otherwise.

        Parameters
        ----------
        data : ndarray or dask array of shape (n_samples, n_features)

        Returns
        -------
        ndarray or dask array of shape (n_samples, n_features)
        """
        return data if self.mean is None else data - self.mean

    def _code_graph(self, data: da.Array, rt: Any, n_nonzeros: list[int], tol: float,
                    coder: str) -> tuple[da.Array, da.Array]:
        """The lazy indices and values of ``data``'s codes, one task per chunk."""
        dtype = np.dtype(self.params.get("dtype", "float32"))
        data = self.centered(data)
        atoms = np.ascontiguousarray(self.atoms, dtype=dtype)
        sizes = self.level_sizes or [self.n_atoms]
        shared_atoms = rt.share(atoms)
        # one task makes every level's Gram matrix from the atoms already shared
        shared_grams = dask.delayed(coding.level_grams)(shared_atoms, sizes)
        n_nonzero = sum(n_nonzeros)
        offsets = np.concatenate([[0], np.cumsum(data.chunks[0])[:-1]])
        index_chunks, value_chunks = [], []
        for chunk, offset, rows in zip(data.to_delayed().ravel(), offsets, data.chunks[0],
                                       strict=True):
            task = dask.delayed(encode_block, nout=2)(
                chunk, int(offset), shared_atoms, shared_grams, sizes, n_nonzeros, tol, coder)
            index_chunks.append(da.from_delayed(task[0], (rows, n_nonzero), np.int32))
            value_chunks.append(da.from_delayed(task[1], (rows, n_nonzero), dtype))
        return da.concatenate(index_chunks), da.concatenate(value_chunks)

    def reconstruct(self, codes: Codes) -> np.ndarray:
        """``X D`` (plus the training mean of a centred dictionary) for in-memory codes, shape
        (n_samples, n_features)."""
        rows = np.asarray(codes.to_csr() @ self.atoms)
        return rows if self.mean is None else rows + self.mean.astype(rows.dtype)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the dictionary as a Zarr group, atomically.

        Parameters
        ----------
        path : path
        overwrite : bool, default=False
            Replace a dictionary saved at ``path`` (never anything else: an embedding store
            or other daskdict object there is refused).
        """
        path = check_output(path, "dictionary", overwrite=overwrite)
        with atomic_group(path) as group:
            group.create_array("atoms", data=np.ascontiguousarray(self.atoms))
            if self.mean is not None:
                group.create_array("mean", data=self.mean)
            formats.write_header(group, "dictionary", params=self.params, history=self.history,
                                 fingerprint=self.fingerprint)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dictionary:
        """Read a dictionary written by :meth:`save`."""
        group, meta = formats.open_kind(path, "dictionary")
        mean = np.asarray(group["mean"][...]) if "mean" in group else None
        return cls(np.asarray(group["atoms"][...]), meta.get("params"), meta.get("history"),
                   meta.get("fingerprint"), mean)


def describe_dictionary(path: Path) -> dict:
    """A summary of a saved dictionary, read from its header and array shape."""
    group, meta = formats.open_kind(path, "dictionary")
    history = meta.get("history") or []
    return {"kind": "dictionary", "n_atoms": int(group["atoms"].shape[0]),
            "n_features": int(group["atoms"].shape[1]), "n_iter": len(history),
            "level_sizes": meta.get("params", {}).get("level_sizes"),
            "relative_error": history[-1]["relative_error"] if history else None,
            "params": meta.get("params", {})}


formats.register("dictionary", Dictionary.load, describe_dictionary)
formats.register("codes", Codes.load, describe_codes)

# Any saved daskdict object (the loader of its kind); kept here for callers of this module.
load = formats.load
