"""Views of a fitted concept graph: parents, edges, ROC curves, networkx, pictures.

:class:`GraphViews` is a part of :class:`daskdict.graph.ConceptGraph` (its fitted attributes
``_pairs``, ``n_concepts_``, ``metrics_``). Every method that takes a layer and a concept takes
the layer first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from daskdict.errors import InvalidInputError
from daskdict.graph import plots
from daskdict.graph.fitting import FEW_POSITIVES, ROC_FPR_GRID
from daskdict.graph.inputs import nanmedian, table

INSTALL_GRAPH = "pip install 'daskdict[graph]'"


class GraphViews:
    """Queries and pictures of a fitted graph (see :class:`daskdict.graph.ConceptGraph`)."""

    def _check_layer(self, layer: Any, first: int = 1) -> int:
        check_is_fitted(self, "metrics_")
        n_layers = len(self.n_concepts_)
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
            raise InvalidInputError(f"Expected layer to be an integer. Got {layer!r}.")
        if not first <= layer < n_layers:
            raise InvalidInputError(
                f"Expected {first} <= layer < {n_layers}"
                f"{' (layer 0 has no parents)' if first else ''}. Got {layer}.")
        return int(layer)

    def _check_concept(self, concept: Any, layer: int) -> int:
        n = self.n_concepts_[layer]
        if (isinstance(concept, bool) or not isinstance(concept, int | np.integer)
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
            A concept of ``layer``.

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
            One row per edge (a dict of column arrays when pandas is not installed).
        """
        check_is_fitted(self, "metrics_")
        pairs = self._pairs[1:]
        return table({
            "layer": np.concatenate([np.full(p.parents.size, i + 1) for i, p in enumerate(pairs)]),
            "parent": np.concatenate([p.parents.astype(np.int64) for p in pairs]),
            "concept": np.concatenate([np.repeat(np.arange(p.n_targets), p.n_parents)
                                       for p in pairs]),
            "weight": np.concatenate([p.weights for p in pairs]),
            "usage": np.concatenate([p.usage for p in pairs]),
        })

    def roc_curves(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Held-out ROC curves of a layer's predictors, on a common false-positive grid.

        Parameters
        ----------
        layer : int
            A layer with parents (1 … n_layers - 1).

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
            If networkx is not installed (the ``graph`` extra).
        """
        check_is_fitted(self, "metrics_")
        try:
            import networkx as nx
        except ImportError as exc:
            raise ImportError(
                "ConceptGraph.to_networkx needs networkx, which is not installed; install it "
                f"with `{INSTALL_GRAPH}`.") from exc
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

    # ----------------------------------------------------------------- pictures

    def _target_layer(self, layer: int | None) -> int:
        check_is_fitted(self, "metrics_")
        return self._check_layer(len(self.n_concepts_) - 1 if layer is None else layer)

    def plot_parents(self, layer: int | None = None, ax: Any = None):
        """Histogram of the number of parents per concept (the paper's Fig. 2).

        Parameters
        ----------
        layer : int, optional
            Target layer (default: the last). Concepts too rare to model are left out.
        ax : matplotlib Axes, optional

        Returns
        -------
        matplotlib.figure.Figure
            Not attached to pyplot: a notebook shows it with ``display(fig)`` (or as a cell's
            last value), a script saves it with ``fig.savefig``.
        """
        layer = self._target_layer(layer)
        pair = self._pairs[layer]
        return plots.parents_histogram(pair.n_parents[pair.status != FEW_POSITIVES], layer, ax)

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
            As for :meth:`plot_parents`.
        """
        layer = self._target_layer(layer)
        fpr, tpr = self.roc_curves(layer)
        return plots.roc_curves(fpr, tpr, nanmedian(self._pairs[layer].auc), layer, ax,
                                max_curves)

    def plot_scores(self):
        """Held-out AUC and F1 (τ = 0.5) of every layer's predictors, as box plots.

        Returns
        -------
        matplotlib.figure.Figure
            As for :meth:`plot_parents`.
        """
        check_is_fitted(self, "metrics_")
        return plots.score_boxes({"auc": [p.auc for p in self._pairs[1:]],
                                  "f1": [p.f1 for p in self._pairs[1:]]})
