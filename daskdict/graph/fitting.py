"""One layer pair of the concept graph: the per-target L1-logistic ensembles.

The numerical core of :mod:`daskdict.graph` (Fig. 1 of *Dictionary Learning for Disentangling
Concepts in Vision Transformers*): what one Dask task computes for a batch of target concepts,
and how a layer pair is cut into tasks. See :mod:`daskdict.graph.estimator` for the method.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import asdict, dataclass, fields

import dask
import numpy as np
import scipy.sparse as sp
import sklearn
import zarr
from scipy.special import expit

# ROC curves are kept as true-positive rates at these false-positive rates (linear
# interpolation is exact between the curve's vertices): 101 floats per target instead of the
# held-out scores, enough for the paper's Fig. 3 and its median curve.
ROC_FPR_GRID = np.linspace(0.0, 1.0, 101)
# τ of the paper's F1 and of "argmax" inference: a concept is predicted active when p > τ
THRESHOLD = 0.5
# What the models see of the left layer (Settings.input_encoding): the support x != 0, or the
# magnitude |x| over the concept's mean active |x| (daskdict.graph.inputs.model_inputs)
INPUT_ENCODINGS = ("support", "scaled magnitude")
STATUSES = ("ok", "too_few_positives", "too_few_negatives", "no_held_out_positives")
OK, FEW_POSITIVES, FEW_NEGATIVES, NO_HELD_OUT = range(len(STATUSES))
# liblinear's coordinate descent draws from one process-wide generator (scikit-learn seeds it
# with random_state on every fit): fits in concurrent threads would interleave its draws and
# make results depend on the scheduling. Worker processes each have their own.
_LIBLINEAR_LOCK = threading.Lock()


@dataclass(frozen=True)
class Settings:
    """Validated hyper-parameters that change the fitted models (checked on resume)."""

    n_models: int
    penalty: float
    min_usage: float
    binarize_inputs: bool
    test_size: float
    min_positives: int
    max_samples_per_class: int | None
    input_encoding: str

    @property
    def C(self) -> float:  # scikit-learn's name for 1 / penalty
        return 1.0 / self.penalty

    @property
    def min_models(self) -> int:
        """Models that must use an input for it to be a parent (``min_usage`` of them)."""
        return max(1, int(np.ceil(self.min_usage * self.n_models - 1e-9)))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairData:
    """What every task of one layer pair reads (shared once per graph).

    ``inputs`` is the left layer as the models see it (N x K_left, CSR, from
    :func:`daskdict.graph.inputs.model_inputs`); ``positive_indptr`` /
    ``positive_rows`` list, per right concept, the rows where it is active (CSC layout).
    """

    inputs: sp.csr_matrix
    positive_indptr: np.ndarray
    positive_rows: np.ndarray
    is_train: np.ndarray
    train_rows: np.ndarray
    test_position: np.ndarray
    test_inputs: sp.csc_matrix

    @classmethod
    def build(cls, inputs: sp.csr_matrix, right: sp.csr_matrix, held_out: np.ndarray
              ) -> PairData:
        targets = right.tocsc()
        n_samples = inputs.shape[0]
        is_train = np.ones(n_samples, dtype=bool)
        is_train[held_out] = False
        test_position = np.full(n_samples, -1, dtype=np.int64)
        test_position[held_out] = np.arange(held_out.size)
        return cls(inputs=inputs, positive_indptr=targets.indptr.astype(np.int64),
                   positive_rows=targets.indices.astype(np.int64), is_train=is_train,
                   train_rows=np.flatnonzero(is_train), test_position=test_position,
                   test_inputs=inputs[held_out].tocsc())


@dataclass
class PairResult:
    """The fitted predictors of one layer's concepts from the layer before.

    ``parents[parent_indptr[i]:parent_indptr[i + 1]]`` are concept i's parents, with the final
    model's ``weights`` and the fraction of the ensemble that used each (``usage``).
    """

    parent_indptr: np.ndarray
    parents: np.ndarray
    weights: np.ndarray
    usage: np.ndarray
    intercept: np.ndarray
    base_rate: np.ndarray
    n_train_positive: np.ndarray
    n_test_positive: np.ndarray
    auc: np.ndarray
    f1: np.ndarray
    status: np.ndarray
    roc_tpr: np.ndarray

    @property
    def n_targets(self) -> int:
        return int(self.intercept.size)

    @property
    def n_parents(self) -> np.ndarray:
        return np.diff(self.parent_indptr)

    def weight_matrix(self, n_left: int) -> sp.csr_matrix:
        """Final-model weights as a (n_left, n_targets) matrix."""
        return sp.csc_matrix((self.weights, self.parents, self.parent_indptr),
                             shape=(n_left, self.n_targets)).tocsr()

    @classmethod
    def concatenate(cls, parts: list[dict]) -> PairResult:
        counts = np.concatenate([p["n_parents"] for p in parts])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = {f.name: np.concatenate([p[f.name] for p in parts])
                  for f in fields(cls) if f.name != "parent_indptr"}
        return cls(parent_indptr=indptr, **values)

    def write(self, group: zarr.Group) -> None:
        for f in fields(self):
            group.create_array(f.name, data=np.ascontiguousarray(getattr(self, f.name)))

    @classmethod
    def read(cls, group: zarr.Group) -> PairResult:
        return cls(**{f.name: np.asarray(group[f.name][...]) for f in fields(cls)})


def l1_logistic(C: float):
    """An L1-penalised liblinear logistic regression (scikit-learn >= 1.8 spells it l1_ratio)."""
    from sklearn.linear_model import LogisticRegression

    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear")
    return LogisticRegression(penalty="l1", C=C, solver="liblinear")


def rebalanced_rows(rng, train_positive, n_per_class, is_positive, train_rows, negatives):
    """Rows of one rebalanced resample: ``n_per_class`` positives, then as many negatives.

    Both classes are drawn with replacement. Negatives come from ``negatives`` when the caller
    listed them (frequent targets), otherwise by drawing training rows and dropping the
    positives among them: a few percent of redraws, and no O(N) list per target.
    """
    positives = train_positive[rng.integers(train_positive.size, size=n_per_class)]
    if negatives is not None:
        return np.concatenate([positives, negatives[rng.integers(negatives.size,
                                                                 size=n_per_class)]])
    drawn: list[np.ndarray] = []
    missing = n_per_class
    while missing > 0:
        candidates = train_rows[rng.integers(train_rows.size, size=missing + 8)]
        candidates = candidates[~is_positive[candidates]][:missing]
        drawn.append(candidates)
        missing -= candidates.size
    return np.concatenate([positives, *drawn])


def roc_curve_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the ROC curve, ties as diagonal segments (as scikit-learn's ``roc_curve``).

    Parameters
    ----------
    scores : ndarray of shape (n_samples,)
    labels : bool ndarray of shape (n_samples,), with both classes present

    Returns
    -------
    fpr, tpr : ndarray of shape (n_thresholds + 1,), starting at (0, 0)
    """
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    last_of_tie = np.concatenate([np.flatnonzero(np.diff(ranked)), [ranked.size - 1]])
    tps = np.cumsum(hits)[last_of_tie]
    fps = last_of_tie + 1 - tps
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return fpr, tpr


def held_out_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """ROC AUC, F1 at τ and the ROC curve on ROC_FPR_GRID, from held-out probabilities."""
    fpr, tpr = roc_curve_points(scores, labels)
    auc = float(np.trapezoid(tpr, fpr))
    # the curve's upper envelope at each grid point: of a vertical run keep its top
    top = np.concatenate([np.flatnonzero(np.diff(fpr)), [fpr.size - 1]])
    curve = np.interp(ROC_FPR_GRID, fpr[top], tpr[top])
    predicted = scores > THRESHOLD
    true_positives = int(np.count_nonzero(predicted & labels))
    f1 = 2 * true_positives / (np.count_nonzero(predicted) + np.count_nonzero(labels))
    return auc, f1, curve


@dataclass
class TargetFit:
    """The fitted predictor of one target concept (see :class:`PairResult`)."""

    status: int
    n_train_positive: int
    n_test_positive: int
    parents: np.ndarray
    weights: np.ndarray
    usage: np.ndarray
    intercept: float = 0.0
    auc: float = np.nan
    f1: float = np.nan
    roc_tpr: np.ndarray | None = None


def fit_target(data: PairData, target: int, settings: Settings, seed: int, layer: int,
               model, is_positive: np.ndarray) -> TargetFit:
    """The paper's Fig. 1 for one target: ensemble, parents used by >= min_usage, final model.

    ``is_positive`` is a scratch boolean row mask, all False on entry and on return.
    """
    rows = data.positive_rows[data.positive_indptr[target]:data.positive_indptr[target + 1]]
    train_positive = rows[data.is_train[rows]]
    n_pos, n_train = train_positive.size, data.train_rows.size
    fit = TargetFit(OK, n_pos, rows.size - n_pos, np.empty(0, dtype=np.int64), np.empty(0),
                     np.empty(0, dtype=np.float32))
    if n_pos < settings.min_positives:
        fit.status = FEW_POSITIVES
        return fit
    if n_train - n_pos < settings.min_positives:
        fit.status = FEW_NEGATIVES
        return fit
    rng = np.random.default_rng([seed, layer, int(target)])
    n_per_class = n_pos if settings.max_samples_per_class is None else min(
        n_pos, settings.max_samples_per_class)
    labels = np.repeat([1, 0], n_per_class)
    is_positive[rows] = True
    try:
        # a frequent target's negatives are listed once; a rare one's are drawn by rejection
        negatives = (data.train_rows[~is_positive[data.train_rows]]
                     if n_pos > n_train // 4 else None)
        samples = [rebalanced_rows(rng, train_positive, n_per_class, is_positive,
                                    data.train_rows, negatives)
                   for _ in range(settings.n_models + 1)]
    finally:
        is_positive[rows] = False
    uses = np.zeros(data.inputs.shape[1], dtype=np.int32)
    for sample in samples[:-1]:
        model.random_state = int(rng.integers(2**31 - 1))
        with _LIBLINEAR_LOCK:
            model.fit(data.inputs[sample], labels)
        uses[np.flatnonzero(model.coef_[0])] += 1
    selected = np.flatnonzero(uses >= settings.min_models)
    if selected.size:
        model.random_state = int(rng.integers(2**31 - 1))
        with _LIBLINEAR_LOCK:
            model.fit(data.inputs[samples[-1]][:, selected], labels)
        weights = model.coef_[0].astype(np.float64)
        # an input the final (L1) model drops does not change the prediction: not a parent
        kept = weights != 0
        fit.parents, fit.weights = selected[kept], weights[kept]
        fit.usage = (uses[fit.parents] / settings.n_models).astype(np.float32)
        fit.intercept = float(model.intercept_[0])
    # without parents the best constant on balanced resamples is p = 0.5: intercept 0
    held_out_positive = rows[~data.is_train[rows]]
    n_test = data.test_inputs.shape[0]
    if held_out_positive.size in (0, n_test):
        fit.status = NO_HELD_OUT
        return fit
    logits = data.test_inputs[:, fit.parents] @ fit.weights + fit.intercept
    labels_test = np.zeros(n_test, dtype=bool)
    labels_test[data.test_position[held_out_positive]] = True
    fit.auc, fit.f1, fit.roc_tpr = held_out_scores(expit(logits), labels_test)
    return fit


def fit_targets(data: PairData, targets: np.ndarray, settings: Settings, seed: int,
                layer: int) -> dict:
    """Fit the predictors of a batch of target concepts (one Dask task).

    Returns a dict of per-target arrays (see :class:`PairResult`) plus ``n_parents``.
    """
    model = l1_logistic(settings.C)
    is_positive = np.zeros(data.is_train.size, dtype=bool)
    # scikit-learn's per-call checks cost more than liblinear itself on these small resamples;
    # the inputs were validated once by ConceptGraph.fit (the setting is thread-local)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        fits = [fit_target(data, int(target), settings, seed, layer, model, is_positive)
                for target in targets]
    no_curve = np.full(ROC_FPR_GRID.size, np.nan)
    n_train_positive = np.array([f.n_train_positive for f in fits], dtype=np.int64)
    return {"n_parents": np.array([f.parents.size for f in fits], dtype=np.int64),
            "parents": np.concatenate([f.parents for f in fits]).astype(np.int32),
            "weights": np.concatenate([f.weights for f in fits]),
            "usage": np.concatenate([f.usage for f in fits]),
            "intercept": np.array([f.intercept for f in fits]),
            "base_rate": n_train_positive / max(data.train_rows.size, 1),
            "n_train_positive": n_train_positive,
            "n_test_positive": np.array([f.n_test_positive for f in fits], dtype=np.int64),
            "auc": np.array([f.auc for f in fits]), "f1": np.array([f.f1 for f in fits]),
            "status": np.array([f.status for f in fits], dtype=np.int8),
            "roc_tpr": np.array([no_curve if f.roc_tpr is None else f.roc_tpr for f in fits],
                                dtype=np.float32).reshape(len(fits), ROC_FPR_GRID.size)}


def fit_pair(rt, inputs: sp.csr_matrix, right: sp.csr_matrix, layer: int, settings: Settings,
             seed: int, held_out: np.ndarray, batch_size: int | None) -> PairResult:
    """Fit the predictors of every concept of ``layer`` from layer - 1, batches on Dask.

    ``inputs`` is layer - 1 as the models see it (:func:`daskdict.graph.inputs.model_inputs`).
    """
    shared = rt.share(PairData.build(inputs, right, held_out))
    n_targets = right.shape[1]
    if batch_size is None:
        # a few tasks per worker balance the load; 16..256 targets keep the overhead small
        batch_size = int(np.clip(-(-n_targets // (4 * rt.n_workers)), 16, 256))
    batches = [np.arange(start, min(start + batch_size, n_targets))
               for start in range(0, n_targets, batch_size)]
    tasks = [dask.delayed(fit_targets, pure=True)(shared, batch, settings, seed, layer)
             for batch in batches]
    return PairResult.concatenate(list(rt.compute(*tasks)))
