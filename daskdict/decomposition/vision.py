"""The exact decomposition of a pre-norm vision transformer's image embedding.

The representation decomposition of Balasubramanian, Basu and Feizi (2024), "Decomposing and
Interpreting Image Representations via Text in ViTs Beyond CLIP", with the LayerNorm treatment
of Gandelsman, Efros and Steinhardt, "Interpreting CLIP's Image Representation via Text-Based
Decomposition".

A pre-norm block adds ``attn(LN1(x))`` and then ``mlp(LN2(x'))`` to the residual stream (times a
per-channel layer scale in DINOv2, which is linear and carried through). The output token
(``position``: the CLS token) of the last block is therefore the residual stream entering the
first decomposed block plus, per block, every head's output and the MLP's output, plus biases.
Attention weights and MLPs are evaluated on the actual inputs (the model's own hidden states,
keys and values, kept from its forward pass); only their outputs at the output token become
components, computed in float64 along the output token's path alone:

- ``NN.hHH``: head ``HH``'s attention weights of the output token times the head's value rows
  (value bias excluded) times its slice of the output projection;
- ``NN.mlp``: the MLP's output at the output token, without its output bias;
- ``init``: the residual stream entering the first decomposed block (embeddings, CLIP's
  pre-LayerNorm, the earlier blocks), every bias added after it (value bias through the output
  projection, output biases) and the final LayerNorm's beta.

The final LayerNorm, with the per-item mean and (biased) standard deviation of its actual input
held fixed, is affine: each component is centred, scaled and multiplied by gamma, and beta goes
to ``init``. CLIP's visual projection is linear and applied to every component. ViT's and DeiT's
tanh pooler is not linear: what is decomposed is what :func:`daskdict.embed` stores as ``final``
for these families, the CLS token after the final LayerNorm (DeiT's distillation token is not
part of it). Block ``i`` (from 0) writes ``hidden_{i+1}``, so its components are numbered
``i + 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from daskdict.decomposition.bert import component_names
from daskdict.embedding.backbone import load_backbone
from daskdict.errors import InvalidInputError

__all__ = ["VISION_FAMILIES", "VisionTower", "check_vision_model", "decompose_vision",
           "load_vision", "model_type_of", "residual_components",
           "run_tower", "through_head", "unsupported_model", "vision_tower"]

# config.model_type -> the block layout it uses
VISION_FAMILIES = {"vit": "vit", "vit_msn": "vit", "deit": "vit", "dinov2": "dinov2",
                   "dinov2_with_registers": "dinov2", "clip": "clip",
                   "clip_vision_model": "clip"}
# what daskdict.embed stores as final for these families, all linear in the output token
LINEAR_FINALS = ("cls", "pooler_output", "image_embeds")
# module names per layout: blocks, final norm, and per block (norm1, attention, output
# projection, norm2, mlp, layer scale 1, layer scale 2)
_LAYOUTS = {
    "vit": ("layers", "layernorm", ("layernorm_before", "attention", "attention.o_proj",
                                    "layernorm_after", "mlp", None, None)),
    "dinov2": ("encoder.layer", "layernorm", ("norm1", "attention", "attention.o_proj",
                                              "norm2", "mlp", "layer_scale1", "layer_scale2")),
    "clip": ("encoder.layers", "post_layernorm", ("layer_norm1", "self_attn",
                                                  "self_attn.out_proj", "layer_norm2", "mlp",
                                                  None, None)),
}


@dataclass
class Block:
    """The modules of one pre-norm block."""

    norm1: Any
    attention: Any
    out: Any
    norm2: Any
    mlp: Any
    scale1: Any
    scale2: Any


@dataclass
class VisionTower:
    """A vision transformer's blocks and head, with float64 copies of the weights in use.

    Attributes
    ----------
    model_type : str
    module : torch.nn.Module
        The tower, called as ``module(pixel_values=..., output_hidden_states=True)``.
    blocks : list of Block
    final_norm : torch.nn.LayerNorm
        The LayerNorm that makes the decomposed output token.
    projection : torch.nn.Linear or None
        CLIP's visual projection, applied after ``final_norm``.
    n_heads, head_dim : int
    """

    model_type: str
    module: Any
    blocks: list
    final_norm: Any
    projection: Any
    n_heads: int
    head_dim: int
    _cache: dict = field(default_factory=dict, repr=False)

    def weights(self, *modules) -> tuple:
        """Float64 weight and bias of Linear or LayerNorm modules (bias None if absent),
        converted once."""
        out = []
        for module in modules:
            key = id(module)
            if key not in self._cache:
                bias = getattr(module, "bias", None)
                self._cache[key] = (module.weight.detach().double(),
                                    None if bias is None else bias.detach().double())
            out.append(self._cache[key])
        return tuple(out)

    @property
    def torch(self):
        import torch

        return torch


def _get(module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name, None)
    return module


def unsupported_model(family: str) -> InvalidInputError:
    """The error for a model family the decomposition does not cover."""
    return InvalidInputError(
        "The decomposition covers ViT, DeiT, DINOv2 and CLIP vision towers (model types "
        f"{sorted(VISION_FAMILIES)}) and post-norm BERT text encoders; the model is {family!r}.")


def vision_tower(backbone, model_type: str) -> VisionTower:
    """The blocks and head of a loaded :class:`~daskdict.embedding.backbone.Backbone`.

    Raises
    ------
    InvalidInputError
        For a model type outside :data:`VISION_FAMILIES`, a ``final`` that is not linear in the
        output token, or blocks without the expected modules (e.g. an unknown MLP).
    """
    layout = VISION_FAMILIES.get(model_type)
    if layout is None:
        raise unsupported_model(model_type)
    if backbone.final not in LINEAR_FINALS:
        raise InvalidInputError(
            f"The model's embedding ({backbone.final!r}) is not linear in its output token, so "
            "it does not split into components.")
    blocks_name, norm_name, names = _LAYOUTS[layout]
    blocks = []
    for module in _get(backbone.tower, blocks_name) or []:
        parts = [None if n is None else _get(module, n) for n in names]
        block = Block(*parts)
        scales = [s for s, n in zip(parts[5:], names[5:], strict=True) if n is not None]
        attention = block.attention
        if (any(p is None for p, n in zip(parts, names, strict=True) if n is not None)
                or any(getattr(s, "lambda1", None) is None for s in scales)
                or any(_get(attention, n) is None for n in ("q_proj", "k_proj", "v_proj"))
                or _mlp_kind(block.mlp) is None):
            raise InvalidInputError(
                f"The model ({model_type!r}) has blocks the decomposition does not know "
                f"(expected {names} in each, a known MLP); it covers the transformers "
                "implementations of ViT, DeiT, DINOv2 and CLIP.")
        blocks.append(block)
    final_norm = _get(backbone.tower, norm_name)
    if not blocks or final_norm is None:
        raise unsupported_model(model_type)
    projection = backbone.projection if backbone.final == "image_embeds" else None
    head_dim = blocks[0].attention.head_dim
    return VisionTower(model_type, backbone.tower, blocks, final_norm, projection,
                       blocks[0].out.in_features // head_dim, head_dim)


def _mlp_kind(mlp) -> str | None:
    if all(hasattr(mlp, n) for n in ("fc1", "fc2", "activation_fn")):
        return "fc"
    if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return "swiglu"
    return None


def check_vision_model(tower: VisionTower, n_layers: Any) -> int:
    """``n_layers`` checked against the tower's blocks.

    Raises
    ------
    InvalidInputError
        If ``n_layers`` is not an integer in ``1..len(tower.blocks)``.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not (
            1 <= n_layers <= len(tower.blocks)):
        raise InvalidInputError(f"Expected n_layers between 1 and the model's "
                                f"{len(tower.blocks)} blocks. Got {n_layers!r}.")
    return n_layers


def _layer_norm(tower: VisionTower, module, x):
    """``module(x)`` in float64."""
    torch = tower.torch
    (gamma, beta), = tower.weights(module)
    return torch.nn.functional.layer_norm(x, x.shape[-1:], gamma, beta, module.eps)


def _mlp(tower: VisionTower, mlp, x):
    """The MLP's output without its output bias, and that bias (float64)."""
    torch = tower.torch
    if _mlp_kind(mlp) == "fc":
        (w1, b1), (w2, b2) = tower.weights(mlp.fc1, mlp.fc2)
        hidden = mlp.activation_fn(torch.nn.functional.linear(x, w1, b1))
    else:
        (wg, bg), (wu, bu), (w2, b2) = tower.weights(mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        hidden = (mlp.act_fn(torch.nn.functional.linear(x, wg, bg))
                  * torch.nn.functional.linear(x, wu, bu))
    return hidden @ w2.T, (torch.zeros_like(x[0]) if b2 is None else b2)


def _heads(tower: VisionTower, block: Block, normed, key, value, per_token: bool):
    """Per head, its output at the output token; and the summed attention bias.

    Parameters
    ----------
    normed : torch.Tensor of shape (batch, width), float64
        The block's first LayerNorm applied to the output token.
    key, value : torch.Tensor of shape (batch, tokens, width)
        The model's own keys and values of every token in this block (with their biases).

    Returns
    -------
    heads : torch.Tensor of shape (n_heads, batch, width), or (n_heads, batch, tokens, width)
        with ``per_token`` (the part read from each token; summed over tokens, the head).
    bias : torch.Tensor of shape (width,)
        ``b_V W_O^T + b_O``: the attention weights of a token sum to one, so the value bias
        reaches it unchanged.
    """
    torch = tower.torch
    attention = block.attention
    batch, tokens, _ = key.shape
    n_heads, d_head = tower.n_heads, tower.head_dim
    (w_q, b_q), (_, b_v), (w_o, b_o) = tower.weights(attention.q_proj, attention.v_proj,
                                                     block.out)
    query = torch.nn.functional.linear(normed, w_q, b_q).view(batch, 1, n_heads, d_head)
    key = key.view(batch, tokens, n_heads, d_head)
    value = value.view(batch, tokens, n_heads, d_head)
    scale = getattr(attention, "scaling", None) or getattr(attention, "scale", d_head ** -0.5)
    # one query against every key: elementwise products (promoted to float64) are much faster
    # than batched float64 matrix-vector products on the CPU
    weights = torch.softmax((key * query).sum(-1) * scale, dim=1)[..., None]  # (b, t, h, 1)
    w_out = w_o.view(-1, n_heads, d_head)                             # (width, heads, d_head)
    no_bias = torch.zeros(n_heads, d_head, dtype=torch.float64, device=key.device) \
        if b_v is None else b_v.view(n_heads, d_head)
    if per_token:
        heads = torch.einsum("bthk,dhk->hbtd", weights * (value - no_bias), w_out)
    else:
        # the weights sum to one, so removing the value bias after the sum removes it exactly
        context = (weights * value).sum(1) - no_bias                    # (b, h, d_head)
        heads = torch.einsum("bhk,dhk->hbd", context, w_out)
    bias = b_o if b_v is None else b_v @ w_o.T + b_o
    return heads, bias


def _scaled(block_scale, *tensors):
    """Multiply by a layer scale (None: unchanged)."""
    if block_scale is None:
        return tensors
    gamma = block_scale.lambda1.detach().double()
    return tuple(t * gamma for t in tensors)


def run_tower(tower: VisionTower, pixel_values, n_layers: int) -> tuple:
    """The tower's forward pass, keeping the keys and values of the last ``n_layers`` blocks.

    Returns
    -------
    out : transformers model output
        With ``hidden_states``.
    keys, values : list of torch.Tensor of shape (batch, tokens, width)
        Per decomposed block, what its key and value projections returned (biases included).
    """
    captured: dict[tuple[str, int], Any] = {}

    def keep(kind: str, index: int):
        def hook(_module, _inputs, output):
            captured[kind, index] = output
        return hook

    blocks = tower.blocks[len(tower.blocks) - n_layers:]
    hooks = [projection.register_forward_hook(keep(kind, index))
             for index, block in enumerate(blocks)
             for kind, projection in (("k", block.attention.k_proj),
                                      ("v", block.attention.v_proj))]
    try:
        out = tower.module(pixel_values=pixel_values, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    return (out, [captured["k", i] for i in range(n_layers)],
            [captured["v", i] for i in range(n_layers)])


def residual_components(tower: VisionTower, hidden, keys, values, position: int = 0,
                        per_token: bool = False) -> tuple:
    """The output token's residual stream after the last block, as components (float64).

    Parameters
    ----------
    tower : VisionTower
    hidden : sequence of torch.Tensor of shape (batch, tokens, width)
        The model's hidden states (``hidden[0]`` enters the first block).
    keys, values : sequence of torch.Tensor of shape (batch, tokens, width)
        Of the decomposed blocks, the last ``len(keys)`` (as :func:`run_tower` returns them).
    position : int, default=0
        The output token.
    per_token : bool, default=False
        Keep each head's output per token read (its sum over tokens is the head's output).

    Returns
    -------
    init : torch.Tensor of shape (batch, width)
    heads : list of torch.Tensor of shape (n_heads, batch, width), or (n_heads, batch, tokens,
        width) with ``per_token``; one per decomposed block
    mlps : list of torch.Tensor of shape (batch, width)
    """
    start = len(tower.blocks) - len(keys)
    stream = hidden[start][:, position].double()
    init, heads, mlps = stream.clone(), [], []
    for offset, block in enumerate(tower.blocks[start:]):
        # the model's own state of the output token (the sum below equals it to rounding)
        state = hidden[start + offset][:, position].double()
        head, bias = _heads(tower, block, _layer_norm(tower, block.norm1, state), keys[offset],
                            values[offset], per_token)
        head, bias = _scaled(block.scale1, head, bias)
        summed = head.sum(dim=(0, 2)) if per_token else head.sum(0)
        stream = stream + summed + bias
        mlp, mlp_bias = _mlp(tower, block.mlp, _layer_norm(tower, block.norm2, stream))
        mlp, mlp_bias = _scaled(block.scale2, mlp, mlp_bias)
        stream = stream + mlp + mlp_bias
        init = init + bias + mlp_bias
        heads.append(head)
        mlps.append(mlp)
    return init, heads, mlps


def through_head(tower: VisionTower, parts, last, init=None, per_token: bool = False):
    """Components of the output token through the final LayerNorm (statistics of ``last``
    held fixed) and the projection.

    Parameters
    ----------
    parts : torch.Tensor of shape (n, batch, width), or (n, batch, tokens, width) with
        ``per_token``
        Components without constant terms (heads, MLPs).
    last : torch.Tensor of shape (batch, width)
        The final LayerNorm's actual input (the model's last hidden state at the output token).
    init : torch.Tensor of shape (batch, width), optional
        The component that also receives beta (and a projection bias).
    per_token : bool, default=False

    Returns
    -------
    parts : torch.Tensor, like ``parts`` with the output width
    init : torch.Tensor of shape (batch, output width) or None
    """
    last = last.double()
    (gamma, beta), = tower.weights(tower.final_norm)
    sigma = (last.var(dim=-1, keepdim=True, unbiased=False) + tower.final_norm.eps).sqrt()
    scale = sigma[:, None] if per_token else sigma

    def norm(x, s):
        return gamma * (x - x.mean(dim=-1, keepdim=True)) / s

    parts = norm(parts, scale)
    if init is not None:
        init = norm(init.double(), sigma) + beta
    if tower.projection is not None:
        (w_p, b_p), = tower.weights(tower.projection)
        parts = parts @ w_p.T
        if init is not None:
            init = init @ w_p.T + (0 if b_p is None else b_p)
    return parts, init


def model_final(tower: VisionTower, final: str, out):
    """What :func:`daskdict.embed` stores as ``final`` (see its family table), from the
    tower's output."""
    if final == "cls":
        return out.last_hidden_state[:, 0]
    if final == "image_embeds":
        return tower.projection(out.pooler_output)
    return out.pooler_output


def decompose_vision(tower: VisionTower, final: str, pixel_values, n_layers: int) -> tuple:
    """The model's ``final`` and its components, by name.

    Parameters
    ----------
    tower : VisionTower
        Of a model in eval mode (the backbone's tower, called with ``pixel_values``).
    final : {"cls", "pooler_output", "image_embeds"}
        The backbone's ``final`` rule.
    pixel_values : torch.Tensor of shape (batch, channels, height, width)
    n_layers : int

    Returns
    -------
    final : torch.Tensor of shape (batch, width), float32
        What :func:`daskdict.embed` computes, by the same rule (with eager attention: equal to
        ``embed``'s to float32 rounding).
    components : dict of str to torch.Tensor of shape (batch, width), float64
        Named as :func:`~daskdict.decomposition.bert.component_names`; they sum to ``final``.
    """
    torch = tower.torch
    with torch.inference_mode():
        out, keys, values = run_tower(tower, pixel_values, n_layers)
        hidden = out.hidden_states
        init, heads, mlps = residual_components(tower, hidden, keys, values)
        stacked = torch.stack([t for head, mlp in zip(heads, mlps, strict=True)
                               for t in (*head, mlp)])
        parts, init = through_head(tower, stacked, hidden[-1][:, 0], init)
        names = component_names(len(tower.blocks), tower.n_heads, n_layers)
        vectors = dict(zip(names, [init, *parts], strict=True))
        return model_final(tower, final, out).float(), vectors


# --------------------------------------------------------------------------- loading


def model_type_of(model: str | os.PathLike) -> str | None:
    """``config.model_type`` of a model name or folder, or None if its config cannot be read
    (the loader then reports why)."""
    import transformers

    try:
        return str(transformers.AutoConfig.from_pretrained(str(model)).model_type)
    except (OSError, ValueError, KeyError):
        return None


def load_vision(model: str | os.PathLike, model_type: str, device, torch) -> tuple:
    """The backbone as :func:`daskdict.embed` loads it (eager attention, float32, on
    ``device``), its image processor and its :class:`VisionTower`.

    Raises
    ------
    InvalidInputError
        As :func:`vision_tower`, or if the model cannot be loaded.
    """
    backbone, processor = load_backbone(model)
    tower = vision_tower(backbone, model_type)
    for module in (backbone.tower, backbone.projection):
        if module is not None:
            # eager attention: the model's own forward computes the attention weights the
            # decomposition recomputes, rather than a fused kernel
            if hasattr(module, "set_attn_implementation"):
                module.set_attn_implementation("eager")
            module.to(device=device, dtype=torch.float32)
    return backbone, processor, tower
