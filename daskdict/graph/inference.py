"""Running a fitted concept graph in concept space: prediction, its scores, interventions.

From the first layer's codes, each layer's final models turn the previous layer's activations
into probabilities, and the predicted activations (most likely ones, or Bernoulli samples) feed
the next layer (the inference of *Dictionary Learning for Disentangling Concepts in Vision
Transformers*, §3.4). :class:`GraphInference` is a part of
:class:`daskdict.graph.ConceptGraph`; every method that takes a layer and a concept takes the
layer first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted

from daskdict.errors import InvalidInputError
from daskdict.graph.fitting import NO_HELD_OUT, OK, THRESHOLD, PairResult, roc_curve_points
from daskdict.graph.inputs import as_code_matrix, as_layers, model_inputs, table
from daskdict.learn.params import base_seed
from daskdict.validation import check_choice

MODES = ("argmax", "sample")
BLOCK_ROWS = 4096


def force_concept(matrix: sp.csr_matrix, concept: int, on: bool, value: float = 1.0
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


def logit_offsets(pair: PairResult, calibrated: bool) -> np.ndarray:
    """Per-target intercepts of shape (n_targets,); -inf (never active) for those without a model.

    Calibrated: the models saw balanced classes; adding log(π / (1 - π)), π the target's
    training frequency, turns their probabilities into ones for the real frequencies (the
    prior correction of King & Zeng 2001, Logistic Regression in Rare Events Data).
    """
    offsets = pair.intercept.copy()
    has_model = (pair.status == OK) | (pair.status == NO_HELD_OUT)
    if calibrated:
        rate = np.clip(pair.base_rate, 1e-12, 1 - 1e-12)
        offsets += np.log(rate / (1 - rate))
    offsets[~has_model] = -np.inf
    return offsets


class GraphInference:
    """Inference with a fitted graph (see :class:`daskdict.graph.ConceptGraph`)."""

    def _first_layer(self, codes: Any) -> sp.csr_matrix:
        check_is_fitted(self, "metrics_")
        first = as_code_matrix(codes, "first_layer_codes")
        if first.shape[1] != self.n_concepts_[0]:
            raise InvalidInputError(
                f"Expected first-layer codes with {self.n_concepts_[0]} concepts (the graph's "
                f"layer 0). Got {first.shape[1]}.")
        return first

    def _layer_activations(self, layer: int, values: sp.csr_matrix, offsets: np.ndarray,
                           draw: Callable[[np.ndarray], np.ndarray],
                           intervention: tuple[int, int, bool] | None, keep_proba: bool
                           ) -> tuple[sp.csr_matrix, np.ndarray | None]:
        """One layer's activations (and probabilities) from the previous layer's values."""
        blocks, probabilities = [], []
        for start in range(0, values.shape[0], BLOCK_ROWS):
            logits = (values[start:start + BLOCK_ROWS] @ self.weights_[layer]).toarray()
            proba = expit(logits + offsets)
            block = draw(proba)
            if intervention is not None and intervention[0] == layer:
                block[:, intervention[1]] = intervention[2]
            blocks.append(sp.csr_matrix(block))
            if keep_proba:
                probabilities.append(proba.astype(np.float32))
        active = sp.vstack(blocks, format="csr")
        return active, np.concatenate(probabilities) if keep_proba else None

    def _run(self, first: sp.csr_matrix, mode: str, random_state: Any, calibrated: bool | None,
             intervention: tuple[int, int, bool] | None = None,
             on_layer: Callable[[int, sp.csr_matrix, np.ndarray | None], None] | None = None
             ) -> list[sp.csr_matrix]:
        """Run the graph from the first layer's codes; see :meth:`predict`.

        ``intervention`` is (layer, concept, on): that concept is forced on or off at that
        layer, for every sample. ``on_layer(layer, activations, probabilities)`` sees every
        layer as it is made (probabilities None for layer 0).
        """
        check_choice("mode", mode, MODES)
        calibrated = mode == "sample" if calibrated is None else bool(calibrated)
        seed = base_seed(random_state) if mode == "sample" else 0
        active = first.copy()
        active.data[:] = 1.0
        # the first layer as the models saw it in fit; in either encoding an active concept
        # averages 1, so a forced or predicted activation enters every layer as 1
        values = model_inputs(first, self.input_scale_[0], self._fitted_settings.binarize_inputs)
        if intervention is not None and intervention[0] == 0:
            _, concept, on = intervention
            active = force_concept(active, concept, on)
            values = force_concept(values, concept, on)
        activations = [active.astype(bool)]
        if on_layer is not None:
            on_layer(0, activations[0], None)
        for layer in range(1, len(self.n_concepts_)):
            # one generator per layer, drawn block after block: a run with an intervention
            # sees the same uniforms as the run without (common random numbers)
            rng = np.random.default_rng([seed, layer])

            def draw(proba, rng=rng):
                return proba > THRESHOLD if mode == "argmax" else rng.random(proba.shape) < proba

            active, proba = self._layer_activations(
                layer, values, logit_offsets(self._pairs[layer], calibrated), draw,
                intervention, on_layer is not None)
            activations.append(active)
            if on_layer is not None:
                on_layer(layer, active, proba)
            values = active.astype(np.float64)
        return activations

    def predict(self, first_layer_codes: Any, mode: str = "argmax", random_state: Any = None,
                *, calibrated: bool | None = None,
                return_proba: bool = False) -> list[sp.csr_matrix] | tuple[list, list]:
        """Run the graph from the first layer to the last.

        Each layer's final models turn the previous layer's activations into probabilities;
        ``"argmax"`` keeps the concepts with p > 0.5, ``"sample"`` draws each as a Bernoulli.
        The first layer enters as in :meth:`fit` (``|x| / input_scale_``, or ``x != 0`` with
        ``binarize_inputs``); a predicted activation enters the next layer as 1, a code of
        its concept's mean training magnitude.

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
            ``"argmax"`` (the paper's τ = 0.5 on the balanced models).
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

    def _scored_truth(self, codes: Sequence[Any], rows: Any) -> list[sp.csr_matrix]:
        check_is_fitted(self, "metrics_")
        truth = as_layers(codes)
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
        return truth if rows is None else [t[rows] for t in truth]

    def score_predictions(self, codes: Sequence[Any], mode: str = "argmax",
                          random_state: Any = None, *, rows: Any = "held_out",
                          calibrated: bool | None = None):
        """How well running the graph from layer 0 predicts every later layer's concepts.

        Parameters
        ----------
        codes : list of per-layer codes, each of shape (n_samples, n_concepts_[l])
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
        truth = self._scored_truth(codes, rows)
        columns: dict[str, list] = {k: [] for k in ("layer", "concept", "n_positive", "auc",
                                                    "f1")}

        def score(layer, active, proba):
            if layer == 0:
                return
            labels, predicted = truth[layer].tocsc(), active.tocsc()
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
        return table({k: np.asarray(v) for k, v in columns.items()})

    def intervene(self, layer: int, concept: int, on: bool, codes: Any, *,
                  mode: str = "argmax", random_state: Any = None,
                  calibrated: bool | None = None):
        """Which downstream concepts change when one concept is forced on or off.

        Runs the graph from ``codes`` (first-layer codes) twice, as :meth:`predict` does: as
        is, and with ``concept`` of ``layer`` set to ``on`` in every sample; in ``"sample"``
        mode both runs use the same random draws, so only the intervention differs.

        Parameters
        ----------
        layer : int
            0 … n_layers - 1 (layer 0: the input itself is changed).
        concept : int
            A concept of ``layer``.
        on : bool
            Force the concept active (True) or inactive (False). A forced concept enters its
            children's models as 1: in ``x != 0`` units, or a code of its mean training
            magnitude (``input_scale_``) when the graph saw scaled magnitudes.
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
        if not isinstance(on, bool | np.bool_):
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
        return table({k: np.asarray(v, dtype=np.int64) for k, v in columns.items()})
