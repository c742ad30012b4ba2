"""Words of captions: term-document counts and contrastive word scores, all vectorised.

The per-atom word counts are one sparse product ``support(codes)ᵀ @ counts`` (atoms × terms);
the contrastive score is the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi
& Quinn 2008, "Fightin' Words"), computed only on the non-zero entries of that product (a word
absent from an atom's captions is under-represented there, never a theme).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

from daskdict.errors import InvalidInputError
from daskdict.learn.coding import codes_to_csr

# words of two or more letters (digits and underscores allowed after the first letter)
TOKEN_PATTERN = r"(?u)\b[^\W\d_][\w]+\b"


def caption_counts(captions: Sequence[str], *, ngram_range: tuple[int, int] = (1, 2),
                   stop_words: Sequence[str] | None = None, min_count: int = 1,
                   ) -> tuple[sp.csr_matrix, np.ndarray]:
    """Term-document counts of captions: words and two-word phrases, stop words removed.

    Parameters
    ----------
    captions : sequence of str of length n_items
    ngram_range : (int, int), default=(1, 2)
        Shortest and longest phrases counted, in words.
    stop_words : sequence of str, optional
        Words left out before phrases are formed; default scikit-learn's English list.
    min_count : int, default=1
        Terms found in fewer captions are dropped.

    Returns
    -------
    counts : csr_matrix of shape (n_items, n_terms), int32
    terms : ndarray of str of shape (n_terms,)
    """
    captions = ["" if c is None else str(c) for c in captions]
    words = frozenset(ENGLISH_STOP_WORDS if stop_words is None else stop_words)
    vectorizer = CountVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=ngram_range,
                                 stop_words=list(words), min_df=min_count, dtype=np.int32)
    try:
        counts = vectorizer.fit_transform(captions)
    except ValueError:  # every caption empty or made of stop words only
        return sp.csr_matrix((len(captions), 0), dtype=np.int32), np.array([], dtype=str)
    return counts.tocsr(), vectorizer.get_feature_names_out()


def support_matrix(indices: np.ndarray, values: np.ndarray, n_atoms: int) -> sp.csr_matrix:
    """Binary item-atom matrix of shape (n_items, n_atoms): 1 where an atom is used."""
    matrix = codes_to_csr(indices, values, n_atoms).astype(np.float64)
    matrix.data[:] = 1.0  # an atom listed twice in one row still counts once
    return matrix


def contrastive_scores(atom_counts: sp.csr_matrix, term_totals: np.ndarray,
                       prior_weight: float = 1.0) -> sp.csr_matrix:
    """Log-odds z-scores with an informative Dirichlet prior (Monroe et al. 2008).

    For atom ``i`` and term ``w``, group 1 is the captions of the items using the atom and
    group 2 all the other captions::

        delta = log((y1 + a) / (n1 + a0 - y1 - a)) - log((y2 + a) / (n2 + a0 - y2 - a))
        z = delta / sqrt(1 / (y1 + a) + 1 / (y2 + a))

    with the informative prior ``a = prior_weight * (corpus count of w)`` and ``a0 = sum(a)``
    (Monroe et al.'s choice for ``prior_weight=1``). The prior keeps a word found only in one
    atom's captions from getting a vanishing variance, so frequent, exclusive words rank first.

    Parameters
    ----------
    atom_counts : csr_matrix of shape (n_atoms, n_terms)
        Term counts over the captions of the items that use each atom.
    term_totals : ndarray of shape (n_terms,)
        Term counts over all captions.
    prior_weight : float, default=1.0
        Size of the prior relative to the corpus counts.

    Returns
    -------
    csr_matrix of shape (n_atoms, n_terms), float64
        z at the non-zero entries of ``atom_counts`` (the only terms that can be themes).
    """
    atom_counts = sp.csr_matrix(atom_counts, dtype=np.float64)
    term_totals = np.asarray(term_totals, dtype=np.float64)
    total = term_totals.sum()
    if total <= 0:
        return sp.csr_matrix(atom_counts.shape, dtype=np.float64)
    if prior_weight <= 0:
        raise InvalidInputError(f"Expected prior_weight > 0. Got {prior_weight!r}.")
    alpha = prior_weight * term_totals
    alpha0 = prior_weight * total
    rows = np.repeat(np.arange(atom_counts.shape[0]), np.diff(atom_counts.indptr))
    cols = atom_counts.indices
    y1 = atom_counts.data
    n1 = np.asarray(atom_counts.sum(axis=1)).ravel()[rows]
    y2 = np.maximum(term_totals[cols] - y1, 0.0)
    n2 = np.maximum(total - n1, 0.0)
    a = alpha[cols]
    delta = (np.log(y1 + a) - np.log(np.maximum(n1 + alpha0 - y1 - a, 1e-12))
             - np.log(y2 + a) + np.log(np.maximum(n2 + alpha0 - y2 - a, 1e-12)))
    z = delta / np.sqrt(1.0 / (y1 + a) + 1.0 / (y2 + a))
    return sp.csr_matrix((z, cols, atom_counts.indptr.copy()), shape=atom_counts.shape)


def top_per_row(matrix: sp.csr_matrix, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the ``top_n`` largest entries of each row of a sparse matrix.

    Returns
    -------
    columns : ndarray of shape (n_rows, top_n), int64, ``-1`` for padding
    values : ndarray of shape (n_rows, top_n), float64, NaN for padding
    """
    matrix = sp.csr_matrix(matrix)
    n_rows = matrix.shape[0]
    matrix.sort_indices()
    rows = np.repeat(np.arange(n_rows), np.diff(matrix.indptr))
    # by row, then by value descending (NaN last); lexsort is stable, so ties keep column order
    # and the result is the same every time. (A single float key, row + scaled value, lost the
    # order of close values past ~10^4 rows.)
    order = np.lexsort((-matrix.data, rows))
    rank = np.arange(order.size) - matrix.indptr[rows[order]]
    keep = rank < top_n
    columns = np.full((n_rows, top_n), -1, dtype=np.int64)
    values = np.full((n_rows, top_n), np.nan)
    columns[rows[order][keep], rank[keep]] = matrix.indices[order][keep]
    values[rows[order][keep], rank[keep]] = matrix.data[order][keep]
    return columns, values


def prefer_words(columns: np.ndarray, values: np.ndarray, terms: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Drop a two-word phrase ranked below one of its own words (keeps the list readable)."""
    columns = columns.copy()
    values = values.copy()
    for row in range(columns.shape[0]):  # only top_n entries per row: cheap
        seen: set[str] = set()
        for slot in range(columns.shape[1]):
            if columns[row, slot] < 0:
                continue
            term = str(terms[columns[row, slot]])
            if " " in term and any(word in seen for word in term.split()):
                columns[row, slot] = -1
                values[row, slot] = np.nan
            seen.add(term)
    return columns, values

