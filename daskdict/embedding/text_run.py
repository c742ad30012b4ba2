"""Embed texts with a Hugging Face text encoder into an embedding store (``daskdict.embed``
with ``texts=``).

A row is a text (each hidden state pooled over the text's non-padding tokens, and ``final``,
the sentence embedding as sentence-transformers computes it), or with ``tokens=True`` a token
(every hidden state's vector of that token; ``final`` is not written, since it is one vector per
text). The store, its resumption and its flagged rows are those of images: see
:mod:`daskdict.embedding.run`. A text is its own caption; a token row's caption is the token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from daskdict._version import __version__
from daskdict.embedding.backbone import (
    hidden_index,
    require_extras,
    resolve_device,
    resolve_precision,
)
from daskdict.embedding.items import ImageItems
from daskdict.embedding.loop import (
    Batch,
    chunk_rows_for,
    describe_error,
    input_paths,
    mark_complete,
    progress_bar,
    run_chunks,
)
from daskdict.embedding.text import (
    DEFAULT_TEXT_MODEL,
    POOLINGS,
    TextEncoder,
    TextForward,
    TextInputs,
    load_text_encoder,
    probe_text_widths,
)
from daskdict.embedding.text_items import TokenLayout, check_text, resolve_texts, token_layout
from daskdict.embedding.writer import ChunkWriter, check_embed_output, store_for_run
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.store import EmbeddingStore, open_store
from daskdict.validation import check_choice

__all__ = ["embed_texts"]

UNREADABLE = "texts are empty or not strings"


def embed_texts(texts: Any, store: str | os.PathLike, model: str | os.PathLike | None, layers,
                device: str, settings: dict, *, text_column: str | None = None,
                pooling: str | None = None, tokens: bool = False) -> EmbeddingStore:
    """Embed texts into the store at ``store`` (the text half of :func:`daskdict.embed`).

    Parameters
    ----------
    texts, store, model, layers, device, text_column, pooling, tokens
        As for :func:`daskdict.embed`.
    settings : dict
        The checked options of ``embed`` (``batch_size``, ``chunk_rows``, ``num_workers``,
        ``resume``, ``verbose``, ``precision``, ``store_dtype``).

    Returns
    -------
    EmbeddingStore
        Rows of shape (n_texts, width) per layer, or (n_tokens, width) with ``tokens``, in
        ``settings["store_dtype"]``.
    """
    if pooling is not None:
        check_choice("pooling", pooling, POOLINGS)
    if not isinstance(tokens, bool):
        raise InvalidInputError(f"Expected tokens to be True or False. Got {tokens!r}.")
    torch, _ = require_extras(images=False)
    model = DEFAULT_TEXT_MODEL if model is None else model
    items = resolve_texts(texts, text_column)
    path = check_embed_output(store, input_paths([texts], model, items))
    torch_device = resolve_device(device, torch)
    settings = {**settings, "precision": resolve_precision(settings["precision"], torch_device)}
    _embed_into(path, items, model, layers, torch_device, settings, pooling, tokens)
    return open_store(path)


def _header(model, encoder: TextEncoder, rows: ImageItems, widths: dict[str, int],
            pooling: str, tokens: bool, settings: dict, rows_per_chunk: int, torch,
            transformers) -> dict:
    """The header fields of a new text store (``embed`` among them)."""
    hidden = {"cls": "CLS token", "mean": "mean of the non-padding tokens",
              "max": "maximum over the non-padding tokens"}[pooling]
    return {
        "model": str(model), "n_items": len(rows), "layers": sorted(widths),
        "embed": {
            "model": str(model), "family": encoder.family, "input": "texts",
            "hidden": "each non-padding token (a row per token)" if tokens else hidden,
            "final": None if tokens else encoder.describe_final(),
            "pooling": pooling, "tokens": tokens, "max_seq_length": encoder.max_length,
            "layer_widths": widths, "precision": settings["precision"],
            "store_dtype": settings["store_dtype"], "chunk_rows": rows_per_chunk,
            "items": rows.fingerprint(), "source": rows.root,
            "rows_done": 0, "complete": False, "n_failed": None,
            "versions": {"daskdict": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        },
    }


def _embed_into(path: Path, items: ImageItems, model, layers, torch_device, settings: dict,
                pooling: str | None, tokens: bool) -> None:
    """Load the encoder, then create or resume the store at ``path`` and embed what is left."""
    torch, transformers = require_extras(images=False)
    dtype = getattr(torch, settings["precision"])
    encoder = load_text_encoder(model)
    encoder.model.to(device=torch_device, dtype=dtype)
    pooling = pooling or encoder.default_pooling
    widths = probe_text_widths(encoder, layers, pooling, tokens, torch_device, dtype)
    layout = token_layout(items, encoder.token_strings) if tokens else None
    rows = layout.items(items) if layout is not None else items
    rows_per_chunk = chunk_rows_for(settings["chunk_rows"], widths, len(rows))
    fields = _header(model, encoder, rows, widths, pooling, tokens, settings, rows_per_chunk,
                     torch, transformers)
    extra = (None if layout is None
             else {"items/item": layout.item, "items/position": layout.position})
    group = store_for_run(path, rows, fields, widths, settings["chunk_rows"], rows_per_chunk,
                          settings["resume"], extra_vectors=extra)
    meta = dict(group.attrs[formats.HEADER_KEY])
    if meta["embed"]["complete"]:
        return
    forward = TextForward(encoder, [hidden_index(n) for n in widths if n != "final"],
                          "final" in widths, pooling, tokens, settings["batch_size"],
                          torch_device, dtype, torch)
    batch_size = settings["batch_size"]
    if layout is None:
        def batches_of(start: int, stop: int) -> list[tuple[int, int]]:
            return [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]

        def prepare(start: int, stop: int) -> Batch:
            return prepare_texts(items, encoder, start, stop)
    else:
        def batches_of(start: int, stop: int) -> list[tuple[int, int]]:
            return layout.batches(start, stop, batch_size)

        def prepare(start: int, stop: int) -> Batch:
            return prepare_tokens(items, layout, encoder, start, stop)

    rows_done = int(meta["embed"]["rows_done"])
    writer = ChunkWriter(group, list(widths), widths, meta, captions_per_item=False)
    bar = progress_bar(len(rows), rows_done, settings["verbose"],
                       unit="token" if tokens else "text")
    try:
        # one loader thread: a tokenizer is not safe to call from several threads at once
        run_chunks(len(rows), rows_done, int(meta["embed"]["chunk_rows"]), batches_of, prepare,
                   forward, writer, sum(widths.values()), 1, bar)
    finally:
        if bar is not None:
            bar.close()
    mark_complete(group, meta, rows.ids, UNREADABLE, stacklevel=5)


def prepare_texts(items: ImageItems, encoder: TextEncoder, start: int, stop: int) -> Batch:
    """Check and tokenize texts ``start:stop`` (runs in the loader thread).

    Returns
    -------
    Batch
        ``inputs``: :class:`~daskdict.embedding.text.TextInputs` of the good texts (arrays of
        shape (n_good, n_tokens)), or None; flagged texts carry their error.
    """
    n = stop - start
    ok = np.zeros(n, dtype=bool)
    errors = [""] * n
    good = []
    for offset in range(n):
        try:
            good.append(check_text(items.fetch(start + offset)[0]))
        except (TypeError, ValueError) as exc:  # a bad text is recorded, not fatal
            errors[offset] = describe_error(exc)
            continue
        ok[offset] = True
    inputs = TextInputs(encoder.tokenize(good)) if good else None
    return Batch(start, stop, inputs, ok, errors, [None] * n)


def prepare_tokens(items: ImageItems, layout: TokenLayout, encoder: TextEncoder, start: int,
                   stop: int) -> Batch:
    """Tokenize the texts that token rows ``start:stop`` belong to (runs in the loader thread).

    Returns
    -------
    Batch
        ``inputs``: :class:`~daskdict.embedding.text.TextInputs` of those texts, with
        ``skip`` and ``take`` selecting rows ``start:stop`` among their tokens; or None.
    """
    n = stop - start
    ok = layout.position[start:stop] >= 0
    errors = [""] * n
    for offset in np.flatnonzero(~ok):
        try:
            check_text(items.fetch(int(layout.item[start + offset]))[0])
            errors[offset] = "ValueError: the tokenizer keeps no token of this text."
        except (TypeError, ValueError) as exc:
            errors[offset] = describe_error(exc)
    first, last = int(layout.item[start]), int(layout.item[stop - 1])
    good = [i for i in range(first, last + 1) if layout.position[layout.offsets[i]] >= 0]
    inputs = None
    if good:
        encoded = encoder.tokenize([items.fetch(i)[0] for i in good])
        expected = int(sum(layout.offsets[i + 1] - layout.offsets[i] for i in good))
        if int(encoded["attention_mask"].sum()) != expected:
            raise InvalidInputError(
                f"The tokenizer gave {int(encoded['attention_mask'].sum())} tokens for texts "
                f"{first}..{last}, not the {expected} it gave when the rows were laid out; "
                "daskdict.embed needs a deterministic tokenizer for tokens=True.")
        # the rows before ``start`` of the first text are its first tokens, all good
        inputs = TextInputs(encoded, skip=start - int(layout.offsets[first]),
                            take=int(ok.sum()))
    captions: list[str | None] = [None] * n
    return Batch(start, stop, inputs, ok, errors, captions)
