"""Planted concept graphs: per-layer sparse codes whose activations follow a known DAG.

The test bed of :class:`daskdict.graph.ConceptGraph`. Every sample has exactly
``n_active`` active concepts per layer, like K-SVD codes. Each concept of layer l is the parent
of one *driven* concept of layer l+1 (which so has 1 to ``max_parents`` parents); an active
concept usually activates its child, sometimes (``free_rate``) a random *free* concept instead,
which has no parents; a little noise redraws at random. Embeddings are the codes times per-layer
planted unit atoms plus white noise, written as ``hidden_00``, ``hidden_01`` … layers.

>>> planted = make_planted_graph(4000, (48, 48, 48), n_active=3, random_state=0)
>>> sorted(planted.edges())[:2]          # (layer, parent in layer - 1, concept)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import zarr

from daskdict.datasets.planted import planted_atoms
from daskdict.errors import InvalidInputError
from daskdict.io.store import EmbeddingStore, create_store
from daskdict.validation import check_fraction, check_positive_int

if TYPE_CHECKING:
    from daskdict.graph.estimator import ConceptGraph

# Planted coefficients are N(0, 1) pushed this far away from zero (z + 0.25 sign(z)): Gaussian
# like the K-SVD paper's test, which K-SVD recovers far more reliably than coefficients of
# similar sizes (±U(0.5, 1.5) left 10-20 % of atoms unrecovered), yet never so small that
# OMP drops an active concept (plain N(0, 1) lowered the graph's AUC by about 0.02).
MIN_MAGNITUDE = 0.25


@dataclass(frozen=True)
class PlantedGraph:
    """Planted per-layer codes and the DAG that generated them.

    Attributes
    ----------
    codes : list of scipy.sparse.csr_matrix of shape (n_samples, n_concepts[l])
        The planted coefficients of every layer (float64, positive where active).
    parents : list of list of ndarray
        ``parents[l][i]``: the planted parents of concept ``i`` of layer ``l`` (indices of
        concepts of layer ``l - 1``); empty for free concepts and for every concept of layer 0.
    """

    codes: list[sp.csr_matrix]
    parents: list[list[np.ndarray]]

    @property
    def n_layers(self) -> int:
        return len(self.codes)

    @property
    def n_samples(self) -> int:
        return int(self.codes[0].shape[0])

    def driven(self, layer: int) -> np.ndarray:
        """Boolean mask of shape (n_concepts[layer],): concepts that have planted parents."""
        return np.array([p.size > 0 for p in self.parents[layer]], dtype=bool)

    def edges(self) -> set[tuple[int, int, int]]:
        """Planted edges as ``(layer, parent, concept)``, ``parent`` a concept of layer - 1."""
        return {(layer, int(p), concept)
                for layer in range(1, self.n_layers)
                for concept, ps in enumerate(self.parents[layer]) for p in ps}


@dataclass(frozen=True)
class PlantedLayers:
    """A planted graph with per-layer embeddings ``data[l] ≈ codes[l] @ atoms[l]``.

    Attributes
    ----------
    graph : PlantedGraph
    atoms : list of ndarray of shape (n_concepts[l], n_features[l]), unit rows
    data : list of ndarray of shape (n_samples, n_features[l]), float32
    """

    graph: PlantedGraph
    atoms: list[np.ndarray]
    data: list[np.ndarray]

    @property
    def layer_names(self) -> list[str]:
        return layer_names(len(self.atoms))


def layer_names(n_layers: int) -> list[str]:
    """``["hidden_00", "hidden_01", …]``: the store's layer names in layer order."""
    return [f"hidden_{i:02d}" for i in range(n_layers)]


def _plant_children(rng: np.random.Generator, n_left: int, n_right: int, free_fraction: float,
                    max_parents: int) -> tuple[np.ndarray, np.ndarray]:
    """Each left concept's child: a driven concept of the right layer with 1..max_parents parents.

    Returns ``child`` of shape (n_left,) and the boolean ``driven`` mask of shape (n_right,).
    """
    n_driven = min(round((1.0 - free_fraction) * n_right), n_left)
    if n_driven < 1 or n_driven * max_parents < n_left:
        raise InvalidInputError(
            f"Cannot plant a layer of {n_right} concepts under one of {n_left}: "
            f"{n_driven} driven concepts with at most {max_parents} parents each cannot take "
            f"all {n_left} parents. Lower free_fraction, raise max_parents or use fewer "
            "concepts in the earlier layer.")
    driven_concepts = rng.choice(n_right, size=n_driven, replace=False)
    # every driven concept gets one parent, then the other left concepts join driven
    # concepts that have room, so parents per concept are 1..max_parents
    extra = np.repeat(np.arange(n_driven), max_parents - 1)
    slots = np.concatenate([np.arange(n_driven),
                            rng.choice(extra, size=n_left - n_driven, replace=False)])
    child = driven_concepts[slots[rng.permutation(n_left)]]
    driven = np.zeros(n_right, dtype=bool)
    driven[driven_concepts] = True
    return child, driven


def _redraw_duplicates(rng: np.random.Generator, concepts: np.ndarray, pool: np.ndarray
                       ) -> np.ndarray:
    """Replace repeated concepts within a row by random members of ``pool`` until all differ."""
    concepts = concepts.copy()
    while True:
        ordered = np.sort(concepts, axis=1)
        repeated_rows = np.flatnonzero((np.diff(ordered, axis=1) == 0).any(axis=1))
        if repeated_rows.size == 0:
            return concepts
        for row in repeated_rows:  # rare: two active siblings, or an unlucky draw
            _, first = np.unique(concepts[row], return_index=True)
            later = np.setdiff1d(np.arange(concepts.shape[1]), first)
            concepts[row, later] = pool[rng.integers(pool.size, size=later.size)]


def make_planted_graph(n_samples: int = 4000, n_concepts: Sequence[int] = (48, 48, 48),
                       n_active: int = 3, *, free_fraction: float = 1 / 3,
                       free_rate: float = 0.25, max_parents: int = 3, noise: float = 0.02,
                       signed: bool = True, random_state: Any = None) -> PlantedGraph:
    """Per-layer sparse codes whose activations follow a planted DAG between adjacent layers.

    Every sample has exactly ``n_active`` active concepts in every layer (the fixed sparsity
    of K-SVD codes), held in *slots*: layer 0 fills them with distinct random concepts; in
    each later layer a slot holding concept j moves to j's planted child, or (with probability
    ``free_rate``) to a random *free* concept, which has no parents, or (``noise``) to any
    random concept; two slots that reach the same concept draw again among the free ones. So
    a *driven* concept is active only when one of its 1..``max_parents`` parents is (up to the
    noise), and then with probability about ``1 - free_rate``. Which concepts a sample holds
    never changes the chance of a free draw, so free concepts are independent of the layer
    before.

    Parameters
    ----------
    n_samples : int, default=4000
    n_concepts : sequence of int, default=(48, 48, 48)
        Concepts per layer; at least two layers.
    n_active : int, default=3
        Active concepts per sample in every layer.
    free_fraction : float, default=1/3
        Fraction of each later layer's concepts without parents. The others share the
        previous layer's concepts as parents (each concept is the parent of exactly one), so
        ``(1 - free_fraction) * n_concepts[l] <= n_concepts[l-1] <= max_parents * that``.
    free_rate : float, default=0.25
        Probability that a slot moves to a random free concept instead of the child.
    max_parents : int, default=3
    noise : float, default=0.02
        Probability that a slot moves to a uniformly random concept instead (label noise:
        a driven concept's activations are dropped or added at random).
    signed : bool, default=True
        Coefficients ``z + 0.25 sign(z)``, z ~ N(0, 1) (Gaussian like the K-SVD paper's test,
        never near zero); else their absolute values. K-SVD recovers planted atoms from signed
        mixtures but mostly fails on positive ones (all samples in one cone). The sign of a
        signed code says nothing about activity; :class:`~daskdict.graph.ConceptGraph` drops
        it (its inputs are magnitudes, or the support with ``binarize_inputs=True``).
    random_state : int, Generator or None

    Returns
    -------
    PlantedGraph
    """
    n_samples, n_concepts, n_active, max_parents = _checked_sizes(n_samples, n_concepts,
                                                                  n_active, max_parents)
    check_fraction("free_fraction", free_fraction, low_open=False, high_open=True)
    check_fraction("free_rate", free_rate, low_open=False, high_open=True)
    if check_fraction("noise", noise, low_open=False, high_open=True) >= 0.5:
        raise InvalidInputError(f"Expected noise in [0, 0.5). Got {noise!r}.")
    rng = np.random.default_rng(random_state)
    slots = _redraw_duplicates(rng, rng.integers(n_concepts[0], size=(n_samples, n_active)),
                               np.arange(n_concepts[0]))
    layers = [slots]
    parents = [[np.empty(0, dtype=np.int64) for _ in range(n_concepts[0])]]
    for n_left, n_right in itertools.pairwise(n_concepts):
        child, driven = _plant_children(rng, n_left, n_right, free_fraction, max_parents)
        slots = _move_slots(rng, slots, child, np.flatnonzero(~driven), n_right, free_rate,
                            noise)
        layers.append(slots)
        parents.append([np.flatnonzero(child == concept) for concept in range(n_right)])
    codes = [_slot_codes(rng, slots, width, signed)
             for slots, width in zip(layers, n_concepts, strict=True)]
    return PlantedGraph(codes=codes, parents=parents)


def _checked_sizes(n_samples: Any, n_concepts: Any, n_active: Any, max_parents: Any
                   ) -> tuple[int, list[int], int, int]:
    n_samples = check_positive_int("n_samples", n_samples)
    n_concepts = [check_positive_int("n_concepts", k) for k in n_concepts]
    if len(n_concepts) < 2:
        raise InvalidInputError(
            f"Expected at least two layers in n_concepts. Got {len(n_concepts)}.")
    n_active = check_positive_int("n_active", n_active)
    if n_active > min(n_concepts):
        raise InvalidInputError(
            f"n_active={n_active} exceeds the smallest layer ({min(n_concepts)} concepts).")
    return n_samples, n_concepts, n_active, check_positive_int("max_parents", max_parents)


def _move_slots(rng: np.random.Generator, slots: np.ndarray, child: np.ndarray,
                free: np.ndarray, n_right: int, free_rate: float, noise: float) -> np.ndarray:
    """The next layer's slots of shape (n_samples, n_active): children, free draws, noise."""
    moved = child[slots]
    if free.size:
        to_free = rng.random(slots.shape) < free_rate
        moved[to_free] = free[rng.integers(free.size, size=int(to_free.sum()))]
    noisy = rng.random(slots.shape) < noise
    moved[noisy] = rng.integers(n_right, size=int(noisy.sum()))
    return _redraw_duplicates(rng, moved, free if free.size else np.arange(n_right))


def _slot_codes(rng: np.random.Generator, slots: np.ndarray, width: int, signed: bool
                ) -> sp.csr_matrix:
    """Codes of shape (n_samples, width) with a planted coefficient in every slot."""
    values = rng.standard_normal(slots.shape)
    values += np.copysign(MIN_MAGNITUDE, values)
    if not signed:
        values = np.abs(values)
    n_samples, n_active = slots.shape
    rows = np.repeat(np.arange(n_samples), n_active)
    matrix = sp.csr_matrix((values.ravel(), (rows, slots.ravel())), shape=(n_samples, width))
    matrix.sort_indices()
    return matrix


def make_planted_layers(n_samples: int = 4000, n_concepts: Sequence[int] = (48, 48, 48),
                        n_features: int | Sequence[int] = 32, n_active: int = 3, *,
                        snr_db: float = 30.0, random_state: Any = None,
                        **graph_kwargs: Any) -> PlantedLayers:
    """A planted graph and per-layer embeddings ``codes[l] @ atoms[l] + noise``.

    Parameters
    ----------
    n_samples, n_concepts, n_active
        As for :func:`make_planted_graph` (which gets ``graph_kwargs`` too).
    n_features : int or sequence of int, default=32
        Embedding width per layer (one value for all layers, or one per layer).
    snr_db : float, default=30.0
        Signal-to-noise ratio of each layer's embeddings, in dB.
    random_state : int, Generator or None

    Returns
    -------
    PlantedLayers
    """
    rng = np.random.default_rng(random_state)
    graph = make_planted_graph(n_samples, n_concepts, n_active, random_state=rng,
                               **graph_kwargs)
    widths = ([n_features] * graph.n_layers if np.isscalar(n_features) else list(n_features))
    if len(widths) != graph.n_layers:
        raise InvalidInputError(
            f"Expected one n_features per layer ({graph.n_layers}). Got {len(widths)}.")
    atoms, data = [], []
    for codes, width in zip(graph.codes, widths, strict=True):
        layer_atoms = planted_atoms(codes.shape[1], check_positive_int("n_features", width), rng)
        clean = np.asarray(codes @ layer_atoms)
        noise = rng.standard_normal(clean.shape)
        noise *= np.linalg.norm(clean) / np.linalg.norm(noise) / 10 ** (snr_db / 20)
        atoms.append(layer_atoms)
        data.append((clean + noise).astype(np.float32))
    return PlantedLayers(graph=graph, atoms=atoms, data=data)


def write_planted_layers_store(path: str | os.PathLike, n_samples: int = 4000,
                               n_concepts: Sequence[int] = (48, 48, 48),
                               n_features: int | Sequence[int] = 32, n_active: int = 3, *,
                               snr_db: float = 30.0, random_state: Any = None,
                               chunk_rows: int | None = None, overwrite: bool = False,
                               **graph_kwargs: Any) -> tuple[EmbeddingStore, PlantedLayers]:
    """Write :func:`make_planted_layers` as an embedding store with ``hidden_00``… layers.

    The planted atoms of each layer go to ``planted/<layer>/atoms`` in the store as well.

    Returns
    -------
    store : EmbeddingStore
    planted : PlantedLayers
    """
    planted = make_planted_layers(n_samples, n_concepts, n_features, n_active, snr_db=snr_db,
                                  random_state=random_state, **graph_kwargs)
    names = planted.layer_names
    store = create_store(path, dict(zip(names, planted.data, strict=True)), model="planted-graph",
                         chunk_rows=chunk_rows, overwrite=overwrite,
                         attrs={"planted": {"n_concepts": [int(a.shape[0]) for a in planted.atoms],
                                            "n_active": n_active, "snr_db": snr_db}})
    group = zarr.open_group(store.path, mode="r+")
    for name, atoms in zip(names, planted.atoms, strict=True):
        group.create_array(f"planted/{name}/atoms", data=atoms.astype(np.float32))
    return store, planted


def edge_scores(graph: ConceptGraph, planted: PlantedGraph,
                matches: Sequence[np.ndarray] | None = None,
                min_similarity: float | None = None,
                similarities: Sequence[np.ndarray] | None = None) -> dict:
    """Precision and recall of a fitted graph's edges against the planted ones.

    Parameters
    ----------
    graph : ConceptGraph
        Fitted on codes of the same layers.
    planted : PlantedGraph
    matches : sequence of ndarray of shape (n_concepts[l],), optional
        Per layer, the learned concept matched to each planted concept (``-1``: none), e.g.
        the first output of :func:`daskdict.evaluate.align_atoms`. Default: the identity (a
        graph fitted on the planted codes themselves).
    min_similarity : float, optional
        With ``similarities`` (the second output of ``align_atoms``): planted concepts whose
        match has a lower |cosine| count as unmatched.
    similarities : sequence of ndarray, optional

    Returns
    -------
    dict
        ``precision`` (learned edges that are planted edges), ``recall`` (planted edges found),
        ``n_learned``, ``n_planted``, ``n_correct``, and ``median_auc_driven``: the median
        held-out AUC of the learned concepts matched to driven planted concepts.
    """
    n_layers = planted.n_layers
    if matches is None:
        matches = [np.arange(len(p)) for p in planted.parents]
    if len(matches) != n_layers or len(graph.n_concepts_) != n_layers:
        raise InvalidInputError(
            f"Expected {n_layers} layers in the graph and matches. Got "
            f"{len(graph.n_concepts_)} and {len(matches)}.")
    to_planted = []
    for layer, match in enumerate(matches):
        match = np.asarray(match).copy()
        if min_similarity is not None and similarities is not None:
            match[np.asarray(similarities[layer]) < min_similarity] = -1
        inverse = np.full(graph.n_concepts_[layer], -1)
        inverse[match[match >= 0]] = np.flatnonzero(match >= 0)
        to_planted.append(inverse)
    planted_edges = planted.edges()
    learned = [(layer, int(to_planted[layer - 1][p]), int(to_planted[layer][c]))
               for layer in range(1, n_layers)
               for c in range(graph.n_concepts_[layer]) for p in graph.parents(layer, c)]
    correct = sum(edge in planted_edges for edge in learned)
    metrics = graph.metrics_
    aucs = []
    for layer in range(1, n_layers):
        driven = planted.driven(layer)
        in_layer = np.asarray(metrics["layer"]) == layer
        concepts = np.asarray(metrics["concept"])[in_layer]
        mapped = to_planted[layer][concepts]
        keep = (mapped >= 0) & driven[np.maximum(mapped, 0)]
        aucs.append(np.asarray(metrics["auc"], dtype=float)[in_layer][keep])
    driven_aucs = np.concatenate(aucs)
    return {"precision": correct / max(len(learned), 1),
            "recall": correct / max(len(planted_edges), 1),
            "n_learned": len(learned), "n_planted": len(planted_edges), "n_correct": correct,
            "median_auc_driven": float(np.nanmedian(driven_aucs)) if driven_aucs.size
            else float("nan")}
