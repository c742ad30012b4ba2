"""The text encoder of :func:`daskdict.embed`: loading a model, tokenizing, running it.

Any Hugging Face text encoder whose ``AutoModel`` returns token hidden states (BERT, RoBERTa,
MiniLM, MPNet, ...) and a ``sentence-transformers`` folder (``modules.json`` listing a
Transformer, a Pooling and optionally a Normalize module) are read the same way: the model and
tokenizer with ``AutoModel`` and ``AutoTokenizer``, and the sentence-transformers configuration
as JSON, so that ``final`` is the sentence embedding exactly as sentence-transformers computes
it (Reimers and Gurevych (2019), Sentence-BERT: Sentence Embeddings using Siamese
BERT-Networks) without importing it.

Per hidden state, a text's vector is its CLS token, the mean or the maximum over its
non-padding tokens (``pooling``); with ``tokens=True`` every non-padding token is a row.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daskdict.embedding.backbone import (
    hidden_index,
    require_extras,
    run_halving,
    select_layers,
    token_hidden_states,
)
from daskdict.errors import InvalidInputError

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("cls", "mean", "max")
# sentence-transformers' pooling modes, in the order it concatenates them
SENTENCE_POOLINGS = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                        "pooling_mode_mean_tokens": "mean",
                        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                        "pooling_mode_weightedmean_tokens": "weightedmean",
                        "pooling_mode_lasttoken": "lasttoken"}
# the longest input when neither the model nor sentence-transformers says
MAX_LENGTH = 512
TEXT_MODELS = "text encoder (BERT, RoBERTa, MiniLM, MPNet, ...) for texts"


@dataclass
class TextEncoder:
    """A loaded text model and how its outputs become stored vectors.

    Attributes
    ----------
    family : str
        ``config.model_type`` (``"bert"``, ...).
    model : torch.nn.Module
        Called with the tokenizer's inputs and ``output_hidden_states=True``.
    tokenizer : transformers tokenizer
    max_length : int
        Texts are truncated to this many tokens (special tokens included).
    lower_case : bool
        Lower-case texts first (sentence-transformers' ``do_lower_case``).
    sentence_pooling : tuple of str
        The sentence-transformers pooling modes of ``final`` (concatenated in this order).
    normalize : bool
        Whether ``final`` is L2-normalized (a Normalize module).
    other_modules : tuple of str
        Modules of a sentence-transformers folder that ``final`` cannot reproduce (e.g.
        ``Dense``); ``final`` is refused for such a model.
    """

    family: str
    model: Any
    tokenizer: Any
    max_length: int
    lower_case: bool
    sentence_pooling: tuple[str, ...]
    normalize: bool
    other_modules: tuple[str, ...]

    @property
    def default_pooling(self) -> str:
        """The pooling of hidden states when none is given: the model's own, else ``"mean"``."""
        return next((m for m in self.sentence_pooling if m in POOLINGS), "mean")

    def describe_final(self) -> str:
        """What ``final`` is, for the store's header."""
        text = (f"sentence embedding: {' + '.join(self.sentence_pooling)} pooling of the last "
                "hidden state over non-padding tokens")
        return text + (", L2-normalized" if self.normalize else "")

    def prepare_text(self, text: str) -> str:
        return text.lower() if self.lower_case else text

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Padded, truncated model inputs of shape (n_texts, n_tokens) as NumPy arrays."""
        encoded = self.tokenizer([self.prepare_text(t) for t in texts], padding=True,
                                 truncation="longest_first", max_length=self.max_length,
                                 return_tensors="np")
        accepted = _forward_parameters(self.model)
        return {key: np.asarray(value) for key, value in encoded.items()
                if accepted is None or key in accepted}

    def token_strings(self, texts: list[str]) -> list[list[str]]:
        """Per text, its tokens as the model sees them (truncated; no padding)."""
        ids = self.tokenizer([self.prepare_text(t) for t in texts], truncation="longest_first",
                             max_length=self.max_length)["input_ids"]
        return [[str(t) for t in self.tokenizer.convert_ids_to_tokens(row)] for row in ids]

    def vectors(self, inputs: dict, hidden_indices: Sequence[int], pooling: str,
                with_final: bool, tokens: bool):
        """The selected hidden vectors and ``final``, concatenated.

        Parameters
        ----------
        inputs : dict of torch.Tensor of shape (n_texts, n_tokens)
            The tokenizer's outputs (``attention_mask`` among them), on the model's device.
        hidden_indices : sequence of int
            Indices into the model's hidden states.
        pooling : {"cls", "mean", "max"}
        with_final : bool
            Append the sentence embedding (not with ``tokens``).
        tokens : bool
            One row per non-padding token instead of one per text.

        Returns
        -------
        torch.Tensor of shape (n_texts or n_tokens, sum of the widths), float32
        """
        import torch

        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=True)
            hidden = token_hidden_states(out, TEXT_MODELS)
            mask = inputs["attention_mask"]
            parts = []
            for index in hidden_indices:
                state = hidden[index].float()
                parts.append(state[mask.bool()] if tokens else pool(state, mask, pooling))
            if with_final:
                final = torch.cat([pool(hidden[-1], mask, mode)
                                   for mode in self.sentence_pooling], dim=-1)
                if self.normalize:
                    final = torch.nn.functional.normalize(final, p=2, dim=-1)
                parts.append(final.float())
            return torch.cat(parts, dim=1)


def _forward_parameters(model) -> set[str] | None:
    """The inputs the model's forward takes (None: any), as sentence-transformers filters."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


def pool(state, mask, mode: str):
    """One vector per text from a hidden state, as sentence-transformers' Pooling computes it.

    Parameters
    ----------
    state : torch.Tensor of shape (n_texts, n_tokens, width)
    mask : torch.Tensor of shape (n_texts, n_tokens)
        1 for tokens, 0 for padding.
    mode : str
        One of ``SENTENCE_POOLINGS``.

    Returns
    -------
    torch.Tensor of shape (n_texts, width)
    """
    import torch

    if mode == "cls":
        # the first non-padding token (the first token unless the tokenizer pads on the left)
        first = mask.to(torch.int).argmax(dim=1)
        return state[torch.arange(len(state), device=state.device), first]
    if mode == "max":
        keep = mask.unsqueeze(-1).expand_as(state).to(state.dtype)
        return state.masked_fill(keep == 0, float("-inf")).max(dim=1).values
    accumulate = torch.float32 if state.dtype in (torch.float16, torch.bfloat16) else state.dtype
    if mode in ("mean", "mean_sqrt_len_tokens"):
        weights = mask.unsqueeze(-1).to(state.dtype)
        total = (state * weights).sum(dim=1, dtype=accumulate)
        count = torch.clamp(weights.sum(dim=1, dtype=accumulate), min=1e-9)
        return (total / (count if mode == "mean" else torch.sqrt(count))).to(state.dtype)
    if mode == "weightedmean":
        weights = mask.unsqueeze(-1).to(accumulate) * (
            torch.arange(1, state.shape[1] + 1, device=state.device, dtype=accumulate)
            .view(1, -1, 1) - mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1))
        total = (state * weights).sum(dim=1)
        return (total / torch.clamp(weights.sum(dim=1), min=1e-9)).to(state.dtype)
    if mode == "lasttoken":
        values, indices = mask.flip(1).max(1)
        indices = torch.where(values == 0, state.shape[1] - 1, indices)
        last = state.shape[1] - indices - 1
        masked = state * mask.unsqueeze(-1).to(state.dtype)
        return masked[torch.arange(len(state), device=state.device), last]
    raise InvalidInputError(f"Unknown pooling {mode!r}; expected one of {SENTENCE_POOLINGS}.")


# --------------------------------------------------------------------------- loading


def _config_json(model: str, relative: str) -> Any:
    """A JSON file of a model folder or hub repository; None if it has none."""
    local = Path(model)
    if local.is_dir():
        path = local / relative
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"Cannot read {str(path)!r}: {exc}") from exc
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, relative)
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # the hub has no such file (or is unreachable): a plain model
        return None


def _module_name(entry: dict) -> str:
    """``"Transformer"`` for ``"sentence_transformers.models.Transformer"`` and its renames."""
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _pooling_modes(config: dict | None) -> tuple[str, ...]:
    """The pooling modes of a sentence-transformers Pooling config (current or legacy keys)."""
    if not config:
        return ("mean",)
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key))
    unknown = [m for m in modes if m not in SENTENCE_POOLINGS]
    if unknown:
        raise InvalidInputError(
            f"Unknown sentence-transformers pooling mode {unknown[0]!r}; daskdict.embed knows "
            f"{list(SENTENCE_POOLINGS)}.")
    if config.get("include_prompt") is False:
        raise InvalidInputError(
            "The model's Pooling excludes prompt tokens (include_prompt=false); daskdict.embed "
            "does not use prompts and cannot reproduce that pooling.")
    return modes or ("mean",)


def _sentence_transformers_layout(name: str) -> dict:
    """Where the transformer is and what ``final`` does, from ``modules.json`` if present."""
    layout = {"subfolder": "", "pooling": ("mean",), "normalize": False, "others": ()}
    modules = _config_json(name, "modules.json")
    if not isinstance(modules, list):
        return layout
    others = []
    for entry in modules:
        kind, path = _module_name(entry), str(entry.get("path", ""))
        if kind == "Transformer":
            layout["subfolder"] = path
        elif kind == "Pooling":
            layout["pooling"] = _pooling_modes(_config_json(name, f"{path}/config.json"))
        elif kind == "Normalize":
            layout["normalize"] = True
        else:
            others.append(kind)
    layout["others"] = tuple(others)
    return layout


def load_text_encoder(model: str | os.PathLike) -> TextEncoder:
    """Load a text encoder and its tokenizer by name or local folder.

    Parameters
    ----------
    model : str or path-like
        A Hugging Face model name, a folder written by ``save_pretrained`` (model and
        tokenizer), or a sentence-transformers folder (``modules.json``).

    Returns
    -------
    TextEncoder
        On the CPU, in float32, in eval mode.
    """
    _, transformers = require_extras()
    name = str(model)
    layout = _sentence_transformers_layout(name)
    subfolder = layout["subfolder"]
    settings = _config_json(name, f"{subfolder}/sentence_bert_config.json".lstrip("/")) or {}
    where = (str(Path(name) / subfolder) if Path(name).is_dir() else name)
    extra = {} if Path(name).is_dir() or not subfolder else {"subfolder": subfolder}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **extra)
        loaded = transformers.AutoModel.from_pretrained(where, **extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(
            f"Cannot load the text model {name!r} (a Hugging Face model name, or a folder "
            f"written by save_pretrained with the model and its tokenizer): {exc}") from exc
    max_length = settings.get("max_seq_length")
    if not max_length:
        limits = [MAX_LENGTH, getattr(tokenizer, "model_max_length", None),
                  getattr(loaded.config, "max_position_embeddings", None)]
        max_length = min(int(v) for v in limits if isinstance(v, int) and v > 0)
    loaded.eval()
    return TextEncoder(family=str(loaded.config.model_type), model=loaded, tokenizer=tokenizer,
                       max_length=int(max_length),
                       lower_case=bool(settings.get("do_lower_case", False)),
                       sentence_pooling=layout["pooling"], normalize=layout["normalize"],
                       other_modules=layout["others"])


def probe_text_widths(encoder: TextEncoder, layers, pooling: str, tokens: bool, device,
                      dtype) -> dict[str, int]:
    """Run one short text; return the selected layers' widths, in the forward's column order.

    With ``tokens``, ``layers="all"`` means every hidden state (no ``final``); naming
    ``final`` is an error, as is ``final`` for a model with modules it cannot reproduce.
    """
    import torch

    try:
        inputs = {k: torch.from_numpy(v).to(device)
                  for k, v in encoder.tokenize(["a"]).items()}
        with torch.inference_mode():
            out = encoder.model(**inputs, output_hidden_states=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(
            f"The model could not embed a text ({type(exc).__name__}: {exc}). daskdict.embed "
            "needs a text encoder that takes the tokenizer's inputs and returns hidden states."
        ) from exc
    hidden = token_hidden_states(out, TEXT_MODELS)
    names = select_layers(layers, len(hidden))
    if tokens and "final" in names:
        if layers != "all":
            raise InvalidInputError(
                "With tokens=True every row is a token: 'final' (one vector per text) is not "
                "written. Choose hidden layers.")
        names.remove("final")
    if "final" in names and encoder.other_modules:
        raise InvalidInputError(
            f"The model's sentence-transformers modules include {list(encoder.other_modules)}, "
            "which daskdict.embed does not reproduce, so it cannot write 'final'. Choose "
            "hidden layers.")
    widths = {n: int(hidden[hidden_index(n)].shape[-1])
              for n in names if n != "final"}
    if "final" in names:
        widths["final"] = int(encoder.vectors(inputs, [], pooling, True, False).shape[1])
    return widths


# --------------------------------------------------------------------------- running


@dataclass
class TextInputs:
    """A batch of texts for :class:`TextForward`.

    Attributes
    ----------
    encoded : dict of ndarray of shape (n_texts, n_tokens)
        The tokenizer's padded outputs.
    skip, take : int
        With ``tokens=True``: of the batch's token rows (texts in order, padding left out),
        the forward returns rows ``skip:skip + take``; otherwise unused.
    """

    encoded: dict[str, np.ndarray]
    skip: int = 0
    take: int = 0


class TextForward:
    """Runs the encoder over a batch of texts in slices of ``batch_size``, halving it when
    memory runs out. Returns float32 NumPy rows (n_texts or the batch's token rows, sum of
    widths)."""

    def __init__(self, encoder: TextEncoder, hidden_indices: list[int], with_final: bool,
                 pooling: str, tokens: bool, batch_size: int, device, dtype, torch):
        self.encoder = encoder
        self.hidden_indices = hidden_indices
        self.with_final = with_final
        self.pooling = pooling
        self.tokens = tokens
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.torch = torch

    def _compute(self, encoded: dict[str, np.ndarray], start: int, stop: int) -> np.ndarray:
        inputs = {key: self.torch.from_numpy(value[start:stop]).to(self.device)
                  for key, value in encoded.items()}
        return (self.encoder.vectors(inputs, self.hidden_indices, self.pooling,
                                     self.with_final, self.tokens).cpu().numpy())

    def __call__(self, batch: TextInputs) -> np.ndarray:
        n_texts = len(batch.encoded["attention_mask"])
        parts = run_halving(self, n_texts, lambda a, b: self._compute(batch.encoded, a, b))
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return rows[batch.skip:batch.skip + batch.take] if self.tokens else rows


def sentence_encoder(model: str | os.PathLike | None = None, *, batch_size: int = 32
                     ) -> Callable[[Sequence[str]], np.ndarray]:
    """A text encoder ``texts -> sentence embeddings`` in memory: the rows that
    :func:`daskdict.embed` stores as ``final`` for the same model, for a few texts (feature
    instantiations, captions to compare with) rather than a corpus.

    Parameters
    ----------
    model : str or path-like, optional
        As for :func:`load_text_encoder`; default all-MiniLM-L6-v2.
    batch_size : int, default=32

    Returns
    -------
    callable
        ``encode(texts) -> ndarray of float32 of shape (n_texts, width)``.

    Raises
    ------
    InvalidInputError
        If the model cannot be loaded, or its sentence embedding has modules that ``final``
        does not reproduce.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"Expected batch_size to be a positive int. Got {batch_size!r}.")
    torch, _ = require_extras(images=False)
    encoder = load_text_encoder(DEFAULT_TEXT_MODEL if model is None else model)
    if encoder.other_modules:
        raise InvalidInputError(
            f"The model's sentence-transformers modules include {list(encoder.other_modules)}, "
            "which the sentence embedding here does not reproduce.")

    def encode(texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("Expected a sequence of strings to encode.")
        rows = []
        for start in range(0, len(texts), batch_size):
            inputs = {key: torch.from_numpy(value) for key, value in
                      encoder.tokenize(list(texts[start:start + batch_size])).items()}
            rows.append(encoder.vectors(inputs, [], "mean", with_final=True,
                                        tokens=False).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    return encode
