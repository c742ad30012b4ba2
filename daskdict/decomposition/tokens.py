"""Per-token contributions of a model's components: the heat maps of Balasubramanian, Basu and
Feizi (2024), "Decomposing and Interpreting Image Representations via Text in ViTs Beyond CLIP".

A head's component (see :mod:`daskdict.decomposition.vision`) is a sum over the tokens it
attends to: ``sum_t a_t (x_t W_V) W_O``, carried through the later LayerNorms (statistics held
fixed), the pooling and the projection, which are linear. Its term for token ``t`` is that
token's contribution; over the tokens they sum to the component. An MLP and ``init`` are written
at a token itself, so their contribution sits at the token they are written to: for a vision
model all of it at the output token (the CLS token, position 0); for a BERT, token ``t``'s
share of the pooling (its row of the MLP's or ``init``'s output, pooled). Everything stays in
memory: meant for a few items.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from daskdict.decomposition.bert import SUPPORTED_FAMILIES, bert_split_components, component_names
from daskdict.decomposition.run import check_text_encoder
from daskdict.decomposition.vision import (
    VISION_FAMILIES,
    check_vision_model,
    load_vision,
    model_type_of,
    residual_components,
    run_tower,
    through_head,
)
from daskdict.embedding.backbone import require_extras, resolve_device
from daskdict.embedding.items import resolve_items
from daskdict.embedding.run import prepare_images
from daskdict.embedding.text import load_text_encoder, pool
from daskdict.embedding.text_items import check_text, resolve_texts
from daskdict.errors import InvalidInputError

__all__ = ["MAX_BYTES", "token_contributions"]

# the largest result kept in memory
MAX_BYTES = 2 * 1024 ** 3
DEFAULT_N_LAYERS = 10


def _names(components: Sequence[str] | None, available: list[str]) -> list[str]:
    """The requested component names (without the ``component.`` prefix), checked."""
    if components is None:
        return [n for n in available if n != "init"]
    if isinstance(components, str) or not isinstance(components, Sequence) or not components:
        raise InvalidInputError(
            f"Expected components to be a non-empty list of names. Got {components!r}.")
    names = [str(c).removeprefix("component.") for c in components]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InvalidInputError(
            f"Unknown components {unknown}; this model and n_layers have {available[0]}, "
            f"{available[1]} ... {available[-1]}.")
    return names


def _n_tokens(config: Any, pixels_shape: tuple[int, ...]) -> int:
    """Tokens per image of the processed pixels' shape (channels, height, width): patches,
    CLS, distillation and register tokens (the processor's size, not the config's
    ``image_size``, which DINOv2 declares larger than it crops)."""
    config = getattr(config, "vision_config", None) or config
    patch = int(config.patch_size)
    patches = (int(pixels_shape[-2]) // patch) * (int(pixels_shape[-1]) // patch)
    extra = 1 + (config.model_type == "deit") + int(getattr(config, "num_register_tokens", 0))
    return patches + extra


def _check_size(n_items: int, n_tokens: int, n_components: int, width: int) -> None:
    size = n_items * n_tokens * n_components * width * 4
    if size > MAX_BYTES:
        raise InvalidInputError(
            f"The contributions of {n_items} items would take {size / 2 ** 30:.1f} GiB "
            f"(over {MAX_BYTES / 2 ** 30:.0f} GiB); pass fewer items or components.")


def token_contributions(items: Any, model: str | os.PathLike,
                        components: Sequence[str] | None = None, *,
                        n_layers: int | None = None, device: str = "cpu") -> np.ndarray:
    """Per token, each component's contribution to the embedding ``final``.

    Parameters
    ----------
    items : images or texts
        A few images or texts, as :func:`~daskdict.decomposition.decompose` takes them for
        ``model``; every one must be readable.
    model : str or path-like
        A ViT, DeiT, DINOv2 or CLIP model, or a BERT, as for
        :func:`~daskdict.decomposition.decompose`.
    components : sequence of str, optional
        Component names as :func:`~daskdict.decomposition.decompose` stores them
        (``"NN.hHH"``, ``"NN.mlp"``, ``"init"``, with or without the ``component.`` prefix);
        default every head and MLP.
    n_layers : int, optional
        As for :func:`~daskdict.decomposition.decompose` (default: the last ten blocks).
    device : str, default="cpu"

    Returns
    -------
    ndarray of shape (n_items, n_tokens, n_components, width), float32
        Images: token ``0`` is the CLS token, then the model's other tokens in its order
        (patches in row-major order, after DeiT's distillation token and DINOv2's registers).
        Texts: the tokens of each text as its tokenizer makes them (``[CLS]`` first), zeros
        after its last token (``n_tokens`` is the longest text's). Summed over tokens, row
        ``[i, :, c]`` is component ``c`` of item ``i`` as ``decompose`` stores it.

    Raises
    ------
    InvalidInputError
        For a model outside these families, an unknown component, ``n_layers`` out of range,
        a result over :data:`MAX_BYTES`, or an unreadable image; before any forward pass.
    """
    torch, transformers = require_extras(images=False)
    model_type = model_type_of(model)
    if model_type in SUPPORTED_FAMILIES:
        return _text_contributions(items, model, components, n_layers,
                                   resolve_device(device, torch))
    if model_type not in VISION_FAMILIES:
        raise InvalidInputError(
            "Per-token contributions cover ViT, DeiT, DINOv2 and CLIP vision towers "
            f"({sorted(VISION_FAMILIES)}) and BERT text encoders; the model is {model_type!r}.")
    torch, transformers = require_extras()
    images = resolve_items(items)
    torch_device = resolve_device(device, torch)
    _, processor, tower = load_vision(model, model_type, torch_device, torch)
    n_layers = check_vision_model(
        tower, min(DEFAULT_N_LAYERS, len(tower.blocks)) if n_layers is None else n_layers)
    available = component_names(len(tower.blocks), tower.n_heads, n_layers)
    names = _names(components, available)
    width = (tower.projection.out_features if tower.projection is not None
             else tower.final_norm.normalized_shape[0])
    batch = prepare_images(images, processor, 0, len(images))
    if not batch.ok.all():
        first = int(np.flatnonzero(~batch.ok)[0])
        raise InvalidInputError(f"Item {str(images.ids[first])!r} cannot be read: "
                                f"{batch.errors[first]}")
    n_tokens = _n_tokens(transformers.AutoConfig.from_pretrained(str(model)),
                         batch.inputs.shape)
    _check_size(len(images), n_tokens, len(names), width)
    rows = [_contributions(tower, torch.from_numpy(pixels[None]).to(torch_device), n_layers,
                           available, names) for pixels in batch.inputs]
    return np.stack(rows)


def _contributions(tower, pixel_values, n_layers: int, available: list[str],
                   names: list[str]) -> np.ndarray:
    """The contributions of one image, (n_tokens, n_components, width), float32."""
    torch = tower.torch
    with torch.inference_mode():
        out, keys, values = run_tower(tower, pixel_values, n_layers)
        hidden = out.hidden_states
        init, heads, mlps = residual_components(tower, hidden, keys, values, per_token=True)
        last = hidden[-1][:, 0]
        heads, init = through_head(tower, torch.cat(heads), last, init, per_token=True)
        mlps, _ = through_head(tower, torch.stack(mlps), last)
        n_tokens, n_heads = heads.shape[2], tower.n_heads
        out = torch.zeros(n_tokens, len(names), heads.shape[-1], dtype=torch.float64)
        for column, name in enumerate(names):
            index = available.index(name)
            if name == "init":
                out[0, column] = init[0]
            elif name.endswith(".mlp"):
                out[0, column] = mlps[(index - 1) // (n_heads + 1), 0]
            else:
                block, head = divmod(index - 1, n_heads + 1)
                out[:, column] = heads[block * n_heads + head, 0]
        return out.float().cpu().numpy()


def _text_contributions(texts: Any, model, components, n_layers, device) -> np.ndarray:
    """:func:`token_contributions` of a BERT: one text at a time (no padding)."""
    import torch

    items = resolve_texts(texts)
    strings = []
    for index in range(len(items)):
        try:
            strings.append(check_text(items.fetch(index)[0]))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"Item {str(items.ids[index])!r}: {exc}") from exc
    encoder = load_text_encoder(model)
    n_layers = check_text_encoder(encoder, n_layers)
    config = encoder.model.config
    available = component_names(config.num_hidden_layers, config.num_attention_heads, n_layers)
    names = _names(components, available)
    encoded = [{k: torch.from_numpy(v).to(device) for k, v in encoder.tokenize([t]).items()}
               for t in strings]
    n_tokens = max(e["attention_mask"].shape[1] for e in encoded)
    width = config.hidden_size * len(encoder.sentence_pooling)
    _check_size(len(strings), n_tokens, len(names), width)
    encoder.model.to(device=device, dtype=torch.float32)
    out = np.zeros((len(strings), n_tokens, len(names), width), dtype=np.float32)
    for row, inputs in enumerate(encoded):
        rows = _text_rows(encoder, inputs, n_layers, available, names)
        out[row, :rows.shape[0]] = rows
    return out


def _text_rows(encoder, inputs: dict, n_layers: int, available: list[str],
               names: list[str]) -> np.ndarray:
    """The contributions of one text, (n_tokens, n_components, width), float32."""
    import torch

    mask = inputs["attention_mask"]
    heads = [n for n in names if ".h" in n]
    parts, _, splits = bert_split_components(encoder.model, inputs["input_ids"], mask,
                                             n_layers, inputs.get("token_type_ids"), heads)
    n_tokens = mask.shape[1]
    read_mask = mask.expand(n_tokens, n_tokens)

    def pooled(state):                                  # (tokens, read tokens, width) -> ...
        by_read = state.transpose(0, 1)                 # one row per read token
        return torch.cat([pool(by_read, read_mask, m) for m in encoder.sentence_pooling], -1)

    scale = 1.0
    if encoder.normalize:
        # the model divides by the norm of its pooled output, a per-text scalar held fixed
        total = torch.stack(parts).sum(0)
        scale = float(torch.linalg.vector_norm(torch.cat(
            [pool(total, mask, m) for m in encoder.sentence_pooling], -1)))
    columns = []
    for name in names:
        if name in splits:
            state = splits[name][0]
        else:
            # written at each token: its share is that token's own row
            written = parts[available.index(name)][0]
            state = torch.diag_embed(written.T).permute(1, 2, 0)
        columns.append(pooled(state) / scale)
    return torch.stack(columns, dim=1).float().cpu().numpy()
