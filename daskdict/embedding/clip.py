"""A Hugging Face CLIP's text and image towers as encoders of unit-norm embeddings.

Used to score explanations against images (CLIPScore), to embed a feature's instantiation
texts for component scores, and wherever a CLIP text encoder is passed as ``text_encoder=``.
The model (a hub name or a ``save_pretrained`` folder; ``embed`` extra: PyTorch,
transformers) is loaded when first used; a path that holds no CLIP is refused naming what it
holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from daskdict.embedding.backbone import require_extras
from daskdict.embedding.items import to_rgb
from daskdict.errors import InvalidInputError
from daskdict.learn.coding import unit_rows

__all__ = ["CLIP", "clip_text_encoder"]


class CLIP:
    """Image and text embeddings from a Hugging Face CLIP (hub name or local folder).

    Parameters
    ----------
    model : str or path
        E.g. ``"openai/clip-vit-base-patch32"`` or a folder written by ``save_pretrained``.
    device : str, default="cpu"
    batch_size : int, default=32
    """

    def __init__(self, model: str | os.PathLike, *, device: str = "cpu", batch_size: int = 32):
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._loaded = None
        self._parts: dict = {}

    def _load(self):
        if self._loaded is None:
            _, transformers = require_extras(images=False)
            name = str(self.model)
            if isinstance(self.model, os.PathLike) and not os.path.isdir(self.model):
                raise InvalidInputError(f"No model folder at {name!r}.")
            try:
                config = transformers.AutoConfig.from_pretrained(name)
            except (OSError, ValueError, KeyError) as exc:
                raise InvalidInputError(f"Cannot load the model {name!r}: {exc}") from exc
            if config.model_type != "clip":
                raise InvalidInputError(f"{name!r} is a {config.model_type} model; this needs a "
                                        "CLIP (model type clip).")
            try:
                model = transformers.CLIPModel.from_pretrained(name).to(self.device).eval()
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"Cannot load the CLIP {name!r}: {exc}") from exc
            self._loaded = (model, transformers, name)
        return self._loaded

    def _part(self, kind: str):
        """The tokenizer or image processor, loaded when first needed (a text-only folder has
        no image processor)."""
        model, transformers, name = self._load()
        if kind not in self._parts:
            loader = (transformers.AutoTokenizer if kind == "tokenizer"
                      else transformers.AutoImageProcessor)
            self._parts[kind] = loader.from_pretrained(name)
        return model, self._parts[kind]

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings, shape (n_texts, projection_dim)."""
        import torch

        model, tokenizer = self._part("tokenizer")
        limit = model.config.text_config.max_position_embeddings
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(list(texts[start:start + self.batch_size]), padding=True,
                              truncation=True, max_length=limit, return_tensors="pt")
            batch.pop("token_type_ids", None)
            with torch.no_grad():
                output = model.get_text_features(**batch.to(self.device))
            parts.append(_features(output))
        return (unit_rows(np.concatenate(parts), np.float32) if parts
                else np.zeros((0, 0), np.float32))

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Unit-norm image embeddings, shape (n_images, projection_dim).

        ``images``: anything :func:`daskdict.embedding.items.to_rgb` reads (PIL images, paths, file
        bytes, uint8 or [0, 1] float arrays).
        """
        import torch

        model, processor = self._part("image processor")
        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = [to_rgb(image) for image in images[start:start + self.batch_size]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                output = model.get_image_features(pixel_values=pixels.to(self.device))
            parts.append(_features(output))
        return (unit_rows(np.concatenate(parts), np.float32) if parts
                else np.zeros((0, 0), np.float32))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The text encoder, so a CLIP can be passed as ``text_encoder=``."""
        return self.encode_texts(texts)


def clip_text_encoder(model: str | os.PathLike, **options) -> Callable:
    """A text encoder ``texts -> unit embeddings`` from a Hugging Face CLIP."""
    return CLIP(model, **options).encode_texts


def _features(output) -> np.ndarray:
    """The projected embeddings, whether a tensor or (recent transformers) an output object
    holding them as its pooler output."""
    tensor = output if hasattr(output, "detach") else output.pooler_output
    return tensor.detach().float().cpu().numpy()
