"""How readable concepts are, judged against labels the dictionary never saw.

Each concept is judged by its representative items (for example the items that use it most) and
the items' labels from an independent view: one label per item (an image's class, a package's
section) and a set of labels per item (tags, written ``facet::value``, a two-level hierarchy).
The definitions are fixed, so that methods, layers and models can be compared:

- **purity**: the share of the most common label among a concept's items;
- **agreement**: the mean Jaccard similarity of the tag sets over all pairs of a concept's items,
  leaving out facets that more than half of all items carry (they say nothing about a concept);
- **hierarchy similarity**: like agreement, but a tag of one item that matches a tag of the
  other only in its facet counts one half (:func:`tag_similarity`);
- **stability**: the share of atoms of one fit matched one-to-one (Hungarian matching on
  ``|cos|``) by an atom of another fit with ``|cos| >= 0.9``;
- **geometry alignment**: for an embedding before any dictionary, the Spearman correlation of
  the cosine and the hierarchy similarity of random item pairs.

They quantify what the essay "Interpreting vision models with sparse dictionary learning: a case
for hierarchical learning" asks of learned concepts: coherence against human annotation, respect
for the hierarchy of the labels, and stability across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr

from daskdict.errors import InvalidInputError
from daskdict.learn.coding import unit_rows
from daskdict.validation import check_fraction, check_positive_int

STABLE_COSINE = 0.9
COMMON_FACET_SHARE = 0.5


def as_groups(groups: Sequence[Sequence[int]] | np.ndarray, n_items: int) -> list[np.ndarray]:
    """Representative items per concept as a list of int arrays (``-1`` entries dropped)."""
    out = []
    for number, group in enumerate(groups):
        rows = np.asarray(group, dtype=np.int64).ravel()
        rows = rows[rows >= 0]
        if rows.size and rows.max() >= n_items:
            raise InvalidInputError(
                f"Concept {number} names item {int(rows.max())}, but there are {n_items} items."
            )
        out.append(rows)
    return out


@dataclass(frozen=True)
class TagSets:
    """Tag sets of N items as sparse indicator matrices.

    Attributes
    ----------
    tags : csr_matrix of shape (n_items, n_tags), float64
        1 where an item carries a tag (common facets left out).
    facets : csr_matrix of shape (n_items, n_facets), float64
        1 where an item carries a tag of a facet.
    facet_counts : csr_matrix of shape (n_items, n_facets), float64
        How many tags of each facet an item carries.
    tag_names, facet_names : ndarray of str
    dropped_facets : tuple of str
        Facets left out because more than ``common_share`` of the items carry them.
    """

    tags: sp.csr_matrix
    facets: sp.csr_matrix
    facet_counts: sp.csr_matrix
    tag_names: np.ndarray
    facet_names: np.ndarray
    dropped_facets: tuple[str, ...]

    @classmethod
    def from_lists(cls, tag_lists: Sequence[Sequence[str]],
                   common_share: float = COMMON_FACET_SHARE) -> TagSets:
        """Build from one sequence of ``facet::value`` tags per item."""
        common_share = check_fraction("common_share", common_share)
        n_items = len(tag_lists)
        facet_items: dict[str, int] = {}
        for tags in tag_lists:
            for facet in {t.split("::", 1)[0] for t in tags}:
                facet_items[facet] = facet_items.get(facet, 0) + 1
        dropped = tuple(sorted(f for f, n in facet_items.items() if n > common_share * n_items))
        kept = [[t for t in tags if t.split("::", 1)[0] not in dropped] for tags in tag_lists]
        tag_names = np.array(sorted({t for tags in kept for t in tags}), dtype=str)
        facet_of_tag = np.array([t.split("::", 1)[0] for t in tag_names], dtype=str)
        facet_names, tag_facet = np.unique(facet_of_tag, return_inverse=True)
        tag_index = {t: i for i, t in enumerate(tag_names.tolist())}
        rows = np.repeat(np.arange(n_items), [len(set(tags)) for tags in kept])
        cols = np.array([tag_index[t] for tags in kept for t in sorted(set(tags))],
                        dtype=np.int64)
        tags = sp.csr_matrix((np.ones(len(cols)), (rows, cols)),
                             shape=(n_items, len(tag_names)))
        to_facet = sp.csr_matrix((np.ones(len(tag_names)), (np.arange(len(tag_names)),
                                 tag_facet)), shape=(len(tag_names), len(facet_names)))
        counts = (tags @ to_facet).tocsr()
        facets = counts.copy()
        facets.data[:] = 1.0
        return cls(tags, facets, counts, tag_names, facet_names, dropped)

    @property
    def n_items(self) -> int:
        return self.tags.shape[0]


def _pairs_mean(matrix: np.ndarray) -> float:
    """Mean of the strictly upper triangle of a square matrix (NaN below two items)."""
    n = matrix.shape[0]
    if n < 2:
        return float("nan")
    values = matrix[np.triu_indices(n, k=1)]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def jaccard_matrix(tag_sets: TagSets, rows: np.ndarray) -> np.ndarray:
    """Pairwise Jaccard similarity of the tag sets of ``rows``, shape (len(rows), len(rows)).

    A pair with an empty set (an item whose only tags are of common facets) has similarity NaN
    and is left out of means: it carries no information either way.
    """
    block = tag_sets.tags[rows]
    inter = (block @ block.T).toarray()
    sizes = np.asarray(block.sum(axis=1)).ravel()
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = inter / union
    return np.where((sizes[:, None] > 0) & (sizes[None, :] > 0), jaccard, np.nan)


def tag_similarity(tag_sets: TagSets, rows: np.ndarray, other: np.ndarray | None = None
                   ) -> np.ndarray:
    """Hierarchy-aware similarity of tag sets, shape (len(rows), len(other)).

    A tag of item ``i`` scores 1 when item ``j`` carries it, 1/2 when ``j`` carries another
    value of its facet, else 0; the similarity is the mean of the two directions' mean scores
    (NaN where either set is empty).
    """
    other = rows if other is None else other
    a_tags, b_tags = tag_sets.tags[rows], tag_sets.tags[other]
    inter = (a_tags @ b_tags.T).toarray()
    a_to_b = (tag_sets.facet_counts[rows] @ tag_sets.facets[other].T).toarray()
    b_to_a = (tag_sets.facets[rows] @ tag_sets.facet_counts[other].T).toarray()
    a_size = np.asarray(a_tags.sum(axis=1)).ravel()[:, None]
    b_size = np.asarray(b_tags.sum(axis=1)).ravel()[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        forward = 0.5 * (inter + a_to_b) / a_size
        backward = 0.5 * (inter + b_to_a) / b_size
        both = 0.5 * (forward + backward)
    return np.where((a_size > 0) & (b_size > 0), both, np.nan)


def purity(labels: Sequence | np.ndarray, groups) -> np.ndarray:
    """Share of the most common label among each group's items, shape (n_groups,).

    Parameters
    ----------
    labels : array-like of shape (n_items,)
        One label per item (empty strings count as a label of their own).
    groups : sequence of int sequences, or array of shape (n_groups, n_top) padded with -1
    """
    labels = np.asarray(labels)
    _, codes = np.unique(labels, return_inverse=True)
    out = np.full(len(groups), np.nan)
    for number, rows in enumerate(as_groups(groups, len(labels))):
        if rows.size:
            out[number] = np.bincount(codes[rows]).max() / rows.size
    return out


def agreement(tag_sets: TagSets, groups) -> np.ndarray:
    """Mean pairwise Jaccard similarity of each group's tag sets, shape (n_groups,)."""
    return np.array([_pairs_mean(jaccard_matrix(tag_sets, rows)) if rows.size > 1 else np.nan
                     for rows in as_groups(groups, tag_sets.n_items)])


def hierarchy_similarity(tag_sets: TagSets, groups) -> np.ndarray:
    """Mean pairwise :func:`tag_similarity` within each group, shape (n_groups,)."""
    return np.array([_pairs_mean(tag_similarity(tag_sets, rows)) if rows.size > 1 else np.nan
                     for rows in as_groups(groups, tag_sets.n_items)])


def stability(atoms_a: np.ndarray, atoms_b: np.ndarray, threshold: float = STABLE_COSINE
              ) -> float:
    """Share of atoms matched one-to-one between two fits with ``|cos| >= threshold``.

    Parameters
    ----------
    atoms_a, atoms_b : ndarray of shape (n_atoms, n_features)
        The atoms of two fits (say ``random_state`` 0 and 1); the share is over ``atoms_a``.
    """
    a, b = unit_rows(np.asarray(atoms_a)), unit_rows(np.asarray(atoms_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidInputError(
            f"Expected two atom matrices of the same width. Got {a.shape} and {b.shape}."
        )
    cosine = np.abs(a @ b.T)
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    return float(np.count_nonzero(cosine[rows, cols] >= threshold) / a.shape[0])


def geometry_alignment(embeddings: np.ndarray, tag_sets: TagSets, n_pairs: int = 20000,
                       random_state: int | None = None) -> float:
    """Spearman correlation of cosine and hierarchy similarity over random item pairs.

    Parameters
    ----------
    embeddings : ndarray of shape (n_items, n_features)
    tag_sets : TagSets of the same items
    n_pairs : int
        Pairs drawn (distinct items; pairs with an empty tag set are left out).
    """
    n_pairs = check_positive_int("n_pairs", n_pairs)
    embeddings = unit_rows(np.asarray(embeddings))
    if embeddings.shape[0] != tag_sets.n_items:
        raise InvalidInputError(f"Expected {tag_sets.n_items} embedding rows (one per item). "
                                f"Got {embeddings.shape[0]}.")
    rng = np.random.default_rng(random_state)
    left = rng.integers(0, tag_sets.n_items, n_pairs)
    right = (left + rng.integers(1, tag_sets.n_items, n_pairs)) % tag_sets.n_items
    cosine = np.einsum("ij,ij->i", embeddings[left], embeddings[right])
    similarity = np.concatenate([
        np.diagonal(tag_similarity(tag_sets, left[s:s + 512], right[s:s + 512]))
        for s in range(0, n_pairs, 512)])
    keep = np.isfinite(similarity)
    return float(spearmanr(cosine[keep], similarity[keep]).statistic)


def random_groups(n_items: int, n_groups: int, size: int, random_state: int | None = None
                  ) -> np.ndarray:
    """Random item sets, shape (n_groups, size): the floor every measure is compared with."""
    rng = np.random.default_rng(random_state)
    return np.stack([rng.choice(n_items, size=min(size, n_items), replace=False)
                     for _ in range(n_groups)])


def concept_quality(groups, *, labels=None, tag_sets: TagSets | None = None) -> dict:
    """Mean purity, agreement and hierarchy similarity over groups (NaN groups left out)."""
    out = {"n_concepts": len(groups)}
    if labels is not None:
        out["purity"] = float(np.nanmean(purity(labels, groups)))
    if tag_sets is not None:
        out["agreement"] = float(np.nanmean(agreement(tag_sets, groups)))
        out["hierarchy"] = float(np.nanmean(hierarchy_similarity(tag_sets, groups)))
    return out
