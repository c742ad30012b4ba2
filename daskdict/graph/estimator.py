"""The concept graph between layers (seed 001): which concepts of layer l predict those of l+1.

For every pair of adjacent layers and every *target* concept i of the right layer, the labels are
``y = [x_right,i != 0]`` (about k/K ≈ 0.3 % positive). Following the seed's Fig. 1 and the
EasyEnsemble of Liu, Wu & Zhou (2009):

1. the samples are split once into training and held-out rows (the same split for every
   target and layer, so that running the whole graph can be scored on rows no model saw);
2. ``n_models`` L1-penalised logistic regressions (liblinear) are fit, each on a
   class-rebalanced resample of the training rows drawn with replacement (as many negatives
   as positives);
3. the inputs with a non-zero weight in at least ``min_usage`` of those models are selected;
4. a final (L1) model on the selected inputs alone is fit on another rebalanced resample; the
   *parents* of i are the inputs it keeps (a dropped one cannot change its prediction). It
   is scored on the held-out rows: ROC AUC and F1 at τ = 0.5.

The inputs are the left layer's codes, real-valued or binarised (``binarize_inputs``).

Penalty. The seed minimises ``Σ bce(f(x), y) + μ‖θ‖₁`` with μ = 5.0, a *sum* of losses over
the resample; liblinear minimises ``‖θ‖₁ + C Σ loss``, the same problem with ``C = 1/μ``. So
``penalty`` is μ and ``C = 1 / penalty``.

Work. One Dask task fits a batch of targets; the pair's matrices travel once per graph
(:meth:`daskdict.runtime.Runtime.share`); every target draws from its own generator seeded by
``(seed, layer, target)``, so results do not depend on the batching or the scheduler. With
``checkpoint=`` every finished pair is written atomically as a Zarr group and a new fit resumes
after the last one.

Inference (seed §3.4) runs the final models from the first layer to the last, each layer's
predicted activations (most likely ones, or Bernoulli samples) feeding the next layer.
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from daskdict._version import __version__
from daskdict.compute.runtime import runtime
from daskdict.errors import CheckpointMismatchError, InvalidInputError, StoreNotFoundError
from daskdict.graph import plots as _graph_plots
from daskdict.graph.fitting import (
    FEW_POSITIVES,
    NO_HELD_OUT,
    OK,
    ROC_FPR_GRID,
    STATUSES,
    THRESHOLD,
    PairResult,
    Settings,
    check_fraction,
    check_int,
    fit_pair,
    roc_curve_points,
)
from daskdict.io.store import (
    atomic_group,
    check_writable,
    open_store,
    recover_replaced,
)
from daskdict.learn.training import base_seed

FORMAT_VERSION = 1
_MODES = ("argmax", "sample")
# stream of the train/held-out split; per-target streams are (seed, layer, target), layer >= 1
_SPLIT_STREAM = 0


# --------------------------------------------------------------------------- inputs


def as_code_matrix(codes: Any, what: str = "codes") -> sp.csr_matrix:
    """One layer's codes as a CSR matrix of shape (n_samples, n_concepts), float64.

    Parameters
    ----------
    codes : daskdict.Codes, scipy.sparse matrix or array, sparse.SparseArray or ndarray
        Codes of shape (n_samples, n_concepts); zeros are inactive concepts.
    what : str
        How error messages name the input.

    Raises
    ------
    InvalidInputError
        For another type, a shape that is not 2-D and non-empty, or NaN/inf values.
    """
    from daskdict.learn.dictionary import Codes

    if isinstance(codes, Codes):
        computed = codes.compute()
        keep = (computed.indices >= 0) & (computed.values != 0)
        rows = np.broadcast_to(np.arange(len(computed))[:, None], keep.shape)[keep]
        matrix = sp.csr_matrix(
            (computed.values[keep].astype(np.float64), (rows, computed.indices[keep])),
            shape=computed.shape)
    elif sp.issparse(codes):
        matrix = sp.csr_matrix(codes)
    elif _is_pydata_sparse(codes):
        if codes.ndim != 2:
            raise InvalidInputError(
                f"Expected {what} to be 2-D (n_samples, n_concepts). Got shape {codes.shape}.")
        matrix = sp.csr_matrix(codes.to_scipy_sparse())
    elif isinstance(codes, np.ndarray):
        if codes.ndim != 2:
            raise InvalidInputError(
                f"Expected {what} to be 2-D (n_samples, n_concepts). Got shape {codes.shape}.")
        if codes.dtype.kind not in "biuf":
            raise InvalidInputError(f"Expected {what} to hold numbers. Got dtype {codes.dtype}.")
        matrix = sp.csr_matrix(codes)
    else:
        raise InvalidInputError(
            f"Expected {what} to be daskdict.Codes, a scipy.sparse matrix, a sparse.COO or a "
            f"2-D NumPy array. Got {type(codes).__name__}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise InvalidInputError(f"Expected non-empty {what}. Got shape {matrix.shape}.")
    if matrix.dtype.kind not in "biuf":
        raise InvalidInputError(f"Expected {what} to hold numbers. Got dtype {matrix.dtype}.")
    matrix = matrix.astype(np.float64)
    if not np.isfinite(matrix.data).all():
        raise InvalidInputError(f"{what} holds NaN or inf values; repair them first.")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _is_pydata_sparse(value: Any) -> bool:
    import sparse

    return isinstance(value, sparse.SparseArray)


def _as_layers(codes: Any) -> list[sp.csr_matrix]:
    if isinstance(codes, (str, bytes, os.PathLike)) or not isinstance(codes, Sequence):
        raise InvalidInputError(
            "Expected codes to be a list of per-layer codes (daskdict.Codes or sparse "
            f"matrices) in layer order. Got {type(codes).__name__}.")
    if len(codes) < 2:
        raise InvalidInputError(
            f"Expected codes of at least 2 layers (a graph links adjacent layers). Got "
            f"{len(codes)}.")
    layers = [as_code_matrix(c, f"the codes of layer {i}") for i, c in enumerate(codes)]
    for i, layer in enumerate(layers[1:], start=1):
        if layer.shape[0] != layers[0].shape[0]:
            raise InvalidInputError(
                f"Expected every layer's codes to have the same number of samples. Layer 0 has "
                f"{layers[0].shape[0]}, layer {i} has {layer.shape[0]}.")
    return layers


def _layer_fingerprint(matrix: sp.csr_matrix) -> int:
    """CRC32 of the layer's sparsity pattern and values (a resumed fit must see the same)."""
    digest = zlib.crc32(np.ascontiguousarray(matrix.indptr, dtype=np.int64))
    digest = zlib.crc32(np.ascontiguousarray(matrix.indices, dtype=np.int64), digest)
    return zlib.crc32(np.ascontiguousarray(matrix.data, dtype=np.float64), digest)


# --------------------------------------------------------------------------- checkpoints


def _pair_path(checkpoint: Path, layer: int) -> Path:
    return checkpoint / f"pair-{layer:03d}.zarr"


def _read_checkpoint(checkpoint: Path, n_layers: int) -> dict[int, zarr.Group]:
    found = {}
    for layer in range(1, n_layers):
        path = recover_replaced(_pair_path(checkpoint, layer))
        if (path / "zarr.json").exists():
            found[layer] = zarr.open_group(path, mode="r")
        elif path.exists():
            # a pair folder is only renamed into place when complete; anything else is
            # foreign: refuse rather than overwrite someone's data
            raise CheckpointMismatchError(
                f"{path} is not a concept-graph checkpoint; remove it or choose another path.")
    return found


def _write_pair(path: Path, result: PairResult, attrs: dict) -> None:
    with atomic_group(path) as group:
        result.write(group)
        group.attrs["daskdict"] = attrs


# --------------------------------------------------------------------------- tables


def _table(columns: dict[str, np.ndarray]):
    """A pandas DataFrame when pandas is installed, else the dict of column arrays."""
    try:
        import pandas as pd
    except ImportError:
        return columns
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- estimator


class ConceptGraph(BaseEstimator):
    """Sparse concept graph between adjacent layers, from resampled L1-logistic ensembles.

    Parameters
    ----------
    n_models : int, default=20
        Models in each target's ensemble (the seed's T).
    penalty : float, default=5.0
        The seed's L1 penalty μ on a *sum* of cross-entropies; liblinear's ``C = 1 / penalty``.
    min_usage : float, default=0.8
        An input is selected for the final model when at least this fraction of the ensemble
        uses it (non-zero weight); the parents are the selected inputs the final model keeps.
    binarize_inputs : bool, default=False
        Fit on the left layer's activations ``x != 0`` (the seed's ``y_left``, §3.3.1) instead
        of its real-valued codes.
    test_size : float, default=0.2
        Fraction of the samples held out (one split for all layers) to score the final models.
    min_positives : int, default=10
        Targets with fewer active training samples (or fewer inactive ones) get no model; their
        ``status`` says why and their ``auc`` and ``f1`` are NaN.
    max_samples_per_class : int, optional
        Cap on the samples per class of a resample (default: as many as the target's training
        positives, the EasyEnsemble choice). Bounds the cost of frequent concepts.
    batch_size : int, optional
        Targets per Dask task (default: a few tasks per worker, 16 to 256 targets each).
    random_state : int, Generator or None
        Seed of the split and of every resample.
    client : distributed.Client, "local", "threads", "sync" or None
        Where to compute; None: threads in this process (the codes are in memory). Threads
        fit one model at a time (scikit-learn's per-fit Python code holds the GIL, and
        liblinear's random generator is process-wide, so fits are serialised to stay
        reproducible); ``"local"`` or a Client runs the batches in parallel processes. The
        results are the same everywhere.
    verbose : bool, default=False
        Print one line per layer pair.

    Attributes
    ----------
    n_concepts_ : list of int
        Concepts per layer.
    n_samples_ : int
    held_out_ : ndarray of shape (n_held_out,)
        Rows held out from every model's training.
    seed_ : int
        The seed used (drawn when ``random_state`` is None).
    metrics_ : pandas.DataFrame or dict of ndarray
        One row per target concept of layers 1…: ``layer``, ``concept``, ``n_parents``,
        ``auc``, ``f1``, ``n_train_positive``, ``n_held_out_positive``, ``status``. A dict of
        column arrays when pandas is not installed.
    weights_ : list of scipy.sparse.csr_matrix
        ``weights_[l]`` (l >= 1) of shape (n_concepts_[l-1], n_concepts_[l]): the final
        models' weights (zero outside the parents); ``weights_[0]`` is None.
    intercepts_ : list of ndarray
        ``intercepts_[l]`` of shape (n_concepts_[l],); ``intercepts_[0]`` is None.
    mean_active_value_ : list of ndarray
        Per layer, each concept's mean non-zero code: what a predicted activation stands for
        when the graph was fit on real-valued codes.

    Examples
    --------
    >>> graph = ConceptGraph(random_state=0).fit([codes_0, codes_1, codes_2])
    >>> graph.parents(2, 17)                    # concepts of layer 1 that predict concept 17
    >>> activations = graph.predict(codes_0, mode="argmax")
    """

    def __init__(self, n_models: int = 20, penalty: float = 5.0, min_usage: float = 0.8,
                 binarize_inputs: bool = False, test_size: float = 0.2, *,
                 min_positives: int = 10, max_samples_per_class: int | None = None,
                 batch_size: int | None = None, random_state: Any = None, client: Any = None,
                 verbose: bool = False):
        self.n_models = n_models
        self.penalty = penalty
        self.min_usage = min_usage
        self.binarize_inputs = binarize_inputs
        self.test_size = test_size
        self.min_positives = min_positives
        self.max_samples_per_class = max_samples_per_class
        self.batch_size = batch_size
        self.random_state = random_state
        self.client = client
        self.verbose = verbose

    # ----------------------------------------------------------------- fit

    def _settings(self) -> Settings:
        penalty = self.penalty
        if (isinstance(penalty, bool) or not isinstance(penalty, (int, float, np.floating))
                or not np.isfinite(penalty) or penalty <= 0):
            raise InvalidInputError(f"Expected penalty to be a positive number. Got {penalty!r}.")
        if not isinstance(self.binarize_inputs, (bool, np.bool_)):
            raise InvalidInputError(
                f"Expected binarize_inputs to be True or False. Got {self.binarize_inputs!r}.")
        check_int("batch_size", self.batch_size, optional=True)
        return Settings(
            n_models=check_int("n_models", self.n_models), penalty=float(penalty),
            min_usage=check_fraction("min_usage", self.min_usage, True, False),
            binarize_inputs=bool(self.binarize_inputs),
            test_size=check_fraction("test_size", self.test_size, True, True),
            min_positives=check_int("min_positives", self.min_positives),
            max_samples_per_class=check_int("max_samples_per_class",
                                             self.max_samples_per_class, optional=True))

    def fit(self, codes: Sequence[Any], y: None = None, *,
            checkpoint: str | os.PathLike | None = None) -> ConceptGraph:
        """Fit the predictors of every concept of layers 1… from the layer before.

        Parameters
        ----------
        codes : list of daskdict.Codes or sparse matrices of shape (n_samples, n_concepts[l])
            Per-layer codes in layer order (at least two layers, the same samples in each).
        y : None
            Ignored (scikit-learn's signature).
        checkpoint : str or path-like, optional
            Folder where every finished layer pair is saved (``pair-<layer>.zarr``, written
            atomically). A fit with the same codes and parameters resumes after the pairs found
            there; other codes or parameters raise :class:`CheckpointMismatchError`.

        Returns
        -------
        self
        """
        settings = self._settings()
        layers = _as_layers(codes)
        n_samples = layers[0].shape[0]
        n_held_out = round(settings.test_size * n_samples)
        if n_held_out < 1 or n_samples - n_held_out < 2 * settings.min_positives:
            raise InvalidInputError(
                f"Expected enough samples for test_size={settings.test_size} and "
                f"min_positives={settings.min_positives}. Got {n_samples}.")
        checkpoint_path = check_writable(checkpoint) if checkpoint is not None else None
        saved = (_read_checkpoint(checkpoint_path, len(layers))
                 if checkpoint_path is not None else {})
        seed = self._resolve_seed(saved, checkpoint_path)
        split = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n_samples)
        held_out = np.sort(split[:n_held_out])
        fingerprints = [_layer_fingerprint(layer) for layer in layers]
        pairs: list[PairResult | None] = [None]
        with runtime(self.client, in_memory=True, verbose=self.verbose) as rt:
            for layer in range(1, len(layers)):
                attrs = {"format": FORMAT_VERSION, "kind": "concept_graph_pair",
                         "version": __version__, "layer": layer, "seed": seed,
                         "params": settings.to_dict(), "n_samples": n_samples,
                         "n_concepts": [layers[layer - 1].shape[1], layers[layer].shape[1]],
                         "fingerprints": fingerprints[layer - 1:layer + 1]}
                start = time.perf_counter()
                if layer in saved:
                    _check_saved_pair(saved[layer], attrs, checkpoint_path)
                    result = PairResult.read(saved[layer])
                else:
                    result = fit_pair(rt, layers[layer - 1], layers[layer], layer, settings,
                                      seed, held_out, self.batch_size)
                    if checkpoint_path is not None:
                        _write_pair(_pair_path(checkpoint_path, layer), result, attrs)
                pairs.append(result)
                if self.verbose:
                    how = ("resumed" if layer in saved
                           else f"{time.perf_counter() - start:.1f} s")
                    print(f"daskdict graph: layer {layer - 1} -> {layer}: {result.n_targets} "
                          f"concepts, {int(result.n_parents.sum())} edges, median AUC "
                          f"{_nanmedian(result.auc):.3f} ({how})", file=sys.stderr)
        self._set_fitted(pairs, [layer.shape[1] for layer in layers], n_samples, held_out,
                         seed, [_mean_active_value(layer) for layer in layers], settings)
        return self

    def _resolve_seed(self, saved: dict[int, zarr.Group], checkpoint_path: Path | None) -> int:
        seeds = {int(group.attrs["daskdict"]["seed"]) for group in saved.values()}
        if len(seeds) > 1:
            raise CheckpointMismatchError(
                f"The checkpoint {checkpoint_path} mixes pairs of fits with different seeds "
                f"{sorted(seeds)}; remove it or choose another path.")
        seed = base_seed(self.random_state)
        if seeds:
            saved_seed = seeds.pop()
            if self.random_state is not None and seed != saved_seed:
                raise CheckpointMismatchError(
                    f"The checkpoint {checkpoint_path} belongs to another fit: random_state="
                    f"{saved_seed}, not {seed}. Remove it or choose another path.")
            seed = saved_seed  # the held-out split must be the one of the saved pairs
        return seed

    def _set_fitted(self, pairs, n_concepts, n_samples, held_out, seed, mean_active, settings):
        self._pairs = pairs
        self._fitted_settings = settings
        self.n_concepts_ = list(n_concepts)
        self.n_samples_ = int(n_samples)
        self.held_out_ = held_out
        self.seed_ = int(seed)
        self.mean_active_value_ = mean_active
        self.weights_ = [None] + [pair.weight_matrix(n_concepts[i])
                                  for i, pair in enumerate(pairs[1:])]
        self.intercepts_ = [None] + [pair.intercept for pair in pairs[1:]]
        self.metrics_ = _table(self._metric_columns())

    def _metric_columns(self) -> dict[str, np.ndarray]:
        pairs = self._pairs[1:]
        return {
            "layer": np.concatenate([np.full(p.n_targets, i + 1) for i, p in enumerate(pairs)]),
            "concept": np.concatenate([np.arange(p.n_targets) for p in pairs]),
            "n_parents": np.concatenate([p.n_parents for p in pairs]),
            "auc": np.concatenate([p.auc for p in pairs]),
            "f1": np.concatenate([p.f1 for p in pairs]),
            "n_train_positive": np.concatenate([p.n_train_positive for p in pairs]),
            "n_held_out_positive": np.concatenate([p.n_test_positive for p in pairs]),
            "status": np.array(STATUSES)[np.concatenate([p.status for p in pairs])],
        }

    # ----------------------------------------------------------------- queries

    def _check_layer(self, layer: Any, first: int = 1) -> int:
        check_is_fitted(self, "metrics_")
        n_layers = len(self.n_concepts_)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise InvalidInputError(f"Expected layer to be an integer. Got {layer!r}.")
        if not first <= layer < n_layers:
            raise InvalidInputError(
                f"Expected {first} <= layer < {n_layers}"
                f"{' (layer 0 has no parents)' if first else ''}. Got {layer}.")
        return int(layer)

    def _check_concept(self, concept: Any, layer: int) -> int:
        n = self.n_concepts_[layer]
        if (isinstance(concept, bool) or not isinstance(concept, (int, np.integer))
                or not 0 <= concept < n):
            raise InvalidInputError(
                f"Expected concept to be an integer in [0, {n}) (layer {layer} has {n} "
                f"concepts). Got {concept!r}.")
        return int(concept)

    def parents(self, layer: int, concept: int) -> np.ndarray:
        """Concepts of layer ``layer - 1`` that the predictor of ``concept`` uses.

        Parameters
        ----------
        layer : int
            A layer with parents (1 … n_layers - 1).
        concept : int

        Returns
        -------
        ndarray of int of shape (n_parents,), sorted
        """
        layer = self._check_layer(layer)
        concept = self._check_concept(concept, layer)
        pair = self._pairs[layer]
        return pair.parents[pair.parent_indptr[concept]:pair.parent_indptr[concept + 1]].astype(
            np.int64)

    def edges(self):
        """All edges: ``layer``, ``parent`` (of layer - 1), ``concept``, ``weight``, ``usage``.

        Returns
        -------
        pandas.DataFrame or dict of ndarray
        """
        check_is_fitted(self, "metrics_")
        pairs = self._pairs[1:]
        return _table({
            "layer": np.concatenate([np.full(p.parents.size, i + 1) for i, p in enumerate(pairs)]),
            "parent": np.concatenate([p.parents.astype(np.int64) for p in pairs]),
            "concept": np.concatenate([np.repeat(np.arange(p.n_targets), p.n_parents)
                                       for p in pairs]),
            "weight": np.concatenate([p.weights for p in pairs]),
            "usage": np.concatenate([p.usage for p in pairs]),
        })

    def roc_curves(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Held-out ROC curves of a layer's predictors, on a common false-positive grid.

        Returns
        -------
        fpr : ndarray of shape (n_grid,)
        tpr : ndarray of shape (n_concepts_[layer], n_grid)
            NaN rows for concepts without a scored model (see ``metrics_["status"]``).
        """
        layer = self._check_layer(layer)
        return ROC_FPR_GRID.copy(), self._pairs[layer].roc_tpr.astype(np.float64)

    def to_networkx(self):
        """The graph as a ``networkx.DiGraph``.

        Nodes are ``(layer, concept)`` with attributes ``auc``, ``f1`` and ``n_parents``
        (NaN / 0 in layer 0); edges go from a parent to its child with ``weight`` (the final
        model's) and ``usage`` (the fraction of the ensemble that used it).

        Raises
        ------
        ImportError
            If networkx is not installed.
        """
        check_is_fitted(self, "metrics_")
        try:
            import networkx as nx
        except ImportError as exc:
            raise ImportError(
                "ConceptGraph.to_networkx needs networkx, which is not installed; "
                "install it with `pip install networkx`.") from exc
        graph = nx.DiGraph()
        graph.add_nodes_from(((0, c), {"auc": np.nan, "f1": np.nan, "n_parents": 0})
                             for c in range(self.n_concepts_[0]))
        for layer, pair in enumerate(self._pairs[1:], start=1):
            graph.add_nodes_from(((layer, c), {"auc": float(pair.auc[c]), "f1": float(pair.f1[c]),
                                               "n_parents": int(pair.n_parents[c])})
                                 for c in range(pair.n_targets))
            children = np.repeat(np.arange(pair.n_targets), pair.n_parents)
            graph.add_edges_from(((layer - 1, int(p)), (layer, int(c)),
                                  {"weight": float(w), "usage": float(u)})
                                 for p, c, w, u in zip(pair.parents, children, pair.weights,
                                                       pair.usage, strict=True))
        return graph

    # ----------------------------------------------------------------- inference

    def _run(self, first: sp.csr_matrix, mode: str, random_state: Any, calibrated: bool | None,
             intervention: tuple[int, int, bool] | None = None,
             on_layer: Callable[[int, sp.csr_matrix, np.ndarray | None], None] | None = None,
             block_rows: int = 4096) -> list[sp.csr_matrix]:
        """Run the graph from the first layer's codes; see :meth:`predict`.

        ``intervention`` is (layer, concept, on): that concept is forced on or off at that
        layer, for every sample. ``on_layer(layer, activations, probabilities)`` sees every
        layer as it is made (probabilities None for layer 0).
        """
        if mode not in _MODES:
            raise InvalidInputError(f"Expected mode in {_MODES}. Got {mode!r}.")
        if first.shape[1] != self.n_concepts_[0]:
            raise InvalidInputError(
                f"Expected first-layer codes with {self.n_concepts_[0]} concepts (the graph's "
                f"layer 0). Got {first.shape[1]}.")
        calibrated = mode == "sample" if calibrated is None else bool(calibrated)
        seed = base_seed(random_state) if mode == "sample" else 0
        active = first.copy()
        active.data[:] = 1.0
        if intervention is not None and intervention[0] == 0:
            active = _force_concept(active, intervention[1], intervention[2])
        activations = [active.astype(bool)]
        if on_layer is not None:
            on_layer(0, activations[0], None)
        values = first if not self._fitted_settings.binarize_inputs else active
        if intervention is not None and intervention[0] == 0:
            values = _force_concept(values, intervention[1], intervention[2],
                                    self._input_value(0, intervention[1]))
        for layer in range(1, len(self.n_concepts_)):
            pair = self._pairs[layer]
            offsets = self._logit_offsets(pair, calibrated)
            # one generator per layer, drawn block after block: a run with an intervention
            # sees the same uniforms as the run without (common random numbers)
            rng = np.random.default_rng([seed, layer])
            blocks, probabilities = [], []
            for start in range(0, first.shape[0], block_rows):
                logits = (values[start:start + block_rows] @ self.weights_[layer]).toarray()
                logits += offsets
                proba = expit(logits)
                if mode == "argmax":
                    block = proba > THRESHOLD
                else:
                    block = rng.random(proba.shape) < proba
                if intervention is not None and intervention[0] == layer:
                    block[:, intervention[1]] = intervention[2]
                blocks.append(sp.csr_matrix(block))
                if on_layer is not None:
                    probabilities.append(proba.astype(np.float32))
            active = sp.vstack(blocks, format="csr")
            activations.append(active)
            if on_layer is not None:
                on_layer(layer, active, np.concatenate(probabilities))
            values = active.astype(np.float64)
            if not self._fitted_settings.binarize_inputs:
                values = values.multiply(self.mean_active_value_[layer][None, :]).tocsr()
        return activations

    def _input_value(self, layer: int, concept: int) -> float:
        if self._fitted_settings.binarize_inputs:
            return 1.0
        value = float(self.mean_active_value_[layer][concept])
        return value if value != 0 else 1.0

    def _logit_offsets(self, pair: PairResult, calibrated: bool) -> np.ndarray:
        """Per-target intercepts; -inf (never active) for targets without a model.

        Calibrated: the models saw balanced classes; adding log(π / (1 - π)), π the target's
        training frequency, turns their probabilities into ones for the real frequencies
        (the prior correction of King & Zeng 2001).
        """
        offsets = pair.intercept.copy()
        has_model = (pair.status == OK) | (pair.status == NO_HELD_OUT)
        if calibrated:
            rate = np.clip(pair.base_rate, 1e-12, 1 - 1e-12)
            offsets += np.log(rate / (1 - rate))
        offsets[~has_model] = -np.inf
        return offsets

    def _first_layer(self, codes: Any) -> sp.csr_matrix:
        check_is_fitted(self, "metrics_")
        return as_code_matrix(codes, "first_layer_codes")

    def predict(self, first_layer_codes: Any, mode: str = "argmax", random_state: Any = None,
                *, calibrated: bool | None = None,
                return_proba: bool = False) -> list[sp.csr_matrix] | tuple[list, list]:
        """Run the graph from the first layer to the last (seed §3.4).

        Each layer's final models turn the previous layer's activations into probabilities;
        ``"argmax"`` keeps the concepts with p > 0.5, ``"sample"`` draws each as a Bernoulli.
        When the graph was fit on real-valued codes, a predicted activation enters the next
        layer as the concept's mean training code (``mean_active_value_``); the first layer
        enters with its given values.

        Parameters
        ----------
        first_layer_codes : Codes or sparse matrix of shape (n_samples, n_concepts_[0])
        mode : {"argmax", "sample"}, default="argmax"
        random_state : int, Generator or None
            For ``"sample"``.
        calibrated : bool, optional
            Correct the probabilities for the balanced training resamples: add
            log(π / (1 - π)) to each logit, π the concept's training frequency (King & Zeng's
            prior correction). Default: True for ``"sample"`` (draws need real frequencies,
            else every concept with an uninformative model fires half the time), False for
            ``"argmax"`` (the seed's τ = 0.5 on the balanced models).
        return_proba : bool, default=False
            Also return each layer's probabilities (dense: n_samples x n_concepts floats).

        Returns
        -------
        activations : list of scipy.sparse.csr_matrix of bool, shape (n_samples, n_concepts_[l])
            Layer 0 is the input's support.
        probabilities : list of ndarray of float32 (with ``return_proba``); None for layer 0
        """
        first = self._first_layer(first_layer_codes)
        probabilities: list[np.ndarray | None] = []

        def keep(layer, active, proba):
            probabilities.append(proba)

        activations = self._run(first, mode, random_state, calibrated,
                                on_layer=keep if return_proba else None)
        return (activations, probabilities) if return_proba else activations

    def score_predictions(self, codes: Sequence[Any], mode: str = "argmax",
                          random_state: Any = None, *, rows: Any = "held_out",
                          calibrated: bool | None = None):
        """How well running the graph from layer 0 predicts every later layer's concepts.

        Parameters
        ----------
        codes : list of per-layer codes
            The true codes of all layers (the first is the input; the others are compared).
        mode, random_state, calibrated
            As for :meth:`predict`.
        rows : "held_out", None or array of int
            Samples to score: the rows held out during ``fit`` (default; needs the codes the
            graph was fit on), all rows (None), or these rows.

        Returns
        -------
        pandas.DataFrame or dict of ndarray
            One row per concept of layers 1…: ``layer``, ``concept``, ``n_positive``, ``auc``
            (of the predicted probabilities) and ``f1`` (of the predicted activations); NaN
            where a concept is never or always active in the scored rows.
        """
        check_is_fitted(self, "metrics_")
        truth = _as_layers(codes)
        if [t.shape[1] for t in truth] != self.n_concepts_:
            raise InvalidInputError(
                f"Expected codes with {self.n_concepts_} concepts per layer. Got "
                f"{[t.shape[1] for t in truth]}.")
        if isinstance(rows, str) and rows == "held_out":
            if truth[0].shape[0] != self.n_samples_:
                raise InvalidInputError(
                    f"rows='held_out' needs the {self.n_samples_} samples the graph was fit on. "
                    f"Got {truth[0].shape[0]}; pass rows=None or row indices.")
            rows = self.held_out_
        if rows is not None:
            truth = [t[rows] for t in truth]
        columns: dict[str, list] = {k: [] for k in ("layer", "concept", "n_positive", "auc",
                                                    "f1")}

        def score(layer, active, proba):
            if layer == 0:
                return
            labels = truth[layer].tocsc()
            predicted = active.tocsc()
            for concept in range(self.n_concepts_[layer]):
                positive = labels.indices[labels.indptr[concept]:labels.indptr[concept + 1]]
                hit = predicted.indices[predicted.indptr[concept]:predicted.indptr[concept + 1]]
                is_true = np.zeros(labels.shape[0], dtype=bool)
                is_true[positive] = True
                auc = f1 = np.nan
                if 0 < positive.size < labels.shape[0]:
                    fpr, tpr = roc_curve_points(proba[:, concept], is_true)
                    auc = float(np.trapezoid(tpr, fpr))
                    f1 = 2 * np.count_nonzero(is_true[hit]) / (hit.size + positive.size)
                for key, value in (("layer", layer), ("concept", concept),
                                   ("n_positive", positive.size), ("auc", auc), ("f1", f1)):
                    columns[key].append(value)

        self._run(truth[0], mode, random_state, calibrated, on_layer=score)
        return _table({k: np.asarray(v) for k, v in columns.items()})

    def intervene(self, concept: int, layer: int, on: bool, codes: Any, *,
                  mode: str = "argmax", random_state: Any = None,
                  calibrated: bool | None = None):
        """Which downstream concepts change when one concept is forced on or off.

        Runs the graph from ``codes`` (first-layer codes) twice, as :meth:`predict` does: as
        is, and with ``concept`` of ``layer`` set to ``on`` in every sample; in ``"sample"``
        mode both runs use the same random draws, so only the intervention differs.

        Parameters
        ----------
        concept : int
        layer : int
            0 … n_layers - 1 (layer 0: the input itself is changed).
        on : bool
            Force the concept active (True) or inactive (False).
        codes : Codes or sparse matrix of shape (n_samples, n_concepts_[0])
        mode, random_state, calibrated
            As for :meth:`predict`.

        Returns
        -------
        pandas.DataFrame or dict of ndarray
            One row per concept of a later layer whose activation changed in some sample:
            ``layer``, ``concept``, ``n_turned_on``, ``n_turned_off`` (samples), sorted by
            layer and concept; empty when nothing changed.
        """
        layer = self._check_layer(layer, first=0)
        concept = self._check_concept(concept, layer)
        if not isinstance(on, (bool, np.bool_)):
            raise InvalidInputError(f"Expected on to be True or False. Got {on!r}.")
        first = self._first_layer(codes)
        if mode == "sample":
            random_state = base_seed(random_state)  # one seed: the two runs share their draws
        before = self._run(first, mode, random_state, calibrated)
        after = self._run(first, mode, random_state, calibrated,
                          intervention=(layer, concept, bool(on)))
        columns: dict[str, list] = {"layer": [], "concept": [], "n_turned_on": [],
                                    "n_turned_off": []}
        for later in range(layer + 1, len(self.n_concepts_)):
            old, new = before[later].astype(np.int8), after[later].astype(np.int8)
            turned_on = np.asarray((new - new.multiply(old)).sum(axis=0)).ravel()
            turned_off = np.asarray((old - old.multiply(new)).sum(axis=0)).ravel()
            changed = np.flatnonzero(turned_on + turned_off)
            columns["layer"].extend([later] * changed.size)
            columns["concept"].extend(changed.tolist())
            columns["n_turned_on"].extend(turned_on[changed].tolist())
            columns["n_turned_off"].extend(turned_off[changed].tolist())
        return _table({k: np.asarray(v, dtype=np.int64) for k, v in columns.items()})

    # ----------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted graph as a Zarr group (atomically; never pickle).

        Layout: attrs (parameters, seed, concepts per layer), ``held_out``,
        ``layers/<l>/mean_active_value`` and one ``pairs/<l>`` group per layer with parents.
        """
        check_is_fitted(self, "metrics_")
        path = check_writable(path)
        with atomic_group(path) as group:
            group.create_array("held_out", data=self.held_out_.astype(np.int64))
            for layer, values in enumerate(self.mean_active_value_):
                group.create_array(f"layers/{layer}/mean_active_value", data=values)
            for layer, pair in enumerate(self._pairs[1:], start=1):
                pair.write(group.create_group(f"pairs/{layer}"))
            group.attrs["daskdict"] = {
                "format": FORMAT_VERSION, "kind": "concept_graph", "version": __version__,
                "params": _jsonable_params(self.get_params()),
                "settings": self._fitted_settings.to_dict(), "seed": self.seed_,
                "n_samples": self.n_samples_, "n_concepts": self.n_concepts_}
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptGraph:
        """Read a graph written by :meth:`save`."""
        path = recover_replaced(path)
        if not path.exists():
            raise StoreNotFoundError(f"Nothing at {str(path)!r}: the path does not exist.")
        group = zarr.open_group(path, mode="r")
        meta = dict(group.attrs.get("daskdict", {}))
        if meta.get("kind") != "concept_graph":
            raise InvalidInputError(
                f"Expected {str(path)!r} to hold a daskdict concept_graph. Got "
                f"{meta.get('kind')!r}.")
        graph = cls(**meta["params"])
        n_concepts = list(meta["n_concepts"])
        pairs = [None] + [PairResult.read(group[f"pairs/{layer}"])
                          for layer in range(1, len(n_concepts))]
        mean_active = [np.asarray(group[f"layers/{layer}/mean_active_value"][...])
                       for layer in range(len(n_concepts))]
        graph._set_fitted(pairs, n_concepts, meta["n_samples"],
                          np.asarray(group["held_out"][...]), meta["seed"], mean_active,
                          Settings(**meta["settings"]))
        return graph

    # ----------------------------------------------------------------- pictures

    def _target_layer(self, layer: int | None) -> int:
        check_is_fitted(self, "metrics_")
        return self._check_layer(len(self.n_concepts_) - 1 if layer is None else layer)

    def plot_parents(self, layer: int | None = None, ax: Any = None):
        """Histogram of the number of parents per concept (the seed's Fig. 2).

        Parameters
        ----------
        layer : int, optional
            Target layer (default: the last). Concepts too rare to model are left out.
        ax : matplotlib Axes, optional

        Returns
        -------
        matplotlib.figure.Figure
        """
        layer = self._target_layer(layer)
        pair = self._pairs[layer]
        return _graph_plots.parents_histogram(pair.n_parents[pair.status != FEW_POSITIVES],
                                              layer, ax)

    def plot_roc(self, layer: int | None = None, ax: Any = None, max_curves: int = 1000):
        """Held-out ROC curves of a layer's predictors and their median curve (Fig. 3).

        The median curve is the pointwise median true-positive rate over the concepts.

        Parameters
        ----------
        layer : int, optional
            Target layer (default: the last).
        ax : matplotlib Axes, optional
        max_curves : int, default=1000
            Draw at most this many individual curves (evenly spaced over the concepts).

        Returns
        -------
        matplotlib.figure.Figure
        """
        layer = self._target_layer(layer)
        fpr, tpr = self.roc_curves(layer)
        return _graph_plots.roc_curves(fpr, tpr, _nanmedian(self._pairs[layer].auc), layer, ax,
                                       max_curves)

    def plot_scores(self):
        """Held-out AUC and F1 (τ = 0.5) of every layer's predictors, as box plots.

        Returns
        -------
        matplotlib.figure.Figure
        """
        check_is_fitted(self, "metrics_")
        return _graph_plots.score_boxes({"auc": [p.auc for p in self._pairs[1:]],
                                         "f1": [p.f1 for p in self._pairs[1:]]})


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def _mean_active_value(layer: sp.csr_matrix) -> np.ndarray:
    counts = np.bincount(layer.indices, minlength=layer.shape[1])
    sums = np.bincount(layer.indices, weights=layer.data, minlength=layer.shape[1])
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def _force_concept(matrix: sp.csr_matrix, concept: int, on: bool, value: float = 1.0
                   ) -> sp.csr_matrix:
    """``matrix`` with column ``concept`` set to ``value`` (on) or zero (off) in every row."""
    entries = matrix.tocoo()
    keep = entries.col != concept
    rows, cols, data = entries.row[keep], entries.col[keep], entries.data[keep]
    if on:
        n_rows = matrix.shape[0]
        rows = np.concatenate([rows, np.arange(n_rows)])
        cols = np.concatenate([cols, np.full(n_rows, concept)])
        data = np.concatenate([data, np.full(n_rows, value, dtype=data.dtype)])
    return sp.csr_matrix((data, (rows, cols)), shape=matrix.shape)


def _jsonable_params(params: dict) -> dict:
    """Parameters for the saved attrs; a client or Generator is not kept (None on load)."""
    out = {}
    for key, value in params.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = None
    return out


def _check_saved_pair(group: zarr.Group, attrs: dict, checkpoint: Path | None) -> None:
    saved = dict(group.attrs.get("daskdict", {}))
    for key, what in (("params", "parameters"), ("n_samples", "number of samples"),
                      ("n_concepts", "concepts per layer"), ("fingerprints", "codes")):
        if json.loads(json.dumps(saved.get(key))) != json.loads(json.dumps(attrs[key])):
            raise CheckpointMismatchError(
                f"The checkpoint {checkpoint} holds layer pair {attrs['layer'] - 1} -> "
                f"{attrs['layer']} of another fit (other {what}). Remove it or choose another "
                "path.")


# --------------------------------------------------------------------------- dictionaries


def hidden_layers(store: Any) -> list[str]:
    """The ``hidden_*`` layer names of an embedding store (path or EmbeddingStore), sorted."""
    opened = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    if not hasattr(opened, "layer_names"):
        raise InvalidInputError(
            f"Expected store to be a path to an embedding store or an EmbeddingStore. Got "
            f"{type(store).__name__}.")
    return sorted(name for name in opened.layer_names if name.startswith("hidden_"))


def fit_layers(store: Any, layers: Sequence[str] | None = None, n_atoms: int | None = None,
               n_nonzero: int = 10, n_iter: int = 10, *, out_dir: str | os.PathLike | None = None,
               client: Any = None, progress: bool = True, **fit_kwargs: Any
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit one dictionary per layer of an embedding store and encode each layer with it.

    Parameters
    ----------
    store : str, path-like or EmbeddingStore
        An embedding store with layers ``hidden_00``, ``hidden_01`` ….
    layers : sequence of str, optional
        Layer names in layer order (default: the store's ``hidden_*`` layers, sorted).
    n_atoms, n_nonzero, n_iter
        As for :func:`daskdict.fit` (``n_atoms`` default: 4 x the layer's width).
    out_dir : str or path-like, optional
        Folder for ``<layer>.dictionary.zarr`` and ``<layer>.codes.zarr``, and for each fit's
        checkpoint (``<layer>.checkpoint.zarr``), so an interrupted call resumes. Without it
        everything stays in memory.
    client : distributed.Client, "local", "threads", "sync" or None
        Started once for all layers (None: a LocalCluster).
    progress : bool, default=True
    **fit_kwargs
        Passed to :func:`daskdict.fit` (``random_state``, ``coder``, ``tol`` …).

    Returns
    -------
    dictionaries : dict of str to Dictionary, in layer order
    codes : dict of str to Codes of shape (n_samples, n_atoms), in layer order
        ``list(codes.values())`` is what :meth:`ConceptGraph.fit` takes.
    """
    from daskdict.learn.training import fit

    names = hidden_layers(store) if layers is None else list(layers)
    opened = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    if not names:
        raise InvalidInputError(
            f"The store {opened.path} has no hidden_* layers (it has {opened.layer_names}); pass "
            "layers=[...].")
    for name in names:
        opened.layer_array(name)  # a missing layer is an error before any fit
    directory = Path(out_dir) if out_dir is not None else None
    if directory is not None:
        check_writable(directory)
        directory.mkdir(parents=True, exist_ok=True)
    for reserved in ("layer", "checkpoint", "client", "progress"):
        if reserved in fit_kwargs:
            raise InvalidInputError(f"fit_layers sets {reserved!r} itself; do not pass it.")
    dictionaries, codes = {}, {}
    with runtime(client, in_memory=False, verbose=progress) as rt:
        where = rt.client if rt.client is not None else rt.scheduler
        for name in names:
            checkpoint = directory / f"{name}.checkpoint.zarr" if directory else None
            model = fit(str(opened.path), n_atoms, n_nonzero, n_iter, layer=name,
                        checkpoint=checkpoint, client=where, progress=progress, **fit_kwargs)
            if directory is not None:
                model.save(directory / f"{name}.dictionary.zarr")
                codes[name] = model.encode(opened.path, layer=name, client=where,
                                           out=directory / f"{name}.codes.zarr")
            else:
                codes[name] = model.encode(opened.layer_array(name), client=where)
            dictionaries[name] = model
    return dictionaries, codes
