"""``decompose``: texts and a BERT text encoder in, an embedding store of output components out.

The store is an ordinary daskdict embedding store (as :func:`daskdict.embed` writes): one row
per text, captions the texts, layer ``final`` (the sentence embedding, exactly as ``embed``
writes it) and one layer per component (``component.init``, ``component.NN.hHH``,
``component.NN.mlp``; see :mod:`daskdict.decomposition.bert`), whose rows sum to ``final`` to
float32 rounding. Layer names use ``.`` rather than ``/`` because a store's layers are the arrays
directly under its ``layers`` group.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from daskdict._version import __version__
from daskdict.decomposition.bert import (
    LINEAR_POOLINGS,
    check_bert_model,
    component_names,
    decompose_bert,
)
from daskdict.embedding.backbone import require_extras, resolve_device, run_halving
from daskdict.embedding.loop import (
    Batch,
    chunk_rows_for,
    input_paths,
    mark_complete,
    progress_bar,
    run_chunks,
)
from daskdict.embedding.text import DEFAULT_TEXT_MODEL, TextEncoder, TextInputs, load_text_encoder
from daskdict.embedding.text_items import resolve_texts
from daskdict.embedding.text_run import prepare_texts
from daskdict.embedding.writer import ChunkWriter, store_for_run
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import recover_replaced
from daskdict.io.store import KIND, EmbeddingStore, open_store
from daskdict.validation import check_positive_int

__all__ = ["DEFAULT_N_LAYERS", "LAYER_PREFIX", "TARGETS", "component_layers", "decompose"]

# the last ten blocks, as Balasubramanian, Basu and Feizi decompose
DEFAULT_N_LAYERS = 10
LAYER_PREFIX = "component."
TARGETS = ("final",)
UNREADABLE = "texts are empty or not strings"


def _check_options(n_layers, batch_size, overwrite, verbose, target) -> None:
    check_positive_int("n_layers", n_layers, optional=True)
    check_positive_int("batch_size", batch_size)
    for name, value in (("overwrite", overwrite), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise InvalidInputError(f"Expected {name} to be True or False. Got {value!r}.")
    if target == "pooler":
        raise InvalidInputError(
            "The pooler output (a dense layer and tanh over the CLS token) is not linear, so it "
            "does not split into components; decompose target='final' (the sentence "
            "embedding).")
    if target not in TARGETS:
        raise InvalidInputError(f"Expected target to be one of {list(TARGETS)}. Got {target!r}.")


def _check_encoder(encoder: TextEncoder, n_layers: int | None) -> int:
    """The number of blocks to decompose; raise for a model or pooling that cannot be."""
    if encoder.other_modules:
        raise InvalidInputError(
            f"The model's sentence-transformers modules include {list(encoder.other_modules)}, "
            "which the decomposition does not reproduce.")
    n_blocks = len(getattr(getattr(encoder.model, "encoder", None), "layer", None) or [])
    if n_layers is None:
        n_layers = min(DEFAULT_N_LAYERS, n_blocks) or 1
    check_bert_model(encoder.model, n_layers)
    nonlinear = [m for m in encoder.sentence_pooling if m not in LINEAR_POOLINGS]
    if nonlinear:
        raise InvalidInputError(
            f"The model pools with {nonlinear[0]!r}, which is not linear in the hidden state; "
            f"the decomposition needs one of {list(LINEAR_POOLINGS)}.")
    return n_layers


def decompose(texts: Any, store: str | os.PathLike, model: str | os.PathLike | None = None, *,
              n_layers: int | None = None, batch_size: int = 8, device: str = "cpu",
              overwrite: bool = False, verbose: bool = True, text_column: str | None = None,
              target: str = "final") -> EmbeddingStore:
    """Write the exact decomposition of a BERT text encoder's sentence embeddings.

    Parameters
    ----------
    texts : sequence of str, path, sequence of dict, or corpus
        As for :func:`daskdict.embed`.
    store : str or path-like
        The new embedding store.
    model : str or path-like, optional
        A post-norm BERT (a Hugging Face name, a ``save_pretrained`` folder or a
        sentence-transformers folder); default all-MiniLM-L6-v2.
    n_layers : int, optional
        Decompose the last ``n_layers`` blocks (the earlier ones are inside ``init``); default
        the last ten, or every block of a smaller model.
    batch_size : int, default=8
        Texts per forward pass (each holds every component of every token).
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
    overwrite : bool, default=False
        Replace an existing embedding store at ``store`` (never an input).
    verbose : bool, default=True
        Show a progress bar.
    text_column : str, optional
        As for :func:`daskdict.embed`.
    target : {"final"}
        What is decomposed: the sentence embedding (``"pooler"`` is refused: not linear).

    Returns
    -------
    EmbeddingStore
        Layers ``final`` and ``component.*`` of shape (n_texts, width); per row the components
        sum to ``final``.

    Raises
    ------
    InvalidInputError
        For a model that is not a post-norm BERT, a nonlinear pooling, ``n_layers`` out of
        range, or a bad option; before anything is written.
    OutputNotWritableError
        If ``store`` is an input, or exists and ``overwrite`` is False.
    """
    _check_options(n_layers, batch_size, overwrite, verbose, target)
    torch, transformers = require_extras(images=False)
    model = DEFAULT_TEXT_MODEL if model is None else model
    items = resolve_texts(texts, text_column)
    path = recover_replaced(formats.check_writable(store))
    formats.check_output(path, KIND, inputs=input_paths([texts], model, items),
                         overwrite=overwrite)
    torch_device = resolve_device(device, torch)
    encoder = load_text_encoder(model)
    n_layers = _check_encoder(encoder, n_layers)
    encoder.model.to(device=torch_device, dtype=torch.float32)
    config = encoder.model.config
    names = ["final", *(LAYER_PREFIX + n for n in component_names(
        config.num_hidden_layers, config.num_attention_heads, n_layers))]
    width = config.hidden_size * len(encoder.sentence_pooling)
    widths = {name: width for name in names}
    rows_per_chunk = chunk_rows_for(None, {"final": width * len(names)}, len(items))
    fields = _header(model, encoder, items, widths, n_layers, rows_per_chunk, torch,
                     transformers)
    group = store_for_run(path, items, fields, widths, None, rows_per_chunk, resume=False)
    _fill(group, items, encoder, names, widths, n_layers, batch_size, torch_device, verbose)
    return open_store(path)


def _fill(group, items, encoder: TextEncoder, names: list[str], widths: dict[str, int],
          n_layers: int, batch_size: int, device, verbose: bool) -> None:
    """Decompose every text into the new store ``group`` and mark it complete."""
    meta = dict(group.attrs[formats.HEADER_KEY])
    forward = _Forward(encoder, n_layers, batch_size, device)
    writer = ChunkWriter(group, names, widths, meta, captions_per_item=False)
    bar = progress_bar(len(items), 0, verbose, unit="text")

    def batches_of(start: int, stop: int) -> list[tuple[int, int]]:
        return [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]

    def prepare(start: int, stop: int) -> Batch:
        return prepare_texts(items, encoder, start, stop)

    try:
        # one loader thread: a tokenizer is not safe to call from several threads at once
        run_chunks(len(items), 0, int(meta["embed"]["chunk_rows"]), batches_of, prepare,
                   forward, writer, sum(widths.values()), 1, bar)
    finally:
        if bar is not None:
            bar.close()
    mark_complete(group, meta, items.ids, UNREADABLE, stacklevel=4)


def _header(model, encoder: TextEncoder, items, widths: dict[str, int], n_layers: int,
            rows_per_chunk: int, torch, transformers) -> dict:
    """The header fields of the store: ``embed`` as :func:`daskdict.embed` writes it, and
    ``decomposition``."""
    return {
        "model": str(model), "n_items": len(items), "layers": sorted(widths),
        "embed": {
            "model": str(model), "family": encoder.family, "input": "texts", "hidden": None,
            "final": encoder.describe_final(), "pooling": encoder.default_pooling,
            "tokens": False, "max_seq_length": encoder.max_length, "layer_widths": widths,
            "precision": "float32", "chunk_rows": rows_per_chunk, "items": items.fingerprint(),
            "source": items.root, "rows_done": 0, "complete": False, "n_failed": None,
            "versions": {"daskdict": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        },
        "decomposition": {
            "method": "RepDecompose (Balasubramanian, Basu and Feizi), LayerNorm statistics "
                      "held fixed (Gandelsman, Efros and Steinhardt)",
            "target": "final", "n_layers": n_layers,
            "components": [n for n in widths if n != "final"],
            "init": "hidden state entering the first decomposed block, plus every bias and "
                    "LayerNorm beta added after it",
        },
    }


class _Forward:
    """Rows ``[final, components...]`` of a batch of texts, float32 of shape
    (n_texts, n_layers_written * width), in slices of ``batch_size`` (halved when memory runs
    out)."""

    def __init__(self, encoder: TextEncoder, n_layers: int, batch_size: int, device):
        import torch

        self.encoder = encoder
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.device = device
        self.torch = torch

    def _compute(self, encoded: dict[str, np.ndarray], start: int, stop: int) -> np.ndarray:
        inputs = {key: self.torch.from_numpy(value[start:stop]).to(self.device)
                  for key, value in encoded.items()}
        final, components = decompose_bert(
            self.encoder.model, inputs["input_ids"], inputs["attention_mask"], self.n_layers,
            self.encoder.sentence_pooling, self.encoder.normalize, inputs.get("token_type_ids"))
        return self.torch.cat([final, *components.values()], dim=1).cpu().numpy()

    def __call__(self, batch: TextInputs) -> np.ndarray:
        n_texts = len(batch.encoded["attention_mask"])
        parts = run_halving(self, n_texts, lambda a, b: self._compute(batch.encoded, a, b))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def component_layers(store: EmbeddingStore) -> list[str]:
    """The component layers of a store written by :func:`decompose`, in its order.

    Raises
    ------
    InvalidInputError
        If the store was not written by :func:`decompose`.
    """
    listed = list((store.attrs.get("decomposition") or {}).get("components") or [])
    if not listed:
        raise InvalidInputError(f"The store {str(store.path)!r} was not written by "
                                "daskdict.decompose (no decomposition in its header).")
    return listed
