"""Explain concepts from the captions of the items that use them (seed 000 §3.2, seed 003).

``explain(codes_or_model, store, method=...)`` returns an :class:`Explanations` table, one row per
atom: how often the atom is used, its top items (largest |coefficient|; an atom's sign is
arbitrary), its themes, a summary and a score.

Methods
-------
``"keywords"`` (default, offline)
    Words and two-word phrases over-represented in the captions of the items using the atom,
    against all other captions: log-odds with an informative Dirichlet prior (Monroe et al.
    2008), stop words removed. One sparse product ``support(codes)ᵀ @ counts`` per batch of
    atoms.
``"llm"``
    A language model finds the common themes of the top items' captions (seed 000's system
    prompt; see :mod:`daskdict._llm`).
``"falcon"``
    FALCON's word scores (Kalibhat et al. 2023) over the top-5 corpus captions of the highly
    activating items, with words that also score on counterfactual lowly activating items
    removed (see :mod:`daskdict._falcon`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from daskdict.errors import InvalidInputError
from daskdict.explanations import keywords as _text

METHODS = ("keywords", "llm", "falcon")
COLUMNS = ("atom", "n_active", "frequency", "top_items", "top_rows", "top_captions", "themes",
           "theme_scores", "summary", "score", "status")
_LIST_COLUMNS = ("atom", "top_items", "top_rows", "top_captions", "themes", "theme_scores")


class Explanations:
    """Per-atom explanations: a small table with one row per atom (or group of atoms).

    Columns
    -------
    atom : int (or list of int for a group of atoms)
    n_active : int, items whose code uses the atom
    frequency : float, ``n_active / n_items``
    top_items : list, ids of the items with the largest |coefficient|
    top_rows : list of int, their row numbers in the store
    top_captions : list of str, their captions
    themes : list of str, best first
    theme_scores : list of float, the method's score of each theme
    summary : str
    score : float, the first theme's score (NaN without one)
    status : str, ``"ok"``, ``"inactive"``, ``"no captions"`` or ``"error: …"``

    Parameters
    ----------
    rows : list of dict
        One dict per atom with the columns above.
    meta : dict, optional
        How they were made (method, parameters, n_items).
    """

    def __init__(self, rows: list[dict], meta: dict | None = None):
        self.rows = [dict(row) for row in rows]
        self.meta = dict(meta or {})
        self._by_atom = {_atom_key(row["atom"]): i for i, row in enumerate(self.rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        ok = sum(row["status"] == "ok" for row in self.rows)
        return (f"Explanations(n_atoms={len(self)}, method={self.meta.get('method')!r}, "
                f"explained={ok})")

    def __getitem__(self, atom) -> dict:
        """The row of one atom (an int) or group (a list of ints)."""
        key = _atom_key(atom)
        if key not in self._by_atom:
            raise KeyError(f"No explanation for atom {atom!r}.")
        return self.rows[self._by_atom[key]]

    @property
    def atoms(self) -> list:
        return [row["atom"] for row in self.rows]

    def first_themes(self) -> dict:
        """``{atom: first theme or ""}``, what the auto-interpretability captions use."""
        return {_atom_key(row["atom"]): (row["themes"][0] if row["themes"] else "")
                for row in self.rows}

    def to_dict(self) -> dict:
        return {"daskdict": {"kind": "explanations", "format": 1, **self.meta},
                "rows": self.rows}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (the metadata and one object per row)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, default=_json_default))
        return path

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the table as CSV; list columns are JSON-encoded cells.

        Columns a method adds to the standard ones (FALCON's ``removed_words``, ``n_high``,
        ``n_low``) follow them, every cell JSON-encoded (empty where a row lacks it).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = [key for key in dict.fromkeys(k for row in self.rows for k in row)
                 if key not in COLUMNS]
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, *extra])
            writer.writeheader()
            for row in self.rows:
                cells = {key: (json.dumps(row.get(key), default=_json_default)
                               if key in _LIST_COLUMNS else row.get(key)) for key in COLUMNS}
                cells.update({key: json.dumps(row[key], default=_json_default)
                              for key in extra if key in row})
                writer.writerow(cells)
        return path

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON or CSV, by the file's suffix."""
        return self.to_csv(path) if str(path).endswith(".csv") else self.to_json(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Explanations:
        """Read a table written by :meth:`save` (``.json`` or ``.csv``)."""
        path = Path(path)
        if not path.exists():
            raise InvalidInputError(f"No explanations at {str(path)!r}.")
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows = []
                reader = csv.DictReader(handle)
                extra = [key for key in reader.fieldnames or () if key not in COLUMNS]
                for record in reader:
                    row = {key: json.loads(record[key]) if key in _LIST_COLUMNS
                           else record[key] for key in COLUMNS}
                    row["n_active"] = int(row["n_active"])
                    row["frequency"] = float(row["frequency"])
                    row["score"] = float(row["score"]) if row["score"] else float("nan")
                    row.update({key: json.loads(record[key]) for key in extra if record[key]})
                    rows.append(row)
            return cls(rows, {"source": str(path)})
        payload = json.loads(path.read_text())
        meta = dict(payload.get("daskdict", {}))
        if meta.get("kind") != "explanations":
            raise InvalidInputError(f"Expected {str(path)!r} to hold daskdict explanations. "
                                    f"Got kind={meta.get('kind')!r}.")
        meta.pop("kind", None)
        meta.pop("format", None)
        return cls(payload["rows"], meta)

    def to_dataframe(self):
        """The table as a pandas DataFrame (pandas is imported only here)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Explanations.to_dataframe needs pandas: pip install pandas"
                              ) from exc
        extra = [key for key in dict.fromkeys(k for row in self.rows for k in row)
                 if key not in COLUMNS]  # e.g. FALCON's removed_words, n_high, n_low
        return pd.DataFrame(self.rows, columns=[*COLUMNS, *extra])


def _atom_key(atom):
    if isinstance(atom, list | tuple | np.ndarray):
        return tuple(int(a) for a in atom)
    return int(atom)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Cannot write {type(value).__name__} as JSON.")


# ---------------------------------------------------------------------------------------------
# inputs


class CodeTable:
    """What every method needs from the codes: supports, |coefficients|, counts, top items.

    Attributes
    ----------
    indices, values : ndarray of shape (n_items, n_nonzero)
    n_atoms : int
    support : csr_matrix of shape (n_items, n_atoms), 1 where an atom is used
    activation : csr_matrix of shape (n_items, n_atoms), |coefficient|
    n_active : ndarray of shape (n_atoms,)
    """

    def __init__(self, indices: np.ndarray, values: np.ndarray, n_atoms: int):
        self.indices = np.asarray(indices)
        self.values = np.asarray(values)
        self.n_atoms = int(n_atoms)
        self.support = _text.support_matrix(self.indices, self.values, self.n_atoms)
        keep = (self.indices >= 0) & (self.values != 0)
        rows = np.broadcast_to(np.arange(self.indices.shape[0])[:, None],
                               self.indices.shape)[keep]
        activation = sp.csr_matrix((np.abs(self.values[keep]).astype(np.float64),
                                    (rows, self.indices[keep])), shape=self.support.shape)
        self.activation = activation
        self.n_active = np.diff(self.support.tocsc().indptr)
        self.atoms: np.ndarray | None = None  # the dictionary, when explaining one

    @property
    def n_items(self) -> int:
        return self.indices.shape[0]

    def top_rows(self, n_top: int) -> np.ndarray:
        """Rows of the ``n_top`` items with the largest |coefficient| per atom, ``-1`` padded.

        Returns
        -------
        ndarray of shape (n_atoms, n_top), int64
        """
        columns, _ = _text.top_per_row(self.activation.T.tocsr(), n_top)
        return columns


def as_codes(codes_or_model, store, *, layer: str | None = None, client: Any = "threads"):
    """Codes in memory from Codes, a codes path, a Dictionary (encodes the store), or arrays."""
    from daskdict.learn.dictionary import Codes, Dictionary

    if isinstance(codes_or_model, str | os.PathLike):
        codes_or_model = _load_codes_or_model(codes_or_model)
    if isinstance(codes_or_model, Dictionary):
        if store is None or not isinstance(store, str | os.PathLike | _store_type()):
            raise InvalidInputError("Explaining a Dictionary encodes the store: pass the "
                                    "store (a path or EmbeddingStore), not captions alone.")
        from daskdict.io.store import open_store

        # the opened group, not its path: encode writes codes beside a path it is given, and
        # explaining should leave no files behind
        group = (store if isinstance(store, _store_type()) else open_store(store)).group
        atoms = codes_or_model.atoms
        codes_or_model = codes_or_model.encode(group, layer=layer, client=client)
    else:
        atoms = None
    if isinstance(codes_or_model, Codes):
        codes = codes_or_model.compute()
        table = CodeTable(codes.indices, codes.values, codes.n_atoms)
        table.atoms = atoms
        return table
    raise InvalidInputError(
        "Expected codes_or_model to be Codes, a Dictionary or a path to either. Got "
        f"{type(codes_or_model).__name__}.")


def _store_type():
    from daskdict.io.store import EmbeddingStore

    return EmbeddingStore


def _load_codes_or_model(path):
    import zarr

    from daskdict.io.store import StoreNotFoundError, recover_replaced
    from daskdict.learn.dictionary import Codes, Dictionary

    path = recover_replaced(path)  # a save that crashed between its two renames
    if not path.exists():
        raise StoreNotFoundError(f"Nothing at {str(path)!r}: the path does not exist.")
    kind = dict(zarr.open_group(path, mode="r").attrs.get("daskdict", {})).get("kind")
    if kind == "codes":
        return Codes.load(path)
    if kind == "dictionary":
        return Dictionary.load(path)
    raise InvalidInputError(f"Expected {str(path)!r} to hold codes or a dictionary. Got "
                            f"kind={kind!r}.")


def store_items(store, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, captions) of a store, a path to one, or a sequence of captions."""
    from daskdict.io.store import open_store

    if isinstance(store, str | os.PathLike):
        store = open_store(store)
    if isinstance(store, _store_type()):
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
            **options) -> Explanations:
    """Explain each atom from the captions of the items that use it.

    Parameters
    ----------
    codes_or_model : Codes, Dictionary, or a path to a saved one
        A dictionary is first used to encode ``store`` (``layer``).
    store : EmbeddingStore, path, or sequence of str of length n_items
        Where the captions come from (``items/caption``).
    method : {"keywords", "llm", "falcon"}, default="keywords"
    top_n : int, default=5
        Themes per atom.
    layer : str, optional
        Layer of the store to encode with a dictionary (and FALCON's image embeddings).
    n_top_items : int, default=16
        Top items (largest |coefficient|) recorded per atom; the LLM reads their captions.
    client : as for :meth:`Dictionary.encode`, default="threads"
    **options
        keywords: ``prior_weight`` (1.0), ``min_count`` (2), ``stop_words``,
        ``ngram_range`` ((1, 2)), ``batch_size`` (512 atoms).
        llm: ``summarizer`` (required: a callable ``(system, user) -> str`` such as
        :class:`daskdict.OpenAIChat` or :class:`daskdict.LocalLM`), ``system_prompt``,
        ``n_captions`` (n_top_items), ``cache`` (JSON path), ``max_workers`` (4),
        ``timeout`` (120 s), ``n_retries`` (2).
        falcon: see :func:`daskdict._falcon.falcon_explain`.

    Returns
    -------
    Explanations
    """
    if method not in METHODS:
        raise InvalidInputError(f"Expected method in {METHODS}. Got {method!r}.")
    top_n = _text.check_top_n(top_n)
    n_top_items = _text.check_top_n(n_top_items)
    table = as_codes(codes_or_model, store, layer=layer, client=client)
    ids, captions = store_items(store, table.n_items)
    top_rows = table.top_rows(n_top_items)
    rows = []
    for atom in range(table.n_atoms):
        chosen = top_rows[atom][top_rows[atom] >= 0]
        rows.append({
            "atom": atom, "n_active": int(table.n_active[atom]),
            "frequency": float(table.n_active[atom] / max(1, table.n_items)),
            "top_items": [_plain(ids[r]) for r in chosen],
            "top_rows": [int(r) for r in chosen],
            "top_captions": [str(captions[r]) for r in chosen],
            "themes": [], "theme_scores": [], "summary": "", "score": float("nan"),
            "status": "ok" if table.n_active[atom] else "inactive"})
    meta = {"method": method, "top_n": top_n, "n_items": table.n_items,
            "n_atoms": table.n_atoms}
    if method == "keywords":
        _keywords(table, captions, rows, top_n, meta, **options)
    elif method == "llm":
        from daskdict.explanations.llm import summarize_rows

        summarize_rows(rows, top_n=top_n, meta=meta, **options)
    else:
        from daskdict.explanations.falcon import falcon_rows

        groups = options.pop("groups", None)
        rows = falcon_rows(table, captions, rows, top_n, meta, store=store, layer=layer,
                           groups=groups, **options)
    return Explanations(rows, meta)


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
    from daskdict.evaluation.metrics import _unit_rows

    similarity = np.abs(_unit_rows(true_atoms) @ _unit_rows(learned_atoms).T)
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
