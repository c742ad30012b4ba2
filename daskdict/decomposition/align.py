"""CompAlign: one linear map per model component into a CLIP image space.

The alignment of Balasubramanian, Basu and Feizi (2024), *Decomposing and Interpreting Image
Representations via Text in ViTs Beyond CLIP*. A representation decomposed into component
contributions ``c_1 ... c_K`` (:func:`daskdict.decompose`) is mapped into the space of a CLIP
image embedding ``z`` by maps ``F_i`` of shape (D, d) trained on

    L = mean over rows of [1 - cos(sum_i F_i c_i, z)] + penalty * sum_i ||F_i^T F_i - I||_F,

(``||F_i F_i^T - I||_F`` when the target is narrower than the components, D < d),

whose second term keeps every ``F_i`` near an orthogonal map (a multiple of one is what keeps
the components' roles: their norms and angles). The ablation ``shared=True`` is the paper's
naive baseline: one unconstrained map ``F`` for every component, ``s = F sum_i c_i``.

Gradients. With ``s = sum_i F_i c_i``, ``cos = s.z / (|s| |z|)`` and hats for unit vectors,
``d(1 - cos)/ds = -(z^ - cos s^) / |s|``; averaged over the B rows of a minibatch this is the
row ``g`` of ``G`` (B, D), and ``dL/dF_i = G^T C_i``. With ``A_i = F_i^T F_i - I``
(symmetric), ``d||A_i||_F / dF_i = 2 F_i A_i / ||A_i||_F`` (zero where ``A_i = 0``, a
subgradient of the norm; with ``A_i = F_i F_i^T - I`` it is ``2 A_i F_i / ||A_i||_F``).
:func:`alignment_objective` computes both; a test checks them against
finite differences.

Training is minibatch Adam in NumPy, the penalty phased in (see :class:`CompAlign`), over row
chunks (a chunk of every component and of the target at a time, from NumPy, dask or Zarr:
memory does not grow with the rows) in a random order each epoch, their rows shuffled into
minibatches. A first pass over the chunks checks the values.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits
from tqdm.std import tqdm

from daskdict.datasets.components import planted_orthogonal_maps
from daskdict.decomposition.align_inputs import (
    Inputs,
    chunk_bounds,
    read_rows,
    resolve,
    resolve_components,
)
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import atomic_group, readable_path, recover_replaced
from daskdict.validation import check_positive_int

__all__ = ["KIND", "CompAlign", "alignment_objective", "describe_alignment"]

KIND = "alignment"
# the penalty is left out for this fraction of the steps, then its weight grows geometrically
# from RAMP_START times its value to its value at the end (see CompAlign's Notes)
WARMUP = 0.5
RAMP_START = 1e-4


def penalty_schedule(progress: float) -> float:
    """The penalty's weight, relative to ``penalty``, ``progress`` (0 to 1) through training."""
    if progress < WARMUP:
        return 0.0
    return RAMP_START ** (1.0 - (progress - WARMUP) / (1.0 - WARMUP))


# multiply-adds of one minibatch's forward GEMM above which BLAS may use its threads
_THREADED_WORK = 2**27


# --------------------------------------------------------------------------- the objective


def alignment_objective(maps: np.ndarray, components: np.ndarray, target: np.ndarray,
                        penalty: float, shared: bool = False
                        ) -> tuple[float, float, np.ndarray]:
    """The CompAlign loss of one minibatch and its gradient with respect to the maps.

    Parameters
    ----------
    maps : ndarray of shape (n_components, D, d), or (1, D, d) when ``shared``
    components : ndarray of shape (n_rows, n_components, d)
    target : ndarray of shape (n_rows, D)
    penalty : float
        Weight of the orthogonality term (not applied when ``shared``).
    shared : bool, default=False
        One map for the sum of the components.

    Returns
    -------
    alignment : float
        Mean over the rows of ``1 - cos(sum_i F_i c_i, z)``; rows whose target is zero are left
        out (an item that could not be embedded), as are their gradients.
    orthogonality : float
        ``penalty * sum_i ||F_i^T F_i - I||_F`` (0 when ``shared``).
    gradient : ndarray of the shape of ``maps``
        Of ``alignment + orthogonality``.
    """
    n_rows, n_maps = components.shape[0], maps.shape[0]
    flat = components.sum(axis=1) if shared else components.reshape(n_rows, -1)
    # (D, n_maps * d): the maps side by side, so that one GEMM sums every component's image
    stacked = maps.transpose(1, 0, 2).reshape(maps.shape[1], -1)
    aligned = flat @ stacked.T
    s_norm = np.linalg.norm(aligned, axis=1)
    z_norm = np.linalg.norm(target, axis=1)
    valid = (z_norm > 0) & (s_norm > 0)
    n_valid = max(1, int(np.count_nonzero(z_norm > 0)))
    s_unit = aligned / np.where(valid, s_norm, 1.0)[:, None]
    z_unit = target / np.where(z_norm > 0, z_norm, 1.0)[:, None]
    cos = np.einsum("ij,ij->i", s_unit, z_unit)
    alignment = float(np.sum(1.0 - cos[z_norm > 0]) / n_valid)
    weights = np.where(valid, 1.0 / (np.where(valid, s_norm, 1.0) * n_valid), 0.0)
    row_grad = -(z_unit - cos[:, None] * s_unit) * weights[:, None]
    gradient = (row_grad.T @ flat).reshape(maps.shape[1], n_maps, -1).transpose(1, 0, 2)
    if shared or penalty == 0:
        return alignment, 0.0, np.ascontiguousarray(gradient)
    excess, norms = _excess(maps)
    scale = np.where(norms > 0, 2.0 * penalty / np.where(norms > 0, norms, 1.0), 0.0)
    pull = maps @ excess if maps.shape[1] >= maps.shape[2] else excess @ maps
    gradient = gradient + pull * scale[:, None, None]
    return alignment, float(penalty * norms.sum()), gradient


def _excess(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far maps of shape (n_maps, D, d) are from orthogonal, and its Frobenius norm per
    map: ``F_i^T F_i - I_d`` when ``D >= d``; when the target is narrower (``D < d``, e.g. a
    768-wide ViT into a 512-wide CLIP) no map can keep every direction, and the term is
    ``F_i F_i^T - I_D`` (orthonormal rows), which can reach zero."""
    if maps.shape[1] >= maps.shape[2]:
        excess = maps.transpose(0, 2, 1) @ maps - np.eye(maps.shape[2])
    else:
        excess = maps @ maps.transpose(0, 2, 1) - np.eye(maps.shape[1])
    return excess, np.sqrt(np.einsum("kab,kab->k", excess, excess))


class _Adam:
    """Adam (Kingma and Ba, 2015) with the usual defaults, updating an array in place."""

    def __init__(self, shape: tuple[int, ...]):
        self.first, self.second, self.t = np.zeros(shape), np.zeros(shape), 0

    def step(self, params: np.ndarray, grad: np.ndarray, lr: float, beta1: float = 0.9,
             beta2: float = 0.999, eps: float = 1e-8) -> None:
        self.t += 1
        self.first = beta1 * self.first + (1 - beta1) * grad
        self.second = beta2 * self.second + (1 - beta2) * grad * grad
        correction = math.sqrt(1 - beta2 ** self.t) / (1 - beta1 ** self.t)
        params -= lr * correction * self.first / (np.sqrt(self.second) + eps)


def _check_number(name: str, value: Any, minimum: float, strict: bool) -> None:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value) and (value > minimum if strict else value >= minimum))
    if not ok:
        what = "a positive number" if strict else "a number >= 0"
        raise InvalidInputError(f"Expected {name} to be {what}. Got {value!r}.")


# --------------------------------------------------------------------------- the estimator


class CompAlign(BaseEstimator):
    """Per-component linear maps into a CLIP image space (Balasubramanian, Basu and Feizi).

    Parameters
    ----------
    penalty : float, default=1.0
        The paper's lambda: weight of the orthogonality term ``sum_i ||F_i^T F_i - I||_F``
        (0 for the ablation without it). The term is not squared, so a weight near 1 pins the
        maps to orthogonal ones (see Notes for how training gets there).
    shared : bool, default=False
        The paper's naive baseline: one unconstrained map for every component (the penalty is
        not applied). ``maps_`` then holds that map once per component.
    n_epochs : int, default=10
        Passes over the rows.
    batch_rows : int, default=256
        Rows per Adam step (a read chunk of fewer rows makes one step).
    learning_rate : float, default=0.003
        Adam's first step, decayed to zero along a cosine: the penalty is not smooth at its
        minimum, and a vanishing step settles the maps there instead of rattling around it.
    chunk_rows : int, optional
        Rows read at a time from every input (memory grows with it, not with the rows).
        Default: the row chunks of the first chunked input (Zarr, dask), else 4096; at most
        64 MiB of rows.
    random_state : int, Generator or None
        Seeds the initial maps, the order of the chunks and the minibatches.
    verbose : bool, default=True
        Show a progress bar.

    Attributes
    ----------
    maps_ : ndarray of float32 of shape (n_components, D, d)
        ``F_i``; with ``shared`` every entry is the one map.
    component_names_ : list of str
    n_rows_ : int
        Rows trained on.
    history_ : list of dict
        Per epoch: ``alignment_loss`` (mean ``1 - cos`` over the epoch's minibatches),
        ``orthogonality`` (``sum_i ||F_i^T F_i - I||_F`` at the end of the epoch) and
        ``penalty`` (that times ``penalty``; 0 when ``shared``).
    alignment_ : float
        Mean cosine between the aligned sum and the target on the training rows during the
        last epoch (``1 - history_[-1]["alignment_loss"]``).

    Notes
    -----
    The first half of the steps leaves the penalty out; over the second its weight grows
    geometrically from 1e-4 times ``penalty`` to ``penalty``, so that the last steps minimise
    the paper's loss. From a random start, turning a map onto its target passes through maps
    that are not orthogonal (singular ones, where the determinant's sign must change), which a
    penalty near 1 blocks: with it from the start the maps barely move. Without it they turn
    freely, to multiples of orthogonal maps, which the growing penalty settles on orthogonal
    ones without undoing the alignment.

    Rows whose target is all zeros (items ``daskdict.embed`` could not read) are left out of
    the loss and of the scores.

    Examples
    --------
    >>> align = CompAlign(random_state=0).fit(daskdict.open_store("parts.zarr"), clip_store)
    >>> aligned = align.transform(parts)        # {name: dask array (n, D)}
    """

    # Defaults: the paper's single epoch at 3e-4 leaves random maps near their start; ten
    # cosine-decayed epochs at 3e-3 turn them onto planted orthogonal maps (benchmarks/
    # bench_compalign.py measures how closely) on tens of thousands of rows.

    def __init__(self, penalty: float = 1.0, shared: bool = False, *, n_epochs: int = 10,
                 batch_rows: int = 256, learning_rate: float = 0.003,
                 chunk_rows: int | None = None, random_state: Any = None, verbose: bool = True):
        self.penalty = penalty
        self.shared = shared
        self.n_epochs = n_epochs
        self.batch_rows = batch_rows
        self.learning_rate = learning_rate
        self.chunk_rows = chunk_rows
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> np.random.Generator:
        _check_number("penalty", self.penalty, 0.0, strict=False)
        _check_number("learning_rate", self.learning_rate, 0.0, strict=True)
        for name in ("shared", "verbose"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                raise InvalidInputError(f"Expected {name} to be True or False. Got "
                                        f"{getattr(self, name)!r}.")
        for name in ("n_epochs", "batch_rows"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("chunk_rows", self.chunk_rows, optional=True)
        try:
            return np.random.default_rng(self.random_state)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"Expected random_state to be None, an int or a numpy "
                                    f"Generator. Got {self.random_state!r}.") from exc

    def fit(self, components: Any, target: Any) -> CompAlign:
        """Learn one map per component so that their sum points along the target.

        Parameters
        ----------
        components : EmbeddingStore, path, or mapping of str to array of shape (n, d)
            A store written by :func:`daskdict.decompose` (its component layers, in order) or
            NumPy, dask or Zarr arrays by name, all of the same shape.
        target : array of shape (n, D), EmbeddingStore or path
            The embeddings to align to, row for row (a store: its layer ``final``, e.g. one
            that :func:`daskdict.embed` wrote with a CLIP model for the same items).

        Returns
        -------
        self

        Raises
        ------
        InvalidInputError
            For a bad option, no components, components of different shapes, a target with
            other rows, or NaN or inf (naming the input and the chunk); all before training.
        """
        rng = self._check_params()
        inputs = resolve(components, target)
        bounds = chunk_bounds(inputs, self.chunk_rows)
        for chunk, (start, stop) in enumerate(bounds):
            read_rows(inputs, start, stop, check=True, chunk=chunk)
        for name in ("maps_", "component_names_", "n_rows_", "history_", "alignment_"):
            self.__dict__.pop(name, None)  # an interrupted fit leaves no model behind
        n_maps = 1 if self.shared else len(inputs.names)
        maps = planted_orthogonal_maps(n_maps, inputs.target.shape[1], inputs.width, rng)
        # small minibatch GEMMs gain nothing from BLAS threads, which only contend; large ones
        # (many wide components) keep them
        work = self.batch_rows * n_maps * inputs.width * inputs.target.shape[1]
        with threadpool_limits(limits=1 if work < _THREADED_WORK else None, user_api="blas"):
            history = self._train(inputs, bounds, maps, rng)
        self.maps_ = np.repeat(maps, len(inputs.names) if self.shared else 1,
                               axis=0).astype(np.float32)
        self.component_names_ = list(inputs.names)
        self.n_rows_ = inputs.n_rows
        self.history_ = history
        self.alignment_ = 1.0 - history[-1]["alignment_loss"]
        self._input_paths = [str(p.resolve()) for p in inputs.paths]
        return self

    def _train(self, inputs: Inputs, bounds: list[tuple[int, int]], maps: np.ndarray,
               rng: np.random.Generator) -> list[dict]:
        """Minibatch Adam over ``n_epochs`` passes; ``maps`` is updated in place."""
        penalty = 0.0 if self.shared else float(self.penalty)
        n_steps = self.n_epochs * sum(-(-(b - a) // self.batch_rows) for a, b in bounds)
        adam, step, history = _Adam(maps.shape), 0, []
        bar = (tqdm(total=self.n_epochs * inputs.n_rows, desc="CompAlign", unit="row")
               if self.verbose else None)
        try:
            for epoch in range(self.n_epochs):
                total = 0.0
                for chunk in rng.permutation(len(bounds)):
                    start, stop = bounds[chunk]
                    block, target = read_rows(inputs, start, stop, check=False, chunk=int(chunk))
                    order = rng.permutation(stop - start)
                    for rows in np.array_split(order, -(-(stop - start) // self.batch_rows)):
                        loss, _, grad = alignment_objective(
                            maps, block[rows], target[rows],
                            penalty * penalty_schedule(step / n_steps), self.shared)
                        lr = 0.5 * self.learning_rate * (1 + math.cos(math.pi * step / n_steps))
                        adam.step(maps, grad, lr)
                        step += 1
                        total += loss * len(rows)
                    if bar is not None:
                        bar.update(stop - start)
                deviation = 0.0 if self.shared else float(_excess(maps)[1].sum())
                history.append({"epoch": epoch, "alignment_loss": total / inputs.n_rows,
                                "orthogonality": deviation, "penalty": penalty * deviation})
                if bar is not None:
                    bar.set_postfix(loss=f"{total / inputs.n_rows:.4f}")
        finally:
            if bar is not None:
                bar.close()
        return history

    def transform(self, components: Any) -> dict[str, Any]:
        """Each component's contribution mapped into the target space, ``f_i(c_i)``.

        Parameters
        ----------
        components : EmbeddingStore, path, or mapping of str to array of shape (n, d)
            All fitted components, or (a mapping) any of them.

        Returns
        -------
        dict of str to array of float32 of shape (n, D)
            By component, in the fitted order: NumPy for NumPy input, else lazy dask arrays.
        """
        check_is_fitted(self, "maps_")
        inputs = self._inputs(components, None)
        out = {}
        for name, array in zip(inputs.names, inputs.components, strict=True):
            transposed = self.maps_[self.component_names_.index(name)].T
            if isinstance(array, da.Array):
                out[name] = array.rechunk({1: -1}).map_blocks(
                    _apply, transposed, chunks=(array.chunks[0], (transposed.shape[1],)),
                    dtype=np.float32)
            else:
                out[name] = _apply(array, transposed)
        return out

    def score(self, components: Any, target: Any) -> float:
        """Mean cosine between the aligned sum ``sum_i f_i(c_i)`` and the target, over the rows.

        Parameters are those of :meth:`fit` (every fitted component); rows are read and
        checked a chunk at a time. Raises InvalidInputError as :meth:`fit` does, and for
        components other than the fitted ones.
        """
        check_is_fitted(self, "maps_")
        inputs = self._inputs(components, target)
        maps = self.maps_.astype(np.float64)
        total, n_valid = 0.0, 0
        for chunk, (start, stop) in enumerate(chunk_bounds(inputs, self.chunk_rows)):
            block, rows = read_rows(inputs, start, stop, check=True, chunk=chunk)
            loss, _, _ = alignment_objective(maps, block, rows, 0.0)
            valid = int(np.count_nonzero(rows.any(axis=1)))
            total += (1.0 - loss) * valid
            n_valid += valid
        return total / max(1, n_valid)

    def _inputs(self, components: Any, target: Any) -> Inputs:
        """Checked inputs of :meth:`transform` (``target`` None: any fitted components) or
        :meth:`score` (every fitted component)."""
        known = self.component_names_
        inputs = (resolve_components(components, known) if target is None
                  else resolve(components, target, known))
        unknown = [n for n in inputs.names if n not in known]
        if unknown:  # a store's components
            raise InvalidInputError(f"Components {unknown} were not fit; the model knows "
                                    f"{known}.")
        missing = [n for n in known if n not in inputs.names]
        if target is not None and missing:
            raise InvalidInputError(f"Expected every fitted component. Missing {missing}.")
        if inputs.width != self.maps_.shape[2]:
            raise InvalidInputError(f"Expected components of width {self.maps_.shape[2]}, as in "
                                    f"fit. Got {inputs.width}.")
        if target is not None and inputs.target.shape[1] != self.maps_.shape[1]:
            raise InvalidInputError(
                f"Expected the target to have width {self.maps_.shape[1]}, as in fit. Got "
                f"{inputs.target.shape[1]}.")
        return inputs

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the fitted maps as a Zarr group of kind ``"alignment"``, atomically.

        Layout: the array ``maps`` (n_components, D, d) float32; the header holds the
        parameters, ``component_names``, ``n_rows``, ``history``, ``alignment`` and the
        ``inputs`` (paths of the stores fit on).

        Parameters
        ----------
        path : str or path-like
        overwrite : bool, default=False
            Replace an alignment already at ``path`` (never anything else).

        Returns
        -------
        Path

        Raises
        ------
        OutputNotWritableError
            If ``path`` is (or holds, or lies inside) a store the maps were fit on, exists
            (without ``overwrite``, or of another kind) or cannot be written; before writing.
        """
        check_is_fitted(self, "maps_")
        path = recover_replaced(formats.check_writable(path))
        formats.check_output(path, KIND, inputs=getattr(self, "_input_paths", ()),
                             overwrite=overwrite)
        params = self.get_params()
        if not isinstance(params["random_state"], int | None):
            params["random_state"] = None  # a Generator is not saved
        with atomic_group(path) as group:
            group.create_array("maps", data=np.ascontiguousarray(self.maps_))
            formats.write_header(group, KIND, params=params,
                                 component_names=self.component_names_, n_rows=self.n_rows_,
                                 history=self.history_, alignment=self.alignment_,
                                 inputs=self._input_paths)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CompAlign:
        """Read an alignment written by :meth:`save` (nothing on disk changes).

        Raises
        ------
        StoreNotFoundError
            If nothing is at ``path``.
        InvalidInputError
            If ``path`` holds something other than a daskdict alignment.
        """
        group, meta = formats.open_kind(readable_path(path), KIND)
        model = cls(**meta["params"])
        model.maps_ = np.asarray(group["maps"][...], dtype=np.float32)
        model.component_names_ = list(meta["component_names"])
        model.n_rows_ = int(meta["n_rows"])
        model.history_ = list(meta["history"])
        model.alignment_ = float(meta["alignment"])
        model._input_paths = list(meta.get("inputs") or [])
        return model


def _apply(block: np.ndarray, transposed: np.ndarray) -> np.ndarray:
    """Rows of ``block`` (m, d) mapped by a map given transposed (d, D), as float32."""
    return (np.asarray(block, dtype=np.float32) @ transposed).astype(np.float32, copy=False)


def describe_alignment(path: str | os.PathLike) -> dict:
    """A JSON-ready summary of a saved alignment, from its header and the maps' shape."""
    group, meta = formats.open_kind(readable_path(path), KIND)
    n_components, target_width, width = group["maps"].shape
    return {"kind": KIND, "format": meta.get("format"), "version": meta.get("version"),
            "n_components": int(n_components), "width": int(width),
            "target_width": int(target_width), "components": meta["component_names"],
            "n_rows": meta["n_rows"], "n_epochs_run": len(meta["history"]),
            "alignment": meta["alignment"], "params": meta["params"]}


formats.register(KIND, CompAlign.load, describe_alignment)
