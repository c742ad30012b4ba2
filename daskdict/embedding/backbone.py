"""The vision backbone of :func:`daskdict.embed`: loading a model, probing it, running it.

A :class:`Backbone` is a loaded vision tower and the rule that turns its outputs into stored
vectors (see :mod:`daskdict.embedding.run` for what each model family stores). PyTorch,
transformers and Pillow are imported only when a model is loaded (the ``embed`` extra).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskdict.errors import InvalidInputError
from daskdict.validation import check_choice

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
KNOWN_FAMILIES = ("clip", "siglip", "vit", "deit", "dinov2")
_CLS_FAMILIES = {"vit": "vit", "deit": "deit", "dinov2": "dinov2",
                 "dinov2_with_registers": "dinov2", "vit_msn": "vit"}
FINAL_DESCRIPTIONS = {
    "image_embeds": "image_embeds: projection of the post-LayerNorm CLS token",
    "pooler_output": "pooler_output",
    "cls": "CLS token after the final LayerNorm (last_hidden_state[:, 0])",
    "pooler_or_mean": "pooler_output, or the mean of the last hidden state",
}


def require_extras(images: bool = True):
    """Import torch and transformers (and Pillow for ``images``), or fail with the command that
    installs them."""
    try:
        if images:
            import PIL  # noqa: F401
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            f"daskdict.embed needs PyTorch, transformers and Pillow ({exc.name} is missing). "
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
            hidden = token_hidden_states(out)
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


VISION_MODELS = "vision backbone (CLIP, SigLIP, ViT, DeiT, DINOv2, ...)"


def token_hidden_states(out, expected: str = VISION_MODELS):
    """The hidden states of a model output; raise unless they are (batch, tokens, width).

    ``expected`` names the kind of model that would have given them, for the message.
    """
    hidden = getattr(out, "hidden_states", None)
    if not hidden or any(getattr(h, "ndim", 0) != 3 for h in hidden):
        shapes = [tuple(h.shape) for h in hidden] if hidden else None
        raise InvalidInputError(
            "Expected the model to return hidden states of shape (batch, tokens, width) with "
            f"output_hidden_states=True. Got {shapes}. daskdict.embed needs a transformer "
            f"{expected}.")
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
    _, transformers = require_extras()
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


def resolve_device(device: str, torch):
    """The torch device for ``device`` (``"auto"``: CUDA, then MPS, then the CPU)."""
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


def resolve_precision(precision: str, device) -> str:
    """The forward pass's precision: ``"auto"`` is float16 on CUDA, float32 elsewhere."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    return precision


def _is_out_of_memory(exc: BaseException, torch) -> bool:
    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    message = str(exc).lower()
    return isinstance(exc, (kind, MemoryError)) or any(
        text in message for text in ("out of memory", "not enough memory",
                                     "can't allocate memory"))


class Forward:
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

        def compute(start: int, stop: int) -> np.ndarray:
            batch = inputs[start:stop].to(self.device, self.dtype, non_blocking=True)
            return (self.backbone.vectors(batch, self.hidden_indices, self.with_final)
                    .cpu().numpy())

        parts = run_halving(self, len(pixels), compute)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def run_halving(runner, n: int, compute) -> list[np.ndarray]:
    """Run ``compute`` over items ``0:n`` in slices of ``runner.batch_size``, in order.

    When a slice runs out of memory, ``runner.batch_size`` is halved (for the rest of the run:
    it is the runner's attribute) and the slice is tried again.

    Parameters
    ----------
    runner : object
        With attributes ``batch_size`` (int), ``device`` (torch.device) and ``torch``.
    n : int
        Items in the batch.
    compute : callable
        ``compute(start, stop)``: the rows of items ``start:stop`` (an ndarray).

    Returns
    -------
    list of ndarray
        The rows of each slice, in order.
    """
    torch = runner.torch
    parts, start = [], 0
    while start < n:
        size = min(runner.batch_size, n - start)
        try:
            parts.append(compute(start, start + size))
        except (RuntimeError, MemoryError) as exc:
            if size == 1 or not _is_out_of_memory(exc, torch):
                raise
            runner.batch_size = max(1, size // 2)
            if runner.device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.warn(f"Out of memory at batch size {size} on {runner.device}; "
                          f"continuing with {runner.batch_size}.", UserWarning, stacklevel=5)
            continue
        start += size
    return parts


def probe_widths(backbone: Backbone, processor, layers, device, dtype) -> dict[str, int]:
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
    hidden = token_hidden_states(out)
    names = select_layers(layers, len(hidden))
    widths = {n: int(hidden[hidden_index(n)].shape[-1]) for n in names if n != "final"}
    if "final" in names:
        widths["final"] = int(backbone.vectors(inputs, [], True).shape[1])
    return widths


def hidden_index(name: str) -> int:
    """The hidden-state index of a layer name (``"hidden_05"`` is 5)."""
    return int(name.removeprefix("hidden_"))

