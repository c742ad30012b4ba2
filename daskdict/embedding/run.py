"""Embed images with a Hugging Face vision transformer into an embedding store (issue 3).

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
CLIP's pre-LayerNorm). Vectors are computed in the model's precision and stored as float32.

How it runs: a thread pool reads, decodes (Pillow) and preprocesses (the model's image
processor) the next batches while the model computes the current one; rows are gathered into
whole chunks of the store, and a writer thread writes each chunk of every layer and then
advances a committed-row counter in the store's attributes (``attrs["daskdict"]["embed"]
["rows_done"]``). A run killed at any moment leaves every row below the counter complete;
``embed`` called again rewrites everything from the counter on. Items that cannot be read are
recorded in ``items/error`` (the message; empty for good items) and their rows are zeros;
:func:`daskdict.fit` skips them.
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from daskdict._version import __version__
from daskdict.embedding.items import ImageItems, resolve_items, to_rgb
from daskdict.errors import CheckpointMismatchError, InvalidInputError, OutputNotWritableError
from daskdict.io.store import (
    FORMAT_VERSION,
    EmbeddingStore,
    _write_vector,
    atomic_group,
    check_writable,
    default_chunk_rows,
    open_store,
    recover_replaced,
)

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
# rows per chunk at most: a chunk is the unit of resumption (work lost to a kill) and of the
# writer's memory (rows x all layers)
MAX_CHUNK_ROWS = 4096
_PRECISIONS = ("auto", "float32", "float16", "bfloat16")
KNOWN_FAMILIES = ("clip", "siglip", "vit", "deit", "dinov2")
_CLS_FAMILIES = {"vit": "vit", "deit": "deit", "dinov2": "dinov2",
                 "dinov2_with_registers": "dinov2", "vit_msn": "vit"}
_FINAL_DESCRIPTIONS = {
    "image_embeds": "image_embeds: projection of the post-LayerNorm CLS token",
    "pooler_output": "pooler_output",
    "cls": "CLS token after the final LayerNorm (last_hidden_state[:, 0])",
    "pooler_or_mean": "pooler_output, or the mean of the last hidden state",
}


def _require_extras():
    """Import torch and transformers, or fail with the command that installs them."""
    try:
        import PIL  # noqa: F401
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"daskdict.embedding.run needs PyTorch, transformers and Pillow ({exc.name} is missing). "
            "Install them with: pip install 'daskdict[embed]'"
        ) from exc
    return torch, transformers


# --------------------------------------------------------------------------- the model


@dataclass
class Backbone:
    """A loaded vision tower and how its outputs become stored vectors.

    Attributes
    ----------
    family : str
        ``"clip"``, ``"siglip"``, ``"vit"``, ``"deit"``, ``"dinov2"`` or the model type of an
        unknown family.
    tower : torch.nn.Module
        Called as ``tower(pixel_values=..., output_hidden_states=True)``.
    projection : torch.nn.Module or None
        CLIP's visual projection.
    token : {"cls", "mean"}
        How a hidden state (batch, tokens, width) becomes one vector per image.
    final : {"image_embeds", "pooler_output", "cls", "pooler_or_mean"}
    """

    family: str
    tower: Any
    projection: Any
    token: str
    final: str

    def vectors(self, pixel_values, hidden_indices: Sequence[int], with_final: bool):
        """Per image, the selected hidden vectors and ``final``, concatenated.

        Parameters
        ----------
        pixel_values : torch.Tensor of shape (batch, channels, height, width)
        hidden_indices : sequence of int
            Indices into the model's hidden states.
        with_final : bool

        Returns
        -------
        torch.Tensor of shape (batch, sum of the widths), float32, on the model's device.
        """
        import torch

        with torch.inference_mode():
            out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
            hidden = _token_hidden_states(out)
            parts = []
            for index in hidden_indices:
                state = hidden[index]
                parts.append(state[:, 0].float() if self.token == "cls"
                             else state.float().mean(dim=1))
            if with_final:
                parts.append(self._final(out).float())
            return torch.cat(parts, dim=1)

    def _final(self, out):
        if self.final == "image_embeds":
            return self.projection(out.pooler_output)
        if self.final == "cls":
            return out.last_hidden_state[:, 0]
        pooled = getattr(out, "pooler_output", None)
        if self.final == "pooler_output" and pooled is not None:
            return pooled
        if pooled is not None and pooled.ndim == 2:
            return pooled
        return out.last_hidden_state.float().mean(dim=1)


def _token_hidden_states(out):
    hidden = getattr(out, "hidden_states", None)
    if not hidden or any(getattr(h, "ndim", 0) != 3 for h in hidden):
        shapes = [tuple(h.shape) for h in hidden] if hidden else None
        raise InvalidInputError(
            "Expected the model to return hidden states of shape (batch, tokens, width) with "
            f"output_hidden_states=True. Got {shapes}. daskdict.embed needs a transformer "
            "vision backbone (CLIP, SigLIP, ViT, DeiT, DINOv2, ...)."
        )
    return hidden


def load_backbone(model: str | os.PathLike) -> tuple[Backbone, Any]:
    """Load a vision backbone and its image processor by name or local folder.

    Parameters
    ----------
    model : str or path-like
        A Hugging Face model name or a folder written by ``save_pretrained`` (model and image
        processor).

    Returns
    -------
    backbone : Backbone
        On the CPU, in float32, in eval mode.
    processor : transformers image processor
    """
    _, transformers = _require_extras()
    name = str(model)
    try:
        config = transformers.AutoConfig.from_pretrained(name)
        processor = transformers.AutoImageProcessor.from_pretrained(name)
        model_type = config.model_type
        if model_type == "clip":
            loaded = transformers.CLIPModel.from_pretrained(name)
            backbone = Backbone("clip", loaded.vision_model, loaded.visual_projection, "cls",
                                "image_embeds")
        elif model_type == "clip_vision_model":
            projected = "CLIPVisionModelWithProjection" in (config.architectures or [])
            cls = (transformers.CLIPVisionModelWithProjection if projected
                   else transformers.CLIPVisionModel)
            loaded = cls.from_pretrained(name)
            backbone = Backbone("clip", getattr(loaded, "vision_model", loaded),
                                loaded.visual_projection if projected else None, "cls",
                                "image_embeds" if projected else "pooler_output")
        elif model_type in ("siglip", "siglip_vision_model"):
            cls = (transformers.SiglipModel if model_type == "siglip"
                   else transformers.SiglipVisionModel)
            loaded = cls.from_pretrained(name)
            tower = getattr(loaded, "vision_model", loaded)
            backbone = Backbone("siglip", tower, None, "mean", "pooler_or_mean")
        elif model_type in _CLS_FAMILIES:
            loaded = transformers.AutoModel.from_pretrained(name)
            backbone = Backbone(_CLS_FAMILIES[model_type], loaded, None, "cls", "cls")
        else:
            loaded = transformers.AutoModel.from_pretrained(name)
            backbone = Backbone(model_type, loaded, None, "mean", "pooler_or_mean")
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"Cannot load the model {name!r} (a Hugging Face model name, or a folder written by "
            f"save_pretrained with the model and its image processor): {exc}"
        ) from exc
    for module in (backbone.tower, backbone.projection):
        if module is not None:
            module.eval()
    return backbone, processor


# --------------------------------------------------------------------------- loading images


@dataclass
class _Batch:
    """Items ``start:stop``, read and preprocessed."""

    start: int
    stop: int
    pixels: Any  # (n_ok, channels, height, width) of the readable items, or None
    ok: np.ndarray  # (stop - start,) bool
    errors: list[str]
    captions: list[str | None]


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


def _prepare(items: ImageItems, processor, start: int, stop: int, to_device_ready=None) -> _Batch:
    """Read, decode and preprocess items ``start:stop`` (runs in a loader thread).

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
            errors[offset] = _describe(exc)
            continue
        pixels.append(np.asarray(pixel, dtype=np.float32))
        ok[offset] = True
    stacked = None
    if pixels:
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise InvalidInputError(
                f"The image processor returned inputs of different sizes {sorted(shapes)}; "
                "daskdict.embedding.run needs a processor that resizes every image to one size."
            )
        stacked = np.stack(pixels)
        if to_device_ready is not None:
            stacked = to_device_ready(stacked)
    return _Batch(start, stop, stacked, ok, errors, captions)


class _Prefetcher:
    """Prepares batches in a thread pool, ``depth`` ahead of the consumer, in order."""

    def __init__(self, ranges: list[tuple[int, int]], prepare, n_workers: int, depth: int):
        self._pool = ThreadPoolExecutor(n_workers, thread_name_prefix="daskdict-embed-load")
        self._ranges = iter(ranges)
        self._prepare = prepare
        self._queue: deque[Future] = deque()
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        span = next(self._ranges, None)
        if span is not None:
            self._queue.append(self._pool.submit(self._prepare, *span))

    def __iter__(self) -> Iterator[_Batch]:
        while self._queue:
            future = self._queue.popleft()
            self._submit()
            yield future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the store


def _layer_names(n_hidden: int) -> list[str]:
    width = max(2, len(str(n_hidden - 1)))
    return [f"hidden_{i:0{width}d}" for i in range(n_hidden)]


def select_layers(layers: str | Sequence[str | int], n_hidden: int) -> list[str]:
    """Layer names for ``layers`` (``"all"``, a name, or names and hidden-state indices).

    Integers index the hidden states (``0`` is ``hidden_00``, ``-1`` the last one).
    """
    hidden = _layer_names(n_hidden)
    available = [*hidden, "final"]
    if isinstance(layers, str):
        layers = available if layers == "all" else [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise InvalidInputError(
            f"Expected layers='all', a layer name or a non-empty list. Got {layers!r}.")
    chosen = []
    for layer in layers:
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -n_hidden <= layer < n_hidden:
                raise InvalidInputError(
                    f"Layer index {layer} is out of range: this model has {n_hidden} hidden "
                    f"states ({hidden[0]} … {hidden[-1]}).")
            name = hidden[layer]
        elif layer in available:
            name = layer
        else:
            raise InvalidInputError(
                f"Unknown layer {layer!r}. This model has {hidden[0]} … {hidden[-1]} and "
                "'final'.")
        if name not in chosen:
            chosen.append(name)
    return chosen


def _embed_meta(store_meta: dict) -> dict:
    return dict(store_meta.get("embed") or {})


def _open_for_resume(path: Path, wanted: dict, chunk_rows: int | None) -> zarr.Group:
    """The existing store at ``path`` if it continues this run; raise naming any difference."""
    try:
        group = zarr.open_group(path, mode="r+")
    except Exception as exc:
        raise CheckpointMismatchError(
            f"{str(path)!r} exists and is not an embedding store ({exc}). Remove it or choose "
            "another path.") from exc
    saved = _embed_meta(dict(group.attrs.get("daskdict", {})))
    if not saved:
        raise CheckpointMismatchError(
            f"{str(path)!r} exists and was not written by daskdict.embed. Remove it or choose "
            "another path.")
    problems = []
    if saved.get("model") != wanted["model"]:
        problems.append(f"model {saved.get('model')!r}, not {wanted['model']!r}")
    if saved.get("layer_widths") != wanted["layer_widths"]:
        problems.append(f"layers {saved.get('layer_widths')}, not {wanted['layer_widths']}")
    if saved.get("precision") != wanted["precision"]:
        problems.append(f"precision {saved.get('precision')}, not {wanted['precision']} "
                        "(pass precision= explicitly)")
    if saved.get("items") != wanted["items"]:
        problems.append(f"other images or captions ({saved.get('items', {}).get('n_items')} "
                        f"items, not {wanted['items']['n_items']}, or other paths/captions)")
    if chunk_rows is not None and saved.get("chunk_rows") != chunk_rows:
        problems.append(f"chunk_rows={saved.get('chunk_rows')}, not {chunk_rows}")
    if problems:
        raise CheckpointMismatchError(
            f"The store {str(path)!r} was started by another embed run: "
            + "; ".join(problems) + ". Pass resume=False to start over, or another path.")
    return group


def _create(path: Path, items: ImageItems, meta: dict, widths: dict[str, int],
            chunk_rows: int) -> zarr.Group:
    """Write the empty store (arrays, ids, captions, attributes) and swap it into place."""
    n_items = len(items)
    with atomic_group(path) as group:
        for name, width in widths.items():
            group.create_array(f"layers/{name}", shape=(n_items, width), dtype=np.float32,
                               chunks=(chunk_rows, width), compressors=[Crc32cCodec()],
                               config={"write_empty_chunks": True})
        _write_vector(group, "items/id", items.ids)
        if items.captions is not None:
            _write_vector(group, "items/caption", items.captions)
        elif items.captions_per_item:
            group.create_array("items/caption", shape=(n_items,), dtype=str,
                               chunks=(chunk_rows,), config={"write_empty_chunks": True})
        group.create_array("items/error", shape=(n_items,), dtype=str, chunks=(chunk_rows,),
                           config={"write_empty_chunks": True})
        group.attrs["daskdict"] = meta
    return zarr.open_group(path, mode="r+")


def _remove_partial_writes(path: Path) -> None:
    """Delete temporary files of chunk writes that a killed run left behind."""
    for leftover in path.rglob("*.partial"):
        leftover.unlink(missing_ok=True)


class _ChunkWriter:
    """Writes whole chunks in a background thread, then advances the committed-row counter."""

    def __init__(self, group: zarr.Group, names: list[str], widths: dict[str, int],
                 meta: dict, captions_per_item: bool):
        self._group = group
        self._arrays = {name: group[f"layers/{name}"] for name in names}
        self._columns = {}
        offset = 0
        for name in names:
            self._columns[name] = (offset, offset + widths[name])
            offset += widths[name]
        self._errors = group["items/error"]
        self._captions = group["items/caption"] if captions_per_item else None
        self._meta = meta
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="daskdict-embed-write")
        self._pending: Future | None = None

    def submit(self, start: int, stop: int, rows: np.ndarray, errors: list[str],
               captions: list[str | None]) -> None:
        """Queue one chunk; waits for the previous chunk first (one chunk in flight)."""
        self.wait()
        self._pending = self._pool.submit(self._write, start, stop, rows, errors, captions)

    def _write(self, start, stop, rows, errors, captions) -> None:
        for name, array in self._arrays.items():
            first, last = self._columns[name]
            array[start:stop] = rows[:, first:last]
        self._errors[start:stop] = np.asarray(errors, dtype=str)
        if self._captions is not None:
            self._captions[start:stop] = np.asarray([c or "" for c in captions], dtype=str)
        # only now, with every array of the chunk written, are its rows committed
        self._meta["embed"]["rows_done"] = stop
        self._group.attrs["daskdict"] = self._meta

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# --------------------------------------------------------------------------- running


def _resolve_device(device: str, torch):
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(
            f"Expected device='auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. Got {device!r}.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device={device!r}, but PyTorch sees no CUDA device here.")
    return resolved


def _resolve_precision(precision: str, device) -> str:
    if precision not in _PRECISIONS:
        raise InvalidInputError(f"Expected precision in {_PRECISIONS}. Got {precision!r}.")
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    return precision


def _is_out_of_memory(exc: BaseException, torch) -> bool:
    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    message = str(exc).lower()
    return isinstance(exc, (kind, MemoryError)) or any(
        text in message for text in ("out of memory", "not enough memory",
                                     "can't allocate memory"))


class _Forward:
    """Runs the model over a batch in slices of ``batch_size``, halving it when memory runs out.

    Returns float32 NumPy rows (n, sum of widths).
    """

    def __init__(self, backbone: Backbone, hidden_indices: list[int], with_final: bool,
                 batch_size: int, device, dtype, torch):
        self.backbone = backbone
        self.hidden_indices = hidden_indices
        self.with_final = with_final
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.torch = torch

    def __call__(self, pixels) -> np.ndarray:
        torch = self.torch
        inputs = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)
        parts, start = [], 0
        while start < len(pixels):
            size = min(self.batch_size, len(pixels) - start)
            try:
                batch = inputs[start:start + size].to(self.device, self.dtype, non_blocking=True)
                parts.append(self.backbone.vectors(batch, self.hidden_indices, self.with_final)
                             .cpu().numpy())
            except (RuntimeError, MemoryError) as exc:
                if size == 1 or not _is_out_of_memory(exc, torch):
                    raise
                self.batch_size = max(1, size // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(f"Out of memory at batch size {size} on {self.device}; "
                              f"continuing with {self.batch_size}.", UserWarning, stacklevel=4)
                continue
            start += size
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    import importlib.util

    # tqdm.auto warns inside Jupyter when ipywidgets is missing; the text bar works everywhere
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=total, initial=initial, desc="embed", unit="img")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"Expected {name} to be a positive integer. Got {value!r}.")
    return int(value)


def embed(
    images: Any,
    store: str | os.PathLike = "embeddings.zarr",
    model: str | os.PathLike = DEFAULT_MODEL,
    captions: Sequence[str] | str | os.PathLike | None = None,
    layers: str | Sequence[str | int] = "all",
    batch_size: int = 64,
    device: str = "auto",
    resume: bool = True,
    *,
    precision: str = "auto",
    chunk_rows: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> EmbeddingStore:
    """Embed images with a Hugging Face vision model into an embedding store.

    Parameters
    ----------
    images : path, sequence, PIL image, ndarray or dataset
        A folder (searched recursively for .jpg, .jpeg, .png, .bmp, .gif, .webp, .tif, .tiff;
        sorted by relative path; hidden files skipped), a CSV/JSONL manifest with a ``path``
        column (relative to the manifest) and optionally ``caption``, an image file, a list of
        paths or of PIL images / arrays, an ndarray of shape (n_images, H, W, C), or a dataset:
        an object with ``__len__`` and ``__getitem__`` returning dicts with an ``image`` (or
        ``img``) column and optionally a ``caption`` (or ``text``) column, such as a Hugging
        Face ``datasets.Dataset``.
    store : str or path-like, default="embeddings.zarr"
        The embedding store to write (a Zarr v3 group, see ``daskdict.store``).
    model : str or path-like, default="openai/clip-vit-base-patch32"
        A Hugging Face model name or a local folder written by ``save_pretrained`` (model and
        image processor). Families and what they store: see the module documentation.
    captions : sequence of str or path, optional
        One caption per image, or a CSV/JSONL manifest with ``path`` and ``caption`` columns
        (matched to the images by path). Stored in ``items/caption``.
    layers : "all", str or sequence of str or int, default="all"
        ``"all"``: ``hidden_00`` … ``hidden_L`` and ``final``. Or names (``"final"``,
        ``"hidden_05"``) and hidden-state indices (``-1`` is the last).
    batch_size : int, default=64
        Images per forward pass; halved (for the rest of the run) when the device runs out of
        memory.
    device : str, default="auto"
        ``"auto"`` (CUDA, then MPS, then CPU), or a PyTorch device string.
    resume : bool, default=True
        If ``store`` holds an unfinished run of the same model, layers, images and captions,
        continue it (rows after the last committed chunk are rewritten); a finished one is
        returned as is; a store of another run is refused. ``False`` starts over, replacing a
        store written by ``embed``.
    precision : {"auto", "float32", "float16", "bfloat16"}, default="auto"
        Precision of the forward pass; ``"auto"`` is float16 on CUDA and float32 elsewhere.
        Stored vectors are always float32.
    chunk_rows : int, optional
        Rows per chunk of the store (the unit of writing and of resumption); default
        ``min(4096, rows of 32 MiB)``.
    num_workers : int, optional
        Threads that read and preprocess images; default ``min(8, cores - 1)`` (at least 1).
    progress : bool, default=True
        Show a progress bar.

    Returns
    -------
    EmbeddingStore
        ``layers/<name>`` float32 (n_items, width) for each layer, ``items/id`` (relative
        paths, or positions for in-memory images and datasets), ``items/caption`` when there
        are captions, and ``items/error`` (empty for good items; the reason for items that
        could not be read, whose rows are zeros).

    Raises
    ------
    ImportError
        Without PyTorch, transformers or Pillow (``pip install 'daskdict[embed]'``).
    StoreNotFoundError
        If the image folder, file or caption manifest does not exist.
    InvalidInputError
        No images, captions of the wrong length, an unknown layer, device or precision, a
        model that cannot be loaded or returns no token hidden states.
    CheckpointMismatchError
        If ``store`` exists and belongs to another run (or is not an embed store).
    """
    torch, transformers = _require_extras()
    batch_size = _positive_int("batch_size", batch_size)
    chunk_rows = _positive_int("chunk_rows", chunk_rows, allow_none=True)
    num_workers = _positive_int("num_workers", num_workers, allow_none=True)
    if not isinstance(resume, bool):
        raise InvalidInputError(f"Expected resume to be True or False. Got {resume!r}.")
    items = resolve_items(images, captions)
    path = recover_replaced(check_writable(store))
    torch_device = _resolve_device(device, torch)
    precision = _resolve_precision(precision, torch_device)
    dtype = getattr(torch, precision)

    backbone, processor = load_backbone(model)
    for module in (backbone.tower, backbone.projection):
        if module is not None:
            module.to(device=torch_device, dtype=dtype)
    widths = _probe(backbone, processor, layers, torch_device, dtype)
    names = list(widths)
    if backbone.family not in KNOWN_FAMILIES:
        warnings.warn(
            f"daskdict.embedding.run has no rule for the model family {backbone.family!r}: it stores "
            "the mean of all tokens of each hidden state and, as 'final', the pooler output "
            "(or the mean of the last hidden state).", UserWarning, stacklevel=2)
    rows_per_chunk = chunk_rows or min(MAX_CHUNK_ROWS, default_chunk_rows(max(widths.values())),
                                       len(items))
    meta = {
        "format": FORMAT_VERSION, "model": str(model), "n_items": len(items),
        "layers": sorted(names),
        "embed": {
            "model": str(model), "family": backbone.family,
            "hidden": "CLS token" if backbone.token == "cls" else "mean of all tokens",
            "final": _FINAL_DESCRIPTIONS[backbone.final], "layer_widths": widths,
            "precision": precision, "chunk_rows": rows_per_chunk, "items": items.fingerprint(),
            "source": items.root, "rows_done": 0, "complete": False, "n_failed": None,
            "versions": {"daskdict": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
        },
    }
    group = _store_for_run(path, items, meta, widths, chunk_rows, rows_per_chunk, resume)
    meta = dict(group.attrs["daskdict"])
    embed_meta = meta["embed"]
    rows_done = int(embed_meta["rows_done"])
    if not embed_meta["complete"]:
        hidden_indices = [_hidden_index(n) for n in names if n != "final"]
        forward = _Forward(backbone, hidden_indices, "final" in names, batch_size,
                           torch_device, dtype, torch)
        bar = _progress_bar(len(items), rows_done, progress)
        try:
            _run(items, processor, forward, group, names, widths, meta, rows_done,
                 int(embed_meta["chunk_rows"]), batch_size, num_workers, bar)
        finally:
            if bar is not None:
                bar.close()
        errors = np.asarray(group["items/error"][...])
        failed = np.flatnonzero(errors != "")
        embed_meta.update(rows_done=len(items), complete=True, n_failed=int(failed.size))
        group.attrs["daskdict"] = meta
        if failed.size:
            warnings.warn(
                f"{failed.size} of {len(items)} images could not be read; their rows are zeros "
                f"and flagged in items/error (fit skips them). First: item "
                f"{str(items.ids[failed[0]])!r}: {errors[failed[0]]}", UserWarning, stacklevel=2)
    return open_store(path)


def _probe(backbone: Backbone, processor, layers, device, dtype) -> dict[str, int]:
    """Run one blank image; return the selected layers' widths, in the forward's column order.

    The forward's rows hold the selected hidden states in the order given, then ``final``.
    """
    import torch
    from PIL import Image

    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    pixels = processor(images=blank, return_tensors="np")["pixel_values"]
    inputs = torch.from_numpy(np.asarray(pixels, dtype=np.float32)).to(device, dtype)
    try:
        with torch.inference_mode():
            out = backbone.tower(pixel_values=inputs, output_hidden_states=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(
            f"The model could not embed an image ({type(exc).__name__}: {exc}). daskdict.embed "
            "needs a vision backbone that takes pixel_values and returns hidden states."
        ) from exc
    hidden = _token_hidden_states(out)
    names = select_layers(layers, len(hidden))
    widths = {n: int(hidden[_hidden_index(n)].shape[-1]) for n in names if n != "final"}
    if "final" in names:
        widths["final"] = int(backbone.vectors(inputs, [], True).shape[1])
    return widths


def _hidden_index(name: str) -> int:
    return int(name.removeprefix("hidden_"))


def _store_for_run(path: Path, items: ImageItems, meta: dict, widths: dict[str, int],
                   chunk_rows: int | None, rows_per_chunk: int, resume: bool) -> zarr.Group:
    if path.exists():
        wanted = meta["embed"]
        group = _open_for_resume(path, wanted, chunk_rows) if resume else None
        if group is not None:
            _remove_partial_writes(path)
            return group
        existing = zarr.open_group(path, mode="r") if (path / "zarr.json").exists() else None
        if existing is None or not _embed_meta(dict(existing.attrs.get("daskdict", {}))):
            raise OutputNotWritableError(
                f"{str(path)!r} exists and was not written by daskdict.embed; resume=False "
                "replaces only embed stores. Remove it or choose another path.")
    return _create(path, items, meta, widths, rows_per_chunk)


def _run(items: ImageItems, processor, forward: _Forward, group: zarr.Group, names: list[str],
         widths: dict[str, int], meta: dict, rows_done: int, chunk_rows: int, batch_size: int,
         num_workers: int | None, bar) -> None:
    """Embed every chunk from the one holding row ``rows_done`` on, and write them in order."""
    n_items = len(items)
    first = (rows_done // chunk_rows) * chunk_rows
    chunks = [(start, min(start + chunk_rows, n_items)) for start in range(first, n_items,
                                                                           chunk_rows)]
    ranges = [(b, min(b + batch_size, stop)) for start, stop in chunks
              for b in range(start, stop, batch_size)]
    n_workers = num_workers or min(8, max(1, (os.cpu_count() or 2) - 1))
    to_device_ready = None
    if forward.device.type == "cuda":
        def to_device_ready(pixels: np.ndarray):
            return forward.torch.from_numpy(pixels).to(forward.dtype).pin_memory()

    loader = _Prefetcher(ranges, lambda a, b: _prepare(items, processor, a, b, to_device_ready),
                         n_workers, depth=n_workers + 2)
    writer = _ChunkWriter(group, names, widths, meta, items.captions_per_item)
    total_width = sum(widths.values())
    batches = iter(loader)
    try:
        for start, stop in chunks:
            rows = np.zeros((stop - start, total_width), dtype=np.float32)
            errors: list[str] = []
            captions: list[str | None] = []
            filled = start
            while filled < stop:
                batch = next(batches)
                if batch.pixels is not None:
                    rows[batch.start - start:batch.stop - start][batch.ok] = forward(batch.pixels)
                errors.extend(batch.errors)
                captions.extend(batch.captions)
                filled = batch.stop
                if bar is not None:
                    bar.update(batch.stop - batch.start)
            writer.submit(start, stop, rows, errors, captions)
        writer.wait()
    finally:
        loader.close()
        writer.close()
