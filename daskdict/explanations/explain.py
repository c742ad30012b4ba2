"""Explain concepts from the captions of the items that use them.

The methods follow "Disentangling Concepts and Constructing Human-Compatible Explanations for
Image Embeddings" (Valentin et al.), which summarises the captions of an atom's top items
with a language model, and FALCON ("Identifying Interpretable Subspaces in Image
Representations", Kalibhat et al., ICML 2023), which contrasts them with counterfactual items.

``explain(codes_or_model, store, method=...)`` returns an :class:`Explanations` table, one row per
concept: how often it is used, its representative items, its themes, a summary and a score.

A signed atom is two concepts (``signs="split"``, the default): the items with large positive
coefficients (``"17+"``) and those with large negative ones (``"17-"``); each is explained from
its own items. ``signs="abs"`` keeps one concept per atom, ranked by |coefficient|. The
representative items are the largest coefficients of the side, the largest shares of their
codes, or the embeddings closest in cosine to the side's direction (``representatives=``).
With a dictionary of levels, each row has its level and the rows go coarsest first.

Methods
-------
``"keywords"`` (default, offline)
    Words and two-word phrases over-represented in the captions of the items using the atom,
    against all other captions: log-odds with an informative Dirichlet prior (Monroe et al.
    2008), stop words removed. One sparse product ``support(codes)ᵀ @ counts`` per batch of
    atoms.
``"llm"``
    A language model finds the common themes of the top items' captions (the concept paper's
    system prompt; see :mod:`daskdict.explanations.llm`).
``"falcon"``
    FALCON's word scores over the top-5 corpus captions of the highly activating items, with
    words that also score on counterfactual lowly activating items removed (see
    :mod:`daskdict.explanations.falcon`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp

from daskdict.errors import InvalidInputError, StoreNotFoundError
from daskdict.explanations import keywords as _text
from daskdict.explanations.falcon import TEXT_EMBEDDINGS_HINT, falcon_rows
from daskdict.explanations.llm import summarize_rows
from daskdict.explanations.table import COLUMNS, Explanations, concept_label
from daskdict.io import formats
from daskdict.io.atomic import readable_path
from daskdict.io.store import EmbeddingStore, open_store
from daskdict.learn.coding import unit_rows
from daskdict.learn.dictionary import Codes, Dictionary, atom_levels
from daskdict.validation import check_choice, check_positive_int

__all__ = ["COLUMNS", "METHODS", "REPRESENTATIVES", "SIGN_CHOICES", "CodeTable",
           "Explanations", "entry_cosines", "explain", "explanation_accuracy"]

METHODS = ("keywords", "llm", "falcon")
SIGN_CHOICES = ("split", "abs")
REPRESENTATIVES = ("coefficient", "share", "cosine")


# ---------------------------------------------------------------------------------------------
# inputs


class CodeTable:
    """What every method needs from the codes: supports, |coefficients|, counts, top items.

    Its columns are atoms, or after :meth:`sides` the sides of atoms that items use.

    Attributes
    ----------
    indices, values : ndarray of shape (n_items, n_nonzero)
    n_atoms : int, the columns
    support : csr_matrix of shape (n_items, n_atoms), 1 where an atom is used
    activation : csr_matrix of shape (n_items, n_atoms), |coefficient|
    n_active : ndarray of shape (n_atoms,)
    column_atoms : ndarray of shape (n_atoms,), the atom of each column
    column_signs : ndarray of str of shape (n_atoms,), ``"+"``, ``"-"`` or ``"±"`` (both)
    level_sizes : list of int or None, atoms per level of the dictionary (coarse first)
    """

    def __init__(self, indices: np.ndarray, values: np.ndarray, n_atoms: int):
        self.indices = np.asarray(indices)
        self.values = np.asarray(values)
        self.n_atoms = int(n_atoms)
        self.support = _text.support_matrix(self.indices, self.values, self.n_atoms)
        keep = self.used
        rows = np.broadcast_to(np.arange(self.indices.shape[0])[:, None],
                               self.indices.shape)[keep]
        activation = sp.csr_matrix((np.abs(self.values[keep]).astype(np.float64),
                                    (rows, self.indices[keep])), shape=self.support.shape)
        self.activation = activation
        self.n_active = np.diff(self.support.tocsc().indptr)
        self.atoms: np.ndarray | None = None  # the dictionary, when explaining one
        self.column_atoms = np.arange(self.n_atoms)
        self.column_signs = np.full(self.n_atoms, "±")
        self.level_sizes: list[int] | None = None

    @property
    def n_items(self) -> int:
        return self.indices.shape[0]

    @property
    def used(self) -> np.ndarray:
        """Where a code uses an atom, shape (n_items, n_nonzero), bool."""
        return (self.indices >= 0) & (self.values != 0)

    def sides(self) -> CodeTable:
        """The same codes with a column per side of an atom that some item uses: ``a+`` (its
        positive coefficients) and ``a-`` (its negative ones), atom by atom, ``+`` first.

        Entries keep their places in ``indices`` (now column numbers) and ``values`` (now
        |coefficient|), so per-entry scores of this table fit the other.
        """
        keep = self.used
        side = 2 * self.indices.astype(np.int64) + (self.values < 0)
        present = np.unique(side[keep])
        columns = np.full(self.indices.shape, -1, dtype=np.int64)
        columns[keep] = np.searchsorted(present, side[keep])
        table = CodeTable(columns, np.where(keep, np.abs(self.values), 0), present.size)
        table.column_atoms = present // 2
        table.column_signs = np.where(present % 2 == 1, "-", "+")
        table.atoms, table.level_sizes = self.atoms, self.level_sizes
        return table

    def top_rows(self, n_top: int, scores: np.ndarray | None = None) -> np.ndarray:
        """Rows of the ``n_top`` representative items per column, ``-1`` padded.

        Parameters
        ----------
        n_top : int
        scores : ndarray of shape (n_items, n_nonzero), optional
            A score per entry of the codes, highest first; ties go to the larger
            |coefficient|, then the lower row. Default: the |coefficient| itself.

        Returns
        -------
        ndarray of shape (n_atoms, n_top), int64
        """
        keep = self.used
        items = np.nonzero(keep)[0]
        columns = self.indices[keep].astype(np.int64)
        magnitude = np.abs(self.values[keep]).astype(np.float64)
        primary = magnitude if scores is None else np.asarray(scores, np.float64)[keep]
        order = np.lexsort((items, -magnitude, -primary, columns))  # NaN scores last
        # an atom listed twice in one code counts once: its first (best) place
        _, first = np.unique(columns[order] * self.n_items + items[order], return_index=True)
        order = order[np.sort(first)]
        starts = np.searchsorted(columns[order], np.arange(self.n_atoms))
        rank = np.arange(order.size) - starts[columns[order]]
        chosen = rank < n_top
        out = np.full((self.n_atoms, n_top), -1, dtype=np.int64)
        out[columns[order][chosen], rank[chosen]] = items[order][chosen]
        return out


def as_codes(codes_or_model, store, *, layer: str | None = None,
             client: Any = "threads") -> CodeTable:
    """Codes in memory from Codes, a codes path, a Dictionary (encodes the store), or arrays."""
    if isinstance(codes_or_model, str | os.PathLike):
        codes_or_model = _load_codes_or_model(codes_or_model)
    if isinstance(codes_or_model, Dictionary):
        if store is None or not isinstance(store, str | os.PathLike | EmbeddingStore):
            raise InvalidInputError("Explaining a Dictionary encodes the store: pass the "
                                    "store (a path or EmbeddingStore), not captions alone.")
        # the opened group, not its path: encode writes codes beside a path it is given, and
        # explaining should leave no files behind
        group = (store if isinstance(store, EmbeddingStore) else open_store(store)).group
        atoms = codes_or_model.atoms
        level_sizes = getattr(codes_or_model, "level_sizes", None)
        codes_or_model = codes_or_model.encode(group, layer=layer, client=client)
    else:
        atoms, level_sizes = None, None
    if isinstance(codes_or_model, Codes):
        codes = codes_or_model.compute()
        table = CodeTable(codes.indices, codes.values, codes.n_atoms)
        table.atoms = atoms
        table.level_sizes = getattr(codes, "level_sizes", None) or level_sizes
        return table
    raise InvalidInputError(
        "Expected codes_or_model to be Codes, a Dictionary or a path to either. Got "
        f"{type(codes_or_model).__name__}.")


def _load_codes_or_model(path) -> Codes | Dictionary:
    # a read: the folder a crashed save left is read where it lies, nothing is moved
    path = readable_path(path)
    if not path.exists():
        raise StoreNotFoundError(f"Nothing at {str(path)!r}: the path does not exist.")
    kind = formats.kind_of(path)
    if kind == "codes":
        return Codes.load(path)
    if kind == "dictionary":
        return Dictionary.load(path)
    raise InvalidInputError(f"Expected {str(path)!r} to hold codes or a dictionary. Got "
                            f"kind={kind!r}.")


def store_items(store, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, captions) of a store, a path to one, or a sequence of captions."""
    if isinstance(store, str | os.PathLike):
        store = open_store(store)
    if isinstance(store, EmbeddingStore):
        captions = store.captions
        if captions is None:
            raise InvalidInputError(
                f"The store {store.path} has no captions (items/caption); explanations come "
                "from captions. Write it with captions=... or pass a list of captions.")
        ids = store.ids if store.ids is not None else np.arange(len(captions))
    elif isinstance(store, Sequence | np.ndarray):
        captions = np.asarray(store, dtype=object)
        ids = np.arange(len(captions))
    else:
        raise InvalidInputError(f"Expected a store, a path to one, or a list of captions. Got "
                                f"{type(store).__name__}.")
    if len(captions) != n_items:
        raise InvalidInputError(f"Expected {n_items} captions (one per coded item). Got "
                                f"{len(captions)}.")
    # a missing caption is empty text, not the word "None"
    return np.asarray(ids), np.asarray(["" if c is None else str(c) for c in captions],
                                       dtype=object)


# ---------------------------------------------------------------------------------------------
# the entry point


def explain(codes_or_model, store, method: str = "keywords", top_n: int = 5, *,
            layer: str | None = None, n_top_items: int = 16, client: Any = "threads",
            signs: str = "split", representatives: str = "coefficient",
            atoms: np.ndarray | None = None, **options) -> Explanations:
    """Explain each concept from the captions of the items that use it.

    Parameters
    ----------
    codes_or_model : Codes, Dictionary, or a path to a saved one
        A dictionary is first used to encode ``store`` (``layer``).
    store : EmbeddingStore, path, or sequence of str of length n_items
        Where the captions come from (``items/caption``).
    method : {"keywords", "llm", "falcon"}, default="keywords"
    top_n : int, default=5
        Themes per concept.
    layer : str, optional
        Layer of the store to encode with a dictionary (and FALCON's image embeddings, and
        the embeddings of ``representatives="cosine"``).
    n_top_items : int, default=16
        Representative items recorded per concept; the LLM reads their captions.
    client : as for :meth:`Dictionary.encode`, default="threads"
    signs : {"split", "abs"}, default="split"
        ``"split"``: each side of an atom that items use is its own concept, ``"17+"`` (its
        positive coefficients) and ``"17-"`` (its negative ones), with its own items, themes
        and counts. ``"abs"``: one concept per atom, ``"17"``, over |coefficient|.
    representatives : {"coefficient", "share", "cosine"}, default="coefficient"
        How a concept's users are ranked: largest |coefficient|; largest share of the code,
        ``x_ij² / Σ_k x_ik²`` (ties by |coefficient|); or highest cosine of the embedding
        with the side's direction, ``±atom`` (|cosine| with ``signs="abs"``).
    atoms : ndarray of shape (n_atoms, n_features) or Dictionary, optional
        For ``"cosine"`` with codes (a Dictionary brings its own, and a centred one its mean,
        subtracted from the embeddings); the store gives the embeddings (its ``layer``).
    **options
        keywords: ``prior_weight`` (1.0), ``min_count`` (2), ``stop_words``,
        ``ngram_range`` ((1, 2)), ``batch_size`` (512 concepts).
        llm: ``summarizer`` (required: a callable ``(system, user) -> str`` such as
        :class:`daskdict.OpenAIChat` or :class:`daskdict.LocalLM`), ``system_prompt``,
        ``n_captions`` (n_top_items), ``cache`` (JSON path), ``max_workers`` (4),
        ``timeout`` (120 s), ``n_retries`` (2).
        falcon: see :func:`daskdict.explanations.falcon.falcon_rows` (``groups=`` explains
        groups of atoms, whatever ``signs``).

    Returns
    -------
    Explanations
        One row per concept; with a dictionary of levels (``Codes.level_sizes``) each row has
        its ``level`` and the rows go level by level, coarsest first.

    Raises
    ------
    InvalidInputError
        Before any work: a bad choice, count or option; ``"cosine"`` without atoms or store.
    """
    check_choice("method", method, METHODS)
    check_choice("signs", signs, SIGN_CHOICES)
    check_choice("representatives", representatives, REPRESENTATIVES)
    top_n = check_positive_int("top_n", top_n)
    n_top_items = check_positive_int("n_top_items", n_top_items)
    _check_options(method, options)
    source = codes_or_model  # a path is a source the table is never saved over
    if isinstance(source, str | os.PathLike):
        codes_or_model = _load_codes_or_model(source)
    embeddings, atoms = _cosine_inputs(representatives, codes_or_model, store, atoms, layer)
    table = as_codes(codes_or_model, store, layer=layer, client=client)
    ids, captions = store_items(store, table.n_items)
    columns = table.sides() if signs == "split" else table
    scores = _representative_scores(representatives, table, signs, embeddings, atoms)
    rows = _concept_rows(columns, columns.top_rows(n_top_items, scores), ids, captions)
    meta = {"method": method, "top_n": top_n, "n_items": table.n_items, "n_atoms": table.n_atoms,
            "signs": signs, "representatives": representatives, **_sources(source, store)}
    if method == "keywords":
        _keywords(columns, captions, rows, top_n, meta, **options)
    elif method == "llm":
        summarize_rows(rows, top_n=top_n, meta=meta, **options)
    else:
        rows = _falcon(table, columns, captions, rows, top_n, meta, store, layer, options)
    if table.level_sizes:
        meta["level_sizes"] = table.level_sizes
        rows = _by_level(rows, atom_levels(table.level_sizes, table.n_atoms))
    return Explanations(rows, meta)


def _by_level(rows: list[dict], levels: np.ndarray) -> list[dict]:
    """The rows with their atom's level (a group's coarsest), coarsest first, else in order."""
    for row in rows:
        atom = row["atom"]
        row["level"] = int(levels[atom].min() if isinstance(atom, list) else levels[atom])
    return sorted(rows, key=lambda row: row["level"])  # stable


def _concept_rows(columns: CodeTable, top_rows: np.ndarray, ids, captions) -> list[dict]:
    """One row per column of ``columns`` (a concept), with its representative items."""
    rows = []
    for column in range(columns.n_atoms):
        chosen = top_rows[column][top_rows[column] >= 0]
        atom, sign = int(columns.column_atoms[column]), str(columns.column_signs[column])
        n_active = int(columns.n_active[column])
        rows.append({
            "atom": atom, "concept": concept_label(atom, sign), "sign": sign,
            "n_active": n_active, "frequency": float(n_active / max(1, columns.n_items)),
            "top_items": [_plain(ids[r]) for r in chosen],
            "top_rows": [int(r) for r in chosen],
            "top_captions": [str(captions[r]) for r in chosen],
            "themes": [], "theme_scores": [], "summary": "", "score": float("nan"),
            "status": "ok" if n_active else "inactive"})
    return rows


def _falcon(table: CodeTable, columns: CodeTable, captions, rows: list[dict], top_n: int,
            meta: dict, store, layer, options: dict) -> list[dict]:
    """FALCON over the concepts (or over ``groups=`` of atoms, whatever the signs)."""
    groups = options.pop("groups", None)
    if groups is not None or columns is table:
        return falcon_rows(table, captions, rows, top_n, meta, store=store, layer=layer,
                           groups=groups, **options)
    # falcon reads a row's atom as a column of the table it is given: here, a side
    atoms = [row["atom"] for row in rows]
    for column, row in enumerate(rows):
        row["atom"] = column
    rows = falcon_rows(columns, captions, rows, top_n, meta, store=store, layer=layer,
                       **options)
    for row, atom in zip(rows, atoms, strict=True):
        row["atom"] = atom
    return rows


def _cosine_inputs(representatives: str, model, store, atoms, layer
                   ) -> tuple[Any, np.ndarray | None]:
    """The store layer and atoms that ``representatives="cosine"`` reads, checked before any
    work; (None, None) for the other choices."""
    if representatives != "cosine":
        if atoms is not None:
            raise InvalidInputError("atoms= is read only with representatives='cosine'.")
        return None, None
    if not isinstance(model, Codes | Dictionary):
        return None, None  # as_codes names what codes_or_model should be
    if isinstance(model, Dictionary):
        if atoms is not None:
            raise InvalidInputError("A Dictionary brings its own atoms: leave out atoms=.")
        atoms = model
    elif atoms is None:
        raise InvalidInputError(
            "representatives='cosine' needs the atoms: pass a Dictionary as codes_or_model, "
            "or atoms= (n_atoms x n_features) with the codes.")
    if not isinstance(store, str | os.PathLike | EmbeddingStore):
        raise InvalidInputError(
            "representatives='cosine' needs the items' embeddings: pass the store (a path or "
            "EmbeddingStore) with the layer the codes were made from, not captions alone.")
    store = store if isinstance(store, EmbeddingStore) else open_store(store)
    embeddings = store.layer_array(layer)
    centred_by = atoms if isinstance(atoms, Dictionary) and atoms.mean is not None else None
    atoms = np.asarray(atoms.atoms if isinstance(atoms, Dictionary) else atoms,
                       dtype=np.float64)
    n_atoms = model.n_atoms
    if atoms.ndim != 2 or atoms.shape != (n_atoms, embeddings.shape[1]):
        raise InvalidInputError(
            f"Expected atoms of shape ({n_atoms}, {embeddings.shape[1]}): one per atom of the "
            f"codes, as wide as layer {embeddings.basename!r} of the store. Got "
            f"{atoms.shape}.")
    if isinstance(model, Codes) and len(model) != embeddings.shape[0]:
        raise InvalidInputError(f"Expected the store's layer {embeddings.basename!r} to hold "
                                f"one row per coded item ({len(model)}). Got "
                                f"{embeddings.shape[0]}.")
    if centred_by is not None:
        # a centred dictionary's atoms describe the rows minus the training mean
        embeddings = centred_by.centered(da.from_array(embeddings))
    return embeddings, atoms


def _representative_scores(representatives: str, table: CodeTable, signs: str, embeddings,
                           atoms: np.ndarray | None) -> np.ndarray | None:
    """A score per entry of the codes, shape (n_items, n_nonzero); None: |coefficient|."""
    keep = table.used
    values = np.where(keep, table.values, 0).astype(np.float64)
    if representatives == "coefficient":
        return None
    if representatives == "share":
        energy = (values ** 2).sum(axis=1, keepdims=True)
        return values ** 2 / np.where(energy > 0, energy, 1.0)
    cosine = entry_cosines(embeddings, atoms, np.where(keep, table.indices, -1))
    return np.abs(cosine) if signs == "abs" else cosine * np.sign(values)


def entry_cosines(embeddings, atoms: np.ndarray, indices: np.ndarray,
                  batch: int = 4096) -> np.ndarray:
    """Cosine of each item's embedding with each atom its code uses.

    Parameters
    ----------
    embeddings : array of shape (n_items, n_features)
        Read ``batch`` rows at a time (a Zarr or dask array is never loaded whole).
    atoms : ndarray of shape (n_atoms, n_features)
    indices : ndarray of shape (n_items, n_nonzero), int, ``-1`` padded

    Returns
    -------
    ndarray of shape (n_items, n_nonzero), 0 at padding and for all-zero rows
    """
    directions = unit_rows(atoms)
    out = np.zeros(indices.shape)
    for start in range(0, indices.shape[0], batch):
        block = indices[start:start + batch]
        items = unit_rows(np.asarray(embeddings[start:start + block.shape[0]]))
        for slot in range(block.shape[1]):  # n_nonzero products of (batch, n_features)
            out[start:start + block.shape[0], slot] = np.einsum(
                "if,if->i", items, directions[np.maximum(block[:, slot], 0)])
    return np.where(indices >= 0, out, 0.0)


# counts among the methods' options, and the least value each may take
_COUNTS = {"min_count": 1, "batch_size": 1, "max_workers": 1, "n_retries": 0,
           "n_captions_per_image": 1, "encode_batch": 1}
_OPTIONAL_COUNTS = {"n_captions": 1, "max_images": 1, "n_low_words": 0}


def _check_options(method: str, options: dict) -> None:
    """Refuse an unknown or bad option of ``method`` before any work (encoding) starts."""
    target = {"keywords": _keywords, "llm": summarize_rows, "falcon": falcon_rows}[method]
    known = {name for name, p in inspect.signature(target).parameters.items()
             if p.kind is p.KEYWORD_ONLY} - {"top_n", "meta", "store", "layer"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(f"Unknown option(s) {unknown} of method={method!r}; it takes "
                                f"{sorted(known)}.")
    for name, minimum in _COUNTS.items():
        if name in options:
            check_positive_int(name, options[name], minimum=minimum)
    for name, minimum in _OPTIONAL_COUNTS.items():
        check_positive_int(name, options.get(name), optional=True, minimum=minimum)
    if method == "llm" and not callable(options.get("summarizer")):
        raise InvalidInputError(
            "method='llm' needs summarizer=: a callable (system, user) -> str such as "
            "daskdict.OpenAIChat(base_url, model) or daskdict.LocalLM(path).")
    if method == "falcon" and options.get("corpus_embeddings") is None and options.get(
            "text_encoder") is None:
        raise InvalidInputError(TEXT_EMBEDDINGS_HINT)


def _sources(codes_or_model, store) -> dict:
    """The paths the explanations are made from, by role: no output of them may be one."""
    sources = {}
    if isinstance(codes_or_model, str | os.PathLike):
        sources["codes"] = str(codes_or_model)
    if isinstance(store, EmbeddingStore):
        sources["store"] = str(store.path)
    elif isinstance(store, str | os.PathLike):
        sources["store"] = str(store)
    return sources


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _keywords(table: CodeTable, captions, rows, top_n: int, meta: dict, *,
              prior_weight: float = 1.0, min_count: int = 2,
              stop_words: Sequence[str] | None = None,
              ngram_range: tuple[int, int] = (1, 2), batch_size: int = 512) -> None:
    counts, terms = _text.caption_counts(captions, ngram_range=tuple(ngram_range),
                                         stop_words=stop_words, min_count=min_count)
    meta.update(prior_weight=prior_weight, min_count=min_count, ngram_range=list(ngram_range),
                n_terms=len(terms))
    if counts.shape[1] == 0:
        for row in rows:
            row["status"] = "no captions" if row["status"] == "ok" else row["status"]
        return
    term_totals = np.asarray(counts.sum(axis=0)).ravel()
    support_t = table.support.T.tocsr()
    for start in range(0, table.n_atoms, batch_size):
        stop = min(start + batch_size, table.n_atoms)
        atom_counts = (support_t[start:stop] @ counts).tocsr()  # (batch, n_terms)
        scores = _text.contrastive_scores(atom_counts, term_totals, prior_weight)
        scores.data[atom_counts.data < min_count] = -np.inf  # a word seen once is no theme
        scores.data[scores.data <= 0] = -np.inf
        scores.eliminate_zeros()
        columns, values = _text.top_per_row(scores, 2 * top_n)
        columns, values = _text.prefer_words(columns, values, terms)
        for offset in range(stop - start):
            row = rows[start + offset]
            keep = (columns[offset] >= 0) & np.isfinite(values[offset])
            chosen, chosen_scores = columns[offset][keep][:top_n], values[offset][keep][:top_n]
            row["themes"] = [str(terms[c]) for c in chosen]
            row["theme_scores"] = [round(float(v), 4) for v in chosen_scores]
            row["score"] = row["theme_scores"][0] if chosen.size else float("nan")
            row["summary"] = ", ".join(row["themes"])
            if row["status"] == "ok" and not chosen.size:
                row["status"] = "no distinctive words"


def explanation_accuracy(explanations: Explanations, true_atoms: np.ndarray,
                         learned_atoms: np.ndarray, names: Sequence[str],
                         threshold: float = 0.01) -> dict:
    """How often an atom's first theme is its planted concept's name, over recovered atoms.

    A planted atom is recovered when some learned atom has ``1 - |cos| < threshold`` (the
    K-SVD paper's criterion); that learned atom's first theme is compared with the name.

    Parameters
    ----------
    explanations : Explanations
    true_atoms : ndarray of shape (n_planted, n_features)
    learned_atoms : ndarray of shape (n_atoms, n_features)
    names : sequence of str of length n_planted

    Returns
    -------
    dict
        ``n_recovered``, ``n_correct``, ``accuracy`` and ``mistakes`` (planted name, learned
        atom, its first theme).
    """
    similarity = np.abs(unit_rows(true_atoms) @ unit_rows(learned_atoms).T)
    best = similarity.argmax(axis=1)
    recovered = 1.0 - similarity[np.arange(len(best)), best] < threshold
    first = explanations.first_themes()
    mistakes = []
    n_correct = 0
    for planted in np.flatnonzero(recovered):
        theme = first.get(int(best[planted]), "")
        if theme == names[planted]:
            n_correct += 1
        else:
            mistakes.append((names[planted], int(best[planted]), theme))
    n_recovered = int(recovered.sum())
    return {"n_recovered": n_recovered, "n_correct": n_correct,
            "accuracy": n_correct / n_recovered if n_recovered else float("nan"),
            "mistakes": mistakes}


Summarizer = Callable[[str, str], str]
