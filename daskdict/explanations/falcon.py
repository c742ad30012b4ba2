"""FALCON explanations, for atoms and groups of atoms.

FALCON is the method of "Identifying Interpretable Subspaces in Image Representations",
Kalibhat et al. (ICML 2023).

For atom ``i`` (activation ``h_ji = |x_ji|``, the code's magnitude):

1. Highly activating set ``T_i = {j : h_ji > alpha}`` (the ``max_images`` strongest).
2. Counterfactual lowly activating set (Eq. 2) ``L_i = {j : h_ji < epsilon,
   h_{j,V_i} · h^mu >= beta}``, where ``h^mu`` is the mean code of ``T_i`` without atom ``i``:
   items that share the *other* concepts of the top items but not this one.
3. Each item's top-5 captions from a caption corpus, ranked by CLIP confidence
   ``C = B Aᵀ`` (cosine of image and caption embeddings).
4. Word Score (Eq. 1): ``mean_q max_p C_qp [w in caption p of item q]``.
5. Contrastive interpretation: words among the top words of ``L_i`` are dropped.

Image embeddings default to the store's layer (a CLIP store's ``final`` layer is CLIP's image
embedding); caption embeddings come from ``corpus_embeddings=`` or ``text_encoder=`` (e.g.
:func:`daskdict.embedding.clip.clip_text_encoder` or, on planted data,
:func:`daskdict.datasets.planted_text_encoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from daskdict.errors import InvalidInputError
from daskdict.explanations import keywords as _text
from daskdict.io.store import EmbeddingStore, open_store
from daskdict.learn.coding import unit_rows

TEXT_EMBEDDINGS_HINT = (
    "method='falcon' ranks corpus captions by CLIP confidence: pass corpus_embeddings= "
    "(n_corpus x d) or text_encoder= (texts -> embeddings), e.g. "
    "daskdict.evaluation.clip_text_encoder('openai/clip-vit-base-patch32') or "
    "daskdict.datasets.planted_text_encoder(store).")


def word_scores(confidence: np.ndarray, caption_rows: np.ndarray,
                words: sp.csr_matrix) -> np.ndarray:
    """FALCON's Word Score (Eq. 1) of every word over a set of items.

    Parameters
    ----------
    confidence : ndarray of shape (n_images, n_per_image)
        CLIP confidence of each item's top captions.
    caption_rows : ndarray of shape (n_images, n_per_image)
        Their rows in the corpus.
    words : csr_matrix of shape (n_corpus, n_terms)
        1 where a caption contains a term.

    Returns
    -------
    ndarray of shape (n_terms,)
    """
    n_images = confidence.shape[0]
    if n_images == 0:
        return np.zeros(words.shape[1])
    best = None
    for slot in range(confidence.shape[1]):  # n_per_image (5) sparse maxima
        scaled = sp.diags(np.maximum(confidence[:, slot], 0.0)) @ words[caption_rows[:, slot]]
        best = scaled if best is None else best.maximum(scaled)
    return np.asarray(best.sum(axis=0)).ravel() / n_images


def falcon_rows(table, captions, rows: list[dict], top_n: int, meta: dict, *, store=None,
                layer: str | None = None, groups: Sequence[Sequence[int]] | None = None,
                alpha: float | None = None, epsilon: float = 1e-9, beta: float | None = None,
                max_images: int | None = 50, n_captions_per_image: int = 5,
                image_embeddings=None, corpus: Sequence[str] | None = None,
                corpus_embeddings=None, text_encoder: Callable | None = None,
                n_low_words: int | None = None, contrast: float = 0.3,
                sign_invariant: bool = True,
                encode_batch: int = 4096) -> list[dict]:
    """FALCON themes for each atom (or each group in ``groups``), filling ``rows``.

    Parameters
    ----------
    table : CodeTable
    captions : ndarray of str of shape (n_items,)
    rows : list of dict
        The per-atom rows of :func:`daskdict.explain`; with ``groups`` new rows are returned.
    groups : list of list of int, optional
        Explain these groups of atoms (items activating all of them) instead of single atoms.
    alpha : float, optional
        Activation threshold of the high set; default 0 (every item using the atom).
    epsilon : float, default=1e-9
        Activation below which an item is in the low set (the atom is unused).
    beta : float, optional
        Least ``h_{j,V_i} · h^mu`` of the low set; default: any positive overlap, keeping the
        ``max_images`` most similar items.
    max_images : int or None, default=50
        Largest high and low sets (the strongest / most similar items).
    n_captions_per_image : int, default=5
    image_embeddings : array of shape (n_items, d), optional
        Default: the store's layer ``layer``.
    corpus : sequence of str, optional
        Captions to rank; default the store's captions (an item's own caption is then left
        out of its ranking, as an external corpus would not hold it).
    corpus_embeddings : array of shape (n_corpus, d), optional
    text_encoder : callable ``texts -> array (n, d)``, optional
        Used when ``corpus_embeddings`` is not given.
    n_low_words : int, optional
        Top words of the low set that are dropped (default ``top_n``).
    contrast : float, default=0.3
        A word whose low-set score is at least ``contrast`` times its high-set score is also
        dropped (it describes what the top items share with the counterfactuals).
    sign_invariant : bool, default=True
        Rank captions by |cosine|: an atom's sign is arbitrary, so a caption matching the
        concept or its opposite is taken alike.

    Returns
    -------
    list of dict
    """
    n_low_words = top_n if n_low_words is None else int(n_low_words)
    own_captions = corpus is None
    corpus = np.asarray(captions if corpus is None else list(corpus), dtype=object)
    corpus_embeddings = _corpus_embeddings(corpus, corpus_embeddings, text_encoder,
                                           encode_batch)
    images = _image_source(image_embeddings, store, layer, table.n_items)
    if images.shape[1] != corpus_embeddings.shape[1]:
        raise InvalidInputError(
            f"Image embeddings have {images.shape[1]} features, caption embeddings "
            f"{corpus_embeddings.shape[1]}: they must come from one model (e.g. CLIP).")
    rows, groups = _rows_and_groups(table, captions, rows, groups)
    counts, terms = _text.caption_counts(list(corpus), min_count=1)
    meta.update(alpha=alpha, epsilon=epsilon, beta=beta, max_images=max_images,
                n_captions_per_image=n_captions_per_image, n_low_words=n_low_words,
                corpus_size=len(corpus))
    high_sets, low_sets = _high_and_low_sets(table, groups, alpha, epsilon, beta, max_images)
    needed = np.unique(np.concatenate([*high_sets, *low_sets, np.zeros(0, dtype=np.int64)]))
    scorer = _WordScorer(_read_rows(images, needed).astype(np.float32), needed,
                         corpus_embeddings, (counts > 0).astype(np.float64).tocsr(),
                         n_captions_per_image, sign_invariant, own_captions)
    for row, high, low in zip(rows, high_sets, low_sets, strict=True):
        if row["status"] != "ok" or high.size == 0:
            if row["status"] == "ok":
                row["status"] = "no items above alpha"
            continue
        _fill_row(row, scorer(high), scorer(low), terms, top_n, n_low_words, contrast)
        row["n_high"], row["n_low"] = int(high.size), int(low.size)
    return rows


def _corpus_embeddings(corpus: np.ndarray, corpus_embeddings, text_encoder,
                       encode_batch: int) -> np.ndarray:
    """The corpus captions' embeddings, given or encoded, as float32 unit rows."""
    if corpus_embeddings is None:
        if text_encoder is None:
            raise InvalidInputError(TEXT_EMBEDDINGS_HINT)
        corpus_embeddings = np.concatenate(
            [np.asarray(text_encoder(list(corpus[start:start + encode_batch])))
             for start in range(0, len(corpus), encode_batch)])
    corpus_embeddings = unit_rows(corpus_embeddings, np.float32)
    if corpus_embeddings.shape[0] != len(corpus):
        raise InvalidInputError(f"Expected {len(corpus)} corpus embeddings (one per caption). "
                                f"Got {corpus_embeddings.shape[0]}.")
    return corpus_embeddings


def _rows_and_groups(table, captions, rows: list[dict], groups):
    """The rows to fill and the atoms of each: one per atom, or one per given group."""
    if groups is None:
        return rows, [[row["atom"]] for row in rows]
    groups = [sorted({int(a) for a in group}) for group in groups]
    for group in groups:
        if not group or min(group) < 0 or max(group) >= table.n_atoms:
            raise InvalidInputError(f"Expected groups of atoms in [0, {table.n_atoms}). "
                                    f"Got {group}.")
    return [_group_row(table, captions, group) for group in groups], groups


class _WordScorer:
    """Word scores of a set of items: their top corpus captions by CLIP confidence, Eq. 1."""

    def __init__(self, raw: np.ndarray, rows: np.ndarray, corpus_embeddings: np.ndarray,
                 words: sp.csr_matrix, n_per_image: int, sign_invariant: bool,
                 own_captions: bool):
        self.raw = raw  # the image embeddings of ``rows``
        self.position = {int(r): i for i, r in enumerate(rows)}
        self.corpus_embeddings = corpus_embeddings
        self.words = words
        self.n_per_image = n_per_image
        self.sign_invariant = sign_invariant
        self.own_captions = own_captions

    def __call__(self, item_rows: np.ndarray) -> np.ndarray:
        if item_rows.size == 0:
            return np.zeros(self.words.shape[1])
        image_block = unit_rows(self.raw[[self.position[int(r)] for r in item_rows]],
                                np.float32)
        confidence = image_block @ self.corpus_embeddings.T  # (n_images, n_corpus)
        if self.sign_invariant:
            confidence = np.abs(confidence)
        if self.own_captions:
            confidence[np.arange(item_rows.size), item_rows] = -np.inf
        k = min(self.n_per_image, confidence.shape[1])
        top = np.argpartition(-confidence, k - 1, axis=1)[:, :k]
        top_confidence = np.take_along_axis(confidence, top, axis=1)
        top_confidence[~np.isfinite(top_confidence)] = 0.0
        return word_scores(top_confidence, top, self.words)


def _fill_row(row: dict, high_scores: np.ndarray, low_scores: np.ndarray, terms: np.ndarray,
              top_n: int, n_low_words: int, contrast: float) -> None:
    """Themes of one row: the best words of the high set, minus those of the low set."""
    low_top = np.argsort(-low_scores, kind="stable")[:n_low_words]
    spurious = set(low_top[low_scores[low_top] > 0].tolist())
    spurious |= set(np.flatnonzero((high_scores > 0)
                                   & (low_scores >= contrast * high_scores)).tolist())
    # by word score; ties go to the word scoring less on the low set
    ranking = np.lexsort((low_scores, -high_scores))
    order = [c for c in ranking[:4 * top_n + len(spurious)]
             if high_scores[c] > 0 and c not in spurious]
    columns = np.array([order[:2 * top_n]], dtype=np.int64)
    values = high_scores[columns].astype(np.float64) if columns.size else np.zeros((1, 0))
    columns, values = _text.prefer_words(columns, values, terms)
    keep = columns[0] >= 0
    row["themes"] = [str(terms[c]) for c in columns[0][keep][:top_n]]
    row["theme_scores"] = [round(float(v), 4) for v in values[0][keep][:top_n]]
    row["score"] = row["theme_scores"][0] if row["themes"] else float("nan")
    row["summary"] = ", ".join(row["themes"])
    row["removed_words"] = sorted(str(terms[c]) for c in spurious if high_scores[c] > 0)[:50]


def _group_row(table, captions, group: list[int]) -> dict:
    active = np.asarray(table.support[:, group].sum(axis=1)).ravel() == len(group)
    n_active = int(active.sum())
    return {"atom": group, "n_active": n_active, "frequency": n_active / max(1, table.n_items),
            "top_items": [], "top_rows": [], "top_captions": [], "themes": [],
            "theme_scores": [], "summary": "", "score": float("nan"),
            "status": "ok" if n_active else "inactive"}


def _high_and_low_sets(table, groups, alpha, epsilon, beta, max_images, batch: int = 64):
    activation = table.activation.tocsc()
    threshold = 0.0 if alpha is None else float(alpha)
    high_sets, low_sets = [], []
    for start in range(0, len(groups), batch):
        chunk = groups[start:start + batch]
        means = np.zeros((len(chunk), table.n_atoms))
        chunk_high, chunk_unused = [], []
        for slot, group in enumerate(chunk):
            columns = activation[:, group].toarray()
            chunk_unused.append((columns < epsilon).all(axis=1))
            strength = columns.min(axis=1)
            high = np.flatnonzero(strength > threshold)
            if max_images is not None and high.size > max_images:
                high = high[np.argsort(-strength[high], kind="stable")[:max_images]]
            chunk_high.append(np.sort(high))
            if high.size:
                means[slot] = np.asarray(table.activation[high].mean(axis=0)).ravel()
                means[slot, group] = 0.0  # h^mu ignores the explained atoms (V_i)
        # overlap of every item's other concepts with h^mu (whose explained atoms are zero):
        # one sparse-dense product for the whole batch
        similarity = np.asarray(table.activation @ means.T)  # (n_items, len(chunk))
        for slot, unused in enumerate(chunk_unused):
            own = similarity[:, slot]
            candidates = np.flatnonzero(unused & (own >= (beta if beta is not None else 1e-12)))
            if max_images is not None and candidates.size > max_images:
                candidates = candidates[np.argsort(-own[candidates],
                                                   kind="stable")[:max_images]]
            low_sets.append(np.sort(candidates))
        high_sets.extend(chunk_high)
    return high_sets, low_sets


def _image_source(image_embeddings, store, layer, n_items):
    if image_embeddings is None:
        if store is None or (isinstance(store, Sequence | np.ndarray) and not isinstance(
                store, str)):
            raise InvalidInputError("method='falcon' needs image embeddings: pass "
                                    "image_embeddings= or a store with an embedding layer.")
        store = store if isinstance(store, EmbeddingStore) else open_store(store)
        image_embeddings = store.layer_array(layer)
    if image_embeddings.shape[0] != n_items:
        raise InvalidInputError(f"Expected {n_items} image embeddings (one per coded item). "
                                f"Got {image_embeddings.shape[0]}.")
    return image_embeddings


def _read_rows(images, rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros((0, images.shape[1]), dtype=np.float32)
    if hasattr(images, "get_orthogonal_selection"):  # zarr.Array: read only these rows
        return np.asarray(images.get_orthogonal_selection((rows, slice(None))))
    if hasattr(images, "compute"):  # dask
        return np.asarray(images[rows].compute())
    return np.asarray(images)[rows]
