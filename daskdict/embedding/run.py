"""Embed images with a Hugging Face vision transformer into an embedding store.

:func:`embed` runs a vision backbone over images and writes, per image, one vector for every
hidden state (``hidden_00`` is the embedding output, ``hidden_NN`` the output of layer NN) and
``final``, the vector a user of that model family calls "the image embedding":

=====================================  ======================  =================================
family (``config.model_type``)         ``hidden_NN``           ``final``
=====================================  ======================  =================================
CLIP (``clip``, or ``clip_vision_      CLS token               ``image_embeds``: the projected,
model`` saved with projection)                                 post-LayerNorm CLS token (what
                                                               ``get_image_features`` returns)
CLIP vision tower without projection   CLS token               ``pooler_output``: post-LayerNorm
                                                               CLS token
ViT, DeiT, DINOv2 (with registers),    CLS token               CLS token after the final
ViT-MSN                                                        LayerNorm (``last_hidden_state[:,
                                                               0]``); ViT's tanh pooler and
                                                               DeiT's distillation token unused
SigLIP (``siglip``,                    mean of all tokens      ``pooler_output``: the attention-
``siglip_vision_model``)               (SigLIP has no CLS)     pooling head (the mean of the
                                                               last hidden state without head)
other models whose hidden states are   mean of all tokens      ``pooler_output`` if the model
tokens (a warning says so)                                     has one, else the mean of the
                                                               last hidden state
=====================================  ======================  =================================

The hidden states are the model's own ``hidden_states`` (for CLIP, ``hidden_00`` is after
CLIP's pre-LayerNorm). Vectors are computed in the model's precision (``precision``) and stored
as float32, or as float16 with ``store_dtype="float16"``: half the disk and half the reads of
:func:`daskdict.fit`, which reads float16 layers as they are. A value beyond float16's range
(+-65504) is refused, naming the layer, rather than stored as inf.

How it runs: a thread pool reads, decodes (Pillow) and preprocesses (the model's image
processor) the next batches while the model computes the current one; rows are gathered into
whole chunks of the store, and a writer thread writes each chunk of every layer and then
advances a committed-row counter in the store's attributes (``attrs["daskdict"]["embed"]
["rows_done"]``). A run killed at any moment leaves every row below the counter complete;
``embed`` called again rewrites everything from the counter on. Items that cannot be read are
recorded in ``items/error`` (the message; empty for good items) and their rows are zeros;
:func:`daskdict.fit` skips them. The loop itself is :mod:`daskdict.embedding.loop`.

Texts (``embed(texts=...)``) are embedded by :mod:`daskdict.embedding.text_run` into a store of
the same format, with the same resumption and flagged rows.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daskdict._version import __version__
from daskdict.embedding.backbone import (
    DEFAULT_MODEL,
    FINAL_DESCRIPTIONS,
    KNOWN_FAMILIES,
    PRECISIONS,
    Forward,
    hidden_index,
    load_backbone,
    probe_widths,
    require_extras,
    resolve_device,
    resolve_precision,
)
from daskdict.embedding.items import ImageItems, resolve_items, to_rgb
from daskdict.embedding.loop import (
    MAX_CHUNK_ROWS,
    Batch,
    chunk_rows_for,
    describe_error,
    input_paths,
    mark_complete,
    progress_bar,
    run_chunks,
)
from daskdict.embedding.text_run import embed_texts
from daskdict.embedding.writer import ChunkWriter, check_embed_output, store_for_run
from daskdict.errors import InvalidInputError
from daskdict.io import formats
from daskdict.io.store import EmbeddingStore, open_store
from daskdict.validation import check_choice, check_positive_int

__all__ = ["DEFAULT_MODEL", "MAX_CHUNK_ROWS", "embed"]


# --------------------------------------------------------------------------- loading images


def prepare_images(items: ImageItems, processor, start: int, stop: int,
                   to_device_ready=None) -> Batch:
    """Read, decode and preprocess items ``start:stop`` (runs in a loader thread); an
    unreadable item is recorded in the batch's ``errors``, not fatal.

    ``to_device_ready``, if given, turns the stacked pixels into what the forward pass takes
    (for CUDA: a pinned tensor in the model's precision, so the copy to the GPU is cheap).
    """
    n = stop - start
    pixels, ok = [], np.zeros(n, dtype=bool)
    errors: list[str] = [""] * n
    captions: list[str | None] = [None] * n
    for offset in range(n):
        try:
            raw, captions[offset] = items.fetch(start + offset)
            image = to_rgb(raw)
            pixel = processor(images=image, return_tensors="np")["pixel_values"][0]
        except Exception as exc:  # an unreadable item is recorded, not fatal
            errors[offset] = describe_error(exc)
            continue
        pixels.append(np.asarray(pixel, dtype=np.float32))
        ok[offset] = True
    stacked = None
    if pixels:
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise InvalidInputError(
                f"The image processor returned inputs of different sizes {sorted(shapes)}; "
                "stacking them needs a processor that resizes every image to one size."
            )
        stacked = np.stack(pixels)
        if to_device_ready is not None:
            stacked = to_device_ready(stacked)
    return Batch(start, stop, stacked, ok, errors, captions)


def embed(images: Any = None, store: str | os.PathLike = "embeddings.zarr",
          model: str | os.PathLike | None = None,
          captions: Sequence[str] | str | os.PathLike | None = None,
          layers: str | Sequence[str | int] = "all", batch_size: int = 64, device: str = "auto",
          resume: bool = True, *, texts: Any = None, text_column: str | None = None,
          pooling: str | None = None, tokens: bool = False, precision: str = "auto",
          chunk_rows: int | None = None, num_workers: int | None = None,
          verbose: bool = True, store_dtype: str = "float32") -> EmbeddingStore:
    """Embed images with a vision model, or texts with a text encoder, into an embedding store.

    Parameters
    ----------
    images : path, sequence, PIL image, ndarray or dataset, optional
        A folder (recursive; .jpg .jpeg .png .bmp .gif .webp .tif .tiff; hidden files skipped;
        sorted by relative path), a CSV/JSONL manifest with ``path`` (and ``caption``), an
        image file, a list of paths, PIL images or arrays, an (n_images, H, W, C) array, or a
        dataset of dicts with ``image`` (or ``img``) and optionally ``caption`` (or ``text``).
    store : str or path-like, default="embeddings.zarr"
        The Zarr v3 store to write; never one of the inputs, nor inside one.
    model : str or path-like, optional
        A Hugging Face name or ``save_pretrained`` folder: a vision model and image processor
        (default ``"openai/clip-vit-base-patch32"``), or for texts a text encoder and tokenizer
        or a sentence-transformers folder (default ``"sentence-transformers/all-MiniLM-L6-v2"``).
    captions : sequence of str or path, optional
        Images only: one caption per image, or a CSV/JSONL manifest (``path``, ``caption``).
    layers : "all", str or sequence of str or int, default="all"
        ``hidden_00`` … ``hidden_L`` and ``final``, or names and indices (``-1``: the last).
    batch_size : int, default=64
        Images or texts per forward pass; halved for the rest of the run when memory runs out.
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), or a PyTorch device string.
    resume : bool, default=True
        Continue an unfinished store of the same run (a finished one is returned as is);
        ``False`` replaces a store written by ``embed``. Nothing else is ever replaced.
    texts : sequence of str, path, sequence of dict, or corpus, optional
        Instead of images: strings, a CSV/JSONL file, records, or a corpus with ``records()``
        (``load_debian_packages()``); empty or non-string texts are flagged.
    text_column : str, optional
        The text column of a file or records (default: ``text``, ``description``, ...).
    pooling : {"cls", "mean", "max"}, optional
        Texts: pooling over non-padding tokens (default: sentence-transformers' pooling, or mean).
    tokens : bool, default=False
        Texts: a row per token, padding excluded (``items/item``, ``items/position``).
    precision : {"auto", "float32", "float16", "bfloat16"}, default="auto"
        Of the forward pass (``"auto"``: float16 on CUDA, else float32).
    chunk_rows : int, optional
        Rows per chunk, the unit of writing and resumption; default min(4096, 32 MiB of rows).
    num_workers : int, optional
        Threads reading images (default min(8, cores - 1)); texts use one tokenizing thread.
    verbose : bool, default=True
        Show a progress bar.
    store_dtype : {"float32", "float16"}, default="float32"
        Of the stored layers: float16 halves the store and ``fit``'s reads (|values| <= 65504).

    Returns
    -------
    EmbeddingStore
        ``layers/<name>`` (n_rows, width) in ``store_dtype``, ``items/id``, ``items/caption``
        and ``items/error`` (why a row could not be embedded; its row is zeros).

    Raises
    ------
    ImportError
        Without PyTorch or transformers (or Pillow, for images).
    StoreNotFoundError
        If the images, text file or caption manifest do not exist.
    InvalidInputError
        Bad input or options; a model that cannot load or gives no token states; float16 overflow.
    OutputNotWritableError
        If ``store`` is an input, or exists and was not written by ``embed``.
    CheckpointMismatchError
        If ``store`` holds an unfinished store of another run or store_dtype (``resume=True``).
    """
    _check_inputs(images, texts, captions, text_column, pooling, tokens)
    settings = _check_settings(batch_size, chunk_rows, num_workers, resume, precision,
                               store_dtype, _verbose(verbose))
    if texts is not None:
        return embed_texts(texts, store, model, layers, device, settings,
                           text_column=text_column, pooling=pooling, tokens=tokens)
    return _embed_images(images, store, model, captions, layers, device, settings)


def _embed_images(images, store, model, captions, layers, device, settings: dict):
    """The image half of :func:`embed`."""
    torch, _ = require_extras()
    model = DEFAULT_MODEL if model is None else model
    items = resolve_items(images, captions)
    path = check_embed_output(store, input_paths([images, captions], model, items))
    torch_device = resolve_device(device, torch)
    settings["precision"] = resolve_precision(settings["precision"], torch_device)
    _embed_into(path, items, model, layers, torch_device, settings)
    return open_store(path)


def _check_inputs(images, texts, captions, text_column, pooling, tokens) -> None:
    """Images or texts, and only the options that go with them."""
    if (images is None) == (texts is None):
        raise InvalidInputError(
            "daskdict.embed needs images or texts (one of them). Got "
            + ("both." if images is not None else "neither."))
    if texts is not None and captions is not None:
        raise InvalidInputError("captions are for images; a text is its own caption.")
    if images is not None:
        for name, value, default in (("text_column", text_column, None),
                                     ("pooling", pooling, None), ("tokens", tokens, False)):
            if value is not default:
                raise InvalidInputError(f"{name}= is for texts; images were given.")


def _verbose(verbose: Any) -> bool:
    if not isinstance(verbose, bool):
        raise InvalidInputError(f"Expected verbose to be True or False. Got {verbose!r}.")
    return verbose


def _check_settings(batch_size, chunk_rows, num_workers, resume, precision, store_dtype,
                    verbose: bool) -> dict:
    """Every option checked before any work starts, as a dict of the checked values."""
    if not isinstance(resume, bool):
        raise InvalidInputError(f"Expected resume to be True or False. Got {resume!r}.")
    check_choice("precision", precision, PRECISIONS)
    return {"batch_size": check_positive_int("batch_size", batch_size),
            "chunk_rows": check_positive_int("chunk_rows", chunk_rows, optional=True),
            "num_workers": check_positive_int("num_workers", num_workers, optional=True),
            "resume": resume, "verbose": verbose, "precision": precision,
            "store_dtype": formats.check_layer_dtype(store_dtype, "store_dtype")}


def _embed_into(path: Path, items: ImageItems, model, layers, torch_device,
                settings: dict) -> None:
    """Load the model, then create or resume the store at ``path`` and embed what is left."""
    torch, transformers = require_extras()
    dtype = getattr(torch, settings["precision"])
    backbone, processor = load_backbone(model)
    for module in (backbone.tower, backbone.projection):
        if module is not None:
            module.to(device=torch_device, dtype=dtype)
    widths = probe_widths(backbone, processor, layers, torch_device, dtype)
    if backbone.family not in KNOWN_FAMILIES:
        warnings.warn(
            f"daskdict.embed has no rule for the model family {backbone.family!r}: it stores "
            "the mean of all tokens of each hidden state and, as 'final', the pooler output "
            "(or the mean of the last hidden state).", UserWarning, stacklevel=3)
    rows_per_chunk = chunk_rows_for(settings["chunk_rows"], widths, len(items))
    fields = {
        "model": str(model), "n_items": len(items), "layers": sorted(widths),
        "embed": {
            "model": str(model), "family": backbone.family,
            "hidden": "CLS token" if backbone.token == "cls" else "mean of all tokens",
            "final": FINAL_DESCRIPTIONS[backbone.final], "layer_widths": widths,
            "precision": settings["precision"], "store_dtype": settings["store_dtype"],
            "chunk_rows": rows_per_chunk,
            "items": items.fingerprint(), "source": items.root, "rows_done": 0,
            "complete": False, "n_failed": None,
            "versions": {"daskdict": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        },
    }
    group = store_for_run(path, items, fields, widths, settings["chunk_rows"], rows_per_chunk,
                          settings["resume"])
    meta = dict(group.attrs[formats.HEADER_KEY])
    if meta["embed"]["complete"]:
        return
    forward = Forward(backbone, [hidden_index(n) for n in widths if n != "final"],
                      "final" in widths, settings["batch_size"], torch_device, dtype, torch)
    _embed_rest(items, processor, forward, group, widths, meta, settings)


def _embed_rest(items: ImageItems, processor, forward: Forward, group, widths: dict[str, int],
                meta: dict, settings: dict) -> None:
    """Embed every row from the committed counter on, then mark the store complete."""
    embed_meta = meta["embed"]
    rows_done = int(embed_meta["rows_done"])
    batch_size = settings["batch_size"]
    n_workers = settings["num_workers"] or min(8, max(1, (os.cpu_count() or 2) - 1))
    to_device_ready = None
    if forward.device.type == "cuda":
        def to_device_ready(pixels: np.ndarray):
            return forward.torch.from_numpy(pixels).to(forward.dtype).pin_memory()

    def batches_of(start: int, stop: int) -> list[tuple[int, int]]:
        return [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]

    writer = ChunkWriter(group, list(widths), widths, meta, items.captions_per_item)
    bar = progress_bar(len(items), rows_done, settings["verbose"])
    try:
        run_chunks(len(items), rows_done, int(embed_meta["chunk_rows"]), batches_of,
                   lambda a, b: prepare_images(items, processor, a, b, to_device_ready), forward,
                   writer, sum(widths.values()), n_workers, bar)
    finally:
        if bar is not None:
            bar.close()
    mark_complete(group, meta, items.ids, "images could not be read", stacklevel=5)
