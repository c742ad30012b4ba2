"""``decompose``: images and a vision transformer, or texts and a BERT text encoder, in; an
embedding store of output components out.

The store is an ordinary daskdict embedding store (as :func:`daskdict.embed` writes): one row
per item, layer ``final`` (the image or sentence embedding, exactly as ``embed`` writes it for
the same model) and one layer per component (``component.init``, ``component.NN.hHH``,
``component.NN.mlp``; see :mod:`daskdict.decomposition.vision` and
:mod:`daskdict.decomposition.bert`), whose rows sum to ``final`` to float32 rounding (float16
with ``dtype="float16"``). Layer names use ``.`` rather than ``/`` because a store's layers are
the arrays directly under its ``layers`` group. The model's config picks the path: ViT, DeiT,
DINOv2 and CLIP (vision) take images, BERT takes texts.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from zarr.codecs import Crc32cCodec

from daskdict._version import __version__
from daskdict.decomposition.bert import (
    LINEAR_POOLINGS,
    SUPPORTED_FAMILIES,
    check_bert_model,
    component_names,
    decompose_bert,
)
from daskdict.decomposition.vision import (
    VISION_FAMILIES,
    VisionTower,
    check_vision_model,
    decompose_vision,
    load_vision,
    model_type_of,
    unsupported_model,
)
from daskdict.embedding.backbone import (
    FINAL_DESCRIPTIONS,
    require_extras,
    resolve_device,
    run_halving,
)
from daskdict.embedding.items import resolve_items
from daskdict.embedding.loop import (
    Batch,
    chunk_rows_for,
    input_paths,
    mark_complete,
    progress_bar,
    run_chunks,
)
from daskdict.embedding.run import prepare_images
from daskdict.embedding.text import DEFAULT_TEXT_MODEL, TextEncoder, TextInputs, load_text_encoder
from daskdict.embedding.text_items import resolve_texts
from daskdict.embedding.text_run import prepare_texts
from daskdict.embedding.writer import ChunkWriter, store_for_run
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.atomic import recover_replaced
from daskdict.io.store import KIND, EmbeddingStore, open_store
from daskdict.validation import check_choice, check_positive_int

__all__ = ["DEFAULT_N_LAYERS", "DTYPES", "LAYER_PREFIX", "TARGETS", "check_text_encoder",
           "component_layers", "decompose"]

# the last ten blocks, as Balasubramanian, Basu and Feizi decompose
DEFAULT_N_LAYERS = 10
LAYER_PREFIX = "component."
TARGETS = ("final",)
DTYPES = ("float32", "float16")
UNREADABLE = "texts are empty or not strings"
METHOD = ("RepDecompose (Balasubramanian, Basu and Feizi), LayerNorm statistics held fixed "
          "(Gandelsman, Efros and Steinhardt)")


def _check_options(n_layers, batch_size, overwrite, verbose, target, dtype) -> None:
    check_positive_int("n_layers", n_layers, optional=True)
    check_positive_int("batch_size", batch_size)
    check_choice("dtype", dtype, DTYPES)
    for name, value in (("overwrite", overwrite), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise InvalidInputError(f"Expected {name} to be True or False. Got {value!r}.")
    if target == "pooler":
        raise InvalidInputError(
            "The pooler output (a dense layer and tanh over the CLS token) is not linear, so it "
            "does not split into components; decompose target='final' (the embedding "
            "daskdict.embed stores as final: for ViT and DeiT the CLS token after the final "
            "LayerNorm, before the pooler).")
    if target not in TARGETS:
        raise InvalidInputError(f"Expected target to be one of {list(TARGETS)}. Got {target!r}.")


def check_text_encoder(encoder: TextEncoder, n_layers: int | None) -> int:
    """The number of blocks to decompose (``None``: the default); raise for a model or pooling
    that cannot be, or ``n_layers`` out of range.

    Raises
    ------
    InvalidInputError
    """
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


def decompose(items: Any, store: str | os.PathLike, model: str | os.PathLike | None = None, *,
              n_layers: int | None = None, batch_size: int = 8, device: str = "cpu",
              overwrite: bool = False, verbose: bool = True, text_column: str | None = None,
              target: str = "final", captions: Any = None,
              dtype: str = "float32") -> EmbeddingStore:
    """Write the exact decomposition of a vision transformer's image embeddings, or of a BERT
    text encoder's sentence embeddings.

    Parameters
    ----------
    items : images or texts
        For a vision model, images as for :func:`daskdict.embed` (a folder, manifest, paths,
        PIL images, arrays or a dataset); for a BERT, texts as ``embed(texts=...)`` takes them.
    store : str or path-like
        The new embedding store.
    model : str or path-like, optional
        A Hugging Face name or ``save_pretrained`` folder: a ViT, DeiT, DINOv2 or CLIP model
        (with its image processor), or a post-norm BERT (also as a sentence-transformers
        folder); default all-MiniLM-L6-v2.
    n_layers : int, optional
        Decompose the last ``n_layers`` blocks (the earlier ones are inside ``init``); default
        the last ten, or every block of a smaller model.
    batch_size : int, default=8
        Items per forward pass.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
    overwrite : bool, default=False
        Replace an existing embedding store at ``store`` (never an input).
    verbose : bool, default=True
        Show a progress bar.
    text_column : str, optional
        Texts only: as for :func:`daskdict.embed`.
    target : {"final"}
        What is decomposed: ``final`` as :func:`daskdict.embed` stores it (``"pooler"`` is
        refused: a dense layer and tanh are not linear).
    captions : sequence of str or path, optional
        Images only: as for :func:`daskdict.embed`.
    dtype : {"float32", "float16"}, default="float32"
        Of the stored component layers (``final`` stays float32); float16 halves the store and
        the components then sum to ``final`` to float16 rounding.

    Returns
    -------
    EmbeddingStore
        Layers ``final`` and ``component.*`` of shape (n_items, width) (width: CLIP's
        projection width, else the model's); per row the components sum to ``final``.

    Raises
    ------
    InvalidInputError
        For a model outside these families, a nonlinear pooling or head, ``n_layers`` out of
        range, or a bad option; before anything is written.
    OutputNotWritableError
        If ``store`` is an input, or exists and ``overwrite`` is False.
    """
    _check_options(n_layers, batch_size, overwrite, verbose, target, dtype)
    require_extras(images=False)
    model = DEFAULT_TEXT_MODEL if model is None else model
    options = {"n_layers": n_layers, "batch_size": batch_size, "device": device,
               "overwrite": overwrite, "verbose": verbose, "dtype": dtype}
    model_type = model_type_of(model)
    if model_type in VISION_FAMILIES:
        if text_column is not None:
            raise InvalidInputError("text_column= is for texts; the model is a vision model.")
        return _decompose_images(items, store, model, model_type, captions, options)
    if model_type is not None and model_type not in SUPPORTED_FAMILIES:
        raise unsupported_model(model_type)
    if captions is not None:
        raise InvalidInputError("captions are for images; a text is its own caption.")
    return _decompose_texts(items, store, model, text_column, options)


def _output(store, named: list, model, items, overwrite: bool):
    """The checked output path (the writer rule), before any work."""
    path = recover_replaced(formats.check_writable(store))
    formats.check_output(path, KIND, inputs=input_paths(named, model, items),
                         overwrite=overwrite)
    return path


def _decompose_texts(texts, store, model, text_column, options: dict) -> EmbeddingStore:
    """The text half of :func:`decompose`."""
    torch, transformers = require_extras(images=False)
    items = resolve_texts(texts, text_column)
    path = _output(store, [texts], model, items, options["overwrite"])
    torch_device = resolve_device(options["device"], torch)
    encoder = load_text_encoder(model)
    n_layers = check_text_encoder(encoder, options["n_layers"])
    encoder.model.to(device=torch_device, dtype=torch.float32)
    config = encoder.model.config
    names = ["final", *(LAYER_PREFIX + n for n in component_names(
        config.num_hidden_layers, config.num_attention_heads, n_layers))]
    width = config.hidden_size * len(encoder.sentence_pooling)
    widths = {name: width for name in names}
    rows_per_chunk = chunk_rows_for(None, {"final": width * len(names)}, len(items))
    embed = {"family": encoder.family, "input": "texts", "hidden": None,
             "final": encoder.describe_final(), "pooling": encoder.default_pooling,
             "tokens": False, "max_seq_length": encoder.max_length}
    fields = _header(model, items, widths, n_layers, rows_per_chunk, embed, options["dtype"],
                     torch, transformers)
    group = store_for_run(path, items, fields, widths, None, rows_per_chunk, resume=False)
    batch_size = options["batch_size"]
    forward = _Forward(encoder, n_layers, batch_size, torch_device)
    # one loader thread: a tokenizer is not safe to call from several threads at once
    _fill(group, items, lambda a, b: prepare_texts(items, encoder, a, b), forward, widths,
          options, 1, ("text", UNREADABLE))
    return open_store(path)


def _decompose_images(images, store, model, model_type: str, captions,
                      options: dict) -> EmbeddingStore:
    """The image half of :func:`decompose`."""
    torch, transformers = require_extras()
    items = resolve_items(images, captions)
    path = _output(store, [images, captions], model, items, options["overwrite"])
    torch_device = resolve_device(options["device"], torch)
    backbone, processor, tower = load_vision(model, model_type, torch_device, torch)
    n_layers = options["n_layers"]
    n_layers = check_vision_model(
        tower, min(DEFAULT_N_LAYERS, len(tower.blocks)) if n_layers is None else n_layers)
    width = (tower.projection.out_features if tower.projection is not None
             else tower.final_norm.normalized_shape[0])
    names = ["final", *(LAYER_PREFIX + n for n in component_names(
        len(tower.blocks), tower.n_heads, n_layers))]
    widths = {name: width for name in names}
    rows_per_chunk = chunk_rows_for(None, {"final": width * len(names)}, len(items))
    embed = {"family": backbone.family, "hidden": "CLS token",
             "final": FINAL_DESCRIPTIONS[backbone.final]}
    fields = _header(model, items, widths, n_layers, rows_per_chunk, embed, options["dtype"],
                     torch, transformers)
    group = store_for_run(path, items, fields, widths, None, rows_per_chunk, resume=False)
    forward = _VisionForward(tower, backbone.final, n_layers, options["batch_size"],
                             torch_device)
    n_workers = min(8, max(1, (os.cpu_count() or 2) - 1))
    _fill(group, items, lambda a, b: prepare_images(items, processor, a, b), forward, widths,
          options, n_workers, ("img", "images could not be read"))
    return open_store(path)


def _fill(group, items, prepare, forward, widths: dict[str, int], options: dict,
          n_workers: int, wording: tuple[str, str]) -> None:
    """Decompose every item into the new store ``group`` and mark it complete.

    ``wording`` is the progress bar's unit and what the flagged rows are, for the warning.
    """
    meta = dict(group.attrs[formats.HEADER_KEY])
    names, batch_size = list(widths), options["batch_size"]
    chunk_rows = int(meta["embed"]["chunk_rows"])
    if options["dtype"] == "float16":
        _components_as_float16(group, widths, chunk_rows)
        forward = _Float16Checked(forward, widths["final"])
    writer = ChunkWriter(group, names, widths, meta, captions_per_item=items.captions_per_item)
    bar = progress_bar(len(items), 0, options["verbose"], unit=wording[0])

    def batches_of(start: int, stop: int) -> list[tuple[int, int]]:
        return [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]

    def prepare_batch(start: int, stop: int) -> Batch:
        return prepare(start, stop)

    try:
        run_chunks(len(items), 0, chunk_rows, batches_of, prepare_batch, forward, writer,
                   sum(widths.values()), n_workers, bar)
    finally:
        if bar is not None:
            bar.close()
    mark_complete(group, meta, items.ids, wording[1], stacklevel=5)


def _components_as_float16(group, widths: dict[str, int], chunk_rows: int) -> None:
    """Replace the new, still empty component arrays by float16 ones."""
    for name, width in widths.items():
        if name != "final":
            group.create_array(f"layers/{name}", shape=group[f"layers/{name}"].shape,
                               dtype=np.float16, chunks=(chunk_rows, width),
                               compressors=[Crc32cCodec()], config={"write_empty_chunks": True},
                               overwrite=True)


class _Float16Checked:
    """A forward whose component columns must fit in float16: a larger value would be stored
    as inf."""

    def __init__(self, forward, final_width: int):
        self.forward = forward
        self.final_width = final_width

    def __call__(self, inputs) -> np.ndarray:
        rows = self.forward(inputs)
        largest = float(np.abs(rows[:, self.final_width:]).max(initial=0.0))
        if largest > float(np.finfo(np.float16).max):
            raise InvalidInputError(
                f"A component value ({largest:.3g}) does not fit in float16; decompose with "
                "dtype='float32'.")
        return rows


def _header(model, items, widths: dict[str, int], n_layers: int, rows_per_chunk: int,
            embed: dict, dtype: str, torch, transformers) -> dict:
    """The header fields of the store: ``embed`` as :func:`daskdict.embed` writes it (with the
    path's own ``embed`` fields), and ``decomposition``."""
    return {
        "model": str(model), "n_items": len(items), "layers": sorted(widths),
        "embed": {
            "model": str(model), **embed, "layer_widths": widths,
            "precision": "float32", "chunk_rows": rows_per_chunk, "items": items.fingerprint(),
            "source": items.root, "rows_done": 0, "complete": False, "n_failed": None,
            "versions": {"daskdict": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        },
        "decomposition": {
            "method": METHOD, "target": "final", "n_layers": n_layers,
            "components": [n for n in widths if n != "final"], "dtype": dtype,
            "init": "hidden state entering the first decomposed block, plus every bias and "
                    "LayerNorm beta added after it",
        },
    }


class _VisionForward:
    """Rows ``[final, components...]`` of a batch of images, float32 of shape
    (n_images, n_layers_written * width), in slices of ``batch_size`` (halved when memory runs
    out)."""

    def __init__(self, tower: VisionTower, final: str, n_layers: int, batch_size: int, device):
        import torch

        self.tower = tower
        self.final = final
        self.n_layers = n_layers
        self.batch_size = batch_size
        self.device = device
        self.torch = torch

    def _compute(self, pixels: np.ndarray, start: int, stop: int) -> np.ndarray:
        inputs = self.torch.from_numpy(pixels[start:stop]).to(self.device, self.torch.float32)
        final, components = decompose_vision(self.tower, self.final, inputs, self.n_layers)
        parts = [final, *(c.float() for c in components.values())]
        return self.torch.cat(parts, dim=1).cpu().numpy()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        parts = run_halving(self, len(pixels), lambda a, b: self._compute(pixels, a, b))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


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
