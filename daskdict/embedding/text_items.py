"""Text sources for :func:`daskdict.embed`: lists of strings, CSV/JSONL files, records, corpora.

:func:`resolve_texts` turns what a user passes as ``texts`` into :class:`ImageItems` (the item
type of every source: ids, captions, ``fetch``): the caption of a text item is its text, and
``fetch(index)`` returns the raw value, which may be anything a file or a list holds. A value
that is not a non-blank string is flagged when the batch is prepared (:func:`check_text`), as
an unreadable image is.

:func:`token_layout` lays out the rows of ``tokens=True``: one row per token of every text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from daskdict.embedding.items import MANIFEST_SUFFIXES, ImageItems, read_manifest
from daskdict.errors import InvalidInputError, StoreNotFoundError

# columns looked up, in this order, in files and records when no column is named
TEXT_COLUMNS = ("text", "description", "caption", "sentence")
ID_COLUMNS = ("id", "package")
# texts per call of the tokenizer when the token rows are laid out
_LAYOUT_BATCH = 1024


def check_text(value: Any) -> str:
    """The text of one item; raise for a value that cannot be embedded.

    Raises
    ------
    TypeError
        If ``value`` is not a string.
    ValueError
        If it is empty or only whitespace.
    """
    if not isinstance(value, str):
        raise TypeError(f"Expected a text (str). Got {type(value).__name__}: {value!r:.80}.")
    if not value.strip():
        raise ValueError("Expected a non-empty text. Got an empty or blank string.")
    return value


def resolve_texts(texts: Any, text_column: str | None = None) -> ImageItems:
    """The items of any supported ``texts`` source.

    Parameters
    ----------
    texts : sequence of str, path, sequence of dict, or corpus
        A list (or 1-D array) of strings; a CSV (with a header) or JSONL file; a list of
        records (dicts); or a corpus with a ``records()`` method, such as
        :func:`daskdict.datasets.load_debian_packages`'s ``PackageCorpus``.
    text_column : str, optional
        The column of files and records that holds the text; default the first of
        ``TEXT_COLUMNS`` present. Ids come from the first of ``ID_COLUMNS`` present, else
        positions.

    Returns
    -------
    ImageItems
        ``kind`` ``"texts"``, ``"text-file"`` or ``"records"``; ``captions`` are the texts
        (empty for values that are not strings).
    """
    if text_column is not None and not (isinstance(text_column, str) and text_column):
        raise InvalidInputError(f"Expected text_column to be a column name. Got {text_column!r}.")
    if isinstance(texts, (str, os.PathLike)):
        return _from_file(Path(texts), text_column)
    records = getattr(texts, "records", None)
    if callable(records):
        return _from_records(list(records()), text_column, "records", None)
    if isinstance(texts, Mapping | bytes) or not (hasattr(texts, "__len__")
                                                  and hasattr(texts, "__iter__")):
        raise InvalidInputError(
            "Expected texts as a list of strings, a CSV/JSONL file, a list of records (dicts) "
            f"or a corpus with records(). Got {type(texts).__name__}.")
    if isinstance(texts, np.ndarray) and texts.ndim != 1:
        raise InvalidInputError(f"Expected a 1-D array of texts. Got shape {texts.shape}.")
    values = list(texts)  # a copy: the caller's list may change later
    if not values:
        raise InvalidInputError("No texts: the list is empty.")
    if all(isinstance(v, Mapping) for v in values):
        return _from_records(values, text_column, "records", None)
    if text_column is not None:
        raise InvalidInputError(
            "text_column names a column of a file or of records; texts is a list of values.")
    return _items(np.arange(len(values), dtype=np.int64), values, "texts", None)


def _items(ids: np.ndarray, values: list, kind: str, root: str | None) -> ImageItems:
    captions = np.asarray([v if isinstance(v, str) else "" for v in values], dtype=str)
    return ImageItems(ids=ids, captions=captions, captions_per_item=False, kind=kind, root=root,
                      fetch=lambda i: (values[i], None))


def _from_file(path: Path, text_column: str | None) -> ImageItems:
    if not path.is_file():
        raise StoreNotFoundError(
            f"No texts at {str(path)!r}: the file does not exist (to embed one string, pass "
            "a list [text]).")
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise InvalidInputError(
            f"Expected texts in a CSV or JSONL file ({', '.join(MANIFEST_SUFFIXES)}). Got "
            f"{str(path)!r}; pass a list [text] to embed one string.")
    rows = read_manifest(path, required=())
    return _from_records(rows, text_column, "text-file", str(path.resolve()), where=str(path))


def _from_records(records: list, text_column: str | None, kind: str, root: str | None,
                  where: str = "the records") -> ImageItems:
    if not records:
        raise InvalidInputError(f"No texts: {where} holds no rows.")
    if not all(isinstance(r, Mapping) for r in records):
        raise InvalidInputError(f"Expected every record of {where} to be a dict.")
    columns = list(dict.fromkeys(key for record in records for key in record))
    column = text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        wanted = repr(text_column) if text_column else f"one of {list(TEXT_COLUMNS)}"
        raise InvalidInputError(
            f"Expected a text column {wanted} in {where}. Got columns {columns}; name it with "
            "text_column=.")
    values = [record.get(column) for record in records]
    id_column = next((c for c in ID_COLUMNS if c in columns and c != column), None)
    if id_column is None:
        ids = np.arange(len(values), dtype=np.int64)
    else:
        ids = np.asarray([str(record.get(id_column, "")) for record in records], dtype=str)
    return _items(ids, values, kind, root)


# --------------------------------------------------------------------------- token rows


@dataclass(frozen=True)
class TokenLayout:
    """The rows of ``tokens=True``: every token of every text, texts in order.

    A text that cannot be embedded (see :func:`check_text`), or of which the tokenizer keeps no
    token, gets one row, flagged, at position -1, so that its error is recorded in
    ``items/error`` as for any item.

    Attributes
    ----------
    item : ndarray of shape (n_rows,) of int64
        The index of the text of each row.
    position : ndarray of shape (n_rows,) of int64
        The token's position among the text's tokens (0: the first, e.g. ``[CLS]``); -1 for
        the row of a flagged text.
    captions : ndarray of shape (n_rows,) of str
        The token strings (empty for flagged rows).
    offsets : ndarray of shape (n_texts + 1,) of int64
        Text ``i`` has rows ``offsets[i]:offsets[i + 1]``.
    """

    item: np.ndarray
    position: np.ndarray
    captions: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    def items(self, texts: ImageItems) -> ImageItems:
        """The row items: ids of their texts (repeated per token), token strings as captions."""
        rows = self.item
        return ImageItems(ids=texts.ids[rows], captions=self.captions, captions_per_item=False,
                          kind=f"{texts.kind} tokens", root=texts.root,
                          fetch=lambda i: texts.fetch(int(rows[i])))

    def batches(self, start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
        """Row ranges covering ``start:stop``, each of at most ``batch_size`` texts, split only
        where a text ends (or at ``start`` and ``stop``)."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        bounds = [int(self.offsets[i]) for i in range(first + batch_size, last, batch_size)]
        edges = [start, *(b for b in bounds if start < b < stop), stop]
        return list(pairwise(edges))


def token_layout(texts: ImageItems, encode) -> TokenLayout:
    """Tokenize every text once to lay out the token rows.

    Parameters
    ----------
    texts : ImageItems
        The text items.
    encode : callable
        ``encode(list_of_str)`` -> list of lists of token strings (no padding), as the model
        sees them (truncated).

    Returns
    -------
    TokenLayout
    """
    counts = np.zeros(len(texts), dtype=np.int64)
    captions: list[str] = []
    positions: list[np.ndarray] = []
    for start in range(0, len(texts), _LAYOUT_BATCH):
        stop = min(start + _LAYOUT_BATCH, len(texts))
        good, tokens = [], []
        for index in range(start, stop):
            try:
                tokens.append(check_text(texts.fetch(index)[0]))
                good.append(index)
            except (TypeError, ValueError):
                counts[index] = 1
        encoded = dict(zip(good, encode(tokens), strict=True)) if tokens else {}
        for index in range(start, stop):
            pieces = encoded.get(index) or [""]
            counts[index] = len(pieces)
            captions.extend(pieces)
            positions.append(np.arange(len(pieces)) if encoded.get(index) else np.array([-1]))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return TokenLayout(item=np.repeat(np.arange(len(texts), dtype=np.int64), counts),
                       position=np.concatenate(positions).astype(np.int64),
                       captions=np.asarray(captions, dtype=str), offsets=offsets)
