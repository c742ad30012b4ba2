"""Pictures of a concept graph (matplotlib, imported when drawing): Figs. 2 and 3 of the paper.

The paper: *Dictionary Learning for Disentangling Concepts in Vision Transformers*.

Plain functions over arrays; :class:`daskdict.graph.ConceptGraph` calls them from its
``plot_*`` methods. Figures are made with ``matplotlib.figure.Figure`` (no pyplot, so no global
state and no GUI backend).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _axes(ax: Any):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), layout="constrained")
    return fig, fig.subplots()


def parents_histogram(n_parents: np.ndarray, layer: int, ax: Any = None):
    """Histogram of parents per concept of ``layer`` (one bar per count).

    Parameters
    ----------
    n_parents : ndarray of int of shape (n_concepts,)
    layer : int
        The target layer (for the title).
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax)
    ax.hist(n_parents, bins=np.arange(n_parents.max(initial=0) + 2) - 0.5, color="tab:blue")
    ax.set_xlabel("parent concepts")
    ax.set_ylabel("concepts")
    ax.set_title(f"Parents per concept, layer {layer - 1} → {layer}")
    return fig


def roc_curves(fpr: np.ndarray, tpr: np.ndarray, median_auc: float, layer: int, ax: Any = None,
               max_curves: int = 1000):
    """Every concept's ROC curve in grey and their pointwise median in red.

    Parameters
    ----------
    fpr : ndarray of shape (n_grid,)
    tpr : ndarray of shape (n_concepts, n_grid)
        NaN rows (unscored concepts) are left out.
    median_auc : float
        For the legend.
    layer : int
    ax : matplotlib Axes, optional
    max_curves : int, default=1000
        Draw at most this many individual curves (evenly spaced over the concepts).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _axes(ax)
    scored = tpr[~np.isnan(tpr).any(axis=1)]
    if len(scored):
        shown = np.unique(np.linspace(0, len(scored) - 1, min(max_curves, len(scored)))
                          .astype(int))
        for curve in scored[shown]:
            ax.plot(fpr, curve, color="0.6", alpha=0.2, linewidth=0.6)
        ax.plot(fpr, np.median(scored, axis=0), color="tab:red", linewidth=2,
                label=f"median curve (median AUC {median_auc:.3f})")
    ax.plot([0, 1], [0, 1], color="k", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, layer {layer - 1} → {layer} ({len(scored)} concepts)")
    ax.legend(loc="lower right")
    return fig


def score_boxes(scores: dict[str, list[np.ndarray]]):
    """Box plots of per-concept scores, one panel per score, one box per layer pair.

    Parameters
    ----------
    scores : dict of str to list of ndarray
        E.g. ``{"auc": [auc of layer 1, auc of layer 2, …], "f1": […]}``; NaN are left out.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(scores), 3.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(scores)))
    for ax, (name, per_layer) in zip(axes, scores.items(), strict=True):
        data = [np.asarray(d, dtype=float)[~np.isnan(d)] for d in per_layer]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(data) + 1), [f"{i}→{i + 1}" for i in range(len(data))])
        if len(data) < 4:
            medians = ", ".join(f"{np.median(d):.3f}" if d.size else "-" for d in data)
            ax.set_title(f"{name.upper()} (medians {medians})")
        else:
            ax.set_title(name.upper())
        ax.set_xlabel("layer pair")
        ax.set_ylim(0, 1.02)
    return fig
