"""The concept graph between layers: which concepts of layer l predict those of layer l+1.

The method of *Dictionary Learning for Disentangling Concepts in Vision Transformers* (its
Fig. 1), with the EasyEnsemble of Liu, Wu & Zhou (2009), Exploratory Undersampling for
Class-Imbalance Learning. For every pair of adjacent layers and every *target* concept i of the
right layer, the labels are ``y = [x_right,i != 0]`` (about k/K ≈ 0.3 % positive):

1. the samples are split once into training and held-out rows (the same split for every
   target and layer, so that running the whole graph can be scored on rows no model saw);
2. ``n_models`` L1-penalised logistic regressions (liblinear) are fit, each on a
   class-rebalanced resample of the training rows drawn with replacement (as many negatives
   as positives);
3. the inputs with a non-zero weight in at least ``min_usage`` of those models are selected;
4. a final (L1) model on the selected inputs alone is fit on another rebalanced resample; the
   *parents* of i are the inputs it keeps (a dropped one cannot change its prediction). It
   is scored on the held-out rows: ROC AUC and F1 at τ = 0.5.

Inputs. The targets are activities, but by default the inputs keep the left layer's
magnitudes: each concept enters as ``|x| / s``, ``s`` its mean absolute active code on the
training rows (``input_scale_``). The sign is dropped because a parent's positive and negative
codes both mean it is active (dictionary codes take either sign: signed inputs cancel in a
linear model and leave most targets without parents). The scale makes the penalty mean the
same whatever the dictionary's units: an active input is about 1, as a binarised one
(``binarize_inputs=True``, ``x != 0``) is. Prediction and interventions apply the same scaling.

Penalty. The paper minimises ``Σ bce(f(x), y) + μ‖θ‖₁`` with μ = 5.0, a *sum* of losses over
the resample; liblinear minimises ``‖θ‖₁ + C Σ loss``, the same problem with ``C = 1/μ``. So
``penalty`` is μ and ``C = 1 / penalty``.

Work. One Dask task fits a batch of targets; the pair's matrices travel once per graph
(:meth:`daskdict.compute.runtime.Runtime.share`); every target draws from its own generator
seeded by ``(seed, layer, target)``, so results do not depend on the batching or the scheduler.
With ``checkpoint=`` every finished pair is written atomically
(:mod:`daskdict.graph.persistence`) and a new fit resumes after the last one. Inference and
interventions (:mod:`daskdict.graph.inference`), views and pictures (:mod:`daskdict.graph.views`)
are parts of :class:`ConceptGraph`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from daskdict.compute.runtime import runtime
from daskdict.errors import CheckpointMismatchError, InvalidInputError
from daskdict.graph.fitting import INPUT_ENCODINGS, STATUSES, PairResult, Settings, fit_pair
from daskdict.graph.inference import GraphInference
from daskdict.graph.inputs import (
    as_layers,
    input_scale,
    layer_fingerprint,
    mean_active_value,
    model_inputs,
    nanmedian,
    table,
)
from daskdict.graph.persistence import (
    GRAPH_KIND,
    check_saved_pair,
    describe_graph,
    jsonable_params,
    open_checkpoint,
    pair_path,
    read_graph,
    saved_seeds,
    write_graph,
    write_pair,
)
from daskdict.graph.views import GraphViews
from daskdict.io import formats
from daskdict.learn.params import base_seed
from daskdict.validation import check_fraction, check_positive_int

__all__ = ["ConceptGraph"]

# stream of the train/held-out split; per-target streams are (seed, layer, target), layer >= 1
_SPLIT_STREAM = 0


class ConceptGraph(GraphViews, GraphInference, BaseEstimator):
    """Sparse concept graph between adjacent layers, from resampled L1-logistic ensembles.

    Parameters
    ----------
    n_models : int, default=20
        Models in each target's ensemble (the paper's T).
    penalty : float, default=5.0
        The paper's L1 penalty μ on a *sum* of cross-entropies; liblinear's ``C = 1 / penalty``.
    min_usage : float, default=0.8
        An input is selected for the final model when at least this fraction of the ensemble
        uses it (non-zero weight); the parents are the selected inputs the final model keeps.
    binarize_inputs : bool, default=False
        Fit on the left layer's activations ``x != 0`` (the paper's binarised concept labels)
        instead of its codes' magnitudes ``|x|``, each over the concept's mean active ``|x|``.
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
    input_scale_ : list of ndarray
        Per layer, shape (n_concepts_[l],): each concept's mean absolute non-zero code on the
        training rows (1 for a concept never active there). Without ``binarize_inputs`` the
        models see ``|x| / input_scale_``, in :meth:`fit`, :meth:`predict` and
        :meth:`intervene` alike; a predicted or forced activation enters the next layer as 1,
        a code of the concept's mean magnitude.
    mean_active_value_ : list of ndarray
        Per layer, each concept's mean non-zero (signed) code on all rows.

    Notes
    -----
    Every method that takes a layer and a concept takes the layer first:
    ``parents(layer, concept)``, ``intervene(layer, concept, on, codes)``.

    Examples
    --------
    >>> graph = ConceptGraph(random_state=0).fit([codes_0, codes_1, codes_2])
    >>> graph.parents(2, 17)                    # concepts of layer 1 that predict concept 17
    >>> activations = graph.predict(codes_0, mode="argmax")
    >>> graph.intervene(1, 5, True, codes_0)    # what changes when concept 5 of layer 1 is on
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

    def check_params(self) -> Settings:
        """Check the hyper-parameters (as ``fit`` does first); the settings a fit would use.

        Raises
        ------
        InvalidInputError
            Naming the first bad hyper-parameter.
        """
        penalty = self.penalty
        if (isinstance(penalty, bool) or not isinstance(penalty, int | float | np.floating)
                or not np.isfinite(penalty) or penalty <= 0):
            raise InvalidInputError(f"Expected penalty to be a positive number. Got {penalty!r}.")
        if not isinstance(self.binarize_inputs, bool | np.bool_):
            raise InvalidInputError(
                f"Expected binarize_inputs to be True or False. Got {self.binarize_inputs!r}.")
        check_positive_int("batch_size", self.batch_size, optional=True)
        return Settings(
            n_models=check_positive_int("n_models", self.n_models), penalty=float(penalty),
            min_usage=check_fraction("min_usage", self.min_usage),
            binarize_inputs=bool(self.binarize_inputs),
            input_encoding=INPUT_ENCODINGS[0 if self.binarize_inputs else 1],
            test_size=check_fraction("test_size", self.test_size, high_open=True),
            min_positives=check_positive_int("min_positives", self.min_positives),
            max_samples_per_class=check_positive_int(
                "max_samples_per_class", self.max_samples_per_class, optional=True))

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
            there; other codes or parameters raise :class:`CheckpointMismatchError`. The
            folder may not be another daskdict object.

        Returns
        -------
        self
        """
        settings = self.check_params()
        layers = as_layers(codes)
        n_samples = layers[0].shape[0]
        n_held_out = round(settings.test_size * n_samples)
        if n_held_out < 1 or n_samples - n_held_out < 2 * settings.min_positives:
            raise InvalidInputError(
                f"Expected enough samples for test_size={settings.test_size} and "
                f"min_positives={settings.min_positives}. Got {n_samples}.")
        checkpoint_path, saved = (open_checkpoint(checkpoint, len(layers))
                                  if checkpoint is not None else (None, {}))
        seed = self._resolve_seed(saved, checkpoint_path)
        split = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n_samples)
        held_out = np.sort(split[:n_held_out])
        train_rows = np.sort(split[n_held_out:])
        scales = [input_scale(layer[train_rows]) for layer in layers]
        fingerprints = [layer_fingerprint(layer) for layer in layers]
        pairs: list[PairResult | None] = [None]
        with runtime(self.client, in_memory=True, verbose=self.verbose) as rt:
            for layer in range(1, len(layers)):
                fields = {"layer": layer, "seed": seed, "params": settings.to_dict(),
                          "n_samples": n_samples,
                          "n_concepts": [layers[layer - 1].shape[1], layers[layer].shape[1]],
                          "fingerprints": fingerprints[layer - 1:layer + 1]}
                start = time.perf_counter()
                if layer in saved:
                    check_saved_pair(saved[layer], fields, checkpoint_path)
                    result = PairResult.read(saved[layer])
                else:
                    inputs = model_inputs(layers[layer - 1], scales[layer - 1],
                                          settings.binarize_inputs)
                    result = fit_pair(rt, inputs, layers[layer], layer, settings, seed,
                                      held_out, self.batch_size)
                    if checkpoint_path is not None:
                        write_pair(pair_path(checkpoint_path, layer), result, fields)
                pairs.append(result)
                if self.verbose:
                    how = "resumed" if layer in saved else f"{time.perf_counter() - start:.1f} s"
                    print(f"daskdict graph: layer {layer - 1} -> {layer}: {result.n_targets} "
                          f"concepts, {int(result.n_parents.sum())} edges, median AUC "
                          f"{nanmedian(result.auc):.3f} ({how})", file=sys.stderr)
        self._set_fitted(pairs, [layer.shape[1] for layer in layers], n_samples, held_out,
                         seed, {"mean_active": [mean_active_value(layer) for layer in layers],
                                "input_scale": scales}, settings)
        return self

    def _resolve_seed(self, saved: dict, checkpoint_path: Path | None) -> int:
        seeds = saved_seeds(saved)
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

    def _set_fitted(self, pairs, n_concepts, n_samples, held_out, seed, per_layer, settings):
        self._pairs = pairs
        self._fitted_settings = settings
        self.n_concepts_ = list(n_concepts)
        self.n_samples_ = int(n_samples)
        self.held_out_ = held_out
        self.seed_ = int(seed)
        self.mean_active_value_ = per_layer["mean_active"]
        self.input_scale_ = per_layer["input_scale"]
        self.weights_ = [None] + [pair.weight_matrix(n_concepts[i])
                                  for i, pair in enumerate(pairs[1:])]
        self.intercepts_ = [None] + [pair.intercept for pair in pairs[1:]]
        self.metrics_ = table(self._metric_columns())

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

    # ----------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the fitted graph as a Zarr group of kind ``"concept graph"`` (atomically).

        Parameters
        ----------
        path : str or path-like
        overwrite : bool, default=False
            Replace a concept graph already at ``path``; anything else there is never
            replaced.

        Returns
        -------
        Path

        Raises
        ------
        OutputNotWritableError
            If ``path`` exists (without ``overwrite``, or holding another kind) or cannot be
            written; checked before anything is written.
        """
        check_is_fitted(self, "metrics_")
        fields = {"params": jsonable_params(self.get_params()),
                  "settings": self._fitted_settings.to_dict(), "seed": self.seed_,
                  "n_samples": self.n_samples_, "n_concepts": self.n_concepts_}
        return write_graph(path, self._pairs, held_out=self.held_out_,
                           per_layer={"mean_active_value": self.mean_active_value_,
                                      "input_scale": self.input_scale_},
                           fields=fields, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptGraph:
        """Read a graph written by :meth:`save` (nothing on disk changes).

        Raises
        ------
        StoreNotFoundError
            If nothing is at ``path``.
        InvalidInputError
            If ``path`` holds something other than a daskdict concept graph, or a graph of
            the first layout fit on the raw codes (see
            :func:`daskdict.graph.persistence.read_graph`).
        """
        meta, arrays = read_graph(path)
        graph = cls(**meta["params"])
        graph._set_fitted(arrays["pairs"], list(meta["n_concepts"]), meta["n_samples"],
                          arrays["held_out"], meta["seed"], arrays["per_layer"],
                          arrays["settings"])
        return graph


formats.register(GRAPH_KIND, ConceptGraph.load, describe_graph)
