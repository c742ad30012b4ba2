"""Explanations judged against labels they never saw: does a concept's theme name its items?

An explanation is made from captions alone (a package's synopsis); people labelled the same
items independently (a Debian package's section and its debtags). The rule is fixed, so that
methods, layers and models can be compared:

A concept's explanation **agrees** when a word of its first theme equals a token of the labels
of at least a quarter of its representative items. An item's tokens are its section and the
values of its tags (``facet::value``, the value split at ``:``, ``-`` and ``_``, so that
``devel::lang:python`` gives ``lang`` and ``python``), lowercased; the theme's words are split at
white space and the same separators.

The floor is the same rule with each concept's theme judged against the items of *another*
concept (a fixed derangement: no concept keeps its own items). A theme that only names what is
common to every item (``library``) agrees about as often with another concept's items as with its
own; a theme that names its concept agrees far more often with its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.evaluation.quality import as_groups
from daskdict.explanations.table import Explanations
from daskdict.validation import check_fraction, check_positive_int

__all__ = ["AGREE_SHARE", "AgreementResult", "best_and_worst", "derangement",
           "explanation_agreement", "label_tokens", "theme_words"]

# the least share of a concept's items whose labels must contain a word of its theme
AGREE_SHARE = 0.25
_SEPARATORS = re.compile(r"[:\-_/\s]+")


def theme_words(theme: str) -> frozenset[str]:
    """The lowercase words of a theme, split at white space, ``:``, ``-``, ``_`` and ``/``."""
    return frozenset(w for w in _SEPARATORS.split(str(theme).lower()) if w)


def label_tokens(label: str | None, tags: Sequence[str] = ()) -> frozenset[str]:
    """The lowercase tokens of one item's section (or other label) and its tags' values.

    A tag ``facet::value`` gives the tokens of its value (``works-with::text`` gives ``text``;
    ``implemented-in::c++`` gives ``c++``); its facet names a kind of label, not the item.
    """
    tokens = set(theme_words(label or ""))
    for tag in tags:
        tokens |= theme_words(str(tag).split("::", 1)[-1])
    return frozenset(tokens)


def derangement(n: int, random_state: int | None = 0) -> np.ndarray:
    """A seeded permutation of ``range(n)`` with no fixed point, shape (n,).

    A random order read as one cycle: each concept goes to the next one in the order, so none
    maps to itself (for ``n >= 2``; ``n == 1`` has no derangement and is refused).
    """
    n = check_positive_int("n", n, minimum=2)
    order = np.random.default_rng(random_state).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return out


@dataclass(frozen=True)
class AgreementResult:
    """The agreement of explanations with independent labels, and its floor.

    Attributes
    ----------
    atoms : list
        The concepts' labels (``"17+"``, or the atom where signs are not split), in the
        explanations' row order.
    judged : ndarray of bool, shape (n_concepts,)
        Concepts with a theme and representative items (the others are in no rate).
    shares : ndarray of float, shape (n_concepts,)
        Share of a concept's items whose tokens contain a word of its first theme (NaN when
        not judged).
    agrees : ndarray of bool, shape (n_concepts,)
        ``shares >= threshold`` (False when not judged).
    rate : float
        Share of judged concepts that agree (NaN when none is judged).
    other : ndarray of int, shape (n_concepts,)
        The concept whose items each theme is judged against for the floor (-1: none).
    other_shares, other_agrees, other_rate
        As ``shares``, ``agrees`` and ``rate``, for each theme against ``other``'s items.
    threshold : float
    """

    atoms: list
    judged: np.ndarray
    shares: np.ndarray
    agrees: np.ndarray
    rate: float
    other: np.ndarray
    other_shares: np.ndarray
    other_agrees: np.ndarray
    other_rate: float
    threshold: float = AGREE_SHARE
    first_themes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready summary (rates and counts)."""
        return {"n_concepts": len(self.atoms), "n_judged": int(self.judged.sum()),
                "rate": self.rate, "other_rate": self.other_rate,
                "n_agree": int(self.agrees.sum()), "n_other_agree": int(self.other_agrees.sum()),
                "threshold": self.threshold}


def _shares(words: list[frozenset], item_tokens: list[frozenset], groups: list[np.ndarray],
            pairs: np.ndarray) -> np.ndarray:
    """For each (theme i, items of concept pairs[i]) the share of items matched; NaN if none."""
    out = np.full(len(words), np.nan)
    for i, j in enumerate(pairs):
        if j < 0 or not words[i] or groups[j].size == 0:
            continue
        hits = sum(1 for row in groups[j] if words[i] & item_tokens[row])
        out[i] = hits / groups[j].size
    return out


def _rate(agrees: np.ndarray, judged: np.ndarray) -> float:
    return float(agrees[judged].mean()) if judged.any() else float("nan")


def _other_pairs(other, judged: np.ndarray, random_state: int | None) -> np.ndarray:
    """The concept each theme is judged against for the floor (-1 for none)."""
    n = len(judged)
    pairs = np.full(n, -1, dtype=np.int64)
    if other is False or other is None:
        return pairs
    if other is True:
        chosen = np.flatnonzero(judged)
        if chosen.size >= 2:
            pairs[chosen] = chosen[derangement(chosen.size, random_state)]
        return pairs
    given = np.asarray(other)
    if given.shape != (n,) or given.dtype.kind not in "iu" or sorted(given.tolist()) != list(
            range(n)):
        raise InvalidInputError(f"Expected other to be True, False or a permutation of the "
                                f"{n} concepts. Got {other!r:.200}.")
    if np.any(given == np.arange(n)):
        raise InvalidInputError("other must send no concept to itself (a derangement): "
                                f"concept {int(np.flatnonzero(given == np.arange(n))[0])} does.")
    return given.astype(np.int64)


def explanation_agreement(explanations: Explanations, labels_per_item: Sequence | np.ndarray,
                          tags_per_item: Sequence[Sequence[str]] | None = None,
                          groups=None, *, other: bool | Sequence[int] | np.ndarray = True,
                          threshold: float = AGREE_SHARE, random_state: int | None = 0
                          ) -> AgreementResult:
    """How often a concept's first theme names the labels of its items, and the floor.

    Parameters
    ----------
    explanations : Explanations
        One row per concept; its first theme is judged.
    labels_per_item : sequence of str of length n_items
        One label per item (a package's section), of the items the explanations index.
    tags_per_item : sequence of sequences of str of length n_items, optional
        Tags per item (``facet::value``); their values' tokens count like the label's.
    groups : sequence of int sequences or ndarray of shape (n_concepts, n_top), optional
        Representative items per concept (rows into the items, ``-1`` padded), in the
        explanations' row order; default each row's ``top_rows``.
    other : True, False or ndarray of int of shape (n_concepts,), default=True
        The floor: True judges each theme against the items of another concept (a derangement
        of the judged concepts seeded by ``random_state``); an array names that concept per
        row (never the row itself); False computes no floor (its rate is NaN).
    threshold : float, default=0.25
        The least share of matched items for a concept to agree.
    random_state : int, optional

    Returns
    -------
    AgreementResult

    Raises
    ------
    InvalidInputError
        If the labels and tags differ in length, a group names a missing item, or ``other``
        is not a derangement.
    """
    threshold = check_fraction("threshold", threshold)
    labels = ["" if label is None else str(label) for label in labels_per_item]
    n_items = len(labels)
    tags = [()] * n_items if tags_per_item is None else list(tags_per_item)
    if len(tags) != n_items:
        raise InvalidInputError(f"Expected one tag list per item ({n_items}). Got {len(tags)}.")
    rows = explanations.rows
    if groups is None:
        groups = [row.get("top_rows") or [] for row in rows]
    if len(groups) != len(rows):
        raise InvalidInputError(f"Expected one group per concept ({len(rows)}). Got "
                                f"{len(groups)}.")
    groups = as_groups(groups, n_items)
    firsts = [row["themes"][0] if row.get("themes") else "" for row in rows]
    words = [theme_words(theme) for theme in firsts]
    item_tokens = [label_tokens(label, item) for label, item in zip(labels, tags, strict=True)]
    judged = np.array([bool(w) and g.size > 0 for w, g in zip(words, groups, strict=True)],
                      dtype=bool)
    shares = _shares(words, item_tokens, groups, np.where(judged, np.arange(len(rows)), -1))
    agrees = judged & (np.nan_to_num(shares, nan=-1.0) >= threshold)
    pairs = _other_pairs(other, judged, random_state)
    other_shares = _shares(words, item_tokens, groups, np.where(judged, pairs, -1))
    other_judged = judged & (pairs >= 0) & np.isfinite(other_shares)
    other_agrees = other_judged & (np.nan_to_num(other_shares, nan=-1.0) >= threshold)
    return AgreementResult(atoms=[row["atom"] if row.get("sign", "±") == "±" else row["concept"]
                                  for row in rows],
                           judged=judged, shares=shares, agrees=agrees,
                           rate=_rate(agrees, judged), other=pairs,
                           other_shares=other_shares, other_agrees=other_agrees,
                           other_rate=_rate(other_agrees, other_judged), threshold=threshold,
                           first_themes=firsts)


def best_and_worst(result: AgreementResult, n: int = 5) -> dict[str, list[dict]]:
    """The judged concepts whose items their theme matches most and least.

    Parameters
    ----------
    result : AgreementResult
    n : int, default=5
        Concepts in each list.

    Returns
    -------
    dict
        ``best`` and ``worst``: lists of ``{"atom", "theme", "share", "agrees"}``, the best
        by decreasing share, the worst by increasing share (ties in row order).
    """
    n = check_positive_int("n", n)
    chosen = np.flatnonzero(result.judged)
    order = chosen[np.argsort(-result.shares[chosen], kind="stable")]

    def entry(i: int) -> dict:
        return {"atom": result.atoms[i], "theme": result.first_themes[i],
                "share": float(result.shares[i]), "agrees": bool(result.agrees[i])}

    worst = chosen[np.argsort(result.shares[chosen], kind="stable")]
    return {"best": [entry(int(i)) for i in order[:n]],
            "worst": [entry(int(i)) for i in worst[:n]]}
