"""Which concepts an item uses, and why: its code over a dictionary, with each concept's themes.

An item is a row of an embedding store, or a new text embedded on the spot through the text
encoder the store was made with (its header names the model, the pooling and the layers), in
the layer the dictionary was fitted on. Its concepts are the atoms of its sparse code, the
largest |coefficient| first, each with the themes its explanation gives: with signs split, the
explanation of the side its coefficient is on (``"17+"`` or ``"17-"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from daskdict.embedding.backbone import hidden_index, require_extras
from daskdict.embedding.text import TextForward, TextInputs, load_text_encoder
from daskdict.embedding.text_items import check_text
from daskdict.errors import InvalidInputError
from daskdict.explanations.table import Explanations, concept_label
from daskdict.io.store import EmbeddingStore, open_store
from daskdict.learn.dictionary import Codes, Dictionary
from daskdict.validation import check_positive_int

__all__ = ["item_concepts", "text_rows"]

# texts per forward pass of the encoder
_TEXT_BATCH = 64


def _as_model(model) -> Dictionary:
    if isinstance(model, str | os.PathLike):
        return Dictionary.load(model)
    if isinstance(model, Dictionary):
        return model
    raise InvalidInputError(f"Expected model to be a Dictionary or the path of one. Got "
                            f"{type(model).__name__}.")


def _as_explanations(explanations, n_atoms: int) -> Explanations:
    if isinstance(explanations, str | os.PathLike):
        explanations = Explanations.load(explanations)
    if not isinstance(explanations, Explanations):
        raise InvalidInputError(f"Expected explanations to be Explanations or the path of a "
                                f"saved table. Got {type(explanations).__name__}.")
    made_for = explanations.meta.get("n_atoms")
    singles = [a for a in explanations.atoms if not isinstance(a, list | tuple)]
    if (made_for is not None and int(made_for) != n_atoms) or any(
            int(a) >= n_atoms or int(a) < 0 for a in singles):
        raise InvalidInputError(
            f"The explanations are of {made_for if made_for is not None else 'other'} atoms, "
            f"the dictionary has {n_atoms}: explain this dictionary's codes.")
    return explanations


def _as_store(store) -> EmbeddingStore:
    if isinstance(store, EmbeddingStore):
        return store
    if isinstance(store, str | os.PathLike):
        return open_store(store)
    raise InvalidInputError(f"Expected store to be an embedding store or the path of one. "
                            f"Got {type(store).__name__}.")


def fitted_layer(model: Dictionary, store: EmbeddingStore, layer: str | None) -> str:
    """The store layer to read: the one the dictionary was fitted on (its fingerprint), else
    ``layer``, else the store's default; a ``layer`` other than the fitted one is refused.

    Raises
    ------
    InvalidInputError
        If ``layer`` is not the layer the dictionary was fitted on, or its width differs.
    StoreNotFoundError
        If the store has no such layer.
    """
    fitted = model.fingerprint.get("layer")
    if layer is not None and fitted is not None and str(layer) != str(fitted):
        raise InvalidInputError(
            f"The dictionary was fitted on layer {fitted!r}; its codes of layer {layer!r} "
            "would mean nothing. Leave out layer= or pass that layer.")
    array = store.layer_array(layer if layer is not None else fitted)
    if array.shape[1] != model.n_features:
        raise InvalidInputError(
            f"Layer {array.basename!r} of {str(store.path)!r} has {array.shape[1]} features; "
            f"the dictionary has {model.n_features}. Pass the layer it was fitted on.")
    return array.basename


def _check_rows(rows, n_items: int) -> np.ndarray:
    values = np.asarray(rows)
    if values.ndim == 0:
        values = values.reshape(1)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu":
        raise InvalidInputError(f"Expected rows to be one or more row numbers. Got "
                                f"{rows!r:.200}.")
    bad = values[(values < 0) | (values >= n_items)]
    if bad.size:
        raise InvalidInputError(f"Row {int(bad[0])} is not in the store: it has {n_items} rows "
                                f"(0 to {n_items - 1}).")
    return values.astype(np.int64)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence | np.ndarray) or not len(
            texts):
        raise InvalidInputError(f"Expected texts to be a list of one or more strings. Got "
                                f"{texts!r:.200}.")
    out = []
    for number, text in enumerate(texts):
        try:
            out.append(check_text(text))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"Text {number}: {exc}") from exc
    return out


def text_rows(store: EmbeddingStore, texts: Sequence[str], layer: str) -> np.ndarray:
    """Embed texts in memory as the store's ``layer`` rows were: same model, pooling, layer.

    The model runs on the CPU in float32; a store written in float16 on a GPU differs from
    these rows by that precision.

    Parameters
    ----------
    store : EmbeddingStore
        A store written by ``daskdict.embed(texts=...)`` (one row per text).
    texts : sequence of str of length n_texts
    layer : str
        ``"final"`` or ``"hidden_NN"``.

    Returns
    -------
    ndarray of shape (n_texts, width), float32

    Raises
    ------
    InvalidInputError
        If the store was not made from texts by ``daskdict.embed``, holds a row per token,
        its model cannot be loaded, or a text is empty.
    """
    header = store.attrs
    embedded = header.get("embed") or {}
    if embedded.get("input") != "texts" or not header.get("model"):
        raise InvalidInputError(
            f"{str(store.path)!r} was not made from texts by daskdict.embed (its header names "
            "no text model), so new texts cannot be embedded as its rows were. Pass rows.")
    if embedded.get("tokens"):
        raise InvalidInputError(f"{str(store.path)!r} holds a row per token, not per text: a "
                                "new text has no single row there. Pass rows.")
    texts = _check_texts(texts)
    torch, _ = require_extras(images=False)
    encoder = load_text_encoder(header["model"])
    encoder.model.to(device="cpu", dtype=torch.float32)
    final = layer == "final"
    forward = TextForward(encoder, [] if final else [hidden_index(layer)], final,
                          embedded.get("pooling") or encoder.default_pooling, False,
                          _TEXT_BATCH, torch.device("cpu"), torch.float32, torch)
    parts = [forward(TextInputs(encoder.tokenize(texts[start:start + _TEXT_BATCH])))
             for start in range(0, len(texts), _TEXT_BATCH)]
    return np.concatenate(parts).astype(np.float32, copy=False)


def _concepts(codes: Codes, explanations: Explanations, top: int | None) -> list[list[dict]]:
    """Per item, its atoms by decreasing |coefficient| with the themes of their side."""
    split = explanations.meta.get("signs") == "split"
    levels = codes.atom_levels()
    out = []
    for indices, values in zip(codes.indices, codes.values, strict=True):
        keep = (indices >= 0) & (values != 0)
        order = np.argsort(-np.abs(values[keep]), kind="stable")
        atoms, weights = indices[keep][order], values[keep][order]
        items = []
        for atom, weight in list(zip(atoms, weights, strict=True))[:top]:
            try:
                row = explanations.concept_row(int(atom), float(weight))
            except KeyError:  # an atom of a group, or a side the table leaves out
                sign = ("+" if weight > 0 else "-") if split else "±"
                row = {"concept": concept_label(int(atom), sign)}
            items.append({"atom": int(atom), "concept": row["concept"],
                          "level": int(levels[atom]), "weight": float(weight),
                          "themes": list(row.get("themes") or []),
                          "summary": str(row.get("summary") or "")})
        out.append(items)
    return out


def item_concepts(model: Dictionary | str | os.PathLike,
                  explanations: Explanations | str | os.PathLike,
                  store: EmbeddingStore | str | os.PathLike | None = None,
                  rows: Sequence[int] | np.ndarray | None = None,
                  texts: Sequence[str] | None = None, *, layer: str | None = None,
                  top: int | None = None, client: Any = "threads") -> list[dict]:
    """The concepts each item uses, with weights and themes.

    Parameters
    ----------
    model : Dictionary or path
        The dictionary (its fingerprint names the layer it was fitted on).
    explanations : Explanations or path
        The table explaining this dictionary's atoms (:func:`daskdict.explain`).
    store : EmbeddingStore or path
        The store the dictionary was fitted on: its rows, or for texts its text encoder.
    rows : sequence of int of length n_items, optional
        Rows of the store to explain.
    texts : sequence of str of length n_items, optional
        New texts, embedded in memory by the store's model (``daskdict.embed(texts=...)``
        stores only). Exactly one of ``rows`` and ``texts``.
    layer : str, optional
        The store layer; default the one the dictionary was fitted on, else the store's
        default (``"final"``). Another layer than the fitted one is refused.
    top : int, optional
        Concepts per item (default all that its code uses).
    client : as for :meth:`Dictionary.encode`, default="threads"

    Returns
    -------
    list of dict of length n_items
        ``{"row", "id", "caption", "concepts"}`` per row or ``{"text", "concepts"}`` per text;
        ``concepts`` lists ``{"atom", "concept", "level", "weight", "themes", "summary"}``,
        largest |weight| first (``weight`` is the code's coefficient; ``concept`` the label of
        the explanation used: ``"17+"`` or ``"17-"`` by the weight's sign when the table
        splits signs, else ``"17"``; ``level`` the atom's level, 0 without levels).

    Raises
    ------
    InvalidInputError
        Before any work: neither or both of rows and texts, a row outside the store, a layer
        the dictionary was not fitted on, explanations of another dictionary, or texts for a
        store that was not embedded from texts.
    """
    if (rows is None) == (texts is None):
        raise InvalidInputError("Pass exactly one of rows= (rows of the store) and texts= (new "
                                "texts to embed like the store's).")
    if store is None:
        raise InvalidInputError("item_concepts needs store=: the embedding store the dictionary "
                                "was fitted on (its rows, or for texts its text model).")
    top = check_positive_int("top", top, optional=True)
    texts = None if texts is None else _check_texts(texts)
    model = _as_model(model)
    explanations = _as_explanations(explanations, model.n_atoms)
    store = _as_store(store)
    layer = fitted_layer(model, store, layer)
    if rows is not None:
        chosen = _check_rows(rows, store.n_items)
        data = np.asarray(store.layer_array(layer).oindex[chosen, :])
    else:
        data = text_rows(store, texts, layer)
    codes = model.encode(data, client=client)
    concepts = _concepts(codes, explanations, top)
    if rows is None:
        return [{"text": str(t), "concepts": c} for t, c in zip(texts, concepts, strict=True)]
    ids, captions = _item_values(store, "id", chosen), _item_values(store, "caption", chosen)
    return [{"row": int(r), "id": int(r) if ids is None else _plain(ids[i]),
             "caption": None if captions is None else str(captions[i]), "concepts": c}
            for i, (r, c) in enumerate(zip(chosen, concepts, strict=True))]


def _item_values(store: EmbeddingStore, name: str, rows: np.ndarray) -> np.ndarray | None:
    """``items/<name>`` at ``rows`` only (a store's captions may not fit in memory)."""
    key = f"items/{name}"
    if key not in store.group:
        return None
    return np.asarray(store.group[key].get_coordinate_selection(rows))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
