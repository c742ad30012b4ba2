"""K-SVD as a scikit-learn estimator, saved and loaded as a daskdict object of kind
``"estimator"``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import atomic_group
from daskdict.io.formats import check_output
from daskdict.learn.dictionary import Dictionary
from daskdict.learn.training import fit

KIND = "estimator"


class KSVD(TransformerMixin, BaseEstimator):
    """K-SVD dictionary learning as a scikit-learn estimator.

    Parameters are those of :func:`daskdict.fit`. ``transform`` returns dense codes of shape
    (n_samples, n_atoms), as scikit-learn's decomposition estimators do; use
    ``dictionary_.encode`` for sparse codes. A row's code does not depend on the other rows
    transformed with it.

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
                 update="auto", atom_batch_size=None, shuffle_atoms=True, replace_atoms=True,
                 init="data", dtype="float32", positive=False, center=False,
                 correlation_dtype="float32", device="cpu", random_state=None, client=None,
                 verbose=False):
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
        self.positive = positive
        self.center = center
        self.correlation_dtype = correlation_dtype
        self.device = device
        self.random_state = random_state
        self.client = client
        self.verbose = verbose

    def _where(self) -> Any:
        return self.client if self.client is not None else "threads"

    def fit(self, X, y=None):
        """Learn the dictionary from X of shape (n_samples, n_features)."""
        X = _validated(self, X, reset=True)
        dictionary = fit(
            X, self.n_atoms, self.n_nonzero, self.n_iter, coder=self.coder, tol=self.tol,
            update=self.update, atom_batch_size=self.atom_batch_size,
            shuffle_atoms=self.shuffle_atoms, replace_atoms=self.replace_atoms, init=self.init,
            dtype=self.dtype, positive=self.positive, center=self.center,
            correlation_dtype=self.correlation_dtype, device=self.device,
            random_state=self.random_state,
            client=self._where(), verbose=self.verbose)
        self._set_dictionary(dictionary)
        return self

    def _set_dictionary(self, dictionary: Dictionary) -> None:
        self.dictionary_ = dictionary
        self.components_ = dictionary.atoms
        self.n_iter_ = len(dictionary.history)
        self.error_ = [h["relative_error"] for h in dictionary.history]

    def transform(self, X):
        """Dense codes of X, shape (n_samples, n_atoms)."""
        check_is_fitted(self)
        X = _validated(self, X, reset=False)
        codes = self.dictionary_.encode(X, client=self._where())
        return codes.to_dense().astype(X.dtype, copy=False)

    def inverse_transform(self, X):
        """Reconstruction ``X @ components_`` of dense codes (plus the training mean when
        ``center``)."""
        check_is_fitted(self)
        rows = np.asarray(X) @ self.components_
        mean = self.dictionary_.mean
        return rows if mean is None else rows + mean.astype(rows.dtype)

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the estimator (its parameters and, once fitted, its dictionary) as a Zarr
        group, atomically.

        A ``client`` object is not saved (a loaded estimator computes in process unless given
        one); an array ``init`` is saved as an array.

        Parameters
        ----------
        path : path
        overwrite : bool, default=False
            Replace an estimator saved at ``path`` (never anything else).
        """
        path = check_output(path, KIND, overwrite=overwrite)
        est_params = self.get_params()
        if not isinstance(est_params["client"], str | None):
            est_params["client"] = None
        init = est_params["init"]
        random_state = est_params["random_state"]
        if not isinstance(random_state, int | None):
            est_params["random_state"] = None
        fitted = hasattr(self, "dictionary_")
        with atomic_group(path) as group:
            if not isinstance(init, str):
                group.create_array("init", data=np.asarray(init))
                est_params["init"] = None
            fields = {"params": est_params, "fitted": fitted}
            if fitted:
                group.create_array("atoms", data=np.ascontiguousarray(self.components_))
                if self.dictionary_.mean is not None:
                    group.create_array("mean", data=self.dictionary_.mean)
                fields.update(n_features_in=int(self.n_features_in_),
                              dictionary_params=self.dictionary_.params,
                              history=self.dictionary_.history,
                              fingerprint=self.dictionary_.fingerprint)
            formats.write_header(group, KIND, **fields)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> KSVD:
        """Read an estimator written by :meth:`save`."""
        group, meta = formats.open_kind(path, KIND)
        est_params = dict(meta["params"])
        if est_params.get("init") is None:
            est_params["init"] = np.asarray(group["init"][...])
        estimator = cls(**est_params)
        if meta.get("fitted"):
            estimator._set_dictionary(Dictionary(
                np.asarray(group["atoms"][...]), meta.get("dictionary_params"),
                meta.get("history"), meta.get("fingerprint"),
                np.asarray(group["mean"][...]) if "mean" in group else None))
            estimator.n_features_in_ = int(meta["n_features_in"])
        return estimator


def describe_estimator(path: Path) -> dict:
    """A summary of a saved estimator, read from its header."""
    _, meta = formats.open_kind(path, KIND)
    return {"kind": KIND, "fitted": bool(meta.get("fitted")), "params": meta["params"],
            "n_iter": len(meta.get("history") or [])}


formats.register(KIND, KSVD.load, describe_estimator)


def _validated(estimator: KSVD, X: Any, reset: bool) -> np.ndarray:
    """scikit-learn's input validation, its errors raised as daskdict's (same messages)."""
    try:
        X = validate_data(estimator, X, dtype=[np.float64, np.float32], reset=reset,
                          ensure_all_finite=False)
    except ValueError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise InvalidInputError(f"Expected X to be a 2-D array of floating-point numbers "
                                f"(n_samples, n_features): {detail}") from exc
    return X  # NaN, inf and float32 overflow: refused by fit and encode, naming the first row
