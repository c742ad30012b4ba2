"""The exact decomposition of a post-norm BERT encoder's output into per-head and per-MLP parts.

The representation decomposition of Balasubramanian, Basu and Feizi, "Decomposing and
Interpreting Image Representations via Text in ViTs Beyond CLIP", with the LayerNorm treatment of
Gandelsman, Efros and Steinhardt, "Interpreting CLIP's Image Representation via Text-Based
Decomposition": once a LayerNorm's per-token mean and standard deviation are computed from its
actual input and held fixed, it is affine, so a sum of components entering it leaves it as a sum
of components, each centred and scaled, with the LayerNorm's bias added once.

A post-norm BERT block computes ``h' = LN1(h + attn(h))`` and ``out = LN2(h' + mlp(h'))``.
Attention and MLP are evaluated on the actual (full) ``h`` and ``h'``, as the model does; only
their outputs become new components:

- ``NN.hHH``: head ``HH``'s ``softmax(QK^T / sqrt(d_head)) (h W_V)`` times its slice of the
  output projection ``W_O`` (value bias excluded);
- ``NN.mlp``: the MLP's output without its output bias;
- ``init``: the hidden state entering the first decomposed block, and every bias that is added
  after it (value bias through ``W_O``, output biases, LayerNorm betas).

Block ``i`` (from 0) writes ``hidden_{i+1}`` (``hidden_00`` is the embeddings' output), so its
components are numbered ``i + 1``. Everything is computed in float64 and returned in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from daskdict.embedding.text import pool
from daskdict.errors import InvalidInputError

__all__ = ["LINEAR_POOLINGS", "SUPPORTED_FAMILIES", "bert_components", "bert_split_components",
           "check_bert_model", "component_names", "decompose_bert", "pool_components"]

# model families whose blocks are BERT's post-norm layers (BertLayer)
SUPPORTED_FAMILIES = ("bert",)
# sentence-transformers poolings that are linear in the hidden state (max is not)
LINEAR_POOLINGS = ("cls", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def check_bert_model(model, n_layers: int) -> None:
    """Refuse a model this decomposition does not cover, or ``n_layers`` out of range.

    Raises
    ------
    InvalidInputError
        If the model is not a post-norm BERT (``config.model_type`` not in
        ``SUPPORTED_FAMILIES``, or its blocks lack BERT's modules), or ``n_layers`` is not in
        ``1..num_hidden_layers``.
    """
    family = str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if family not in SUPPORTED_FAMILIES or layers is None or not all(
            hasattr(b, "attention") and hasattr(b.attention, "self")
            and hasattr(b, "intermediate") and hasattr(b, "output") for b in layers):
        raise InvalidInputError(
            f"The decomposition covers post-norm BERT text encoders ({list(SUPPORTED_FAMILIES)}); "
            f"the model is {family!r}.")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not (
            1 <= n_layers <= len(layers)):
        raise InvalidInputError(
            f"Expected n_layers between 1 and the model's {len(layers)} blocks. Got {n_layers!r}.")


def component_names(n_blocks: int, n_heads: int, n_layers: int) -> list[str]:
    """``["init", "NN.h00", ..., "NN.mlp", ...]`` for the last ``n_layers`` of ``n_blocks``."""
    names = ["init"]
    for block in range(n_blocks - n_layers, n_blocks):
        names += [f"{block + 1:02d}.h{h:02d}" for h in range(n_heads)] + [f"{block + 1:02d}.mlp"]
    return names


def _layer_norm(module, x, parts: list, init):
    """``module(x)`` in float64 and its components: each part centred and scaled by the
    statistics of ``x``, beta added to ``init``."""
    import torch

    mean = x.mean(dim=-1, keepdim=True)
    sigma = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + module.eps)
    gamma, beta = module.weight.double(), module.bias.double()
    # a part split by the token it reads from (batch, tokens, read tokens, width) is scaled by
    # the statistics of the token it is written to
    parts = [gamma * (p - p.mean(dim=-1, keepdim=True))
             / (sigma if p.ndim == sigma.ndim else sigma[..., None]) for p in parts]
    init = gamma * (init - init.mean(dim=-1, keepdim=True)) / sigma + beta
    return gamma * (x - mean) / sigma + beta, parts, init


def _heads(block, h, attention_mask, keep: Sequence[int] = ()):
    """Per head, its output written into the residual stream; and the summed bias.

    Returns
    -------
    heads : torch.Tensor of shape (n_heads, batch, tokens, width), float64
    bias : torch.Tensor of shape (width,), float64
        ``b_V W_O^T + b_O``: every softmax row sums to one, so the value bias reaches every
        token unchanged.
    splits : list of torch.Tensor of shape (batch, tokens, read tokens, width), float64
        Per head in ``keep``: its output at each token, per token read (summed over the read
        tokens, the head's output).
    """
    import torch

    attention = block.attention.self
    n_heads, d_head = attention.num_attention_heads, attention.attention_head_size
    batch, tokens, _ = h.shape

    def split(x):
        return x.view(batch, tokens, n_heads, d_head).transpose(1, 2)

    query = split(h @ attention.query.weight.double().T + attention.query.bias.double())
    key = split(h @ attention.key.weight.double().T + attention.key.bias.double())
    value = split(h @ attention.value.weight.double().T)
    scores = query @ key.transpose(-1, -2) / math.sqrt(d_head)
    padding = (attention_mask[:, None, None, :] == 0)
    scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)                         # (batch, heads, tokens, read)
    context = weights @ value                                       # (batch, heads, tokens, d_head)
    dense = block.attention.output.dense
    w_out = dense.weight.double().view(-1, n_heads, d_head)         # (width, heads, d_head)
    heads = torch.einsum("bhtk,dhk->hbtd", context, w_out)
    bias = attention.value.bias.double() @ dense.weight.double().T + dense.bias.double()
    splits = [weights[:, j, :, :, None] * (value[:, j] @ w_out[:, j].T)[:, None]
              for j in keep]
    return heads, bias, splits


def bert_components(model, input_ids, attention_mask, n_layers: int,
                    token_type_ids=None) -> tuple[list, object]:
    """Per-token components of the last hidden state (float64).

    Parameters
    ----------
    model : transformers.BertModel
        In eval mode; any attention implementation (attention is recomputed here).
    input_ids, attention_mask : torch.Tensor of shape (batch, tokens)
    n_layers : int
        Decompose the last ``n_layers`` blocks.
    token_type_ids : torch.Tensor of shape (batch, tokens), optional

    Returns
    -------
    components : list of torch.Tensor of shape (batch, tokens, width), float64
        In the order of :func:`component_names`; they sum to the last hidden state.
    last : torch.Tensor of shape (batch, tokens, width)
        The model's own last hidden state (its dtype), computed the ordinary way.
    """
    components, last, _ = bert_split_components(model, input_ids, attention_mask, n_layers,
                                                token_type_ids)
    return components, last


def bert_split_components(model, input_ids, attention_mask, n_layers: int,
                          token_type_ids=None, split: Sequence[str] = ()) -> tuple:
    """:func:`bert_components`, and the heads named in ``split`` per token read.

    Parameters
    ----------
    model, input_ids, attention_mask, n_layers, token_type_ids
        As for :func:`bert_components`.
    split : sequence of str
        Head components (``"NN.hHH"``) to keep per token read.

    Returns
    -------
    components, last
        As for :func:`bert_components`.
    splits : dict of str to torch.Tensor of shape (batch, tokens, read tokens, width), float64
        Summed over the read tokens, the component of that name.
    """
    import torch

    check_bert_model(model, n_layers)
    blocks = model.encoder.layer
    start = len(blocks) - n_layers
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    output_hidden_states=True, **extra)
        h = out.hidden_states[start].double()
        init, parts, kept, names = h, [], [], []
        for number, block in enumerate(blocks[start:], start=start + 1):
            wanted = [int(n[4:]) for n in split if n.startswith(f"{number:02d}.h")]
            heads, bias, splits = _heads(block, h, attention_mask, wanted)
            names += [f"{number:02d}.h{j:02d}" for j in wanted]
            # the split heads go through every later LayerNorm beside the components
            attended = block.attention.output
            n_parts = len(parts) + len(heads)
            h, both, init = _layer_norm(attended.LayerNorm, h + heads.sum(0) + bias,
                                        [*parts, *heads, *kept, *splits], init + bias)
            parts, kept = both[:n_parts], both[n_parts:]
            hidden = block.intermediate.intermediate_act_fn(
                h @ block.intermediate.dense.weight.double().T
                + block.intermediate.dense.bias.double())
            mlp = hidden @ block.output.dense.weight.double().T
            bias = block.output.dense.bias.double()
            h, both, init = _layer_norm(block.output.LayerNorm, h + mlp + bias,
                                        [*parts, mlp, *kept], init + bias)
            parts, kept = both[:n_parts + 1], both[n_parts + 1:]
    return [init, *parts], out.last_hidden_state, dict(zip(names, kept, strict=True))


def pool_components(components: Sequence, last, attention_mask, poolings: Sequence[str],
                    normalize: bool):
    """Pool token components into text components, as the model's ``final`` is pooled.

    Parameters
    ----------
    components : sequence of torch.Tensor of shape (batch, tokens, width), float64
    last : torch.Tensor of shape (batch, tokens, width)
        The model's last hidden state.
    attention_mask : torch.Tensor of shape (batch, tokens)
    poolings : sequence of str
        Linear sentence-transformers pooling modes, concatenated in this order.
    normalize : bool
        Divide by the norm of ``final`` (a Normalize module); the components are divided by the
        norm of their own sum, a per-text scalar held fixed.

    Returns
    -------
    final : torch.Tensor of shape (batch, n_poolings * width), float32
        The model's output computed the ordinary way.
    pooled : torch.Tensor of shape (n_components, batch, n_poolings * width), float32
        They sum to ``final`` up to float32 rounding.
    """
    import torch

    nonlinear = [m for m in poolings if m not in LINEAR_POOLINGS]
    if nonlinear:
        raise InvalidInputError(
            f"The pooling {nonlinear[0]!r} is not linear in the hidden state, so the output does "
            f"not split into components; the decomposition needs one of {list(LINEAR_POOLINGS)}.")
    final = torch.cat([pool(last, attention_mask, m) for m in poolings], dim=-1)
    stacked = torch.stack(list(components))
    flat = stacked.flatten(0, 1)                                      # (n * batch, tokens, width)
    mask = attention_mask.repeat(len(components), 1)
    pooled = torch.cat([pool(flat, mask, m) for m in poolings], dim=-1)
    pooled = pooled.view(len(components), *final.shape)
    if normalize:
        final = torch.nn.functional.normalize(final, p=2, dim=-1)
        pooled = pooled / torch.linalg.vector_norm(pooled.sum(0), dim=-1, keepdim=True)
    return final.float(), pooled.float()


def decompose_bert(model, input_ids, attention_mask, n_layers: int,
                   poolings: Sequence[str] = ("mean",), normalize: bool = False,
                   token_type_ids=None) -> tuple[object, dict]:
    """The model's pooled output and its components, by name.

    Parameters
    ----------
    model, input_ids, attention_mask, n_layers, token_type_ids
        As for :func:`bert_components`.
    poolings, normalize
        As for :func:`pool_components`.

    Returns
    -------
    final : torch.Tensor of shape (batch, width), float32
    components : dict of str to torch.Tensor of shape (batch, width), float32
        Named as :func:`component_names`; their sum is ``final`` to float32 rounding.
    """
    parts, last = bert_components(model, input_ids, attention_mask, n_layers, token_type_ids)
    final, pooled = pool_components(parts, last, attention_mask, poolings, normalize)
    names = component_names(len(model.encoder.layer),
                            model.encoder.layer[0].attention.self.num_attention_heads, n_layers)
    return final, dict(zip(names, pooled, strict=True))
